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

**Device path** (``--device-path``; serve runs it with ``--device-path on``, or ``auto`` on CUDA) — the pipeline
side runs :class:`~swapwatch.engines.device_path.DeviceFramePath` instead (:class:`_DeviceRunner`): per step,
one frame per session; the host stage (per session: detect every k frames with optical-flow tracking, face
choice) feeds one ``process`` call for every session's frame (one upload and one download per frame, batched
warps, one generator batch, on-device mask, colour, blend, badge and watermark), then each session's monitor
(watermark check, deepfake detector, alert policy, overlay) as serve's ``both`` mode. The host stage of the
next batch runs while the device stage of this one does (two threads); ``--host-threads`` spreads the
sessions' host stages and monitors over threads. Models: SimSwap as torch modules on the path's device (fp16
only after the path's own fp16 check), the deepfake detector in torch there, an ONNX face detector (YuNet) on
ONNX Runtime's best provider (the CPU one where no GPU provider is installed), MTCNN in torch on the device.
Upload and download are measured (CUDA events on CUDA); the device stages are the batch's times, recorded on
every frame of the batch, and ``processing`` is the batch's host stage + device call + monitors.

**No codec** (``--no-codec``) — the composed frames stay in memory (no H.264 encode/decode, no PyAV needed)
and outputs are not encoded: fps and latency are then server-side processing alone.

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
                     "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "pyav": _pyav_version(),
                     "numpy": np.__version__},
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "h264_encoder": _h264_encoder(),
    }


def _h264_encoder() -> str | None:
    """The H.264 encoder the codec runs use (NVENC where it opens, else libx264); None without PyAV."""
    if _pyav_version() is None:
        return None
    from swapwatch.engines.media import h264_encoder

    return h264_encoder()


def _pyav_version() -> str | None:
    """PyAV's version, or None where it is not installed (``--no-codec`` runs without it)."""
    try:
        import av
    except ImportError:
        return None
    return av.__version__


def have_pyav() -> bool:
    return _pyav_version() is not None


def describe_device(info: dict[str, Any]) -> str:
    v = info["versions"]
    gpu = f"{info['gpu']} (driver {info['driver'] or '?'}, CUDA {info['cuda']})" if info["gpu"] else "no GPU"
    return (f"{info['cpu']}, {info['cores']} cores, {gpu}; Python {v['python']}, torch {v['torch']}, "
            f"onnxruntime {v['onnxruntime']} ({', '.join(info['onnxruntime_providers'])}), OpenCV {v['opencv']}, "
            f"PyAV {v['pyav'] or 'not installed'}")


# --------------------------------------------------------------------------------------------------
# Input: the clip fitted to W x H, tiled for N faces, encoded once to H.264
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchInput:
    path: Path | None  # the H.264 file; None with --no-codec
    width: int
    height: int
    fps: float
    frames: int
    description: str
    images: list[np.ndarray] | None = None  # --no-codec: the composed BGR frames, in memory


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


@dataclass
class _Image:
    image: np.ndarray


def _cv2_video(path: Path) -> tuple[float, int, Iterator[_Image]]:
    """(fps, frame count or 0, frames) of a clip read with OpenCV (used only where PyAV is missing)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: not a readable video (OpenCV)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 25.0)

    def frames() -> Iterator[_Image]:
        try:
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                yield _Image(image)
        finally:
            cap.release()

    return fps, 0, frames()  # count 0: buffer the (short) clip rather than trust a container's count


class _PingPong:
    """Frames of a clip from ``offset`` on, forwards then backwards, forever (buffered: the clip is short)
    — or streamed when the clip has at least ``needed`` frames after the offset."""

    def __init__(self, path: Path, offset: int, needed: int) -> None:
        self.path = path
        if have_pyav():
            from swapwatch.engines.media import iter_video, probe_video

            info = probe_video(path)
            self.fps, count = info.fps, info.frames
            self._iter: Iterator[Any] = iter_video(path)
        else:  # no PyAV (a --no-codec run on a machine without it): OpenCV's own FFmpeg reads the clip
            self.fps, count, self._iter = _cv2_video(path)
        self._buffer: list[np.ndarray] | None = None if count >= offset + needed else []
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


def _composer(clips: Sequence[Path], width: int, height: int, faces: int,
              frames: int) -> tuple[float, Iterator[np.ndarray], str]:
    """(fps, an iterator of ``frames`` composed BGR frames, a description of the layout)."""
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

    def compose() -> Iterator[np.ndarray]:
        for _ in range(frames):
            canvas = np.zeros((height, width, 3), np.uint8)
            for k, it in enumerate(iters):
                r, c = divmod(k, cols)
                canvas[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = _fit(next(it), cw, ch)
            yield canvas

    names = sorted({c.path.name for c in cells})
    layout = "1 cell" if faces == 1 else f"{faces} cells in a {rows}x{cols} grid"
    desc = (f"{', '.join(names)} fitted to {width}x{height} ({layout}, aspect kept, black bars), "
            f"{frames} frames at {fps:g} fps")
    return fps, compose(), desc


def prepare_input(out: Path, *, clips: Sequence[Path], width: int, height: int, faces: int, frames: int,
                  progress: Callable[[str], None] | None = None) -> BenchInput:
    """Compose ``frames`` frames of ``width`` x ``height`` with ``faces`` clip cells and encode them to
    ``out`` (H.264, crf 18). With one clip and several cells, cell k starts 11 x k frames into the clip."""
    import av

    fps, composed, desc = _composer(clips, width, height, faces, frames)
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i, canvas in enumerate(composed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="bgr24")):
                container.mux(packet)
            if progress and (i + 1) % 100 == 0:
                progress(f"preparing input: {i + 1}/{frames} frames")
        for packet in stream.encode():
            container.mux(packet)
    return BenchInput(out, width, height, fps, frames, desc + ", encoded once to H.264 crf 18")


def prepare_frames(*, clips: Sequence[Path], width: int, height: int, faces: int, frames: int) -> BenchInput:
    """The same composition as :func:`prepare_input`, kept in memory as BGR arrays (``--no-codec``: nothing
    is encoded or decoded, so PyAV is not needed)."""
    fps, composed, desc = _composer(clips, width, height, faces, frames)
    return BenchInput(None, width, height, fps, frames, desc + ", kept in memory as BGR (no codec)",
                      list(composed))


class _ArrayFrame:
    """A composed frame kept in memory (``--no-codec``), with the one method of ``av.VideoFrame`` the frame
    paths call. ``to_ndarray`` returns a copy: a decoder gives each consumer a fresh array too, and the server
    path may write into it."""

    __slots__ = ("image",)

    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def to_ndarray(self, format: str = "bgr24") -> np.ndarray:  # av.VideoFrame's signature
        if format != "bgr24":
            raise ValueError(f"in-memory frames are bgr24, not {format}")
        return self.image.copy()


def session_frames(clip: BenchInput, session: int) -> Iterator[Any]:
    """Frames for session ``session``, from frame ``SESSION_OFFSET x session`` on: an H.264 decoder of the
    prepared file, or the in-memory frames (``--no-codec``)."""
    skip = SESSION_OFFSET * session
    if clip.images is None:
        return open_decoder(clip.path, skip)
    return (_ArrayFrame(image) for image in clip.images[skip:])


def to_yuv420p(image_bgr: np.ndarray) -> np.ndarray:
    """BGR -> yuv420p planes as the server converts them (stream/processing.py's ``to_yuv420p``: swscale,
    BT.601 limited range), without importing the server (and aiortc)."""
    import av

    return av.VideoFrame.from_ndarray(image_bgr, format="bgr24").reformat(format="yuv420p").to_ndarray()


def open_decoder(path: Path, skip: int = 0) -> Iterator[Any]:
    """av.VideoFrame after av.VideoFrame of a file's first video stream (frame threads on), from ``skip``."""
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"

    def frames():
        from swapwatch.engines.media import decode_video_stream

        with container:
            for i, frame in enumerate(decode_video_stream(container, stream)):
                if i >= skip:
                    yield frame

    return frames()


class H264Encoder:
    """libx264 as aiortc 1.16's ``H264Encoder`` configures it (zerolatency, Baseline, level 3.1, 1 Mbit/s), or
    NVENC with the same bitrate and its low-latency tuning where :func:`media.h264_encoder` finds a GPU."""

    def __init__(self, width: int, height: int, fps: float = 30.0) -> None:
        import av

        from swapwatch.engines.media import h264_encoder

        self._av = av
        self.name = h264_encoder()
        codec = av.CodecContext.create(self.name, "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate = ENCODER_BITRATE
        rate = Fraction(min(round(fps) or 30, 30), 1)
        codec.framerate, codec.time_base = rate, 1 / rate
        if self.name == "h264_nvenc":
            codec.options = {"preset": "p1", "tune": "ull", "zerolatency": "1", "delay": "0"}
        else:
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
    device_path: bool = False  # the pipeline side runs engines/device_path.py (see _DeviceRunner)
    codec: bool = True  # False (--no-codec): frames composed in memory, outputs not encoded (server side only)
    cuda_graphs: bool = False  # device path: replay the generator as CUDA graphs (CUDA only)
    # device path: DevicePathConfig switches (pinned, streams, events, colour_match, keep_mouth), e.g.
    # (("streams", False),) to run its copies on the compute stream
    path_options: tuple[tuple[str, bool], ...] = ()
    host_threads: int = 1  # device path: threads for the per-session host stage and monitors (1: in turn)

    def __post_init__(self) -> None:
        checks = [(self.faces >= 1, "--faces must be at least 1"), (self.sessions >= 1, "--sessions must be at least 1"),
                  (self.frames >= 1, "--frames must be at least 1"), (self.warmup >= 0, "--warmup must be >= 0"),
                  (self.rounds >= 1, "--rounds must be at least 1"),
                  (self.detect_every >= 1, "--detect-every must be at least 1"),
                  (self.feature_stride >= 1 and self.score_stride >= 1, "deepfake strides must be at least 1"),
                  (self.width >= 64 and self.height >= 64, "--resolution must be at least 64x64"),
                  (self.width % 2 == 0 and self.height % 2 == 0, "--resolution needs an even width and height"),
                  (self.precision in ("fp32", "fp16"), "--precision must be fp32 or fp16"),
                  (self.device_path or not self.cuda_graphs, "--cuda-graphs applies to --device-path only"),
                  (self.device_path or not self.path_options, "--path-config applies to --device-path only"),
                  (self.host_threads >= 1, "--host-threads must be at least 1"),
                  (self.device_path or self.host_threads == 1, "--host-threads applies to --device-path only")]
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
    placement: dict[str, str] = field(default_factory=dict)  # device path: where each model runs
    device: str = ""  # device path: the torch device

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
    if cfg.device_path:
        return _load_device_models(cfg, notes, workdir)
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


def torch_device(cfg: BenchConfig) -> str:
    """The torch device of the device path: ``--device`` with ``auto`` resolved (CUDA when present)."""
    return cfg.device if cfg.device in ("cpu", "cuda") else ("cuda" if _cuda() else "cpu")


def _engine_placement(engine: Any) -> str:
    """Where an engine runs: ``onnxruntime:CPUExecutionProvider``, ``torch:cuda``, ..."""
    providers = getattr(engine, "providers", None)
    if providers:
        return f"{_engine_backend(engine)}:{providers[0]}"
    device = getattr(engine, "device", None)
    return f"{_engine_backend(engine)}:{device}" if isinstance(device, str) else _engine_backend(engine)


def _load_device_models(cfg: BenchConfig, notes: list[str], workdir: Path) -> BenchModels:
    """Models for the device path: the swapper's generator and the deepfake detector in torch on the path's
    device; the face detector where it can run (an ONNX detector on the best ONNX Runtime provider present,
    MTCNN in torch on the path's device)."""
    from swapwatch.engines.detectors import create_detector

    from swapwatch.config import DetectorConfig

    dev = torch_device(cfg)
    if cfg.face_detector == "mtcnn":
        det_cfg = DetectorConfig(name="mtcnn", backend="torch", device=dev)
    else:  # YuNet / SCRFD are ONNX graphs: ONNX Runtime's best provider here (TensorRT, CUDA, else CPU)
        det_backend = cfg.backend if cfg.backend in ("onnxruntime", "tensorrt") else "auto"
        det_cfg = DetectorConfig(name=cfg.face_detector, backend=det_backend, device="auto")
    detector = create_detector(det_cfg)
    det_engine = getattr(detector, "engine", None) or getattr(detector, "pnet", None)
    swapper, weights = _load_device_swapper(cfg, dev, workdir)
    deepfake = None
    if cfg.deepfake:
        from swapwatch.engines.deepfake import DeepfakeDetector

        df_backend = cfg.backend if cfg.backend in ("onnxruntime", "tensorrt") else "torch"
        deepfake = DeepfakeDetector.load(None, backend=df_backend, device=dev if df_backend == "torch" else "auto")
    backends = {"detector": _engine_backend(det_engine) if det_engine is not None else det_cfg.backend}
    gen = getattr(swapper, "generator", None) or getattr(swapper, "engine", None)
    backends["swapper"] = _engine_backend(gen) if gen is not None else "numpy/OpenCV"
    placement = {"detector": _engine_placement(det_engine) if det_engine is not None else "?",
                 "swapper": _engine_placement(gen) if gen is not None else "numpy/OpenCV:host"}
    if deepfake is not None:
        backends["deepfake"] = _engine_backend(deepfake.scorer)
        placement["deepfake"] = _engine_placement(deepfake.scorer)
    if det_engine is not None and "CPUExecutionProvider" in placement["detector"] and dev == "cuda":
        notes.append(f"{cfg.face_detector} runs on ONNX Runtime's CPU provider: no CUDA or TensorRT provider is "
                     "installed here (MTCNN runs in torch on the GPU: --face-detector mtcnn)")
    models = BenchModels(detector, swapper, weights, deepfake, backends, notes)
    models.placement = placement
    models.device = dev
    return models


def _load_device_swapper(cfg: BenchConfig, dev: str, workdir: Path) -> tuple[Any, str]:
    """SimSwap as torch modules on ``dev`` (the device path runs them on its own tensors; fp16 is the path's
    decision, after its check), other swappers as ``--swap-model`` loads them (NumPy or ONNX ``generate``:
    one host round trip per batch)."""
    from swapwatch.engines.swappers import resolve_name

    name = resolve_name(cfg.swap_model)
    if not name.startswith("simswap"):
        # ONNX swappers on ONNX Runtime's best provider (this image may have only the CPU one).
        onnx_device = "cpu" if cfg.device == "cpu" else "auto"
        return _load_swapper(BenchConfig(**{**cfg.__dict__, "device": onnx_device}), [], workdir)
    from swapwatch.engines.simswap import SimSwapSwapper

    if cfg.random_weights:
        import torch
        from swapwatch.export.arcface import ResNet
        from swapwatch.export.simswap import SimSwapGenerator

        torch.manual_seed(0)
        generator, arcface = SimSwapGenerator(int(name.split("-")[1])).eval(), ResNet().eval()
        return SimSwapSwapper.from_modules(generator, arcface, device=dev), "random fixture weights: speed only"
    from swapwatch.engines.registry import ensure_model
    from swapwatch.export.arcface import load_arcface
    from swapwatch.export.simswap import load_generator

    gen = next(iter(ensure_model(name).values()))
    arc = next(iter(ensure_model("arcface-simswap").values()))
    return SimSwapSwapper.from_modules(load_generator(gen), load_arcface(arc), device=dev), _weights_note(name)


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
    device_stages_measured: bool = False  # upload/download timed (device path) rather than reported as 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self, sessions: int) -> dict[str, Any]:
        stages = self.stats.summary()
        for name in DEVICE_STAGES:
            stages.setdefault(name, {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0})
            stages[name]["measured"] = self.device_stages_measured
        out = {
            "fps": round(self.fps, 3), "fps_per_session": round(self.fps / sessions, 3),
            "stages": {k: stages[k] for k in [s for s in STAGES if s in stages] + sorted(set(stages) - set(STAGES))},
            "latency": self.stats.latency_summary(), "processing": self.stats.processing_summary(),
            "frames": self.frames, "wall_s": round(self.wall_s, 3),
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
                                  "decoder": session_frames(clip, s),
                                  "encoder": H264Encoder(clip.width, clip.height, clip.fps) if cfg.codec else None,
                                  "index": 0})
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
                        if sess["encoder"] is not None:
                            sess["encoder"].encode(processed.yuv)
                        t1 = clock()
                        if sess["encoder"] is not None:
                            rec["encode"] = t1 - t0
                        if stats is not None:
                            stats.add_frame(rec, t1 - t_start, _processing_s(rec))
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
                    rec = self._record(sess, processed, decode_s)
                    if sess["encoder"] is None:
                        rec.pop("decode")  # --no-codec: the frame came from memory
                    results.append((sess, processed, rec, t_start))
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
        return sum(s["encoder"].bytes for s in self.sessions if s["encoder"] is not None)


class _DeviceRunner:
    """The device path (:mod:`swapwatch.engines.device_path`) for ``sessions`` streams, one batch per step.

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
        from swapwatch.engines.device_path import create_device_path
        from swapwatch.engines.monitor import FrameMonitor, MonitorOverlay
        from swapwatch.engines.selection import DEFAULT_SOURCE, FaceSelection
        from swapwatch.engines.tracking import FACE_SMOOTHING, FaceTracker, KeyframeTracker

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
                                  "decoder": session_frames(clip, s),
                                  "encoder": H264Encoder(clip.width, clip.height, clip.fps) if cfg.codec else None,
                                  "index": 0})
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
        from swapwatch.engines.device_path import FaceJob, FrameJob

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
        errors: list[BaseException] = []
        stop = threading.Event()
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
                stop.set()
            finally:
                q_in.put(None)

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

        def worker(fn: Callable[[Any], Any], src: queue.Queue, dst: queue.Queue | None) -> None:
            """Apply ``fn`` to each item of ``src`` until None; pass results on to ``dst``, then None."""
            try:
                while True:
                    item = src.get()
                    if item is None:
                        return
                    if errors:
                        continue  # drain only
                    result = fn(item)
                    if dst is not None:
                        dst.put(result)
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                errors.append(exc)
                stop.set()
                while src.get() is not None:  # let the stages upstream finish
                    pass
            finally:
                if dst is not None:
                    dst.put(None)

        threads = [threading.Thread(target=worker, args=(device, q_mid, q_dev), name="bench-device", daemon=True),
                   threading.Thread(target=worker, args=(monitor, q_dev, q_out if self.codec else None),
                                    name="bench-monitor", daemon=True)]
        if self.codec:
            threads += [threading.Thread(target=decode, name="bench-decode", daemon=True),
                        threading.Thread(target=worker, args=(finish, q_out, None), name="bench-encode",
                                         daemon=True)]
        start = clock()
        for th in threads:
            th.start()
        decoder_done = not self.codec
        try:
            for _ in range(steps):
                if stop.is_set():
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
            stop.set()
            raise
        finally:
            while not decoder_done:  # let the decoder finish
                decoder_done = q_in.get() is None
            q_mid.put(None)
            for th in threads:
                th.join()
        if errors:
            raise errors[0]
        return clock() - start, swapped[0]

    def detections_run(self) -> int:
        return sum(s["detector"].calls for s in self.sessions)

    def encoded_bytes(self) -> int:
        return sum(s["encoder"].bytes for s in self.sessions if s["encoder"] is not None)


# Stages that are server-side processing (not decode, encode or waiting in a queue): their per-frame sum is the
# "processing" figure of the server path and the baseline.
PROCESSING_STAGES = ("convert", "detect", "track", "align", "embed", "swap", "paste", "label", "deepfake", "monitor",
                     "output")


def _processing_s(rec: dict[str, float]) -> float:
    return sum(rec.get(name, 0.0) for name in PROCESSING_STAGES)


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
                                  "detector": detector, "decoder": session_frames(clip, s),
                                  "encoder": H264Encoder(clip.width, clip.height, clip.fps) if cfg.codec else None,
                                  "index": 0})

    def run(self, steps: int, stats: StageStats | None) -> tuple[float, int]:
        from swapwatch.engines.baseline import StageClock

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
                    stats.add_frame(rec, now() - t_start, _processing_s(rec))
        return now() - start, swapped

    def detections_run(self) -> int:
        return sum(s["detector"].calls for s in self.sessions)

    def encoded_bytes(self) -> int:
        return sum(s["encoder"].bytes for s in self.sessions if s["encoder"] is not None)

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
    if cfg.codec:
        clip = prepare_input(workdir / "bench_input.mp4", clips=clips, width=cfg.width, height=cfg.height,
                             faces=cfg.faces, frames=needed, progress=say)
        first = _first_frame(clip.path)
    else:
        clip = prepare_frames(clips=clips, width=cfg.width, height=cfg.height, faces=cfg.faces, frames=needed)
        first = clip.images[0]
    source_image, source_face, source_where = _source(cfg, models, first)
    t0 = time.perf_counter()
    identity = models.swapper.prepare_source(source_image, source_face)
    embed_once = time.perf_counter() - t0

    runners: list[tuple[str, Any, SideResult]] = []
    k = cfg.detect_every
    flow = f"detect every {k} frame(s), optical flow between{', landmark smoothing' if cfg.smoothing else ''}"
    if cfg.device_path:
        pipeline: Any = _DeviceRunner(cfg, models, clip, identity)
        where = models.placement.get("detector", "?")
        pipe_desc = (f"device path (engines/device_path.py) on {models.device}: per batch of one frame per session, "
                     f"host stage: {flow} ({cfg.face_detector} on {where}), face choice; device stage: one "
                     f"DeviceFramePath.process call for the {cfg.sessions} session(s)' frames (one upload and one "
                     "download per frame, batched warps, one generator batch, on-device mask/colour/blend, SYNTHETIC "
                     "badge + watermark); then each session's monitor; host stage, device stage and monitors run "
                     "on their own threads, overlapping consecutive batches; "
                     + (f"sessions' host stages and monitors on {min(cfg.host_threads, cfg.sessions)} threads"
                        if min(cfg.host_threads, cfg.sessions) > 1 else "sessions' host stages and monitors in turn"))
    else:
        pipeline = _PipelineRunner(cfg, models, clip, source_image, source_face, identity)
        pipe_desc = (f"swapwatch's server frame path: FrameProcessor + InferenceWorker; {flow}; batched generate "
                     f"across {cfg.sessions} session(s); ROI paste; SYNTHETIC badge + watermark")
    if cfg.deepfake:
        pipe_desc += (f"; monitor with the deepfake detector (feature_stride={cfg.feature_stride}, "
                      f"score_stride={cfg.score_stride}) and the watermark check")
    pipe_desc += ("; decode and encode on their own threads" if cfg.codec
                  else "; no codec: frames from memory, outputs not encoded (server-side processing only)")
    pipe_side = SideResult("pipeline", pipe_desc, StageStats(), device_stages_measured=cfg.device_path)
    try:
        if cfg.compare_baseline:
            baseline = _BaselineRunner(cfg, models, clip, identity)
            base_desc = ("straightforward loop (engines/baseline.py): detect every frame, per-face cv2.warpAffine, "
                         "swap one face per call, full-frame inverse warp + float blend, "
                         + ("deepfake detector per face every frame (no strides), " if cfg.deepfake else "")
                         + ("decode -> process -> encode on one thread" if cfg.codec
                            else "frames from memory, processed on one thread, not encoded"))
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
    if cfg.device_path:
        notes += _device_notes(cfg, models, pipeline, pipe_side)
    elif device["gpu"] is None:
        notes.append("upload/download: no GPU, the frame never leaves host memory; reported as 0 (not measured)")
    else:
        notes.append("upload/download: the engines copy each model's inputs and outputs inside their calls; those "
                     "copies are counted in the model stages, upload/download are reported as 0 (not measured)")
    if cfg.compare_baseline and cfg.device_path:
        notes.append("baseline upload/download: reported as 0 (not measured); its engines copy inside their calls")
    if cfg.sessions > 1:
        notes.append("pipeline swap: one batched generate serves every session in the batch; each frame records "
                     "the whole batch's time, so stage sums over-count it")
    pipe_side.extra.update({"path": "device" if cfg.device_path else "server", "codec": cfg.codec,
                            "fps_kind": "end to end (decode -> encoded)" if cfg.codec
                            else "server-side processing (no decode/encode)"})
    if not cfg.codec:
        notes.append("--no-codec: frames come from memory and outputs are not encoded; fps is server-side "
                     "processing only (decode and encode are not run, so not reported)")
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
    if models.placement:
        models_json["placement"] = models.placement
    setup = {"embed_source_once_ms": round(embed_once * 1000, 3), "source": source_where,
             "warmup_frames_per_session": cfg.warmup}
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return BenchResult(cfg, device, clip, models_json, pipe_side, base, setup, notes, date, command)


def _device_notes(cfg: BenchConfig, models: BenchModels, runner: _DeviceRunner, side: SideResult) -> list[str]:
    """What the device path did (precision, host round trips, where each model ran), in notes and in the
    pipeline side's JSON."""
    path = runner.path
    report = path.fp16_report
    side.extra.update({
        "device": models.device, "precision_used": path.precision, "precision_note": path.precision_note,
        "fp16_check": report.to_json() if report is not None else None, "host_round_trips": runner.round_trips,
        "placement": models.placement,
        "generator": "torch on the device" if path.generator is not None else "the swapper's own generate (host)",
    })
    precision = f"device path precision: {path.precision}"
    if path.precision_note:
        precision += f" ({path.precision_note})"
    notes = [("device path: upload/download are measured (the path's own clock: CUDA events on CUDA, perf_counter "
              "on CPU); the device stages (upload, align, swap, paste, label, download, device_overhead) are the "
              "batch's times, recorded on every frame of the batch"),
             precision,
             ("processing = the batch's host stage + its device call + its monitors, without waits between threads: "
              "the time one frame of the batch spends being processed")]
    if path.generator is None:
        notes.append(f"{models.swapper.name}: no torch generator, its own generate runs with one host round trip "
                     f"per batch ({runner.round_trips} in the timed and warm-up batches)")
    if cfg.codec:
        notes.append("device path: BGR -> yuv420p ('output') runs on the encode thread, beside the encoder")
    if models.device == "cuda":
        import torch

        notes.append(f"cuDNN autotuning on (benchmark mode, tuned in warm-up); TF32 convolutions "
                     f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'} (torch's default), so 'fp32' convolutions "
                     "run in TF32")
    notes.append("device path: a frame whose face the tracker loses is labelled as it is (the server's 0.5 s "
                 "repeat of the last swapped frame is not modelled)")
    return notes


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
         + f"), device {cfg.device}, precision {cfg.precision}"
         + (f" (used: {data['pipeline'].get('precision_used')})" if cfg.device_path else "")),
        (f"models: face detector {cfg.face_detector}; swap {result.models['swapper']} "
         f"[{result.models['swap_weights']}]; deepfake detector {'on' if cfg.deepfake else 'off'}"),
        *(["placement: " + ", ".join(f"{k} {v}" for k, v in result.models["placement"].items())]
          if result.models.get("placement") else []),
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
    proc = " | ".join(_cell(d.get("processing")) for _, d in sides)
    lines.append(f"| processing per frame (server side, no waits) | {proc} |")
    lat = " | ".join(_cell(d["latency"]) for _, d in sides)
    span = "decode start -> encoded" if cfg.codec else "frame taken from memory -> processed"
    lines.append(f"| frame latency at full throughput ({span}) | {lat} |")
    kind = "end to end" if cfg.codec else "server side"
    lines.append(f"| fps (all sessions, {kind}) | " + " | ".join(f"{d['fps']:.1f}" for _, d in sides) + " |")
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
