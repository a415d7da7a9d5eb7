"""The device path's side of ``swapwatch bench`` (``--device-path``): :class:`DeviceRunner` runs
:class:`~swapwatch.engines.swap.device_path.DeviceFramePath` for every session's frame of a step, with the host stage,
the device stage and the monitors on their own threads."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from swapwatch.engines.bench.media import BenchInput, to_yuv420p
from swapwatch.engines.bench.models import BenchModels, torch_device
from swapwatch.engines.bench.runners import SessionRunner, StageThreads, session_io
from swapwatch.engines.bench.stats import StageStats, TimedDetector, TimedScorer
from swapwatch.engines.faces import Face

if TYPE_CHECKING:
    from swapwatch.engines.bench.benchmark import BenchConfig

__all__ = ["DeviceRunner"]


class DeviceRunner(SessionRunner):
    """The device path (:mod:`swapwatch.engines.swap.device_path`) for ``sessions`` streams, one batch per step.

    Per step, one frame per session:

    * host stage (this thread): per session, BGR conversion (with a codec), detect + track (the session's
      :class:`KeyframeTracker`, the face detector wherever it runs), face choice (``all``, serve's default);
    * device stage (its own thread): one :meth:`DeviceFramePath.process` call for every session's frame (one
      upload and one download per frame, one generator batch for every face);
    * monitor stage (its own thread): per session the monitor as serve's ``both`` mode runs it: watermark
      check, deepfake detector (torch on the path's device by default), alert policy and overlay;
    * with a codec, decode and yuv420p conversion + encode on their own threads, as the server path.

    One-slot queues join the stages, so batch k's device stage overlaps batch k+1's host stage and batch
    k-1's monitors (``--host-threads`` also spreads each stage's per-session work over threads).

    The device stages (upload .. download) are the batch's times from the path's own clock (CUDA events on
    CUDA), recorded on every frame of the batch: a frame waits for its whole batch. ``processing`` per frame is
    the batch's host stage + device call + monitors, without the waits between threads.
    """

    def __init__(self, cfg: BenchConfig, models: BenchModels, clip: BenchInput, identity: Any) -> None:
        from swapwatch.engines.deepfake import FrameMonitor, MonitorOverlay
        from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker
        from swapwatch.engines.swap import DEFAULT_SOURCE, FaceSelection, create_device_path

        self.cfg = cfg
        self.fps = clip.fps
        self.codec = cfg.codec
        # On CUDA: the device index the models' weights report, cuDNN autotuning (in warm-up here).
        self.path = create_device_path(models.swapper, models.device or torch_device(cfg), precision=cfg.precision,
                                       cuda_graphs=cfg.cuda_graphs, **dict(cfg.path_options))
        self.selection = FaceSelection.parse("all")
        self.sources = {DEFAULT_SOURCE: identity}
        self.overlay = MonitorOverlay() if cfg.deepfake else None
        self.sessions = []
        for s in range(cfg.sessions):
            detector = TimedDetector(models.detector)
            tracker = KeyframeTracker(detector, FaceTracker(smoothing=FACE_SMOOTHING if cfg.smoothing else None),
                                      k=cfg.detect_every)
            scorer = TimedScorer(models.deepfake_with(cfg.feature_stride, cfg.score_stride)) if cfg.deepfake else None
            self.sessions.append({"tracker": tracker, "detector": detector, "scorer": scorer,
                                  "monitor": FrameMonitor(detector=scorer) if scorer is not None else None,
                                  **session_io(clip, s, cfg.codec)})
        self.round_trips = 0
        workers = min(cfg.host_threads, cfg.sessions)
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.prep_pool = ThreadPoolExecutor(workers, thread_name_prefix="bench-host")
            self.monitor_pool = ThreadPoolExecutor(workers, thread_name_prefix="bench-monitor")
        else:
            self.prep_pool = self.monitor_pool = None

    @staticmethod
    def _no_embed(frame: np.ndarray, faces: list[Face]) -> np.ndarray:
        raise RuntimeError("face selection 'all' needs no embeddings")

    def close(self) -> None:
        for pool in (self.prep_pool, self.monitor_pool):
            if pool is not None:
                pool.shutdown(wait=True)

    # ---- host stage ------------------------------------------------------------------------------------

    def _map(self, pool: Any, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(pool.map(fn, items)) if pool is not None else [fn(item) for item in items]

    def _prepare(self, items: list[tuple[dict, Any, float, float]]) -> dict[str, Any]:
        """The host stage of one batch: per session (in parallel with ``host_threads`` > 1), BGR conversion,
        detect + track, face choice."""
        from swapwatch.engines.swap import FaceJob, FrameJob

        clock = time.perf_counter

        def one(item: tuple[dict, Any, float, float]) -> dict[str, Any]:
            sess, frame, decode_s, t_start = item
            t0 = clock()
            image = frame.to_ndarray(format="bgr24") if self.codec else frame.image  # in memory: not copied
            t1 = clock()
            t = sess["index"] / self.fps
            sess["index"] += 1
            faces = sess["tracker"].process(image, t)
            t2 = clock()
            chosen = self.selection.select(faces, image, self._no_embed)
            job = FrameJob(image, [FaceJob(np.asarray(f.landmarks), self.sources[key]) for f, key in chosen])
            t3 = clock()
            det = sess["detector"].take()
            rec = {"detect": det, "track": max(t2 - t1 - det, 0.0), "align": t3 - t2, "embed": 0.0}
            if self.codec:
                rec["decode"], rec["convert"] = decode_s, t1 - t0
            return {"sess": sess, "job": job, "faces": faces, "t": t, "rec": rec, "t_start": t_start}

        t_batch = clock()
        frames = self._map(self.prep_pool, one, items)
        return {"frames": frames, "host_s": clock() - t_batch, "ready": clock()}

    # ---- device stage ----------------------------------------------------------------------------------

    def _device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The device stage of one batch: one DeviceFramePath call for every session's frame."""
        clock = time.perf_counter
        t0 = clock()
        queue_s = t0 - batch["ready"]
        result = self.path.process([f["job"] for f in batch["frames"]])
        t1 = clock()
        self.round_trips += result.host_round_trips
        shared = {**result.frame_timings(t1 - t0), "queue": queue_s}
        for f in batch["frames"]:
            rec = f["rec"]
            rec["align"] += shared["align"]
            for name in ("upload", "swap", "paste", "label", "download", "device_overhead", "queue"):
                rec[name] = shared[name]
        return {**batch, "result": result, "device_s": t1 - t0}

    # ---- monitor stage ---------------------------------------------------------------------------------

    def _monitor(self, batch: dict[str, Any]) -> tuple[list[tuple[dict, np.ndarray, dict, float]], float]:
        """Each session's monitor on its processed frame (in parallel with ``host_threads`` > 1), as serve's
        ``both`` mode: watermark check, deepfake detector, alert policy, overlay."""
        clock = time.perf_counter

        def one(args: tuple[dict[str, Any], np.ndarray]) -> tuple[dict, np.ndarray, dict, float]:
            f, out = args
            rec, sess = f["rec"], f["sess"]
            if sess["monitor"] is not None:
                m0 = clock()
                sess["monitor"].process(out, f["t"], f["faces"])
                out = self.overlay.draw(out, sess["monitor"].state, f["faces"])
                m = clock() - m0
                df = sess["scorer"].take()
                rec["deepfake"], rec["monitor"] = df, max(m - df, 0.0)
            return sess, out, rec, f["t_start"]

        t0 = clock()
        outputs = self._map(self.monitor_pool, one, list(zip(batch["frames"], batch["result"].frames)))
        processing = batch["host_s"] + batch["device_s"] + (clock() - t0)
        return outputs, processing

    # ---- the loop --------------------------------------------------------------------------------------

    def run(self, steps: int, stats: StageStats | None) -> tuple[float, int]:
        """``steps`` frames per session through a pipeline of threads with one-slot queues between them:
        [decode] -> host stage (this thread) -> device stage -> monitors -> [yuv420p + encode] (the bracketed
        ones with a codec). Batch k's device stage overlaps batch k+1's host stage and batch k-1's monitors.
        Returns the wall time and the faces swapped."""
        clock = time.perf_counter
        q_in: queue.Queue = queue.Queue(maxsize=1)
        q_mid: queue.Queue = queue.Queue(maxsize=1)
        q_dev: queue.Queue = queue.Queue(maxsize=1)
        q_out: queue.Queue = queue.Queue(maxsize=1)
        threads = StageThreads()
        swapped = [0]

        def finish(item: tuple[list, float]) -> None:
            """Convert and encode (with a codec) and record the batch's frames."""
            outputs, processing = item
            for sess, out, rec, t_start in outputs:
                if sess["encoder"] is not None:
                    t0 = clock()
                    yuv = to_yuv420p(out)
                    t1 = clock()
                    sess["encoder"].encode(yuv)
                    rec["output"], rec["encode"] = t1 - t0, clock() - t1
                if stats is not None:
                    stats.add_frame(rec, clock() - t_start, processing)

        def device(batch: dict[str, Any]) -> dict[str, Any]:
            out = self._device(batch)
            swapped[0] += sum(out["result"].swapped)
            return out

        def monitor(batch: dict[str, Any]) -> tuple[list, float] | None:
            item = self._monitor(batch)
            if self.codec:
                return item
            finish(item)
            return None

        threads.stage(device, q_mid, q_dev, "bench-device")
        threads.stage(monitor, q_dev, q_out if self.codec else None, "bench-monitor")
        if self.codec:
            threads.decoder(self.sessions, steps, q_in)
            threads.stage(finish, q_out, None, "bench-encode")
        start = clock()
        threads.start()
        decoder_done = not self.codec
        try:
            for _ in range(steps):
                if threads.stop.is_set():
                    break
                if self.codec:
                    items = q_in.get()
                    if items is None:
                        decoder_done = True
                        break
                else:
                    items = [(sess, next(sess["decoder"]), 0.0, clock()) for sess in self.sessions]
                q_mid.put(self._prepare(items))
        except BaseException:
            threads.stop.set()
            raise
        finally:
            while not decoder_done:  # let the decoder finish
                decoder_done = q_in.get() is None
            q_mid.put(None)
            threads.join()
        threads.raise_error()
        return clock() - start, swapped[0]
