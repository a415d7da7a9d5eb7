"""The swapper's generator on the device path: :class:`DeviceGenerator` (a swapper's generator as torch code),
:class:`GraphedModule` (its CUDA-graph replay, fixed shapes bucketed by face count) and :func:`fp16_check`
(fp32 against reduced precision on the batch's own inputs, before the path runs the generator in fp16).
:class:`~swapwatch.engines.swap.device_path.DeviceFramePath` decides precision and graphs with these.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from swapwatch.engines.swap.swapper import SourceIdentity, Swapper

log = logging.getLogger(__name__)

__all__ = ["DeviceGenerator", "Fp16Report", "GraphedModule", "fp16_check"]


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


class GraphedModule:
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
