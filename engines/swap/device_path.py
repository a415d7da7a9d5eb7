"""The device-resident swap path: upload each frame once, align, swap, paste, label and watermark on the
device, download each frame once. Written in torch, so the same code runs on CPU (the tests) and on CUDA.

One :class:`DeviceFramePath` serves a batch of frames from any number of sessions (frames of several sizes
are grouped by size). For each face the caller gives its 5 landmarks and its source identity
(:class:`FaceJob`, or :meth:`FrameJob.from_plan` from a :class:`~swapwatch.engines.swap.pipeline.SwapPlan`).

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
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from swapwatch.engines.faces import CropTemplate, inverse_matrix, template_errors
from swapwatch.engines.swap.blend import FeatherMask, paste_roi
from swapwatch.engines.swap.labelling import SyntheticLabeller
from swapwatch.engines.swap.swapper import SourceIdentity, Swapper

log = logging.getLogger(__name__)

__all__ = [
    "DEVICE_PATH_STAGES",
    "DeviceBatchResult",
    "DeviceFramePath",
    "DeviceGenerator",
    "DevicePathConfig",
    "FaceJob",
    "Fp16Report",
    "FrameJob",
    "bgr_to_lab_torch",
    "create_device_path",
    "fp16_check",
    "lab_to_bgr_torch",
    "match_colour_torch",
    "resolve_device_path",
    "swapper_device",
]

# The stages this path times, named as `swapwatch bench` names them (engines/bench/stats.py STAGES).
DEVICE_PATH_STAGES = ("upload", "align", "swap", "paste", "label", "download")
PRECISIONS = ("fp32", "fp16", "auto")
DEVICE_PATH_MODES = ("auto", "on", "off")  # serve's --device-path
# OpenCV's fixed-point BGR -> gray for uint8 (imgproc/color_rgb: 15-bit coefficients, rounding shift).
_GRAY_B, _GRAY_G, _GRAY_R, _GRAY_SHIFT = 3735.0, 19235.0, 9798.0, 15


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
# Generators on the device
# --------------------------------------------------------------------------------------------------


@dataclass
class DeviceGenerator:
    """A swap generator as torch code, with SimSwap's and inswapper's contract: ``module(target, latent)``,
    target (N, 3, S, S) RGB in [0, 1], latent (N, D) float32, output (N, 3, S, S) RGB in [0, 1].

    ``latent(source)`` gives a source's identity vector (default: ``source.embedding``).
    """

    module: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    latent: Callable[[SourceIdentity], np.ndarray] | None = None

    @classmethod
    def for_swapper(cls, swapper: Swapper) -> DeviceGenerator | None:
        """The swapper's generator as a torch module when it has one, else None (NumPy fallback).

        Known: a ``device_generator()`` method on the swapper (the hook swappers can add), and
        :class:`~swapwatch.engines.swap.simswap.SimSwapSwapper` built on a :class:`TorchEngine`
        (``from_modules`` / ``from_checkpoints``)."""
        hook = getattr(swapper, "device_generator", None)
        if callable(hook):
            return hook()
        from swapwatch.engines.runtime import TorchEngine
        from swapwatch.engines.swap.simswap import SimSwapSwapper

        if isinstance(swapper, SimSwapSwapper) and isinstance(swapper.generator, TorchEngine):
            return cls(swapper.generator.module, swapper._latent)
        return None

    def latents(self, sources: Sequence[SourceIdentity]) -> np.ndarray:
        get = self.latent or (lambda s: np.asarray(s.embedding, dtype=np.float32))
        return np.stack([np.asarray(get(s), dtype=np.float32) for s in sources])


class _GraphedModule:
    """CUDA-graph replay of ``module(target, latent)`` for fixed shapes: the face count is padded up to a
    power of two (repeating the last face), one graph per (bucket, shape, dtype). CUDA only."""

    def __init__(self, module: Callable[..., torch.Tensor], autocast_dtype: torch.dtype | None) -> None:
        self.module = module
        self.autocast_dtype = autocast_dtype
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.failed: str | None = None  # why capture failed; eager from then on

    def _eager(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.module(target, latent)
        # CUDA graphs need autocast's weight-cast cache off (the casts must be captured in the graph).
        with torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False):
            return self.module(target, latent)

    def __call__(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                return self._replay(target, latent)
            except RuntimeError as exc:  # an op that cannot be captured: say so once, run eagerly
                self.failed = str(exc).splitlines()[0]
                log.warning("CUDA graph capture of the generator failed (%s): running it eagerly", self.failed)
                torch.cuda.synchronize()
        return self._eager(target, latent)

    def _replay(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        n = target.shape[0]
        bucket = 1 << max(n - 1, 0).bit_length()
        key = (bucket, tuple(target.shape[1:]), tuple(latent.shape[1:]), target.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            static_t = target.new_zeros((bucket, *target.shape[1:]))
            static_l = latent.new_zeros((bucket, *latent.shape[1:]))
            static_t[:n], static_t[n:] = target, target[-1:]
            static_l[:n], static_l[n:] = latent, latent[-1:]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside capture (cuDNN autotuning, allocator pools)
                for _ in range(3):
                    self._eager(static_t, static_l)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._eager(static_t, static_l)
            entry = (graph, static_t, static_l, static_out)
            self._graphs[key] = entry
            log.info("captured a CUDA graph for the generator: %s", key)
        graph, static_t, static_l, static_out = entry
        static_t[:n].copy_(target)
        static_l[:n].copy_(latent)
        if n < bucket:
            static_t[n:].copy_(target[-1:].expand_as(static_t[n:]))
            static_l[n:].copy_(latent[-1:].expand_as(static_l[n:]))
        graph.replay()
        return static_out[:n].clone()


# --------------------------------------------------------------------------------------------------
# fp16 check
# --------------------------------------------------------------------------------------------------


@dataclass
class Fp16Report:
    max_abs_err: float  # max |fp32 - reduced| over the outputs (in the outputs' units)
    mean_abs_err: float
    passed: bool  # finite, max and mean within their tolerances
    diff_image: np.ndarray  # uint8 (H, 3W, 3) BGR: fp32 output | reduced output | heat map of |diff| x gain
    dtype: str  # "float16" (CUDA) or "bfloat16" (CPU)
    device: str
    tolerance: float
    mean_tolerance: float
    reason: str = ""  # why it failed, or a note (e.g. CPU runs bfloat16)

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_err": self.max_abs_err, "mean_abs_err": self.mean_abs_err, "passed": self.passed,
                "dtype": self.dtype, "device": self.device, "tolerance": self.tolerance,
                "mean_tolerance": self.mean_tolerance, "reason": self.reason}


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and out:
        return _first_tensor(next(iter(out.values())))
    raise TypeError(f"expected a tensor output, got {type(out).__name__}")


def _device_of(module_or_fn: Any, inputs: Sequence[Any]) -> torch.device:
    for t in inputs:
        if isinstance(t, torch.Tensor):
            return t.device
    if isinstance(module_or_fn, torch.nn.Module):
        for p in module_or_fn.parameters():
            return p.device
    return torch.device("cpu")


def _to_image(t: torch.Tensor) -> np.ndarray:
    """First sample of an output as a displayable (H, W, 3) float array in [0, 1]: (N, C, H, W) images
    (RGB assumed for C = 3, shown as BGR), other shapes as a grey (rows, columns) image."""
    x = t.detach().float().cpu()
    if x.ndim == 4:
        img = x[0]
        img = img[:3] if img.shape[0] >= 3 else img[:1].expand(3, -1, -1)
        arr = img.permute(1, 2, 0).numpy()[..., ::-1]
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:  # not a [0, 1] image: stretch for display
            arr = (arr - lo) / max(hi - lo, 1e-12)
        return np.ascontiguousarray(arr)
    flat = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)
    arr = flat.numpy()
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    return np.repeat(arr[..., None], 3, axis=2)


def _heat(diff: torch.Tensor, gain: float) -> np.ndarray:
    x = diff.detach().float().cpu()
    if x.ndim == 4:
        d = x[0].abs().amax(dim=0).numpy()
    else:
        d = (x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)).abs().numpy()
    d = np.nan_to_num(d, nan=1.0, posinf=1.0)
    heat = np.clip(d * gain * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(heat, cv2.COLORMAP_INFERNO)


def fp16_check(
    module_or_fn: Callable[..., Any],
    example_inputs: Sequence[Any],
    *,
    tolerance: float = 0.05,
    mean_tolerance: float = 0.005,
    mode: str = "autocast",
    dtype: torch.dtype | None = None,
    gain: float = 20.0,
) -> Fp16Report:
    """Run ``module_or_fn(*example_inputs)`` in fp32 and in reduced precision and compare the outputs.

    ``mode="autocast"`` runs the same module under ``torch.autocast`` (works for any callable);
    ``mode="half"`` converts a copy of an ``nn.Module`` and the floating inputs to the reduced dtype (what a
    ``TorchEngine(half=True)`` does). The tolerances are for outputs in [0, 1] (SimSwap's and inswapper's):
    by default the check passes when the outputs are finite, ``max |fp32 - fp16| <= 0.05`` (~13 8-bit levels
    at the worst pixel) and the mean is ``<= 0.005`` (~1.3 levels). The failure fp16 swappers are known for
    (green or melted faces: overflow in a normalisation) gives infinities or errors near 1.

    On CUDA the reduced dtype is float16. On CPU it is bfloat16 (``dtype`` overrides): CPU float16 kernels
    are missing or slow for many ops, while CPU autocast supports bfloat16, so the check still exercises the
    whole comparison there; bfloat16 keeps 8 mantissa bits against float16's 11, so it fails sooner. The device
    path never switches to reduced precision on CPU, whatever this says.

    ``diff_image``: the first sample's fp32 output, reduced output, and heat map of their largest per-pixel
    channel difference x ``gain`` (x 20: 0.05 -> full scale), side by side, uint8 BGR.
    """
    if mode not in ("autocast", "half"):
        raise ValueError("mode must be 'autocast' or 'half'")
    device = _device_of(module_or_fn, example_inputs)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    reason = "" if device.type == "cuda" else f"CPU: checked with {str(dtype).replace('torch.', '')}"
    with torch.inference_mode():
        ref = _first_tensor(module_or_fn(*example_inputs)).float()
        if mode == "autocast":
            with torch.autocast(device.type, dtype=dtype):
                low = _first_tensor(module_or_fn(*example_inputs))
        else:
            if not isinstance(module_or_fn, torch.nn.Module):
                raise TypeError("mode='half' needs an nn.Module (a copy is converted)")
            reduced = copy.deepcopy(module_or_fn).to(dtype)
            args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                    for a in example_inputs]
            low = _first_tensor(reduced(*args))
        low = low.float()
    diff = (ref - low).abs()
    finite = bool(torch.isfinite(low).all())
    max_err = float(diff.max()) if diff.numel() else 0.0
    mean_err = float(diff.mean()) if diff.numel() else 0.0
    passed = finite and max_err <= tolerance and mean_err <= mean_tolerance
    if not finite:
        reason = "; ".join(r for r in (reason, "non-finite values in the reduced-precision output") if r)
    elif not passed:
        over = f"max {max_err:.4g} / mean {mean_err:.4g} over tolerance {tolerance:g} / {mean_tolerance:g}"
        reason = "; ".join(r for r in (reason, over) if r)
    a, b = _to_image(ref), _to_image(torch.nan_to_num(low, nan=0.0, posinf=1.0, neginf=0.0))

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    heat = _heat(ref - low, gain)
    if heat.shape[:2] != a.shape[:2]:
        heat = cv2.resize(heat, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
    image = np.concatenate([to_u8(a), to_u8(b), heat], axis=1)
    return Fp16Report(max_err if finite else math.inf, mean_err if finite else math.inf, passed, image,
                      str(dtype).replace("torch.", ""), device.type, tolerance, mean_tolerance, reason)


# --------------------------------------------------------------------------------------------------
# Lab colour transfer in torch (blend.to_lab / lab_stats / transfer_lab / from_lab)
# --------------------------------------------------------------------------------------------------

# OpenCV's sRGB D65 matrices and white point (imgproc/color_lab.cpp: sRGB2XYZ_D65, XYZ2sRGB_D65, D65).
_RGB2XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_XYZ2RGB = ((3.240479, -1.53715, -0.498535), (-0.969256, 1.875991, 0.041556), (0.055648, -0.204043, 1.057311))
_WHITE = (0.950456, 1.0, 1.088754)
_LAB_T = 0.008856  # (6/29)^3 as OpenCV writes it


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055).clamp_min(0) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(0) ** (1.0 / 2.4) - 0.055)


def bgr_to_lab_torch(bgr: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) BGR float in [0, 255] -> float Lab (L 0..100), as ``cv2.COLOR_BGR2Lab`` on float32 [0, 1]
    (:func:`swapwatch.engines.swap.blend.to_lab`)."""
    rgb = _srgb_to_linear(bgr.flip(1) / 255.0)
    m = torch.tensor(_RGB2XYZ, dtype=bgr.dtype, device=bgr.device)
    white = torch.tensor(_WHITE, dtype=bgr.dtype, device=bgr.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,njhw->nihw", m, rgb) / white
    f = torch.where(xyz > _LAB_T, xyz.clamp_min(0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    y = xyz[:, 1:2]
    lum = torch.where(y > _LAB_T, 116.0 * f[:, 1:2] - 16.0, 903.3 * y)
    a = 500.0 * (f[:, 0:1] - f[:, 1:2])
    b = 200.0 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat([lum, a, b], dim=1)


def lab_to_bgr_torch(lab: torch.Tensor) -> torch.Tensor:
    """Float Lab (N, 3, H, W) -> BGR float in [0, 255], rounded and clipped as
    :func:`swapwatch.engines.swap.blend.from_lab` does."""
    lum, a, b = lab[:, 0:1], lab[:, 1:2], lab[:, 2:3]
    low = lum <= 8.0  # OpenCV: L <= 903.3 * 0.008856
    y = torch.where(low, lum / 903.3, ((lum + 16.0) / 116.0) ** 3)
    fy = torch.where(low, 7.787 * y + 16.0 / 116.0, (lum + 16.0) / 116.0)
    fx = a / 500.0 + fy
    fz = fy - b / 200.0
    inv = lambda f: torch.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787)
    white = torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    xyz = torch.cat([inv(fx), y, inv(fz)], dim=1) * white
    m = torch.tensor(_XYZ2RGB, dtype=lab.dtype, device=lab.device)
    rgb = torch.einsum("ij,njhw->nihw", m, xyz).clamp(0.0, 1.0)
    bgr = _linear_to_srgb(rgb).clamp(0.0, 1.0).flip(1)
    return torch.round(bgr * 255.0)


def _masked_stats(lab: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and population std (N, 3) over ``support`` (N, 1, H, W) 0/1."""
    count = support.sum(dim=(2, 3)).clamp_min(1.0)
    mean = (lab * support).sum(dim=(2, 3)) / count
    var = (((lab - mean[..., None, None]) ** 2) * support).sum(dim=(2, 3)) / count
    return mean, var.sqrt()


def _colour_support(masks: torch.Tensor) -> torch.Tensor:
    """blend.colour_support on (N, 1, S, S) masks: mask >= 0.5, or > 0 where that is empty."""
    inner = masks >= 0.5
    empty = ~inner.flatten(1).any(dim=1)
    if bool(empty.any()):
        inner = torch.where(empty.view(-1, 1, 1, 1), masks > 0, inner)
    return inner.to(masks.dtype)


def match_colour_torch(crops: torch.Tensor, references: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """:func:`swapwatch.engines.swap.blend.match_colour` for a batch on any device: crops and references
    (N, 3, S, S) BGR float in [0, 255], masks (N, 1, S, S); returns the transferred crops, rounded."""
    support = _colour_support(masks)
    src, ref = bgr_to_lab_torch(crops), bgr_to_lab_torch(references)
    mu_s, sd_s = _masked_stats(src, support)
    mu_r, sd_r = _masked_stats(ref, support)
    gain = sd_r / sd_s.clamp_min(1e-3)
    offset = mu_r - mu_s * gain
    return lab_to_bgr_torch(src * gain[..., None, None] + offset[..., None, None])


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
# Sampling grids
# --------------------------------------------------------------------------------------------------


def _normaliser(hw: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (centres at integers) -> grid_sample's align_corners=False [-1, 1] (align.py's)."""
    h, w = hw
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def _warp_grid(src_to_out: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int],
               device: torch.device) -> torch.Tensor:
    """The grid of :func:`swapwatch.engines.faces.align.affine_grid_for` (``cv2.warpAffine(src, M, out)`` for each
    (2, 3) ``M`` in ``src_to_out``), with the tiny matrix algebra done in float64 on the host: only theta
    (N x 2 x 3) goes to the device, and no ``torch.linalg.inv`` runs there (it synchronises on CUDA to
    check for singular inputs)."""
    n = src_to_out.shape[0]
    full = np.zeros((n, 3, 3))
    full[:, 2, 2] = 1.0
    full[:, :2] = [inverse_matrix(m) for m in src_to_out]  # out -> src, as align._invert_affine
    theta = _normaliser(src_hw) @ full @ np.linalg.inv(_normaliser(out_hw))
    theta_t = torch.from_numpy(np.ascontiguousarray(theta[:, :2], dtype=np.float32)).to(device)
    return F.affine_grid(theta_t, [n, 1, int(out_hw[0]), int(out_hw[1])], align_corners=False)


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
        grids = _warp_grid(np.stack([f.matrix for f in g.faces]), g.hw, (size, size), self.device)
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
            return _GraphedModule(module, torch.float16 if half else None)
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
        grid = _warp_grid(np.stack(to_roi), (size, size), (rh, rw), self.device)
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
            wm = self.labeller.watermarker
            gh, gw = wm.config.grid
            h, w = hw
            if h < gh or w < gw:
                raise ValueError(f"frame {w}x{h} is smaller than the watermark grid ({gw}x{gh} cells)")
            # Separable linear operators of cv2.resize (as labelling._resample_operator builds them):
            # INTER_AREA frame -> grid and INTER_LINEAR grid -> frame.
            ay = cv2.resize(np.eye(h, dtype=np.float32), (h, gh), interpolation=cv2.INTER_AREA)  # (gh, h)
            ax = cv2.resize(np.eye(w, dtype=np.float32), (w, gw), interpolation=cv2.INTER_AREA)  # (gw, w)
            ry = cv2.resize(np.eye(gh, dtype=np.float32), (gh, h), interpolation=cv2.INTER_LINEAR)  # (h, gh)
            rx = cv2.resize(np.eye(gw, dtype=np.float32), (gw, w), interpolation=cv2.INTER_LINEAR)  # (w, gw)
            ops = [ay, np.ascontiguousarray(ax.T), ry, np.ascontiguousarray(rx.T), wm.pattern]
            cache.watermark = tuple(torch.from_numpy(np.ascontiguousarray(o)).to(self.device) for o in ops)
        return cache.watermark

    @staticmethod
    def _box3(x: torch.Tensor) -> torch.Tensor:
        """cv2.blur 3x3 with BORDER_REFLECT on (B, h, w): for a radius of 1 that border is a replicate."""
        return F.avg_pool2d(F.pad(x[:, None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[:, 0]

    def _label(self, g: _Group, plans: Sequence[list[_Face]]) -> None:
        lab = self.labeller
        if lab is None:
            return
        rows = [b for b, i in enumerate(g.frames) if plans[i] or self.config.label_unswapped]
        if not rows:
            return
        sel = torch.tensor(rows, device=self.device) if len(rows) < len(g.frames) else None
        frames = g.work if sel is None else g.work[sel]
        if lab.label.enabled:  # VisibleLabel.draw: clip(roi * keep + paint + 0.5), truncated
            x, y, keep, paint = self._badge(g.hw)
            bh, bw = keep.shape[2:]
            roi = frames[:, :, y:y + bh, x:x + bw]
            roi.copy_(torch.floor((roi * keep + paint + 0.5).clamp_(0.0, 255.0)))
        if lab.config.watermark_enabled:
            cfg = lab.watermarker.config
            ay, axt, ry, rxt, pattern = self._watermark_ops(g.hw)
            b_, g_, r_ = frames[:, 0], frames[:, 1], frames[:, 2]
            luma = torch.floor((b_ * _GRAY_B + g_ * _GRAY_G + r_ * _GRAY_R + float(1 << (_GRAY_SHIFT - 1)))
                               / float(1 << _GRAY_SHIFT))  # exact in float32: sums stay below 2^24
            grid = torch.round(ay @ luma @ axt)  # INTER_AREA to the grid, uint8 result
            r = grid - self._box3(grid)
            rms = torch.sqrt(self._box3(r * r))
            amp = (cfg.strength + cfg.texture_gain * rms).clamp_(cfg.strength, cfg.max_strength)
            delta = torch.round(ry @ (pattern * amp) @ rxt)  # (B, H, W) whole levels, as Watermarker.embed
            frames.copy_((frames + delta[:, None]).clamp_(0.0, 255.0))
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
