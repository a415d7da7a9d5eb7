"""The two sides ``swapwatch bench`` times on the host path: :class:`PipelineRunner` (the server's own frame path)
and :class:`BaselineRunner` (the straightforward loop), with what every runner shares: its sessions' decoders,
encoders and counts (:class:`SessionRunner`) and the threads of one timed run (:class:`StageThreads`). The
device path's runner: :mod:`swapwatch.engines.bench.device_runner`."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from swapwatch.engines.bench.media import BenchInput, H264Encoder, session_frames, to_yuv420p
from swapwatch.engines.bench.models import BenchModels
from swapwatch.engines.bench.stats import StageStats, TimedDetector, TimedScorer, processing_s
from swapwatch.engines.faces import Face

from swapwatch.config import TrackingConfig

if TYPE_CHECKING:
    from swapwatch.engines.bench.benchmark import BenchConfig

__all__ = ["BaselineRunner", "PipelineRunner", "SessionRunner", "StageThreads", "session_io"]


# --------------------------------------------------------------------------------------------------
# What every runner shares
# --------------------------------------------------------------------------------------------------


def session_io(clip: BenchInput, session: int, codec: bool) -> dict[str, Any]:
    """A session's frames in and out: ``decoder`` (its H.264 decoder, or the in-memory frames), ``encoder``
    (None with ``--no-codec``) and ``index``, the number of its next frame."""
    return {"decoder": session_frames(clip, session),
            "encoder": H264Encoder(clip.width, clip.height, clip.fps) if codec else None, "index": 0}


class SessionRunner:
    """A runner of ``sessions`` streams, each a dict with its timed ``detector`` and its :func:`session_io`."""

    sessions: list[dict[str, Any]]

    def close(self) -> None:
        pass

    def detections_run(self) -> int:
        return sum(s["detector"].calls for s in self.sessions)

    def encoded_bytes(self) -> int:
        return sum(s["encoder"].bytes for s in self.sessions if s["encoder"] is not None)


class StageThreads:
    """The threads of one timed run, joined by one-slot queues. An error on any of them is kept (``errors``)
    and sets ``stop``; the calling thread re-raises the first one (:meth:`raise_error`) once they are joined."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def decoder(self, sessions: Sequence[dict[str, Any]], steps: int, dst: queue.Queue) -> None:
        """A thread that puts ``steps`` steps on ``dst``, each one frame per session as (session, frame, decode
        seconds, decode start), then None."""
        clock = time.perf_counter

        def decode() -> None:
            try:
                for _ in range(steps):
                    if self.stop.is_set():
                        break
                    items = []
                    for sess in sessions:
                        t0 = clock()
                        frame = next(sess["decoder"])
                        items.append((sess, frame, clock() - t0, t0))
                    dst.put(items)
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                self.errors.append(exc)
                self.stop.set()
            finally:
                dst.put(None)

        self.threads.append(threading.Thread(target=decode, name="bench-decode", daemon=True))

    def stage(self, fn: Callable[[Any], Any], src: queue.Queue, dst: queue.Queue | None, name: str) -> None:
        """A thread that applies ``fn`` to each item of ``src`` until None, passing results on to ``dst``."""

        def worker() -> None:
            """Apply ``fn`` to each item of ``src`` until None; pass results on to ``dst``, then None."""
            try:
                while True:
                    item = src.get()
                    if item is None:
                        return
                    if self.errors:
                        continue  # drain only
                    result = fn(item)
                    if dst is not None:
                        dst.put(result)
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                self.errors.append(exc)
                self.stop.set()
                while src.get() is not None:  # let the stages upstream finish
                    pass
            finally:
                if dst is not None:
                    dst.put(None)

        self.threads.append(threading.Thread(target=worker, name=name, daemon=True))

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def join(self) -> None:
        for th in self.threads:
            th.join()

    def raise_error(self) -> None:
        if self.errors:
            raise self.errors[0]


# --------------------------------------------------------------------------------------------------
# Pipeline side: the server's frame path
# --------------------------------------------------------------------------------------------------


class PipelineRunner(SessionRunner):
    """The server's frame path for ``sessions`` streams: FrameProcessor per session, one InferenceWorker."""

    def __init__(self, cfg: BenchConfig, models: BenchModels, clip: BenchInput, source_image: np.ndarray,
                 source_face: Face, identity: Any) -> None:
        from swapwatch.engines.deepfake import FrameMonitor
        from swapwatch.stream.offer import SessionSettings
        from swapwatch.stream.processing import FrameProcessor
        from swapwatch.stream.sources import SourceFace
        from swapwatch.stream.worker import InferenceWorker

        from swapwatch.config import ServerConfig

        self.cfg = cfg
        self.fps = clip.fps
        source = SourceFace(id="bench", image=source_image, face=source_face)
        source.identities[models.swapper.name] = identity  # embedded once, before timing (as the server does)
        mode = "both" if cfg.deepfake else "swap"
        tracking = TrackingConfig(detect_every=cfg.detect_every, smoothing=cfg.smoothing)
        server = ServerConfig()
        self.worker = InferenceWorker(batch_window=server.batch_window, max_batch_faces=server.max_batch_faces,
                                      name="swapwatch-bench-inference")
        self.sessions = []
        for s in range(cfg.sessions):
            detector = TimedDetector(models.detector)
            scorer = TimedScorer(models.deepfake_with(cfg.feature_stride, cfg.score_stride)) if cfg.deepfake else None

            def factory(scorer=scorer):
                return FrameMonitor(detector=scorer) if scorer is not None else None

            processor = FrameProcessor(detector, models.swapper, SessionSettings(mode=mode, source="bench"), source,
                                       tracking=tracking, monitor_factory=factory)
            self.sessions.append({"processor": processor, "detector": detector, "scorer": scorer,
                                  **session_io(clip, s, cfg.codec)})
        self.worker.start()
        for _ in self.sessions:
            self.worker.attach()

    def close(self) -> None:
        self.worker.stop()

    def run(self, steps: int, stats: StageStats | None) -> tuple[float, int]:
        """Push ``steps`` frames per session through decode -> worker -> encode, overlapped. Returns the wall
        time from the first decode to the last encode, and the faces swapped."""
        q_in: queue.Queue = queue.Queue(maxsize=1)
        q_out: queue.Queue = queue.Queue(maxsize=1)
        threads = StageThreads()
        clock = time.perf_counter
        swapped = [0]

        def encode(item: list[tuple[dict, Any, dict[str, float], float]]) -> None:
            for sess, processed, rec, t_start in item:
                t0 = clock()
                if sess["encoder"] is not None:
                    sess["encoder"].encode(processed.yuv)
                t1 = clock()
                if sess["encoder"] is not None:
                    rec["encode"] = t1 - t0
                if stats is not None:
                    stats.add_frame(rec, t1 - t_start, processing_s(rec))

        threads.decoder(self.sessions, steps, q_in)
        threads.stage(encode, q_out, None, "bench-encode")
        start = clock()
        threads.start()
        try:
            while True:
                items = q_in.get()
                if items is None:
                    break
                if threads.errors:
                    continue
                futures = []
                for sess, frame, _, _ in items:
                    t = sess["index"] / self.fps
                    sess["index"] += 1
                    futures.append(self.worker.submit(sess["processor"], frame, t))
                results = []
                for (sess, _, decode_s, t_start), fut in zip(items, futures):
                    processed = fut.result()
                    swapped[0] += processed.swapped
                    rec = self._record(sess, processed, decode_s)
                    if sess["encoder"] is None:
                        rec.pop("decode")  # --no-codec: the frame came from memory
                    results.append((sess, processed, rec, t_start))
                q_out.put(results)
        except BaseException:
            threads.stop.set()
            while q_in.get() is not None:  # let the decoder finish
                pass
            raise
        finally:
            q_out.put(None)
            threads.join()
        threads.raise_error()
        return clock() - start, swapped[0]

    @staticmethod
    def _record(sess: dict, processed: Any, decode_s: float) -> dict[str, float]:
        tm = processed.timings
        det = sess["detector"].take()
        rec = {"decode": decode_s, "convert": tm.get("convert", 0.0), "queue": tm.get("queue", 0.0),
               "detect": det, "track": max(tm.get("detect", 0.0) - det, 0.0), "align": tm.get("align", 0.0),
               "embed": 0.0, "swap": tm.get("generate", 0.0), "paste": tm.get("paste", 0.0),
               "label": tm.get("label", 0.0), "output": tm.get("output", 0.0)}
        if sess["scorer"] is not None:
            df = sess["scorer"].take()
            rec["deepfake"] = df
            rec["monitor"] = max(tm.get("monitor", 0.0) - df, 0.0)
        return rec


# --------------------------------------------------------------------------------------------------
# Baseline side: the straightforward loop
# --------------------------------------------------------------------------------------------------


class BaselineRunner(SessionRunner):
    """:class:`~swapwatch.engines.bench.baseline.BaselineLoop` per session, everything on the calling thread."""

    def __init__(self, cfg: BenchConfig, models: BenchModels, clip: BenchInput, identity: Any) -> None:
        from swapwatch.engines.bench.baseline import BaselineLoop

        self.fps = clip.fps
        self.sessions = []
        for s in range(cfg.sessions):
            detector = TimedDetector(models.detector)
            deepfake = models.deepfake_with(1, 1) if cfg.deepfake else None
            self.sessions.append({"loop": BaselineLoop(detector, models.swapper, identity, deepfake=deepfake),
                                  "detector": detector, **session_io(clip, s, cfg.codec)})

    def run(self, steps: int, stats: StageStats | None) -> tuple[float, int]:
        from swapwatch.engines.bench.baseline import StageClock

        clock = StageClock()
        now = time.perf_counter
        swapped = 0
        start = now()
        for _ in range(steps):
            for sess in self.sessions:
                t_start = now()
                codec = sess["encoder"] is not None
                with clock("decode") if codec else contextlib.nullcontext():
                    frame = next(sess["decoder"])
                with clock("convert"):
                    image = frame.to_ndarray(format="bgr24")
                loop = sess["loop"]
                before = loop.faces_swapped
                out, _ = loop.process(image, sess["index"] / self.fps, clock)
                swapped += loop.faces_swapped - before
                sess["index"] += 1
                with clock("output"):
                    yuv = to_yuv420p(out)
                if codec:
                    with clock("encode"):
                        sess["encoder"].encode(yuv)
                rec = clock.take()
                rec.setdefault("embed", 0.0)
                if stats is not None:
                    stats.add_frame(rec, now() - t_start, processing_s(rec))
        return now() - start, swapped
