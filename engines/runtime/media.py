"""Reading images and videos from disk with one-line errors for every way a file can be unusable."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
import os
import sys
from typing import Callable, Iterator

import cv2
import numpy as np

from swapwatch.config import MAX_IMAGE_PIXELS
from swapwatch.errors import InputError, InputTooLarge

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


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from an encoded image's header, without decoding its pixels (Pillow reads headers
    lazily); None when Pillow does not know the format. Raises :class:`InputTooLarge` for a size so large that
    Pillow refuses even to open it (a decompression bomb)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:
        raise InputTooLarge(f"image declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except Exception:  # noqa: BLE001 - any parse failure: leave the verdict to the decoder
        return None


def decode_image(data: bytes, *, name: str = "image", max_pixels: int | None = MAX_IMAGE_PIXELS,
                 max_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to BGR uint8, or raise InputError.

    ``max_pixels``: the size the header declares is checked before decoding (:class:`InputTooLarge` above it).
    ``max_side``: a larger image is shrunk (area averaging) so that its longer side is ``max_side``, and no
    full-size copy is kept.
    """
    if not data:
        raise InputError(f"{name}: file is empty")
    if max_pixels is not None:
        try:
            size = image_size(data)
        except InputTooLarge as exc:
            raise InputTooLarge(f"{name}: {exc}; the limit is {max_pixels:,} pixels") from None
        if size is not None and size[0] * size[1] > max_pixels:
            raise InputTooLarge(f"{name}: {size[0]}x{size[1]} pixels is more than the {max_pixels:,} allowed; "
                                f"send a smaller photo")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InputError(f"{name}: not a readable image (supported: {', '.join(sorted(IMAGE_SUFFIXES))})")
    if max_side is not None and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
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
            for frame in decode_video_stream(container, stream):
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
            # A stream FFmpeg found but has no decoder for (an SVG renamed .mp4, say) comes without a codec
            # context; one without a size cannot be decoded either.
            if s.codec_context is None or not (s.codec_context.width and s.codec_context.height):
                what = s.codec_context.name if s.codec_context is not None else container.format.name
                raise InputError(f"{path}: not a readable video (FFmpeg has no decoder here for its {what} stream)")
            fps = float(s.average_rate or s.guessed_rate or 25)
            return VideoInfo(s.codec_context.width, s.codec_context.height, fps, int(s.frames or 0))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable image or video ({exc.__class__.__name__})") from None



# NVDEC through FFmpeg's cuvid decoders: PyAV's wheels carry them; they open only where an NVIDIA GPU and
# driver are. SWAPWATCH_VIDEO_DECODER=nvdec|cpu picks one (a picked NVDEC that cannot open is an error).
VIDEO_DECODERS = ("nvdec", "cpu")
_CUVID_NAMES = {"mpeg1video": "mpeg1", "mpeg2video": "mpeg2"}  # FFmpeg decoder name -> cuvid prefix


def hardware_decoder(stream) -> str | None:
    """``<codec>_cuvid`` when it opens for ``stream``'s codec here (or is forced), else None (FFmpeg's own)."""
    from swapwatch.errors import BackendUnavailable

    forced = os.environ.get("SWAPWATCH_VIDEO_DECODER")
    if forced and forced not in VIDEO_DECODERS:
        raise BackendUnavailable(f"SWAPWATCH_VIDEO_DECODER={forced}: choose one of {', '.join(VIDEO_DECODERS)}")
    if forced == "cpu":
        return None
    codec = stream.codec_context.name
    name = f"{_CUVID_NAMES.get(codec, codec)}_cuvid"
    why = _codec_opens(name, "r", extradata=stream.codec_context.extradata)
    if why is not None and forced == "nvdec":
        raise BackendUnavailable(f"NVDEC decoder {name} cannot open here ({why})")
    return None if why is not None else name


def decode_video_stream(container, stream) -> Iterator:
    """Decoded frames of ``stream``: through NVDEC where :func:`hardware_decoder` finds it (packets demuxed
    here, decoded by the cuvid context; frames come back in system memory), else FFmpeg's software decoder."""
    import av

    name = hardware_decoder(stream)
    if name is None:
        yield from container.decode(stream)
        return
    ctx = av.CodecContext.create(name, "r")
    if stream.codec_context.extradata:
        ctx.extradata = stream.codec_context.extradata
    for packet in container.demux(stream):
        for frame in ctx.decode(packet):  # an empty packet at the end flushes the decoder
            yield frame


def _codec_opens(name: str, mode: str, *, extradata: bytes | None = None) -> str | None:
    """None when a small ``name`` codec context opens here, else why not (NVENC/NVDEC need an NVIDIA GPU)."""
    import av

    try:
        ctx = av.CodecContext.create(name, mode)
        if mode == "w":
            ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
            ctx.time_base = Fraction(1, 30)
        elif extradata:
            ctx.extradata = extradata
        ctx.open()
    except Exception as exc:  # unknown codec, no device, driver too old: all mean "not here"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


# H.264 encoders by preference: NVIDIA's NVENC where PyAV's FFmpeg has it and a GPU takes a session, else
# x264. SWAPWATCH_H264_ENCODER=libx264|h264_nvenc picks one (a picked encoder that cannot open is an error).
H264_ENCODERS = ("h264_nvenc", "libx264")


def h264_encoder() -> str:
    """The H.264 encoder to use for files and benchmarks (see :data:`H264_ENCODERS`)."""
    from swapwatch.errors import BackendUnavailable

    forced = os.environ.get("SWAPWATCH_H264_ENCODER")
    if forced:
        if forced not in H264_ENCODERS:
            raise BackendUnavailable(f"SWAPWATCH_H264_ENCODER={forced}: choose one of {', '.join(H264_ENCODERS)}")
        why = _codec_opens(forced, "w")
        if why is not None:
            raise BackendUnavailable(f"H.264 encoder {forced} cannot open here ({why})")
        return forced
    name = _first_opening_encoder()
    if name is None:
        raise BackendUnavailable("no H.264 encoder opens here (PyAV without libx264?)")
    return name


@functools.lru_cache(maxsize=None)
def _first_opening_encoder() -> str | None:
    """The first of :data:`H264_ENCODERS` that opens, probed once per process: every writer, transcode and bench
    session asks, and a failed NVENC open alone takes ~45 ms (the GPU is either there or not for the process)."""
    for name in H264_ENCODERS:
        if _codec_opens(name, "w") is None:
            return name
    return None


def h264_options(encoder: str, *, crf: int = 20, realtime: bool = False) -> dict[str, str]:
    """Quality/latency options with the same intent for x264 and NVENC (constant quality; low latency)."""
    if encoder == "h264_nvenc":
        opts = {"rc": "vbr", "cq": str(crf), "preset": "p4"}
        return {**opts, "tune": "ll", "zerolatency": "1", "delay": "0"} if realtime else opts
    opts = {"crf": str(crf), "preset": "veryfast"}
    return {**opts, "tune": "zerolatency"} if realtime else opts


@dataclass(frozen=True)
class TranscodeStats:
    frames: int
    fps: float
    audio: str  # "copied", "re-encoded", or "none"


# Audio codecs each output container takes as they are and players read back; anything else is re-encoded
# (MP2 muxes into MP4 but browsers and many players will not play it there).
_AUDIO_COPY_OK = {
    ".mp4": {"aac", "mp3", "ac3", "opus", "alac", "flac"},
    ".mov": {"aac", "mp3", "ac3", "alac", "pcm_s16le"},
    ".mkv": None,  # Matroska takes (nearly) everything
    ".webm": {"opus", "vorbis"},
}
# Re-encode target per container: (codec, sample format, sample rate or None to keep the input's).
_AUDIO_FALLBACK = {".webm": ("libopus", "flt", 48000)}
_AUDIO_DEFAULT = ("aac", "fltp", None)
# The containers transcode_video writes.
VIDEO_OUTPUT_SUFFIXES = frozenset(_AUDIO_COPY_OK)


def transcode_video(src: str | Path, dst: str | Path, process: Callable[[VideoFrame], np.ndarray], *,
                    progress: bool = True, crf: int = 18) -> TranscodeStats:
    """Stream ``src`` frame by frame through ``process`` into ``dst``, keeping rate, count and audio.

    Frames are decoded, processed and encoded one at a time (no temporary image folders); each output frame
    keeps its input timestamp so audio stays in sync; the first audio stream is copied when ``dst``'s
    container takes its codec, else re-encoded. The output is written to a temporary name and renamed
    only when complete, so a failure never leaves a truncated video behind.
    """
    import av
    from tqdm import tqdm

    src, dst = check_file(src), Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in VIDEO_OUTPUT_SUFFIXES:
        raise InputError(f"{dst}: unsupported output type; use one of {', '.join(sorted(VIDEO_OUTPUT_SUFFIXES))}")
    info = probe_video(src)
    tmp = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
    frames = 0
    audio_mode = "none"
    try:
        with av.open(str(src)) as inp, av.open(str(tmp), mode="w") as out:
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            codec = "libvpx-vp9" if suffix == ".webm" else h264_encoder()
            vout = out.add_stream(codec, rate=Fraction(info.fps).limit_denominator(1001))
            vout.width, vout.height = info.width - info.width % 2, info.height - info.height % 2
            vout.pix_fmt = "yuv420p"
            vout.time_base = vin.time_base
            if codec != "libvpx-vp9":
                vout.options = h264_options(codec, crf=crf)
            ain = inp.streams.audio[0] if inp.streams.audio else None
            aout = None
            resampler = None
            if ain is not None:
                allowed = _AUDIO_COPY_OK[suffix]
                if allowed is None or ain.codec_context.name in allowed:
                    aout = out.add_stream_from_template(ain)
                    audio_mode = "copied"
                else:
                    name, sample_fmt, rate = _AUDIO_FALLBACK.get(suffix, _AUDIO_DEFAULT)
                    rate = rate or ain.codec_context.sample_rate
                    aout = out.add_stream(name, rate=rate)
                    aout.codec_context.format = sample_fmt
                    aout.codec_context.layout = ain.codec_context.layout.name
                    resampler = av.AudioResampler(format=sample_fmt, layout=ain.codec_context.layout.name, rate=rate)
                    audio_mode = "re-encoded"
            streams = [vin] + ([ain] if ain is not None else [])
            bar = tqdm(total=info.frames or None, unit="frame", desc=src.name, disable=None if progress else True,
                       file=sys.stderr)
            with bar:
                for packet in inp.demux(*streams):
                    if packet.stream is ain:
                        if packet.dts is None:
                            continue
                        if audio_mode == "copied":
                            packet.stream = aout
                            out.mux(packet)
                        else:
                            for aframe in packet.decode():
                                for rframe in resampler.resample(aframe):
                                    out.mux(aout.encode(rframe))
                        continue
                    for vframe in packet.decode():
                        t = float(vframe.pts * vin.time_base) if vframe.pts is not None else frames / info.fps
                        image = process(VideoFrame(frames, t, vframe.to_ndarray(format="bgr24")))
                        h, w = vout.height, vout.width
                        oframe = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="bgr24")
                        oframe.pts, oframe.time_base = vframe.pts, vin.time_base
                        out.mux(vout.encode(oframe))
                        frames += 1
                        bar.update(1)
                out.mux(vout.encode())
                if audio_mode == "re-encoded":
                    out.mux(aout.encode())
        if frames == 0:
            raise InputError(f"{src}: video has no frames")
        os.replace(tmp, dst)
    except av.FFmpegError as exc:
        raise InputError(f"transcoding {src} to {dst} failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return TranscodeStats(frames, info.fps, audio_mode)
