"""``swapwatch bench``: per-stage latency and end-to-end frame rate of the live frame path, and of the
straightforward loop it replaces (:mod:`swapwatch.engines.baseline`), on the same frames and models.

**Pipeline side** — the server's own frame path, not a copy of it: one
:class:`~swapwatch.stream.processing.FrameProcessor` per session (``prepare``: to BGR, detect every k frames
with optical-flow tracking in between, choose faces, align; ``finish``: mask, colour, paste, SYNTHETIC badge
and watermark, monitor with the deepfake detector and its strides, yuv420p), all driven by one
:class:`~swapwatch.stream.worker.InferenceWorker` that batches ``generate`` across sessions. As in the server,
decoding and encoding run on their own threads, overlapping inference (queues of one step each way).
Stage times come from the processor's own timings; the face detector and the deepfake detector are wrapped in
timing proxies (one per session) to split model time from tracking and from the rest of the monitor.

**Baseline side** — :class:`~swapwatch.engines.baseline.BaselineLoop`: detect every frame, per-face warps,
one face per swapper call, full-frame paste, deepfake detector per face per frame, all on one thread.

**Frames** — the input clip (by default a shared GRID clip) is fitted to ``WxH`` (aspect kept, black bars)
and, for ``faces`` > 1, tiled in a grid of cells (one clip per cell, different GRID speakers when the default
clips are used, otherwise the same clip at different time offsets); when it is shorter than needed it is
played forwards and backwards (no jump cut). The composed frames are encoded once, untimed, to H.264 (crf 18)
in a temporary file; both sides then decode that file with PyAV (each session its own decoder, session s
starting 7 x s frames in) and encode their output with libx264 configured as aiortc 1.16's H.264 encoder
(zerolatency, Baseline profile, 1 Mbit/s), one encoder per session.

**Measuring** — ``warmup`` frames per session on each side first (not counted), then ``frames`` per session
in ``rounds`` alternating chunks (baseline, pipeline, baseline, ...) so that a change in machine load hits
both sides alike. fps = frames processed (all sessions) / wall time of the timed chunks, from the first
decode to the last encode. Per-stage p50/p95/mean are per frame; a stage that runs only on some frames
(detection every k, strided deepfake scoring) records 0 on the others, so its mean is its amortised cost.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from swapwatch.engines.face import Face, FaceDetector

from swapwatch.config import DeepfakeConfig, TrackingConfig
from swapwatch.errors import InputError

__all__ = [
    "STAGES", "BenchConfig", "BenchResult", "SideResult", "StageStats", "TimedDetector", "TimedScorer",
    "device_info", "format_report", "plot_stages", "prepare_input", "run_bench",
]

# Stage order in tables and plots, and what each one covers.
STAGES: dict[str, str] = {
    "decode": "demux + decode one frame of the input (PyAV)",
    "convert": "decoded frame -> BGR array",
    "upload": "host -> device copy of the frame (0 without a GPU: the frame stays in host memory)",
    "queue": "pipeline: wait in the worker's queue until the batch is collected",
    "detect": "face detector model",
    "track": "pipeline: optical flow between detections, track assignment, landmark smoothing",
    "align": "choose faces and warp each to the swapper's crop",
    "embed": "identity embedding: none per frame (the source identity is embedded once, see setup)",
    "swap": "swap model (pipeline: one batched call for every face of every session in the batch)",
    "paste": "mask, colour match, inverse warp and blend into the frame",
    "label": "pipeline: visible SYNTHETIC badge + invisible watermark",
    "deepfake": "deepfake detector: crops, frame scorer, temporal head",
    "monitor": "pipeline: watermark check, alert policy and overlay (monitor work besides the detector)",
    "download": "device -> host copy of the output (0 without a GPU)",
    "output": "BGR -> yuv420p for the encoder",
    "encode": "H.264 encode (libx264, aiortc's settings)",
}
DEVICE_STAGES = ("upload", "download")
SESSION_OFFSET = 7  # frames between the starting points of consecutive sessions
ENCODER_BITRATE = 1_000_000  # aiortc 1.16's H.264 DEFAULT_BITRATE
MAX_CLIP_CELLS = 64


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


class StageStats:
    """Per-frame seconds per stage -> p50 / p95 / mean in milliseconds."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.latency: list[float] = []
        self.frames = 0

    def add_frame(self, stages: dict[str, float], latency: float | None = None) -> None:
        for name, seconds in stages.items():
            self.samples.setdefault(name, []).append(float(seconds))
        if latency is not None:
            self.latency.append(float(latency))
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


# --------------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def device_info() -> dict[str, Any]:
    """CPU, cores, GPU and driver, and the versions of the libraries that set the speed."""
    import av
    import onnxruntime
    import torch

    from swapwatch import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "driver": _nvidia_driver() if gpu else None,
        "cuda": torch.version.cuda if gpu else None,
        "platform": platform.platform(),
        "load_average": load,
        "versions": {"python": platform.python_version(), "swapwatch": __version__, "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "pyav": av.__version__,
                     "numpy": np.__version__},
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }


def describe_device(info: dict[str, Any]) -> str:
    v = info["versions"]
    gpu = f"{info['gpu']} (driver {info['driver'] or '?'}, CUDA {info['cuda']})" if info["gpu"] else "no GPU"
    return (f"{info['cpu']}, {info['cores']} cores, {gpu}; Python {v['python']}, torch {v['torch']}, "
            f"onnxruntime {v['onnxruntime']} ({', '.join(info['onnxruntime_providers'])}), OpenCV {v['opencv']}, "
            f"PyAV {v['pyav']}")


# --------------------------------------------------------------------------------------------------
# Input: the clip fitted to W x H, tiled for N faces, encoded once to H.264
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchInput:
    path: Path
    width: int
    height: int
    fps: float
    frames: int
    description: str


def default_clips() -> list[Path]:
    """The shared GRID clips (``$SWAPWATCH_SHARED_ASSETS``, else ``../shared/assets`` from the working
    directory or from the repository)."""
    roots = []
    if os.environ.get("SWAPWATCH_SHARED_ASSETS"):
        roots.append(Path(os.environ["SWAPWATCH_SHARED_ASSETS"]))
    roots += [Path.cwd().parent / "shared" / "assets", Path(__file__).resolve().parents[2] / "shared" / "assets"]
    for root in roots:
        clips = sorted((root / "videos").glob("grid_*.mpg"))
        if clips:
            return clips
    return []


def default_source_photo() -> Path | None:
    for clip_dir in {c.parent for c in default_clips()}:
        photo = clip_dir.parent / "faces" / "max_Bryan.png"
        if photo.is_file():
            return photo
    return None


def grid_shape(cells: int, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) for ``cells`` tiles, as square a grid as fits the frame's aspect."""
    cols = max(1, math.ceil(math.sqrt(cells * width / max(height, 1) * 0.75)))
    cols = min(cols, cells)
    rows = math.ceil(cells / cols)
    return rows, cols


def _fit(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """``image`` scaled to fit in w x h with its aspect kept, centred on black."""
    ih, iw = image.shape[:2]
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = resized
    return out


class _PingPong:
    """Frames of a clip from ``offset`` on, forwards then backwards, forever (buffered: the clip is short)
    — or streamed when the clip has at least ``needed`` frames after the offset."""

    def __init__(self, path: Path, offset: int, needed: int) -> None:
        from swapwatch.engines.media import iter_video, probe_video

        self.path = path
        info = probe_video(path)
        self.fps = info.fps
        self._iter = iter_video(path)
        self._buffer: list[np.ndarray] | None = None if info.frames >= offset + needed else []
        self._offset = offset
        self._stream_pos = 0
        self._pp: Iterator[np.ndarray] | None = None

    def _all(self) -> list[np.ndarray]:
        if not self._buffer:
            self._buffer = [f.image for f in self._iter]
            if not self._buffer:
                raise InputError(f"{self.path}: video has no frames")
        return self._buffer

    def frames(self) -> Iterator[np.ndarray]:
        if self._buffer is None:  # long enough: stream it
            for i, f in enumerate(self._iter):
                if i >= self._offset:
                    yield f.image
            raise InputError(f"{self.path}: fewer frames than its header says")
        frames = self._all()
        n = len(frames)
        cycle = list(range(n)) + list(range(n - 2, 0, -1)) if n > 2 else list(range(n))
        i = self._offset
        while True:
            yield frames[cycle[i % len(cycle)]]
            i += 1


def prepare_input(out: Path, *, clips: Sequence[Path], width: int, height: int, faces: int, frames: int,
                  progress: Callable[[str], None] | None = None) -> BenchInput:
    """Compose ``frames`` frames of ``width`` x ``height`` with ``faces`` clip cells and encode them to
    ``out`` (H.264, crf 18). With one clip and several cells, cell k starts 11 x k frames into the clip."""
    import av

    if not clips:
        raise InputError("no input clip")
    if faces < 1 or faces > MAX_CLIP_CELLS:
        raise InputError(f"--faces must be between 1 and {MAX_CLIP_CELLS}")
    if width % 2 or height % 2:
        raise InputError("--resolution needs even width and height (yuv420p)")
    rows, cols = grid_shape(faces, width, height)
    cw, ch = width // cols, height // rows
    cells = []
    for k in range(faces):
        clip = clips[k % len(clips)]
        offset = 11 * (k // len(clips)) if len(clips) > 1 else 11 * k
        cells.append(_PingPong(clip, offset, frames))
    fps = cells[0].fps or 25.0
    iters = [c.frames() for c in cells]
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i in range(frames):
            canvas = np.zeros((height, width, 3), np.uint8)
            for k, it in enumerate(iters):
                r, c = divmod(k, cols)
                canvas[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = _fit(next(it), cw, ch)
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="bgr24")):
                container.mux(packet)
            if progress and (i + 1) % 100 == 0:
                progress(f"preparing input: {i + 1}/{frames} frames")
        for packet in stream.encode():
            container.mux(packet)
    names = sorted({c.path.name for c in cells})
    layout = "1 cell" if faces == 1 else f"{faces} cells in a {rows}x{cols} grid"
    desc = (f"{', '.join(names)} fitted to {width}x{height} ({layout}, aspect kept, black bars), "
            f"{frames} frames at {fps:g} fps, encoded once to H.264 crf 18")
    return BenchInput(out, width, height, fps, frames, desc)


def open_decoder(path: Path, skip: int = 0) -> Iterator[Any]:
    """av.VideoFrame after av.VideoFrame of a file's first video stream (frame threads on), from ``skip``."""
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"

    def frames():
        with container:
            for i, frame in enumerate(container.decode(stream)):
                if i >= skip:
                    yield frame

    return frames()


class H264Encoder:
    """libx264 as aiortc 1.16's ``H264Encoder`` configures it (zerolatency, Baseline, level 3.1, 1 Mbit/s)."""

    def __init__(self, width: int, height: int, fps: float = 30.0) -> None:
        import av

        self._av = av
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate = ENCODER_BITRATE
        rate = Fraction(min(round(fps) or 30, 30), 1)
        codec.framerate, codec.time_base = rate, 1 / rate
        codec.options = {"level": "31", "tune": "zerolatency"}
        codec.profile = "Baseline"
        self.codec = codec
        self.pts = 0
        self.bytes = 0

    def encode(self, yuv: np.ndarray) -> int:
        frame = self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.pts
        self.pts += 1
        n = sum(p.size for p in self.codec.encode(frame))
        self.bytes += n
        return n


# --------------------------------------------------------------------------------------------------
# Configuration and models
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    width: int = 640
    height: int = 480
    input: Path | None = None  # None: the shared GRID clips
    source: Path | None = None  # None: a shared face photo, else the largest face of the input's first frame
    faces: int = 1
    sessions: int = 1
    frames: int = 200  # timed frames per session
    warmup: int = 20  # untimed frames per session, on each side
    rounds: int = 2  # alternating timed chunks per side
    swap_model: str = "auto"
    random_weights: bool = False  # SimSwap in its released architecture with seeded random weights
    face_detector: str = "yunet"
    deepfake: bool = True  # run the deepfake detector (--detector on)
    detect_every: int = TrackingConfig.detect_every  # pipeline: detector every k frames (serve's default)
    smoothing: bool = True
    feature_stride: int = DeepfakeConfig.feature_stride  # pipeline's deepfake strides: serve's defaults
    score_stride: int = DeepfakeConfig.score_stride
    compare_baseline: bool = False

    def __post_init__(self) -> None:
        checks = [(self.faces >= 1, "--faces must be at least 1"), (self.sessions >= 1, "--sessions must be at least 1"),
                  (self.frames >= 1, "--frames must be at least 1"), (self.warmup >= 0, "--warmup must be >= 0"),
                  (self.rounds >= 1, "--rounds must be at least 1"),
                  (self.detect_every >= 1, "--detect-every must be at least 1"),
                  (self.feature_stride >= 1 and self.score_stride >= 1, "deepfake strides must be at least 1"),
                  (self.width >= 64 and self.height >= 64, "--resolution must be at least 64x64"),
                  (self.width % 2 == 0 and self.height % 2 == 0, "--resolution needs an even width and height"),
                  (self.precision in ("fp32", "fp16"), "--precision must be fp32 or fp16")]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.faces > MAX_CLIP_CELLS:
            raise InputError(f"--faces must be at most {MAX_CLIP_CELLS}")


@dataclass
class BenchModels:
    detector: FaceDetector
    swapper: Any
    swap_weights: str  # what the swap weights are, for the header
    deepfake: Any | None  # the loaded DeepfakeDetector (its engines are shared by every session)
    backends: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def deepfake_with(self, feature_stride: int, score_stride: int):
        """A fresh detector state (per-track windows) on the shared engines, with these strides (what serve
        gives each session: ``DeepfakeDetector.fork``)."""
        from swapwatch.engines.deepfake import WindowConfig

        return self.deepfake.fork(WindowConfig(feature_stride=feature_stride, score_stride=score_stride))


def _engine_backend(engine: Any) -> str:
    name = type(engine).__name__
    return {"OnnxRuntimeEngine": "onnxruntime", "TorchEngine": "torch", "TensorRTEngine": "tensorrt"}.get(name, name)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_models(cfg: BenchConfig, workdir: Path) -> BenchModels:
    """The face detector, swapper and deepfake detector the run asks for (exported graphs go to ``workdir``)."""
    from swapwatch.engines.detectors import create_detector
    from swapwatch.engines.engine import choose_backend

    from swapwatch.config import DetectorConfig

    notes: list[str] = []
    if cfg.device == "cuda" and not _cuda():
        raise InputError("--device cuda: no CUDA device here")
    if cfg.precision == "fp16" and (cfg.device == "cpu" or not _cuda()):
        raise InputError("--precision fp16 needs a CUDA GPU (none here); fp16 on a CPU is not faster")
    choose_backend(cfg.backend)  # one-line error when the backend is not installed
    det_backend = cfg.backend
    if cfg.backend == "torch" and cfg.face_detector != "mtcnn":
        det_backend = "auto"  # YuNet and SCRFD are ONNX graphs
        notes.append(f"{cfg.face_detector} is an ONNX graph: it runs on the best ONNX backend, not torch")
    detector = create_detector(DetectorConfig(name=cfg.face_detector, backend=det_backend, device=cfg.device))
    swapper, weights = _load_swapper(cfg, notes, workdir)
    deepfake = None
    if cfg.deepfake:
        from swapwatch.engines.deepfake import DeepfakeDetector

        deepfake = DeepfakeDetector.load(None, backend=cfg.backend, device=cfg.device)
    det_engine = getattr(detector, "engine", None) or getattr(detector, "pnet", None)
    backends = {"detector": _engine_backend(det_engine) if det_engine is not None else det_backend}
    gen = getattr(swapper, "generator", None) or getattr(swapper, "engine", None)
    backends["swapper"] = _engine_backend(gen) if gen is not None else "numpy/OpenCV"
    if deepfake is not None:
        backends["deepfake"] = _engine_backend(deepfake.scorer)
    return BenchModels(detector, swapper, weights, deepfake, backends, notes)


def _load_swapper(cfg: BenchConfig, notes: list[str], workdir: Path) -> tuple[Any, str]:
    from swapwatch.engines.swappers import create_swapper, resolve_name

    name = resolve_name(cfg.swap_model)
    half = cfg.precision == "fp16"
    if name == "classic":
        if cfg.random_weights:
            raise InputError("--random-weights applies to simswap-224/512; classic has no weights")
        if half:
            raise InputError("classic is a weight-free uint8 swapper: it has no fp16 mode")
        from swapwatch.engines.classic import ClassicSwapper

        return ClassicSwapper(), "weight-free (classic)"
    if cfg.random_weights:
        if not name.startswith("simswap"):
            raise InputError("--random-weights builds SimSwap's released architecture only (simswap-224/512); "
                             f"{name} needs its real file")
        import torch
        from swapwatch.engines.simswap import SimSwapSwapper
        from swapwatch.export.arcface import ResNet
        from swapwatch.export.simswap import SimSwapGenerator

        torch.manual_seed(0)
        generator, arcface = SimSwapGenerator(int(name.split("-")[1])).eval(), ResNet().eval()
        if cfg.backend in ("onnxruntime", "tensorrt") or (cfg.backend == "auto" and not half):
            from swapwatch.export.arcface import export_arcface_onnx
            from swapwatch.export.simswap import export_generator_onnx

            tmp = workdir / "random-simswap"
            tmp.mkdir(parents=True, exist_ok=True)
            gen_onnx = export_generator_onnx(generator, tmp / "generator.onnx")
            arc_onnx = export_arcface_onnx(arcface, tmp / "arcface.onnx")
            swapper = SimSwapSwapper.from_onnx(gen_onnx, arc_onnx, backend=cfg.backend, device=cfg.device)
        else:
            swapper = SimSwapSwapper.from_modules(generator, arcface, device=cfg.device, half=half)
        return swapper, "random fixture weights: speed only"
    if half:
        if not (name.startswith("simswap") and cfg.backend == "torch"):
            raise InputError(f"--precision fp16 is wired for simswap-224/512 with --backend torch; not for {name} "
                             f"on {cfg.backend}")
        from swapwatch.engines.registry import ensure_model
        from swapwatch.engines.simswap import SimSwapSwapper
        from swapwatch.export.arcface import load_arcface
        from swapwatch.export.simswap import load_generator

        gen = next(iter(ensure_model(name).values()))
        arc = next(iter(ensure_model("arcface-simswap").values()))
        swapper = SimSwapSwapper.from_modules(load_generator(gen), load_arcface(arc), device=cfg.device, half=True)
        return swapper, _weights_note(name)
    return create_swapper(name, backend=cfg.backend, device=cfg.device).swapper, _weights_note(name)


def _weights_note(name: str) -> str:
    from swapwatch.engines.registry import verify

    results = verify(name)
    if results and all(r.status == "ok" for r in results):
        return "learned, sha256 verified against the registry"
    return "learned, files without a pinned sha256 (if these are fixture/random weights: speed only)"


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class SideResult:
    name: str
    description: str
    stats: StageStats
    wall_s: float = 0.0
    frames: int = 0
    faces_swapped: int = 0
    detections_run: int = 0
    encoded_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self, sessions: int) -> dict[str, Any]:
        stages = self.stats.summary()
        for name in DEVICE_STAGES:
            stages.setdefault(name, {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0})
            stages[name]["measured"] = False
        out = {
            "fps": round(self.fps, 3), "fps_per_session": round(self.fps / sessions, 3),
            "stages": {k: stages[k] for k in [s for s in STAGES if s in stages] + sorted(set(stages) - set(STAGES))},
            "latency": self.stats.latency_summary(), "frames": self.frames, "wall_s": round(self.wall_s, 3),
            "faces_swapped": self.faces_swapped, "detections_run": self.detections_run,
            "encoded_bytes": self.encoded_bytes, "description": self.description,
        }
        out.update(self.extra)
        return out


@dataclass
class BenchResult:
    config: BenchConfig
    device: dict[str, Any]
    input: BenchInput
    models: dict[str, Any]
    pipeline: SideResult
    baseline: SideResult | None
    setup: dict[str, Any]
    notes: list[str]
    date: str
    command: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline.fps <= 0:
            return None
        return self.pipeline.fps / self.baseline.fps

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}
        out = {
            "date": self.date, "command": self.command,
            "device": {**self.device, "backend": cfg.backend, "precision": cfg.precision, "backends": self.models["backends"]},
            "config": config, "input": {"description": self.input.description, "width": self.input.width,
                                        "height": self.input.height, "fps": self.input.fps},
            "models": self.models, "setup": self.setup,
            "pipeline": self.pipeline.to_json(cfg.sessions),
            "baseline": self.baseline.to_json(cfg.sessions) if self.baseline is not None else None,
            "ratio": round(self.ratio, 3) if self.ratio is not None else None,
            "stage_notes": STAGES, "notes": self.notes,
        }
        return out


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def _source(cfg: BenchConfig, models: BenchModels, first_frame: np.ndarray) -> tuple[np.ndarray, Face, str]:
    from swapwatch.engines.media import read_image

    photo = cfg.source or default_source_photo()
    if photo is not None:
        image = read_image(photo)
        where = str(photo)
    else:
        image, where = first_frame, "the largest face of the input's first frame (no source photo given)"
    faces = models.detector.detect(image)
    if not faces:
        raise InputError(f"{where}: no face found for the source identity")
    return image, max(faces, key=lambda f: f.area), where


def _first_frame(path: Path) -> np.ndarray:
    frame = next(open_decoder(path))
    return frame.to_ndarray(format="bgr24")


class _PipelineRunner:
    """The server's frame path for ``sessions`` streams: FrameProcessor per session, one InferenceWorker."""

    def __init__(self, cfg: BenchConfig, models: BenchModels, clip: BenchInput, source_image: np.ndarray,
                 source_face: Face, identity: Any) -> None:
        from swapwatch.engines.monitor import FrameMonitor
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
                                  "decoder": open_decoder(clip.path, SESSION_OFFSET * s),
                                  "encoder": H264Encoder(clip.width, clip.height, clip.fps), "index": 0})
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
        errors: list[BaseException] = []
        stop = threading.Event()
        clock = time.perf_counter
        swapped = [0]

        def decode() -> None:
            try:
                for _ in range(steps):
                    if stop.is_set():
                        break
                    items = []
                    for sess in self.sessions:
                        t0 = clock()
                        frame = next(sess["decoder"])
                        items.append((sess, frame, clock() - t0, t0))
                    q_in.put(items)
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                errors.append(exc)
            finally:
                q_in.put(None)

        def encode() -> None:
            while True:
                item = q_out.get()
                if item is None:
                    return
                if errors:
                    continue  # drain only
                try:
                    for sess, processed, rec, t_start in item:
                        t0 = clock()
                        sess["encoder"].encode(processed.yuv)
                        t1 = clock()
                        rec["encode"] = t1 - t0
                        if stats is not None:
                            stats.add_frame(rec, t1 - t_start)
                except Exception as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                    errors.append(exc)

        threads = [threading.Thread(target=decode, name="bench-decode", daemon=True),
                   threading.Thread(target=encode, name="bench-encode", daemon=True)]
        start = clock()
        for th in threads:
            th.start()
        try:
            while True:
                items = q_in.get()
                if items is None:
                    break
                if errors:
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
                    results.append((sess, processed, self._record(sess, processed, decode_s), t_start))
                q_out.put(results)
        except BaseException:
            stop.set()
            while q_in.get() is not None:  # let the decoder finish
                pass
            raise
        finally:
            q_out.put(None)
            for th in threads:
                th.join()
        if errors:
            raise errors[0]
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

    def detections_run(self) -> int:
        return sum(s["detector"].calls for s in self.sessions)

    def encoded_bytes(self) -> int:
        return sum(s["encoder"].bytes for s in self.sessions)


class _BaselineRunner:
    """:class:`~swapwatch.engines.baseline.BaselineLoop` per session, everything on the calling thread."""

    def __init__(self, cfg: BenchConfig, models: BenchModels, clip: BenchInput, identity: Any) -> None:
        from swapwatch.engines.baseline import BaselineLoop

        self.fps = clip.fps
        self.sessions = []
        for s in range(cfg.sessions):
            detector = TimedDetector(models.detector)
            deepfake = models.deepfake_with(1, 1) if cfg.deepfake else None
            self.sessions.append({"loop": BaselineLoop(detector, models.swapper, identity, deepfake=deepfake),
                                  "detector": detector, "decoder": open_decoder(clip.path, SESSION_OFFSET * s),
                                  "encoder": H264Encoder(clip.width, clip.height, clip.fps), "index": 0})

    def run(self, steps: int, stats: StageStats | None) -> tuple[float, int]:
        from swapwatch.engines.baseline import StageClock
        from swapwatch.stream.processing import to_yuv420p

        clock = StageClock()
        now = time.perf_counter
        swapped = 0
        start = now()
        for _ in range(steps):
            for sess in self.sessions:
                t_start = now()
                with clock("decode"):
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
                with clock("encode"):
                    sess["encoder"].encode(yuv)
                rec = clock.take()
                rec.setdefault("embed", 0.0)
                if stats is not None:
                    stats.add_frame(rec, now() - t_start)
        return now() - start, swapped

    def detections_run(self) -> int:
        return sum(s["detector"].calls for s in self.sessions)

    def encoded_bytes(self) -> int:
        return sum(s["encoder"].bytes for s in self.sessions)

    def close(self) -> None:
        pass


def run_bench(cfg: BenchConfig, workdir: Path, *, progress: Callable[[str], None] | None = None,
              command: str = "") -> BenchResult:
    """Prepare the input in ``workdir``, load the models once, and measure the pipeline (and the baseline
    with ``compare_baseline``) on the same frames."""
    say = progress or (lambda _msg: None)
    device = device_info()
    if cfg.input is not None:
        from swapwatch.engines.media import check_file, probe_video

        clips = [check_file(cfg.input)]
        probe_video(clips[0])  # one-line error for a file that is not a video
    else:
        clips = default_clips()
        if not clips:
            raise InputError("no default input clip (../shared/assets/videos/grid_*.mpg, or set "
                             "SWAPWATCH_SHARED_ASSETS): give --input FILE")
    say("loading models")
    models = load_models(cfg, workdir)
    needed = cfg.warmup + cfg.frames + SESSION_OFFSET * (cfg.sessions - 1)
    say(f"preparing input: {needed} frames at {cfg.width}x{cfg.height}, {cfg.faces} face cell(s)")
    clip = prepare_input(workdir / "bench_input.mp4", clips=clips, width=cfg.width, height=cfg.height,
                         faces=cfg.faces, frames=needed, progress=say)
    source_image, source_face, source_where = _source(cfg, models, _first_frame(clip.path))
    t0 = time.perf_counter()
    identity = models.swapper.prepare_source(source_image, source_face)
    embed_once = time.perf_counter() - t0

    runners: list[tuple[str, Any, SideResult]] = []
    pipeline = _PipelineRunner(cfg, models, clip, source_image, source_face, identity)
    k = cfg.detect_every
    pipe_desc = (f"swapwatch's server frame path: FrameProcessor + InferenceWorker; detect every {k} frame(s), "
                 f"optical flow between{', landmark smoothing' if cfg.smoothing else ''}; batched generate across "
                 f"{cfg.sessions} session(s); ROI paste; SYNTHETIC badge + watermark")
    if cfg.deepfake:
        pipe_desc += (f"; monitor with the deepfake detector (feature_stride={cfg.feature_stride}, "
                      f"score_stride={cfg.score_stride}) and the watermark check")
    pipe_desc += "; decode and encode on their own threads"
    pipe_side = SideResult("pipeline", pipe_desc, StageStats())
    try:
        if cfg.compare_baseline:
            baseline = _BaselineRunner(cfg, models, clip, identity)
            base_desc = ("straightforward loop (engines/baseline.py): detect every frame, per-face cv2.warpAffine, "
                         "swap one face per call, full-frame inverse warp + float blend, "
                         + ("deepfake detector per face every frame (no strides), " if cfg.deepfake else "")
                         + "decode -> process -> encode on one thread")
            runners.append(("baseline", baseline, SideResult("baseline", base_desc, StageStats())))
        runners.append(("pipeline", pipeline, pipe_side))
        for name, runner, _ in runners:
            if cfg.warmup:
                say(f"{name}: warm-up, {cfg.warmup} frame(s) per session")
                runner.run(cfg.warmup, None)
        for _, runner, side in runners:
            side.extra["detections_warmup"] = runner.detections_run()
        chunks = _chunks(cfg.frames, cfg.rounds)
        for r, steps in enumerate(chunks):
            for name, runner, side in runners:
                wall, swapped = runner.run(steps, side.stats)
                side.wall_s += wall
                side.frames += steps * cfg.sessions
                side.faces_swapped += swapped
                say(f"{name}: round {r + 1}/{len(chunks)}: {steps * cfg.sessions} frames in {wall:.2f} s "
                    f"({steps * cfg.sessions / wall:.1f} fps)")
        for _, runner, side in runners:
            side.detections_run = runner.detections_run() - side.extra.pop("detections_warmup")
            side.encoded_bytes = runner.encoded_bytes()
    finally:
        pipeline.close()

    notes = list(models.notes)
    if device["gpu"] is None:
        notes.append("upload/download: no GPU, the frame never leaves host memory; reported as 0 (not measured)")
    else:
        notes.append("upload/download: the engines copy each model's inputs and outputs inside their calls; those "
                     "copies are counted in the model stages, upload/download are reported as 0 (not measured)")
    if cfg.sessions > 1:
        notes.append("pipeline swap: one batched generate serves every session in the batch; each frame records "
                     "the whole batch's time, so stage sums over-count it")
    notes.append("frame latency is measured with frames pushed as fast as each side takes them: the pipeline's "
                 "includes the time a frame waits in the one-slot queues between its decode, inference and encode "
                 "threads; a live stream at camera rate waits less")
    notes.append("stages that run on some frames only (detect every k, strided deepfake scoring) record 0 on the "
                 "others: their mean is the amortised cost, p50 may be 0")
    base = runners[0][2] if cfg.compare_baseline else None
    if pipe_side.faces_swapped == 0 or (base is not None and base.faces_swapped == 0):
        notes.append("no face was swapped on one side: the input has no face the detector finds, so these figures "
                     "measure an empty frame path")
    models_json = {"face_detector": cfg.face_detector, "swapper": models.swapper.name,
                   "swap_weights": models.swap_weights, "deepfake": "default (engines/weights/deepfake)"
                   if cfg.deepfake else None, "backends": models.backends}
    setup = {"embed_source_once_ms": round(embed_once * 1000, 3), "source": source_where,
             "warmup_frames_per_session": cfg.warmup}
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return BenchResult(cfg, device, clip, models_json, pipe_side, base, setup, notes, date, command)


def _chunks(total: int, rounds: int) -> list[int]:
    rounds = max(1, min(rounds, total))
    base, extra = divmod(total, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _cell(stage: dict[str, float] | None) -> str:
    if stage is None:
        return "—"
    if stage.get("measured") is False:
        return "0 (n/a)"
    return f"{stage['p50_ms']:.2f} / {stage['p95_ms']:.2f} / {stage['mean_ms']:.2f}"


def format_report(result: BenchResult) -> str:
    cfg = result.config
    data = result.to_json()
    dev = data["device"]
    lines = [
        f"swapwatch bench — {result.date}",
        f"device: {describe_device(result.device)}",
        (f"backend: {cfg.backend} (detector {dev['backends'].get('detector')}, swapper {dev['backends'].get('swapper')}"
         + (f", deepfake {dev['backends']['deepfake']}" if "deepfake" in dev["backends"] else "")
         + f"), device {cfg.device}, precision {cfg.precision}"),
        (f"models: face detector {cfg.face_detector}; swap {result.models['swapper']} "
         f"[{result.models['swap_weights']}]; deepfake detector {'on' if cfg.deepfake else 'off'}"),
        (f"input: {result.input.description}; {cfg.faces} face(s), {cfg.sessions} session(s), {cfg.frames} timed + "
         f"{cfg.warmup} warm-up frames per session, {cfg.rounds} round(s)"),
        f"load average at start: {result.device.get('load_average')}",
        "",
        f"pipeline: {result.pipeline.description}",
    ]
    if result.baseline is not None:
        lines.append(f"baseline: {result.baseline.description}")
    lines.append("")
    sides = [("pipeline", data["pipeline"])] + ([("baseline", data["baseline"])] if data["baseline"] else [])
    header = "| stage | " + " | ".join(f"{n} p50 / p95 / mean ms" for n, _ in sides) + " |"
    lines += [header, "|---" * (len(sides) + 1) + "|"]
    names = [s for s in STAGES if any(s in d["stages"] for _, d in sides)]
    for stage in names:
        lines.append(f"| {stage} | " + " | ".join(_cell(d["stages"].get(stage)) for _, d in sides) + " |")
    lat = " | ".join(_cell(d["latency"]) for _, d in sides)
    lines.append(f"| frame latency at full throughput (decode start -> encoded) | {lat} |")
    lines.append("| fps (all sessions) | " + " | ".join(f"{d['fps']:.1f}" for _, d in sides) + " |")
    lines.append("| faces swapped / detector runs | "
                 + " | ".join(f"{d['faces_swapped']} / {d['detections_run']}" for _, d in sides) + " |")
    lines.append("")
    if result.ratio is not None:
        lines.append(f"pipeline / baseline frame rate: {result.ratio:.2f}x "
                     f"({data['pipeline']['fps']:.1f} vs {data['baseline']['fps']:.1f} fps)")
    else:
        lines.append(f"pipeline frame rate: {data['pipeline']['fps']:.1f} fps")
    lines.append(f"source identity embedded once: {result.setup['embed_source_once_ms']:.1f} ms "
                 f"({result.setup['source']})")
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def plot_stages(result: BenchResult, out: str | Path) -> Path:
    """Mean ms per frame for each stage (bars) with its p95 (whisker), pipeline beside baseline."""
    from swapwatch.plotting import png_figure

    data = result.to_json()
    sides = [("pipeline", data["pipeline"], "#1f77b4")]
    if data["baseline"]:
        sides.append(("baseline", data["baseline"], "#d62728"))
    names = [s for s in STAGES if any(s in d["stages"] and d["stages"][s].get("measured", True) for _, d, _ in sides)]
    y = np.arange(len(names), dtype=np.float64)
    height = 0.8 / len(sides)
    with png_figure(out, width=9.0, height=max(3.0, 0.42 * len(names) + 1.4)) as (_fig, ax):
        for i, (label, d, colour) in enumerate(sides):
            means = [d["stages"].get(s, {}).get("mean_ms", 0.0) for s in names]
            p95 = [d["stages"].get(s, {}).get("p95_ms", 0.0) for s in names]
            pos = y + (i - (len(sides) - 1) / 2) * height
            ax.barh(pos, means, height=height, color=colour, label=f"{label}: {d['fps']:.1f} fps (bar: mean)")
            ax.errorbar(p95, pos, fmt="|", color="black", markersize=7, label="p95" if i == 0 else None)
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_xlabel("ms per frame")
        ratio = f", pipeline/baseline {result.ratio:.2f}x" if result.ratio is not None else ""
        ax.set_title(f"swapwatch bench {result.config.width}x{result.config.height}, {result.config.faces} face(s), "
                     f"{result.config.sessions} session(s){ratio}", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    return Path(out)


def stderr_progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="swapwatch-bench-") as tmp:
        yield Path(tmp)
