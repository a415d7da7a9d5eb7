"""The device path's tensor kernels, in torch on any device: the Lab colour conversion and colour match
(ports of :mod:`~swapwatch.engines.swap.blend`'s), the sampling grids of its warps (``cv2.warpAffine`` as
``grid_sample``), and the badge and watermark arithmetic of :mod:`~swapwatch.engines.swap.labelling`. Each
reproduces the CPU code's rounding points; :class:`~swapwatch.engines.swap.device_path.DeviceFramePath` runs them
on batches (its module docstring says where the arithmetic differs from OpenCV's).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from swapwatch.engines.faces import inverse_matrix
from swapwatch.engines.swap.labelling import WatermarkConfig, Watermarker

__all__ = [
    "add_watermark",
    "bgr_to_lab_torch",
    "draw_badge",
    "lab_to_bgr_torch",
    "match_colour_torch",
    "warp_grid",
    "watermark_operators",
]


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
# Sampling grids
# --------------------------------------------------------------------------------------------------


def _normaliser(hw: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (centres at integers) -> grid_sample's align_corners=False [-1, 1] (align.py's)."""
    h, w = hw
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def warp_grid(src_to_out: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int],
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
# Badge and watermark (labelling.VisibleLabel.draw, labelling.Watermarker.embed)
# --------------------------------------------------------------------------------------------------

# OpenCV's fixed-point BGR -> gray for uint8 (imgproc/color_rgb: 15-bit coefficients, rounding shift).
_GRAY_B, _GRAY_G, _GRAY_R, _GRAY_SHIFT = 3735.0, 19235.0, 9798.0, 15


def draw_badge(frames: torch.Tensor, x: int, y: int, keep: torch.Tensor, paint: torch.Tensor) -> None:
    """Composite the badge (keep (1, 1, h, w), paint (1, 3, h, w)) at (x, y) into (B, 3, H, W) float frames, in
    place, as VisibleLabel.draw does: clip(roi * keep + paint + 0.5), truncated."""
    bh, bw = keep.shape[2:]
    roi = frames[:, :, y:y + bh, x:x + bw]
    roi.copy_(torch.floor((roi * keep + paint + 0.5).clamp_(0.0, 255.0)))


def watermark_operators(hw: tuple[int, int], watermarker: Watermarker,
                        device: torch.device) -> tuple[torch.Tensor, ...]:
    """For (H, W) frames, on ``device``: Ay, AxT, Ry, RxT (the resampling operators) and the keyed grid pattern."""
    gh, gw = watermarker.config.grid
    h, w = hw
    if h < gh or w < gw:
        raise ValueError(f"frame {w}x{h} is smaller than the watermark grid ({gw}x{gh} cells)")
    # Separable linear operators of cv2.resize (as labelling._resample_operator builds them):
    # INTER_AREA frame -> grid and INTER_LINEAR grid -> frame.
    ay = cv2.resize(np.eye(h, dtype=np.float32), (h, gh), interpolation=cv2.INTER_AREA)  # (gh, h)
    ax = cv2.resize(np.eye(w, dtype=np.float32), (w, gw), interpolation=cv2.INTER_AREA)  # (gw, w)
    ry = cv2.resize(np.eye(gh, dtype=np.float32), (gh, h), interpolation=cv2.INTER_LINEAR)  # (h, gh)
    rx = cv2.resize(np.eye(gw, dtype=np.float32), (gw, w), interpolation=cv2.INTER_LINEAR)  # (w, gw)
    ops = [ay, np.ascontiguousarray(ax.T), ry, np.ascontiguousarray(rx.T), watermarker.pattern]
    return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in ops)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur 3x3 with BORDER_REFLECT on (B, h, w): for a radius of 1 that border is a replicate."""
    return F.avg_pool2d(F.pad(x[:, None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[:, 0]


def add_watermark(frames: torch.Tensor, ops: tuple[torch.Tensor, ...], cfg: WatermarkConfig) -> None:
    """Watermarker.embed's arithmetic on (B, 3, H, W) float frames, in place, with :func:`watermark_operators`'
    ``ops``: luma, area resampling to the grid, texture-masked amplitude, bilinear upsampling, rounding add."""
    ay, axt, ry, rxt, pattern = ops
    b_, g_, r_ = frames[:, 0], frames[:, 1], frames[:, 2]
    luma = torch.floor((b_ * _GRAY_B + g_ * _GRAY_G + r_ * _GRAY_R + float(1 << (_GRAY_SHIFT - 1)))
                       / float(1 << _GRAY_SHIFT))  # exact in float32: sums stay below 2^24
    grid = torch.round(ay @ luma @ axt)  # INTER_AREA to the grid, uint8 result
    r = grid - _box3(grid)
    rms = torch.sqrt(_box3(r * r))
    amp = (cfg.strength + cfg.texture_gain * rms).clamp_(cfg.strength, cfg.max_strength)
    delta = torch.round(ry @ (pattern * amp) @ rxt)  # (B, H, W) whole levels, as Watermarker.embed
    frames.copy_((frames + delta[:, None]).clamp_(0.0, 255.0))
