"""Reading images and videos from disk with one-line errors for every way a file can be unusable."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from swapwatch.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class VideoFrame:
    index: int
    time: float  # seconds from the stream start
    image: np.ndarray  # BGR uint8


def check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an image or a video file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    return path


def decode_image(data: bytes, *, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to BGR uint8, or raise InputError."""
    if not data:
        raise InputError(f"{name}: file is empty")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InputError(f"{name}: not a readable image (supported: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return image


def read_image(path: str | Path) -> np.ndarray:
    path = check_file(path)
    return decode_image(path.read_bytes(), name=str(path))


def is_image_file(path: str | Path) -> bool:
    """Decide by content, not by name: a still image OpenCV can decode (GIFs are treated as video)."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"GIF8"):
        return False
    return cv2.haveImageReader(str(path))


def iter_video(path: str | Path) -> Iterator[VideoFrame]:
    """Decode every frame of a video (any container PyAV/FFmpeg reads, animated GIF included) as BGR."""
    import av

    path = check_file(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable image or video ({exc.__class__.__name__})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None and stream.time_base else (
                    count / float(stream.average_rate or Fraction(25)))
                yield VideoFrame(count, t, frame.to_ndarray(format="bgr24"))
                count += 1
        except av.FFmpegError as exc:
            if count == 0:
                raise InputError(f"{path}: cannot decode video ({exc})") from None
            raise InputError(f"{path}: video is corrupt after frame {count} ({exc})") from None
        if count == 0:
            raise InputError(f"{path}: video has no frames")


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # 0 when the container does not say


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate and (where known) frame count of a video's first video stream."""
    import av

    path = check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: has no video stream")
            s = container.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 25)
            return VideoInfo(s.codec_context.width, s.codec_context.height, fps, int(s.frames or 0))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable image or video ({exc.__class__.__name__})") from None
