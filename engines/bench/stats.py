"""The stages ``swapwatch bench`` times: what each one covers (:data:`STAGES`), per-frame samples -> p50 / p95 /
mean (:class:`StageStats`), and the timing proxies that split model time from the rest of a stage
(:class:`TimedDetector`, :class:`TimedScorer`). The run itself: :mod:`swapwatch.engines.bench.benchmark`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from swapwatch.engines.faces import Face, FaceDetector

__all__ = ["DEVICE_STAGES", "PROCESSING_STAGES", "STAGES", "StageStats", "TimedDetector", "TimedScorer", "processing_s"]

# Stage order in tables and plots, and what each one covers.
STAGES: dict[str, str] = {
    "decode": "demux + decode one frame of the input (PyAV)",
    "convert": "decoded frame -> BGR array",
    "upload": "host -> device copy of the frame (device path: measured, one copy per frame; server path and "
              "baseline: reported as 0, the engines copy each model's inputs inside their calls)",
    "queue": "pipeline: wait in the worker's queue until the batch is collected (device path: wait between the "
             "host stage and the device stage)",
    "detect": "face detector model",
    "track": "pipeline: optical flow between detections, track assignment, landmark smoothing",
    "align": "choose faces and warp each to the swapper's crop",
    "embed": "identity embedding: none per frame (the source identity is embedded once, see setup)",
    "swap": "swap model (pipeline: one batched call for every face of every session in the batch)",
    "paste": "mask, colour match, inverse warp and blend into the frame",
    "label": "pipeline: visible SYNTHETIC badge + invisible watermark",
    "deepfake": "deepfake detector: crops, frame scorer, temporal head",
    "monitor": "pipeline: watermark check, alert policy and overlay (monitor work besides the detector)",
    "download": "device -> host copy of the output (device path: measured, one copy per frame; else 0)",
    "device_overhead": "device path: wall time of the batched call not covered by its stage timers (host "
                       "planning, Python and kernel-launch overhead, the final synchronisation)",
    "output": "BGR -> yuv420p for the encoder",
    "encode": "H.264 encode (libx264 with aiortc's settings, or NVENC where it opens: device.h264_encoder)",
}
DEVICE_STAGES = ("upload", "download")

# Stages that are server-side processing (not decode, encode or waiting in a queue): their per-frame sum is the
# "processing" figure of the server path and the baseline.
PROCESSING_STAGES = ("convert", "detect", "track", "align", "embed", "swap", "paste", "label", "deepfake", "monitor",
                     "output")


def processing_s(rec: dict[str, float]) -> float:
    return sum(rec.get(name, 0.0) for name in PROCESSING_STAGES)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


class StageStats:
    """Per-frame seconds per stage -> p50 / p95 / mean in milliseconds."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.latency: list[float] = []
        self.processing: list[float] = []
        self.frames = 0

    def add_frame(self, stages: dict[str, float], latency: float | None = None,
                  processing: float | None = None) -> None:
        for name, seconds in stages.items():
            self.samples.setdefault(name, []).append(float(seconds))
        if latency is not None:
            self.latency.append(float(latency))
        if processing is not None:
            self.processing.append(float(processing))
        self.frames += 1

    @staticmethod
    def _summary(values: Sequence[float]) -> dict[str, float]:
        ms = np.asarray(values, np.float64) * 1000.0
        return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
                "mean_ms": round(float(ms.mean()), 3)}

    def summary(self) -> dict[str, dict[str, float]]:
        order = list(STAGES) + sorted(set(self.samples) - set(STAGES))
        out = {}
        for name in order:
            values = self.samples.get(name)
            if values:
                # Frames where a stage did not run count as 0 (a stage missing from a frame's record ran 0 s).
                padded = list(values) + [0.0] * (self.frames - len(values))
                out[name] = self._summary(padded)
        return out

    def latency_summary(self) -> dict[str, float] | None:
        return self._summary(self.latency) if self.latency else None

    def processing_summary(self) -> dict[str, float] | None:
        return self._summary(self.processing) if self.processing else None


# --------------------------------------------------------------------------------------------------
# Timing proxies (one per session; read on the caller's thread after the frame is done)
# --------------------------------------------------------------------------------------------------


class TimedDetector(FaceDetector):
    """A face detector that adds up the time its ``detect`` calls take, until :meth:`take`."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "?")
        self.elapsed = 0.0
        self.calls = 0

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        t0 = time.perf_counter()
        try:
            return self.inner.detect(image_bgr)
        finally:
            self.elapsed += time.perf_counter() - t0
            self.calls += 1

    def take(self) -> float:
        out, self.elapsed = self.elapsed, 0.0
        return out


class TimedScorer:
    """A deepfake scorer (``score_faces``) that adds up its time, until :meth:`take`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.elapsed = 0.0

    def score_faces(self, frame_bgr: np.ndarray, faces: Sequence[Face], t: float):
        t0 = time.perf_counter()
        try:
            return self.inner.score_faces(frame_bgr, faces, t)
        finally:
            self.elapsed += time.perf_counter() - t0

    def take(self) -> float:
        out, self.elapsed = self.elapsed, 0.0
        return out
