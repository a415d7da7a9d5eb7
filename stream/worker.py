"""The inference worker: one thread per GPU (here one) that runs every model off the event loop.

Sessions submit frames; the worker drains a bounded queue, collects a batch under a short deadline (up to
``batch_window`` seconds, or as soon as every attached stream has a frame in), runs each frame's
``prepare`` (convert, detect + track, align), then the swapper's ``generate`` once on the crops of every
frame in the batch (cross-session batching; chunks of at most ``max_batch_faces``), then each frame's
``finish`` (paste, label, monitor, output planes). Results come back through futures.

With the device path on (``device_path``: serve's ``--device-path``, see
:func:`~swapwatch.engines.swap.device_path.resolve_device_path`), a batch's swap-mode frames instead go through
one :meth:`~swapwatch.engines.swap.device_path.DeviceFramePath.process` call for every session (upload, align,
generate, paste, badge and watermark on the device, one download per frame; chunks of at most
``max_batch_faces`` faces), then each ``finish`` (hold rule, monitor, output planes) on the frame it returned.
The batch's device stage times go into each of its frames' timings (``generate`` is the device's swap stage).

Each session keeps at most one frame in flight (see session.py), so the queue holds at most one frame per
session plus a few one-off calls; it is bounded anyway and a full queue refuses with :class:`WorkerBusy`
(the caller drops the frame) rather than queueing without bound. One-off calls (source-face detection,
session reconfiguration, source identities) run on the same thread, so the models are only ever used by
one thread and no session state is touched by two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from swapwatch.stream.metrics import ServerStats
from swapwatch.stream.processing import FramePlan, FrameProcessor, Processed

log = logging.getLogger(__name__)


class WorkerBusy(RuntimeError):
    """The worker's queue is full: the frame is dropped, never queued."""


@dataclass
class _FrameJob:
    processor: FrameProcessor
    frame: av.VideoFrame
    t: float
    future: cf.Future
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _CallJob:
    fn: Callable[..., Any]
    args: tuple
    future: cf.Future


_STOP = object()


class InferenceWorker:
    def __init__(self, stats: ServerStats | None = None, *, batch_window: float = 0.004,
                 max_batch_faces: int = 16, queue_size: int = 64, name: str = "swapwatch-inference",
                 device_path: str = "off") -> None:
        from swapwatch.engines.swap import DEVICE_PATH_MODES

        if device_path not in DEVICE_PATH_MODES:
            raise ValueError(f"device_path must be one of {DEVICE_PATH_MODES}, got {device_path!r}")
        self.stats = stats if stats is not None else ServerStats()
        self.batch_window = batch_window
        self.max_batch_faces = max_batch_faces
        self.name = name
        self.device_path = device_path  # auto | on | off, resolved per swapper on first use
        self._paths: dict[int, tuple[Any, Any]] = {}  # id(swapper) -> (swapper, DeviceFramePath or None)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._streams = 0  # attached sessions: a batch is complete when each has a frame in
        self.batches = 0

    # ---- lifecycle ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the job in hand, cancel the waiting ones, and end the thread."""
        if self._thread is None:
            return
        while True:  # cancel what waits, then make room for the stop marker
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.future.cancel()
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("inference worker did not stop within %.0f s", timeout)
        self._thread = None

    def attach(self) -> None:
        self._streams += 1

    def detach(self) -> None:
        self._streams = max(0, self._streams - 1)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # ---- submitting -----------------------------------------------------------------------------------

    def submit(self, processor: FrameProcessor, frame: av.VideoFrame, t: float) -> cf.Future:
        """Queue one frame; the future gets a :class:`Processed`. Raises WorkerBusy when the queue is full."""
        return self._put(_FrameJob(processor, frame, t, cf.Future()))

    def call(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """Run ``fn(*args)`` on the worker thread (anything that touches models or session state)."""
        return self._put(_CallJob(fn, args, cf.Future()))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self.call(fn, *args))

    def _put(self, job: _FrameJob | _CallJob) -> cf.Future:
        if not self.running:
            raise RuntimeError("the inference worker is not running")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise WorkerBusy("inference worker queue is full") from None
        return job.future

    # ---- the thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            batch, stop = self._collect(job)
            frames: list[_FrameJob] = []
            for item in batch:
                if isinstance(item, _CallJob):
                    _run_call(item)
                else:
                    frames.append(item)
            if frames:
                self._run_frames(frames)
            if stop:
                return

    def _collect(self, first: _FrameJob | _CallJob) -> tuple[list, bool]:
        """``first`` and whatever arrives within the batch window, until every stream has a frame in."""
        batch = [first]
        if not isinstance(first, _FrameJob):
            return batch, False
        deadline = time.perf_counter() + self.batch_window
        while sum(isinstance(j, _FrameJob) for j in batch) < max(1, self._streams):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                job = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def device_path_for(self, swapper: Any) -> Any | None:
        """The :class:`DeviceFramePath` for ``swapper`` when the device path is on for it, else None (built
        once per swapper, on this thread: its buffers and caches are the worker's)."""
        if self.device_path == "off" or swapper is None:
            return None
        hit = self._paths.get(id(swapper))
        if hit is None or hit[0] is not swapper:
            from swapwatch.engines.swap import create_device_path, resolve_device_path

            path = create_device_path(swapper) if resolve_device_path(self.device_path, swapper) else None
            log.info("device path (%s) for %s: %s", self.device_path, swapper.name,
                     f"on ({path.device})" if path is not None else "off (the swapper runs on the CPU)")
            hit = self._paths[id(swapper)] = (swapper, path)
        return hit[1]

    def _run_frames(self, jobs: list[_FrameJob]) -> None:
        started = time.perf_counter()
        plans: list[tuple[_FrameJob, FramePlan]] = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # the session gave up on it (closed)
            try:
                device = self.device_path_for(job.processor.swapper) is not None
                plan = job.processor.prepare(job.frame, job.t, device=device)
            except Exception as exc:
                job.future.set_exception(exc)
                continue
            plan.timings["queue"] = started - job.submitted
            plans.append((job, plan))

        failed: dict[int, BaseException] = {}
        device_frames: dict[int, np.ndarray] = {}
        groups: dict[int, list[FramePlan]] = {}
        on_device: dict[int, tuple[Any, list[tuple[_FrameJob, FramePlan]]]] = {}
        for job, plan in plans:
            if plan.device:
                swapper = job.processor.swapper
                on_device.setdefault(id(swapper), (swapper, []))[1].append((job, plan))
            elif plan.crops is not None:
                groups.setdefault(id(plan.swapper), []).append(plan)
        for members in groups.values():
            try:
                self._generate(members)
            except Exception as exc:
                for plan in members:
                    failed[id(plan)] = exc
        for swapper, members in on_device.values():
            for chunk in self._device_chunks(members):
                try:
                    device_frames.update(self._process_on_device(self.device_path_for(swapper), chunk))
                except Exception as exc:
                    for _, plan in chunk:
                        failed[id(plan)] = exc

        for job, plan in plans:
            if id(plan) in failed:
                job.future.set_exception(failed[id(plan)])
                continue
            try:
                result: Processed = job.processor.finish(plan, device_frames.get(id(plan)))
            except Exception as exc:
                job.future.set_exception(exc)
                continue
            result.timings["total"] = time.perf_counter() - job.submitted - result.timings.get("queue", 0.0)
            self.stats.stages.add_all(result.timings)
            job.future.set_result(result)
        self.batches += 1

    def _generate(self, plans: list[FramePlan]) -> None:
        """One ``generate`` over the crops of every frame in ``plans`` (same swapper), in chunks."""
        swapper = plans[0].swapper
        crops = np.concatenate([p.crops for p in plans])
        sources = [s for p in plans for s in p.sources]
        t0 = time.perf_counter()
        outputs = []
        for i in range(0, len(crops), self.max_batch_faces):
            chunk = crops[i:i + self.max_batch_faces]
            outputs.append(swapper.generate(chunk, sources[i:i + self.max_batch_faces]))
            self.stats.batch_sizes.add(len(chunk))
        generated = np.concatenate(outputs)
        elapsed = time.perf_counter() - t0
        start = 0
        for p in plans:
            n = len(p.crops)
            p.generated = generated[start:start + n]
            p.timings["generate"] = elapsed  # the frame waited for the whole batch
            start += n


    def _device_chunks(self, members: list[tuple[_FrameJob, FramePlan]]) -> list[list[tuple[_FrameJob, FramePlan]]]:
        """Whole frames in order, at most ``max_batch_faces`` faces a call (a frame with more goes alone):
        with serve's limits, one call for the batch."""
        chunks: list[list[tuple[_FrameJob, FramePlan]]] = []
        faces = 0
        for item in members:
            n = len(item[1].swap.chosen) if item[1].swap is not None else 0
            if not chunks or (faces + n > self.max_batch_faces and faces > 0):
                chunks.append([])
                faces = 0
            chunks[-1].append(item)
            faces += n
        return chunks

    def _process_on_device(self, path: Any, members: list[tuple[_FrameJob, FramePlan]]) -> dict[int, np.ndarray]:
        """One device-path call for these frames (any sessions): their output frames by id(plan), and the
        batch's stage times in each frame's timings."""
        from swapwatch.engines.swap import FrameJob

        jobs = [FrameJob.from_plan(plan.swap) if plan.swap is not None else FrameJob(plan.image)
                for _, plan in members]
        t0 = time.perf_counter()
        result = path.process(jobs)
        shared = result.frame_timings(time.perf_counter() - t0)
        shared["generate"] = shared.pop("swap")  # the generator's stage, named as on the CPU path
        faces = sum(len(j.faces) for j in jobs)
        if faces:
            self.stats.batch_sizes.add(faces)
        out = {}
        for (_, plan), frame in zip(members, result.frames):
            align = plan.timings.get("align", 0.0)
            plan.timings.update(shared)
            plan.timings["align"] = align + shared["align"]  # face choice on the host + warps on the device
            out[id(plan)] = frame
        return out


def _run_call(job: _CallJob) -> None:
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        job.future.set_result(job.fn(*job.args))
    except BaseException as exc:  # handed to the awaiting coroutine, which decides
        job.future.set_exception(exc)
