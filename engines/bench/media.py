"""The frames ``swapwatch bench`` runs on, and its codec: the input clip fitted to ``WxH`` and tiled for N faces
(:func:`prepare_input`, encoded once to H.264; :func:`prepare_frames`, kept in memory with ``--no-codec``),
each session's frames (:func:`session_frames`: a PyAV decoder, :func:`open_decoder`, or the in-memory frames),
and the output side (:func:`to_yuv420p`, :class:`H264Encoder` as aiortc configures libx264)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from swapwatch.errors import InputError

__all__ = [
    "ENCODER_BITRATE", "MAX_CLIP_CELLS", "SESSION_OFFSET", "BenchInput", "H264Encoder", "default_clips",
    "default_source_photo", "grid_shape", "have_pyav", "open_decoder", "prepare_frames", "prepare_input",
    "pyav_version", "session_frames", "to_yuv420p",
]

SESSION_OFFSET = 7  # frames between the starting points of consecutive sessions
ENCODER_BITRATE = 1_000_000  # aiortc 1.16's H.264 DEFAULT_BITRATE
MAX_CLIP_CELLS = 64


def pyav_version() -> str | None:
    """PyAV's version, or None where it is not installed (``--no-codec`` runs without it)."""
    try:
        import av
    except ImportError:
        return None
    return av.__version__


def have_pyav() -> bool:
    return pyav_version() is not None


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
    roots += [Path.cwd().parent / "shared" / "assets", Path(__file__).resolve().parents[3] / "shared" / "assets"]
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
            from swapwatch.engines.runtime import iter_video, probe_video

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
        from swapwatch.engines.runtime import decode_video_stream

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

        from swapwatch.engines.runtime import h264_encoder

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
