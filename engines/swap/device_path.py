"""The device-resident swap path: upload each frame once, align, swap, paste, label and watermark on the
device, download each frame once. Written in torch, so the same code runs on CPU (the tests) and on CUDA.

One :class:`DeviceFramePath` serves a batch of frames from any number of sessions (frames of several sizes
are grouped by size). For each face the caller gives its 5 landmarks and its source identity
(:class:`FaceJob`, or :meth:`FrameJob.from_plan` from a :class:`~swapwatch.engines.swap.pipeline.SwapPlan`).
This module batches and schedules; the generator wrapper, its CUDA graphs and the fp16 check are in
:mod:`~swapwatch.engines.swap.device_generator`, the tensor kernels (Lab colour match, warp grids, badge and
watermark arithmetic) in :mod:`~swapwatch.engines.swap.device_ops`.

Per batch, on the path's device:

==========  ==========================================================================================
stage       what runs (names as in :data:`swapwatch.engines.bench.stats.STAGES`)
==========  ==========================================================================================
upload      host -> device copy of each frame, once (pinned, reused host buffers and ``non_blocking``
            copies on a copy stream on CUDA); uint8 HWC -> float CHW
align       the CPU path's matrices (:func:`~swapwatch.engines.faces.align.template_errors`, lowest-error pose),
            one ``grid_sample`` per frame size for every face of every frame of that size (the face grids
            are stacked along the grid's height, so no frame is copied per face), rounded to 8-bit levels
swap        the swapper's generator once for all faces of all frames: a torch generator on the device
            (:class:`DeviceGenerator`: SimSwap through :class:`~swapwatch.engines.runtime.torch_backend.TorchEngine`)
            or, failing that, the swapper's NumPy ``generate`` with one download and one upload, counted in
            ``host_round_trips``
paste       the feather mask (built once per template pose by the CPU code, kept as a tensor), Reinhard
            colour transfer in float Lab (ported to torch; learned swappers only, as the CPU path), inverse
            warp of crop and mask into each face's rectangle only (the rectangle
            :func:`~swapwatch.engines.swap.blend.paste_roi` gives the CPU path) and alpha blend, face after face
label       the visible badge (the CPU badge, rendered once per frame size, composited as
            :meth:`VisibleLabel.draw` does) and the watermark (the CPU embedder's arithmetic: luma, area
            resampling to the grid, texture-masked amplitude, bilinear upsampling as matrix products)
download    float -> uint8 HWC and the device -> host copy, once per frame
==========  ==========================================================================================

The watermark is not one fixed additive pattern: its amplitude follows the local texture of the frame it
marks (:class:`~swapwatch.engines.swap.labelling.Watermarker`), so what is cached per frame size is the keyed grid
pattern and the resampling operators; the amplitude is computed per frame on the device.

Parity with the CPU path (:class:`~swapwatch.engines.swap.pipeline.SwapPipeline`): every rounding point of the CPU
path (uint8 crops, uint8 generator output, uint8 warped-back crop, uint8 frame after each paste, the badge's
``+0.5`` truncation, the watermark's rounding add) is reproduced. What differs is interpolation arithmetic:
``cv2.warpAffine`` quantises sample positions to 1/32 pixel and uses fixed-point weights for uint8, while
``grid_sample`` interpolates in float32; OpenCV's float Lab conversion uses spline-interpolated gamma and
cube-root tables where torch evaluates the formulas. ``tests/test_device_path.py`` measures the result.

Not on the device path: the face-parsing mask and Poisson blending (the path offers the feather mask and
alpha blending, the CPU path's defaults), detection and tracking (the caller's), identity embedding (once per
source photo, on the host). One instance per worker thread: its pinned buffers and caches are not shared.

CUDA only (no-ops on CPU): pinned host buffers, ``non_blocking`` copies, the copy stream that overlaps uploads
and downloads with compute, CUDA events for stage timings, fp16 (only after :func:`fp16_check` passed on the
batch's own inputs) and CUDA graphs for the generator (``cuda_graphs=True``, fixed shapes bucketed by face
count).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from swapwatch.engines.faces import CropTemplate, inverse_matrix, template_errors
from swapwatch.engines.swap.blend import FeatherMask, paste_roi
from swapwatch.engines.swap.device_generator import DeviceGenerator, Fp16Report, GraphedModule, fp16_check
from swapwatch.engines.swap.device_ops import (
    add_watermark, draw_badge, match_colour_torch, warp_grid, watermark_operators,
)
from swapwatch.engines.swap.labelling import SyntheticLabeller
from swapwatch.engines.swap.swapper import SourceIdentity, Swapper

log = logging.getLogger(__name__)

__all__ = [
    "DEVICE_PATH_MODES",
    "DEVICE_PATH_STAGES",
    "DeviceBatchResult",
    "DeviceFramePath",
    "DevicePathConfig",
    "FaceJob",
    "FrameJob",
    "create_device_path",
    "resolve_device_path",
    "swapper_device",
]

# The stages this path times, named as `swapwatch bench` names them (engines/bench/stats.py STAGES).
DEVICE_PATH_STAGES = ("upload", "align", "swap", "paste", "label", "download")
PRECISIONS = ("fp32", "fp16", "auto")
DEVICE_PATH_MODES = ("auto", "on", "off")  # serve's --device-path


# --------------------------------------------------------------------------------------------------
# Inputs, outputs, configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceJob:
    """One face to swap: its 5 landmarks in the frame (x, y) and the source identity to give it."""

    landmarks: np.ndarray
    source: SourceIdentity


@dataclass
class FrameJob:
    """One frame (BGR uint8 HxWx3, any size) and the faces to swap in it (possibly none)."""

    frame: np.ndarray
    faces: Sequence[FaceJob] = ()

    @classmethod
    def from_plan(cls, plan: Any) -> FrameJob:
        """From a :class:`~swapwatch.engines.swap.pipeline.SwapPlan`: its chosen faces and their sources (the CPU
        crops in the plan are not used; the device path warps its own)."""
        faces = [FaceJob(np.asarray(face.landmarks), src) for (face, _), src in zip(plan.chosen, plan.sources)]
        return cls(plan.frame, faces)


@dataclass(frozen=True)
class DevicePathConfig:
    """How the device path runs. The defaults reproduce :class:`~swapwatch.engines.swap.pipeline.SwapOptions`'
    defaults (feather mask, alpha blend, colour match for learned swappers, no mouth cut-out)."""

    device: str = "auto"  # "auto": CUDA when available, else CPU
    colour_match: bool = True  # as SwapOptions.colour_match (learned swappers only, like the CPU path)
    keep_mouth: bool = False  # as SwapOptions.keep_mouth
    # Label frames without a swapped face too (the server's FrameProcessor does, in swap mode);
    # SwapPipeline.process returns such frames untouched: set False for that behaviour.
    label_unswapped: bool = True
    precision: str = "fp32"  # fp32 | fp16 | auto (fp16 on CUDA); fp16 only once fp16_check passed
    fp16_tolerance: float = 0.05  # fp16_check's max |fp32 - fp16| on [0, 1] generator outputs (~13 levels)
    fp16_mean_tolerance: float = 0.005  # and its mean (~1.3 levels)
    pinned: bool = True  # CUDA: page-locked host buffers, reused by shape
    streams: bool = True  # CUDA: uploads/downloads on a copy stream, overlapping compute
    cuda_graphs: bool = False  # CUDA + torch generator: replay a captured graph per (faces bucket, size)
    events: bool = True  # CUDA: stage timings from CUDA events (perf_counter otherwise / on CPU)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.fp16_tolerance <= 0 or self.fp16_mean_tolerance <= 0:
            raise ValueError("fp16 tolerances must be positive")


@dataclass
class DeviceBatchResult:
    frames: list[np.ndarray]  # BGR uint8, in the order given
    swapped: list[int]  # faces swapped per frame
    timings: dict[str, float]  # seconds per stage for the whole batch (DEVICE_PATH_STAGES)
    host_round_trips: int  # extra device -> host -> device copies in this batch (NumPy generator fallback)
    precision: str  # the generator precision used: fp32, fp16

    def per_frame(self) -> dict[str, float]:
        """Stage seconds divided among the batch's frames (bench records per-frame stage times)."""
        n = max(len(self.frames), 1)
        return {k: v / n for k, v in self.timings.items()}

    def frame_timings(self, wall_s: float) -> dict[str, float]:
        """The stage seconds each frame of the batch records (serve's worker and bench): the batch's own times
        (a frame waits for its whole batch), plus ``device_overhead``, the call's wall time ``wall_s`` outside
        the timed stages."""
        return {**self.timings, "device_overhead": max(wall_s - sum(self.timings.values()), 0.0)}


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


class _StageClock:
    """Per-stage seconds: CUDA events on the stream that does the work (elapsed times read once, after the
    batch's final synchronisation), ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device, use_events: bool) -> None:
        self.cuda = device.type == "cuda" and use_events
        self.host: dict[str, float] = {name: 0.0 for name in DEVICE_PATH_STAGES}
        self._pairs: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str, stream: Any = None) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            try:
                yield
            finally:
                end.record(stream)
                self._pairs.append((name, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.host[name] = self.host.get(name, 0.0) + time.perf_counter() - t0

    def result(self) -> dict[str, float]:
        """Call after the device has been synchronised."""
        out = dict(self.host)
        for name, start, end in self._pairs:
            out[name] = out.get(name, 0.0) + start.elapsed_time(end) / 1000.0
        return out


# --------------------------------------------------------------------------------------------------
# The path
# --------------------------------------------------------------------------------------------------


@dataclass
class _Face:
    frame: int  # index in the batch
    slot: int  # index among its frame's faces
    matrix: np.ndarray  # (2, 3) image -> crop
    pose: int
    roi: tuple[int, int, int, int] | None  # paste rectangle (x0, y0, x1, y1), from the CPU helper
    source: SourceIdentity


@dataclass
class _SizeCache:
    badge: tuple[int, int, torch.Tensor, torch.Tensor] | None = None  # x, y, keep (1,1,h,w), paint (1,3,h,w)
    watermark: tuple[torch.Tensor, ...] | None = None  # Ay, AxT, Ry, RxT, pattern


@dataclass
class _Group:
    hw: tuple[int, int]
    frames: list[int]  # batch indices, in order
    host: torch.Tensor | None = None  # (B, H, W, 3) uint8 on the host (pinned on CUDA)
    dev: torch.Tensor | None = None  # (B, H, W, 3) uint8 on the device
    work: torch.Tensor | None = None  # (B, 3, H, W) float32 on the device
    uploaded: Any = None  # CUDA event
    faces: list[_Face] = field(default_factory=list)


class DeviceFramePath:
    """The swap path for a batch of frames, resident on one torch device (see the module docstring).

    ``swapper`` is any :class:`Swapper`; ``generator`` overrides the torch generator found by
    :meth:`DeviceGenerator.for_swapper` (None found: the swapper's NumPy ``generate`` is used, with one
    host round trip per batch). ``labeller`` marks the frames (badge and watermark) as the CPU path's
    :class:`SyntheticLabeller` does; ``masks`` should be the CPU pipeline's :class:`FeatherMask` settings.
    """

    def __init__(self, swapper: Swapper, *, labeller: SyntheticLabeller | None = None,
                 config: DevicePathConfig = DevicePathConfig(), generator: DeviceGenerator | None = None,
                 masks: FeatherMask | None = None) -> None:
        self.swapper = swapper
        self.labeller = labeller
        self.config = config
        dev = config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self.cuda = self.device.type == "cuda"
        self.generator = generator if generator is not None else DeviceGenerator.for_swapper(swapper)
        self.masks = masks if masks is not None else FeatherMask()
        self.host_round_trips = 0  # over the path's life
        self.fp16_report: Fp16Report | None = None
        self.precision = "fp32"
        self.precision_note = ""
        if config.precision in ("fp16", "auto"):
            if not self.cuda:
                self.precision_note = "reduced precision is CUDA-only: the CPU path stays fp32"
                if config.precision == "fp16":
                    log.warning("fp16 asked for on %s: %s", self.device, self.precision_note)
            elif self.generator is None:
                self.precision_note = "no torch generator: the swapper's own engine decides its precision"
        self._module: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self._input_dtype: torch.dtype | None = None
        self._mask_cache: dict[tuple[str, int, bool], torch.Tensor] = {}
        self._size_cache: dict[tuple[int, int], _SizeCache] = {}
        self._pinned: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self._latents: OrderedDict[int, tuple[SourceIdentity, torch.Tensor]] = OrderedDict()
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda and config.streams else None

    @property
    def template(self) -> CropTemplate:
        return self.swapper.template

    # ---- public ---------------------------------------------------------------------------------------

    def process(self, jobs: Sequence[FrameJob]) -> DeviceBatchResult:
        """Swap, label and watermark a batch of frames; each frame is uploaded once and downloaded once."""
        jobs = list(jobs)
        for job in jobs:
            f = job.frame
            if not isinstance(f, np.ndarray) or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError("expected BGR uint8 frames of shape (H, W, 3)")
        clock = _StageClock(self.device, self.config.events)
        trips_before = self.host_round_trips
        out: list[np.ndarray | None] = [None] * len(jobs)
        swapped = [0] * len(jobs)
        with torch.inference_mode():
            t0 = time.perf_counter()
            plans = [self._plan_faces(i, job) for i, job in enumerate(jobs)]
            align_host = time.perf_counter() - t0
            touched = [bool(faces) or (self.config.label_unswapped and self._labels) for faces in plans]
            groups: dict[tuple[int, int], _Group] = {}
            for i, job in enumerate(jobs):
                if not touched[i]:
                    out[i] = job.frame.copy()  # nothing to do on this frame: it never leaves the host
                    continue
                hw = (int(job.frame.shape[0]), int(job.frame.shape[1]))
                groups.setdefault(hw, _Group(hw, [])).frames.append(i)
            for g in groups.values():
                g.faces = [face for i in g.frames for face in plans[i]]
            compute = torch.cuda.current_stream(self.device) if self.cuda else None
            copy_stream = self._copy_stream or compute
            group_list = list(groups.values())
            # Every group's copy is issued first, so that later groups' copies overlap earlier groups' work.
            with clock.stage("upload", copy_stream):
                for g in group_list:
                    self._upload(g, jobs)
            for g in group_list:
                self._wait_uploaded(g)  # before the window opens: the window times the conversion only
                with clock.stage("upload", compute):
                    g.work = g.dev.permute(0, 3, 1, 2).float()
            with clock.stage("align", compute):
                crops_per_group = [self._align(g) for g in group_list]
            clock.host["align"] += align_host
            faces = [face for g in group_list for face in g.faces]
            generated_per_group: list[torch.Tensor | None] = [None] * len(crops_per_group)
            if faces:  # one generator batch for every face of every frame
                crops = torch.cat([c for c in crops_per_group if c is not None])
                with clock.stage("swap", compute):
                    generated = self._generate(crops, [f.source for f in faces])
                start = 0
                for k, c in enumerate(crops_per_group):
                    if c is not None:
                        generated_per_group[k] = generated[start:start + c.shape[0]]
                        start += c.shape[0]
            results = []
            # Group after group, so that a group's download overlaps the next group's paste and label.
            for g, crops, gen in zip(group_list, crops_per_group, generated_per_group):
                with clock.stage("paste", compute):
                    if crops is not None:
                        self._paste(g, crops, gen)
                with clock.stage("label", compute):
                    self._label(g, plans)
                with clock.stage("download", compute):
                    frames_u8 = g.work.clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
                if self._copy_stream is not None:
                    self._copy_stream.wait_stream(compute)  # before the window opens, as for the upload
                with clock.stage("download", copy_stream):
                    results.append((g, self._download(frames_u8)))
            if self.cuda:
                torch.cuda.synchronize(self.device)
            for g, host in results:
                for b, i in enumerate(g.frames):
                    out[i] = host[b].numpy().copy() if self.cuda else host[b].numpy()
                    swapped[i] = len(plans[i])
        return DeviceBatchResult([o for o in out if o is not None], swapped, clock.result(),
                                 self.host_round_trips - trips_before, self.precision)

    # ---- planning (host) ------------------------------------------------------------------------------

    @property
    def _labels(self) -> bool:
        lab = self.labeller
        return lab is not None and (lab.label.enabled or lab.config.watermark_enabled)

    def _plan_faces(self, index: int, job: FrameJob) -> list[_Face]:
        template = self.template
        faces = []
        hw = job.frame.shape[:2]
        for slot, fj in enumerate(job.faces):
            if fj.source is None:
                raise ValueError(f"frame {index}, face {slot}: no source identity")
            mats, errors = template_errors(np.asarray(fj.landmarks, dtype=np.float64), template)
            pose = int(np.argmin(errors))  # as align._best: first minimum
            mask = self.masks.face(template, index=pose, keep_mouth=self.config.keep_mouth)
            faces.append(_Face(index, slot, mats[pose], pose, paste_roi(mask, mats[pose], hw), fj.source))
        return faces

    # ---- upload / download -----------------------------------------------------------------------------

    def _pinned_buffer(self, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = (kind, shape)
        buf = self._pinned.get(key)
        if buf is None:
            buf = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._pinned[key] = buf
        return buf

    def _stream_ctx(self, stream: Any) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def _upload(self, g: _Group, jobs: Sequence[FrameJob]) -> None:
        """Issue the host -> device copy of a group's frames (on the copy stream on CUDA)."""
        h, w = g.hw
        shape = (len(g.frames), h, w, 3)
        if not self.cuda:
            g.host = g.dev = torch.from_numpy(np.stack([jobs[i].frame for i in g.frames]))
            return
        host = self._pinned_buffer("in", shape) if self.config.pinned else torch.empty(shape, dtype=torch.uint8)
        view = host.numpy()  # the pinned buffer as an array: frames are copied in without torch wrappers
        for b, i in enumerate(g.frames):
            view[b] = jobs[i].frame
        g.host = host
        with self._stream_ctx(self._copy_stream):
            g.dev = host.to(self.device, non_blocking=self.config.pinned)
            if self._copy_stream is not None:
                g.uploaded = torch.cuda.Event()
                g.uploaded.record(self._copy_stream)

    def _wait_uploaded(self, g: _Group) -> None:
        """Make the compute stream wait for the group's copy (CUDA with a copy stream; no-op otherwise)."""
        if g.uploaded is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(g.uploaded)
            g.dev.record_stream(compute)  # allocated on the copy stream, used on this one

    def _download(self, frames: torch.Tensor) -> torch.Tensor:
        """Issue the device -> host copy of (B, H, W, 3) uint8 frames: a pinned buffer on CUDA (read after
        the batch's synchronisation), the tensor itself on CPU."""
        if not self.cuda:
            return frames
        shape = tuple(frames.shape)
        out = self._pinned_buffer("out", shape) if self.config.pinned else torch.empty(shape, dtype=torch.uint8)
        if self._copy_stream is not None:
            frames.record_stream(self._copy_stream)  # allocated on the compute stream
        with self._stream_ctx(self._copy_stream):
            out.copy_(frames, non_blocking=self.config.pinned)
        return out

    # ---- align -----------------------------------------------------------------------------------------

    def _align(self, g: _Group) -> torch.Tensor | None:
        """(N, 3, S, S) crops (BGR float, 8-bit levels) of the group's faces, one grid_sample per group."""
        if not g.faces:
            return None
        size = self.template.size
        n_frames = len(g.frames)
        per_frame = [0] * n_frames
        pos = {i: b for b, i in enumerate(g.frames)}
        for f in g.faces:
            per_frame[pos[f.frame]] += 1
        fmax = max(per_frame)
        grids = warp_grid(np.stack([f.matrix for f in g.faces]), g.hw, (size, size), self.device)
        if fmax == 1 and all(c == 1 for c in per_frame):
            stacked = grids  # (B, S, S, 2): one face per frame
        else:
            # Each frame's face grids stacked along the grid height; unused slots sample outside (zeros).
            stacked = grids.new_full((n_frames, fmax, size, size, 2), 2.0)
            for k, f in enumerate(g.faces):
                stacked[pos[f.frame], f.slot] = grids[k]
            stacked = stacked.reshape(n_frames, fmax * size, size, 2)
        sampled = F.grid_sample(g.work, stacked, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(n_frames, 3, fmax, size, size).permute(0, 2, 1, 3, 4)
        index_b = torch.tensor([pos[f.frame] for f in g.faces], device=self.device)
        index_f = torch.tensor([f.slot for f in g.faces], device=self.device)
        crops = sampled[index_b, index_f]
        # cv2.warpAffine's uint8 crops: rounded, saturated.
        return torch.round(crops).clamp_(0.0, 255.0)

    # ---- swap ------------------------------------------------------------------------------------------

    def _latent_tensor(self, sources: Sequence[SourceIdentity]) -> torch.Tensor:
        rows = []
        for s in sources:
            hit = self._latents.get(id(s))
            if hit is None or hit[0] is not s:
                vec = torch.from_numpy(self.generator.latents([s])[0]).to(self.device)
                hit = (s, vec)
                self._latents[id(s)] = hit
                while len(self._latents) > 256:
                    self._latents.popitem(last=False)
            else:
                self._latents.move_to_end(id(s))
            rows.append(hit[1])
        return torch.stack(rows)

    def _core(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """The generator call, in the checked precision, graphed when asked (CUDA)."""
        if self._module is None:
            self._module = self._build_module(target, latent)
        if self._input_dtype is not None:  # a module converted beforehand (TorchEngine(half=True))
            target, latent = target.to(self._input_dtype), latent.to(self._input_dtype)
        return self._module(target, latent)

    def _build_module(self, target: torch.Tensor, latent: torch.Tensor) -> Callable[..., torch.Tensor]:
        """Once, on the first batch: place the module, decide fp16 on these inputs, wrap in a graph."""
        module = self._placed(self.generator.module)
        half = False
        if self._input_dtype is not None:
            names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
            self.precision = names.get(self._input_dtype, str(self._input_dtype))
            self.precision_note = "the generator's weights were already converted: no fp16 check here"
        elif self.cuda and self.config.precision in ("fp16", "auto"):
            report = fp16_check(module, (target, latent), tolerance=self.config.fp16_tolerance,
                                mean_tolerance=self.config.fp16_mean_tolerance)
            self.fp16_report = report
            half = report.passed
            self.precision_note = "fp16: check passed" if half else f"fp16 refused: {report.reason}"
            (log.info if half else log.warning)("generator %s (max %.4g, mean %.4g)", self.precision_note,
                                                 report.max_abs_err, report.mean_abs_err)
            self.precision = "fp16" if half else "fp32"
        if self.cuda and self.config.cuda_graphs:
            return GraphedModule(module, torch.float16 if half else None)
        if half:
            def autocast_module(t: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
                with torch.autocast("cuda", dtype=torch.float16):
                    return module(t, lat)
            return autocast_module
        return module

    def _placed(self, module: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """An nn.Module on this path's device (a copy when it lives elsewhere); notes its parameter dtype."""
        self._input_dtype = None
        if isinstance(module, torch.nn.Module):
            param = next(module.parameters(), None)
            if param is not None:
                if param.device != self.device:
                    log.info("generator weights are on %s: using a copy on %s", param.device, self.device)
                    module = copy.deepcopy(module).to(self.device)
                if param.dtype != torch.float32:
                    self._input_dtype = param.dtype
        return module

    def _generate(self, crops: torch.Tensor, sources: list[SourceIdentity]) -> torch.Tensor:
        """(N, 3, S, S) BGR float crops -> generated crops, same layout, 8-bit levels."""
        if self.generator is not None:
            target = crops.flip(1) / 255.0  # BGR -> RGB in [0, 1]
            out = self._core(target, self._latent_tensor(sources)).float()
            # SimSwapSwapper.generate: clip to [0, 1], x255, round, back to BGR.
            return torch.round(out.clamp(0.0, 1.0) * 255.0).flip(1)
        # NumPy fallback: one download of the crops, one upload of the result.
        host = crops.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        result = np.ascontiguousarray(self.swapper.generate(host, sources))
        self.host_round_trips += 1
        back = torch.from_numpy(result)
        if self.cuda:
            if self.config.pinned:  # a reused pinned buffer (free again after the batch's synchronisation)
                staged = self._pinned_buffer("generated", tuple(back.shape))
                staged.numpy()[...] = result
                back = staged
            back = back.to(self.device, non_blocking=self.config.pinned)
        return back.permute(0, 3, 1, 2).float()

    # ---- paste -----------------------------------------------------------------------------------------

    def _mask_tensor(self, pose: int) -> torch.Tensor:
        keep_mouth = self.config.keep_mouth
        key = (self.template.name, pose, keep_mouth)
        t = self._mask_cache.get(key)
        if t is None:
            mask = self.masks.face(self.template, index=pose, keep_mouth=keep_mouth)
            t = torch.tensor(np.asarray(mask, dtype=np.float32), device=self.device)
            self._mask_cache[key] = t
        return t

    def _paste(self, g: _Group, crops: torch.Tensor, generated: torch.Tensor) -> None:
        masks = torch.stack([self._mask_tensor(f.pose) for f in g.faces])[:, None]  # (N, 1, S, S)
        if self.config.colour_match and self.swapper.learned:  # classic matches colours itself
            generated = match_colour_torch(generated, crops, masks)
        live = [k for k, f in enumerate(g.faces) if f.roi is not None]
        if not live:
            return
        rh = max(g.faces[k].roi[3] - g.faces[k].roi[1] for k in live)
        rw = max(g.faces[k].roi[2] - g.faces[k].roi[0] for k in live)
        # Crop -> frame-rectangle matrices, as blend._warp_into_roi builds them.
        to_roi = []
        for k in live:
            x0, y0, _, _ = g.faces[k].roi
            inv = inverse_matrix(g.faces[k].matrix)
            inv[:, 2] -= (x0, y0)
            to_roi.append(inv)
        size = self.template.size
        grid = warp_grid(np.stack(to_roi), (size, size), (rh, rw), self.device)
        idx = torch.tensor(live, device=self.device)
        # BORDER_REPLICATE for the crop, constant 0 for the mask; the warped crop is uint8 on the CPU path.
        warped = F.grid_sample(generated[idx], grid, mode="bilinear", padding_mode="border", align_corners=False)
        warped = torch.round(warped).clamp_(0.0, 255.0)
        alpha = F.grid_sample(masks[idx], grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False).clamp_(0.0, 1.0)
        pos = {i: b for b, i in enumerate(g.frames)}
        for j, k in enumerate(live):  # face after face, as paste_back does: later faces see earlier ones
            f = g.faces[k]
            x0, y0, x1, y1 = f.roi
            h, w = y1 - y0, x1 - x0
            region = g.work[pos[f.frame], :, y0:y1, x0:x1]
            a = alpha[j, :, :h, :w]
            region.copy_(torch.round(a * warped[j, :, :h, :w] + (1.0 - a) * region))

    # ---- label -----------------------------------------------------------------------------------------

    def _size_entry(self, hw: tuple[int, int]) -> _SizeCache:
        entry = self._size_cache.get(hw)
        if entry is None:
            entry = self._size_cache[hw] = _SizeCache()
        return entry

    def _badge(self, hw: tuple[int, int]) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        cache = self._size_entry(hw)
        if cache.badge is None:
            b = self.labeller.label._badge(*hw)  # the CPU badge, rendered once per size (VisibleLabel cache)
            keep = torch.from_numpy(np.ascontiguousarray(b.keep.transpose(2, 0, 1)))[None].to(self.device)
            paint = torch.from_numpy(np.ascontiguousarray(b.paint.transpose(2, 0, 1)))[None].to(self.device)
            cache.badge = (b.x, b.y, keep, paint)
        return cache.badge

    def _watermark_ops(self, hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        cache = self._size_entry(hw)
        if cache.watermark is None:
            cache.watermark = watermark_operators(hw, self.labeller.watermarker, self.device)
        return cache.watermark

    def _label(self, g: _Group, plans: Sequence[list[_Face]]) -> None:
        lab = self.labeller
        if lab is None:
            return
        rows = [b for b, i in enumerate(g.frames) if plans[i] or self.config.label_unswapped]
        if not rows:
            return
        sel = torch.tensor(rows, device=self.device) if len(rows) < len(g.frames) else None
        frames = g.work if sel is None else g.work[sel]
        if lab.label.enabled:  # VisibleLabel.draw
            draw_badge(frames, *self._badge(g.hw))
        if lab.config.watermark_enabled and lab.watermarker.fits(*g.hw):  # SyntheticLabeller: Watermarker.embed
            add_watermark(frames, self._watermark_ops(g.hw), lab.watermarker.config)
        if sel is not None:
            g.work[sel] = frames


# --------------------------------------------------------------------------------------------------
# Choosing and building the path (serve's worker and bench)
# --------------------------------------------------------------------------------------------------


def swapper_device(swapper: Swapper) -> str:
    """Where the swapper's generator runs: its engine's device (``cuda`` or ``cpu``; ``cpu`` for a NumPy
    swapper such as classic)."""
    engine = getattr(swapper, "generator", None) or getattr(swapper, "engine", None)
    device = getattr(engine, "device", "cpu") if engine is not None else "cpu"
    return "cuda" if isinstance(device, str) and device.startswith("cuda") else "cpu"


def resolve_device_path(mode: str, swapper: Swapper) -> bool:
    """serve's ``--device-path``: ``on``, ``off``, or ``auto``: on when the swapper's generator runs on CUDA
    (torch sees a GPU and the swapper's engine is on it). On a CPU the CPU path is the faster one
    (BENCHMARKS.md), so ``auto`` is off there."""
    if mode not in DEVICE_PATH_MODES:
        raise ValueError(f"device path must be one of {DEVICE_PATH_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return torch.cuda.is_available() and swapper_device(swapper) == "cuda"


def create_device_path(swapper: Swapper, device: str = "auto", **options: Any) -> DeviceFramePath:
    """The path as serve and bench run it: the CPU path's defaults (SyntheticLabeller, FeatherMask) on
    ``device`` (``auto``: the swapper's generator's device when it is CUDA, else CUDA when present, else CPU).
    ``options`` are :class:`DevicePathConfig` fields. On CUDA the device is named with the index the models'
    weights report (no copy of them) and cuDNN picks its kernels per shape (a few: frame sizes, face counts)."""
    if device == "auto":
        device = "cuda" if swapper_device(swapper) == "cuda" or torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        device = f"cuda:{torch.cuda.current_device()}"
    return DeviceFramePath(swapper, labeller=SyntheticLabeller(), masks=FeatherMask(),
                           config=DevicePathConfig(device=device, **options))
