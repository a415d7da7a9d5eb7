"""``swapwatch bench``: per-stage latency and end-to-end frame rate of the live frame path, and of the
straightforward loop it replaces (:mod:`swapwatch.engines.bench.baseline`), on the same frames and models.

**Pipeline side** — the server's own frame path, not a copy of it: one
:class:`~swapwatch.stream.processing.FrameProcessor` per session (``prepare``: to BGR, detect every k frames
with optical-flow tracking in between, choose faces, align; ``finish``: mask, colour, paste, SYNTHETIC badge
and watermark, monitor with the deepfake detector and its strides, yuv420p), all driven by one
:class:`~swapwatch.stream.worker.InferenceWorker` that batches ``generate`` across sessions. As in the server,
decoding and encoding run on their own threads, overlapping inference (queues of one step each way).
Stage times come from the processor's own timings; the face detector and the deepfake detector are wrapped in
timing proxies (one per session) to split model time from tracking and from the rest of the monitor.

**Device path** (``--device-path``; serve runs it with ``--device-path on``, or ``auto`` on CUDA) — the pipeline
side runs :class:`~swapwatch.engines.swap.device_path.DeviceFramePath` instead (:class:`DeviceRunner`): per step,
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

**Baseline side** — :class:`~swapwatch.engines.bench.baseline.BaselineLoop`: detect every frame, per-face warps,
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

**Modules** — this one holds the run (:class:`BenchConfig`, :func:`run_bench`); the stages and their
statistics: :mod:`~swapwatch.engines.bench.stats`; the input clip, decoder and encoder:
:mod:`~swapwatch.engines.bench.media`; the models: :mod:`~swapwatch.engines.bench.models`; the pipeline and
baseline sides: :mod:`~swapwatch.engines.bench.runners`; the device path's side:
:mod:`~swapwatch.engines.bench.device_runner`; the machine, the JSON, the table and the plot:
:mod:`~swapwatch.engines.bench.report`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from swapwatch.engines.bench.device_runner import DeviceRunner
from swapwatch.engines.bench.media import (
    MAX_CLIP_CELLS,
    SESSION_OFFSET,
    default_clips,
    default_source_photo,
    open_decoder,
    prepare_frames,
    prepare_input,
)
from swapwatch.engines.bench.models import BenchModels, load_models
from swapwatch.engines.bench.report import BenchResult, SideResult, device_info, format_report, plot_stages
from swapwatch.engines.bench.runners import BaselineRunner, PipelineRunner
from swapwatch.engines.bench.stats import STAGES, StageStats, TimedDetector, TimedScorer
from swapwatch.engines.faces import Face

from swapwatch.config import DeepfakeConfig, TrackingConfig
from swapwatch.errors import InputError

__all__ = [
    "STAGES", "BenchConfig", "BenchResult", "SideResult", "StageStats", "TimedDetector", "TimedScorer",
    "device_info", "format_report", "plot_stages", "prepare_input", "run_bench",
]


# --------------------------------------------------------------------------------------------------
# Configuration
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
    deepfake: bool = True  # run the deepfake detector (--deepfake on)
    detect_every: int = TrackingConfig.detect_every  # pipeline: detector every k frames (serve's default)
    smoothing: bool = True
    feature_stride: int = DeepfakeConfig.feature_stride  # pipeline's deepfake strides: serve's defaults
    score_stride: int = DeepfakeConfig.score_stride
    compare_baseline: bool = False
    device_path: bool = False  # the pipeline side runs engines/swap/device_path.py (see DeviceRunner)
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


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def _source(cfg: BenchConfig, models: BenchModels, first_frame: np.ndarray) -> tuple[np.ndarray, Face, str]:
    from swapwatch.engines.runtime import read_image

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


def run_bench(cfg: BenchConfig, workdir: Path, *, progress: Callable[[str], None] | None = None,
              command: str = "") -> BenchResult:
    """Prepare the input in ``workdir``, load the models once, and measure the pipeline (and the baseline
    with ``compare_baseline``) on the same frames."""
    say = progress or (lambda _msg: None)
    device = device_info()
    if cfg.input is not None:
        from swapwatch.engines.runtime import check_file, probe_video

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
        pipeline: Any = DeviceRunner(cfg, models, clip, identity)
        where = models.placement.get("detector", "?")
        pipe_desc = (f"device path (engines/swap/device_path.py) on {models.device}: per batch of one frame per "
                     f"session, host stage: {flow} ({cfg.face_detector} on {where}), face choice; device stage: one "
                     f"DeviceFramePath.process call for the {cfg.sessions} session(s)' frames (one upload and one "
                     "download per frame, batched warps, one generator batch, on-device mask/colour/blend, SYNTHETIC "
                     "badge + watermark); then each session's monitor; host stage, device stage and monitors run "
                     "on their own threads, overlapping consecutive batches; "
                     + (f"sessions' host stages and monitors on {min(cfg.host_threads, cfg.sessions)} threads"
                        if min(cfg.host_threads, cfg.sessions) > 1 else "sessions' host stages and monitors in turn"))
    else:
        pipeline = PipelineRunner(cfg, models, clip, source_image, source_face, identity)
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
            baseline = BaselineRunner(cfg, models, clip, identity)
            base_desc = ("straightforward loop (engines/bench/baseline.py): detect every frame, per-face "
                         "cv2.warpAffine, swap one face per call, full-frame inverse warp + float blend, "
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


def _device_notes(cfg: BenchConfig, models: BenchModels, runner: DeviceRunner, side: SideResult) -> list[str]:
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


def stderr_progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="swapwatch-bench-") as tmp:
        yield Path(tmp)
