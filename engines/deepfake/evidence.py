"""Identity-independent evidence of a face swap, measured on an aligned face crop near native resolution.

A swapper renders the inner face at 128-256 px and pastes it back under a feathered mask (FIELD_NOTES.md,
"Identity-independent evidence of a face swap"). Each feature compares the inner face with the frame just
around it *in the same crop*, so whatever is common to the person, the camera and the compression cancels and
a real face sits near a person-independent level (a log-ratio near a constant):

- ``hf``: log mean |3x3 Laplacian of luma| inside the face over the ring around its outline (overall detail).
- ``noise``: log of the edge-blind noise level (Immerkaer's 3x3 kernel on luma, weighted towards low-gradient
  pixels) inside over the ring: a generated face carries less sensor noise than the skin and hair around it.
- ``chroma_noise``: as ``noise`` on the two colour-difference channels (R-Y, B-Y).
- ``seam``: in the band where blend masks fall, log(mean |derivative of blurred luma across the face outline|
  / mean |derivative along it|), minus the mean of the same in the bands just inside and outside it: a blend
  step runs along the outline, while skin texture and shading are about as strong in both directions.
- ``seam_chroma``: as ``seam`` on R-Y and B-Y (a skin-tone step).
- ``seam_noise``: as ``seam`` on the log local noise level (a noise-level step, Face X-ray's boundary).

Regions come from the crop template's 5 points alone: the face outline that the swap masks are drawn from
(``swap.face_outline``), its signed distance in eye-to-mouth distances (negative inside), and the normal to it.
:class:`EvidenceFeatures` (torch, ONNX-exportable: fixed-kernel convolutions, abs, log, masked means) and
:func:`evidence_numpy` (the reference) compute the same (N, K) columns, :func:`feature_names` order: the
features, then the raw means of luma and colour inside and in the ring, which :func:`flicker` turns into a
track's temporal evidence. Crops are the scorer's contract (:func:`to_input` of :func:`crop_faces`) at
``EvidenceConfig.size``: use :func:`evidence_crops`, which also returns how much each face was upsampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from swapwatch.engines.deepfake.detector import crop_faces, detector_template, to_input
from swapwatch.engines.faces import CropTemplate, estimate_alignment
from swapwatch.engines.swap import face_outline

__all__ = [
    "EVIDENCE_FEATURES", "STAT_NAMES", "EvidenceConfig", "EvidenceFeatures", "evidence_crops", "evidence_numpy",
    "evidence_regions", "feature_names", "flicker", "warp_scales",
]

EVIDENCE_FEATURES = ("hf", "noise", "chroma_noise", "seam", "seam_chroma", "seam_noise")
STAT_NAMES = ("inner_y", "inner_cr", "inner_cb", "ring_y", "ring_cr", "ring_cb")

# Luma (BT.601) and the two colour differences, from BGR.
_YCC = np.array([[0.114, 0.587, 0.299], [-0.114, -0.587, 0.701], [0.886, -0.587, -0.299]], np.float64)
_LAPLACE = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)  # blind to straight edges and ramps
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64) / 8.0


@dataclass(frozen=True)
class EvidenceConfig:
    """Crop and regions. Distances are signed distances to the face outline in eye-to-mouth distances (emd),
    negative inside; blur widths are in emd too, so a config means the same face regions at every size."""

    size: int = 256
    face_scale: float = 0.75  # the scorer's template geometry (detector_template)
    features: tuple[str, ...] = EVIDENCE_FEATURES
    stats: bool = True  # append STAT_NAMES (for flicker)
    inner: float = -0.3  # the inner face: d < inner (where a swap mask is fully on)
    ring: tuple[float, float] = (0.05, 0.35)  # just outside the outline: mostly skin (forehead, jaw, temples)
    seam: tuple[float, float] = (-0.45, 0.0)  # where feathered swap and self-blend masks fall off
    seam_inside: tuple[float, float] = (-0.9, -0.45)
    seam_outside: tuple[float, float] = (0.0, 0.45)
    blur: float = 0.03  # Gaussian sigma before the cross-outline derivative (colour seams)
    noise_blur: float = 0.06  # Gaussian sigma of the local noise map (noise seams)
    flat: float = 1.0  # noise weight 1 / (1 + (g / (flat * mean g))^2): low-gradient pixels count most
    eps: float = 0.01  # added to every mean before its log (0..255 levels)

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(EVIDENCE_FEATURES)
        if unknown or not self.features:
            raise ValueError(f"unknown evidence features {sorted(unknown)}; choose from {EVIDENCE_FEATURES}")
        if self.size < 32:
            raise ValueError("evidence crops must be at least 32 px")

    @property
    def template(self) -> CropTemplate:
        return detector_template(self.size, self.face_scale)


def feature_names(config: EvidenceConfig) -> tuple[str, ...]:
    """The output columns in order."""
    return tuple(config.features) + (STAT_NAMES if config.stats else ())


# --------------------------------------------------------------------------------------------------
# Fixed geometry: kernels and region masks
# --------------------------------------------------------------------------------------------------


def _gauss1d(sigma: float) -> np.ndarray:
    r = max(math.ceil(3.0 * sigma), 1)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


@dataclass(frozen=True)
class _Geometry:
    """Everything fixed for a config: kernels, margins and the masks on the common valid area."""

    emd: float  # eye-to-mouth distance in crop px
    g_blur: np.ndarray  # 1-D Gaussian for colour seams
    g_noise: np.ndarray  # 1-D Gaussian for the local noise map
    margin: int  # pixels every map loses at each side (valid convolutions)
    masks: dict[str, np.ndarray]  # name -> (H, W) float64 0/1 on the valid area
    normal: np.ndarray  # (2, H, W): unit outward normal to the outline (x, y)


def evidence_regions(config: EvidenceConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """(signed distance (S, S) in emd, outward normal (2, S, S), emd in px) of the config's crop."""
    template = config.template
    size = config.size
    pts = template.points[0]
    emd = float(np.linalg.norm(pts[3:5].mean(axis=0) - pts[0:2].mean(axis=0)))
    # Drawn at 4x and area-averaged back: sub-pixel outline, the same at every size.
    up = 4
    canvas = np.zeros((size * up, size * up), np.uint8)
    outline = face_outline(template) * up + (up - 1) / 2.0
    cv2.fillPoly(canvas, [np.round(outline * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    inside = canvas > 127
    d_out = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5)
    d_in = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
    signed = cv2.resize((d_out - d_in) / (up * emd), (size, size), interpolation=cv2.INTER_AREA)
    smooth = cv2.GaussianBlur(signed.astype(np.float64), (0, 0), 0.05 * emd)
    gy, gx = np.gradient(smooth)
    norm = np.maximum(np.hypot(gx, gy), 1e-12)
    return signed.astype(np.float64), np.stack([gx / norm, gy / norm]), emd


def _geometry(config: EvidenceConfig) -> _Geometry:
    signed, normal, emd = evidence_regions(config)
    g_blur, g_noise = _gauss1d(config.blur * emd), _gauss1d(config.noise_blur * emd)
    margin = max(len(g_blur) // 2 + 1, len(g_noise) // 2 + 2)
    s = config.size
    d = signed[margin:s - margin, margin:s - margin]

    def band(lo: float, hi: float) -> np.ndarray:
        return ((d >= lo) & (d < hi)).astype(np.float64)

    masks = {"inner": (d < config.inner).astype(np.float64), "ring": band(*config.ring),
             "seam": band(*config.seam), "seam_in": band(*config.seam_inside), "seam_out": band(*config.seam_outside)}
    empty = [k for k, m in masks.items() if m.sum() < 16]
    if empty:
        raise ValueError(f"evidence regions {empty} are (almost) empty at size {s}: check the bands")
    return _Geometry(emd, g_blur, g_noise, margin, masks, normal[:, margin:s - margin, margin:s - margin])


# --------------------------------------------------------------------------------------------------
# Torch (ONNX-exportable)
# --------------------------------------------------------------------------------------------------


def _kernel(k: np.ndarray, channels: int) -> torch.Tensor:
    return torch.tensor(np.broadcast_to(k, (channels, 1, *k.shape)).copy(), dtype=torch.float32)


class EvidenceFeatures(nn.Module):
    """(N, 3, S, S) float32 BGR 0..255 aligned crops -> (N, K) float32, columns :func:`feature_names`.

    Only fixed-kernel convolutions, abs, log, products and sums with constant masks (opset 17 exports it as
    Conv/Abs/Log/Mul/ReduceSum); every region is a buffer computed from the template's 5 points."""

    def __init__(self, config: EvidenceConfig = EvidenceConfig()) -> None:
        super().__init__()
        self.config = config
        self.names = feature_names(config)
        geo = _geometry(config)
        self.margin = geo.margin
        self.register_buffer("ycc", torch.tensor(_YCC, dtype=torch.float32)[:, :, None, None])
        self.register_buffer("laplace", _kernel(_LAPLACE, 1))
        self.register_buffer("immerkaer", _kernel(_IMMERKAER, 3))
        self.register_buffer("sobel", torch.cat([_kernel(_SOBEL_X, 1), _kernel(_SOBEL_X.T, 1)]))
        self.register_buffer("sobel3", torch.cat([_kernel(_SOBEL_X, 3), _kernel(_SOBEL_X.T, 3)], 1).view(6, 1, 3, 3))
        self.register_buffer("blur_x", _kernel(geo.g_blur[None, :], 3))
        self.register_buffer("blur_y", _kernel(geo.g_blur[:, None], 3))
        self.register_buffer("nblur_x", _kernel(geo.g_noise[None, :], 1))
        self.register_buffer("nblur_y", _kernel(geo.g_noise[:, None], 1))
        for name, m in geo.masks.items():
            self.register_buffer(f"m_{name}", torch.tensor(m, dtype=torch.float32)[None, None])
        self.register_buffer("normal", torch.tensor(geo.normal, dtype=torch.float32)[None])  # (1, 2, H, W)

    def _crop(self, x: torch.Tensor, lost: int) -> torch.Tensor:
        c = self.margin - lost  # a map that lost ``lost`` px per side still has ``c`` too many
        return x[:, :, c:x.shape[2] - c, c:x.shape[3] - c] if c else x

    def _mean(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum(dim=(2, 3)) / mask.sum()

    def _wmean(self, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x * w * mask).sum(dim=(2, 3)) / (w * mask).sum(dim=(2, 3))

    def _across(self, x: torch.Tensor, lost: int) -> tuple[torch.Tensor, torch.Tensor]:
        """|derivative across the outline| and |derivative along it| of each channel of x (Sobel gradient
        dotted with the outline's normal and with its tangent)."""
        c = x.shape[1]
        g = F.conv2d(x, self.sobel3 if c == 3 else self.sobel, groups=c)  # (N, 2c, ...) x, y pairs
        g = self._crop(g, lost + 1)
        gx, gy = g[:, 0::2], g[:, 1::2]
        nx, ny = self.normal[:, 0:1], self.normal[:, 1:2]
        return (gx * nx + gy * ny).abs(), (gy * nx - gx * ny).abs()

    def _seam(self, across: torch.Tensor, along: torch.Tensor) -> torch.Tensor:
        eps = self.config.eps

        def aniso(m: torch.Tensor) -> torch.Tensor:  # log(across / along) in a band: texture and light cancel
            return torch.log(self._mean(across, m) + eps) - torch.log(self._mean(along, m) + eps)

        return aniso(self.m_seam) - 0.5 * (aniso(self.m_seam_in) + aniso(self.m_seam_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.config.eps
        want = set(self.config.features)
        ycc = F.conv2d(x, self.ycc)
        luma = ycc[:, 0:1]
        cols: dict[str, torch.Tensor] = {}
        if "hf" in want:
            lap = self._crop(F.conv2d(luma, self.laplace).abs(), 1)
            cols["hf"] = torch.log(self._mean(lap, self.m_inner) + eps) - torch.log(self._mean(lap, self.m_ring) + eps)
        if want & {"noise", "chroma_noise", "seam_noise"}:
            res = F.conv2d(ycc, self.immerkaer, groups=3).abs()  # (N, 3, S-2, S-2)
            grad = F.conv2d(luma, self.sobel).abs().sum(dim=1, keepdim=True)
            g = self._crop(grad, 1)
            union = self.m_inner + self.m_ring
            scale = self.config.flat * self._mean(g, union)[:, :, None, None] + eps
            w = 1.0 / (1.0 + (g / scale) ** 2)
            r = self._crop(res, 1)
            for name, ch in (("noise", r[:, 0:1]), ("chroma_noise", r[:, 1:2] + r[:, 2:3])):
                if name in want:
                    cols[name] = (torch.log(self._wmean(ch, w, self.m_inner) + eps)
                                  - torch.log(self._wmean(ch, w, self.m_ring) + eps))
            if "seam_noise" in want:
                level = F.conv2d(F.conv2d(res[:, 0:1], self.nblur_x), self.nblur_y)
                lost = 1 + self.nblur_x.shape[3] // 2
                cols["seam_noise"] = self._seam(*self._across(torch.log(level + eps), lost))
        if want & {"seam", "seam_chroma"}:
            blurred = F.conv2d(F.conv2d(ycc, self.blur_x, groups=3), self.blur_y, groups=3)
            across, along = self._across(blurred, self.blur_x.shape[3] // 2)
            if "seam" in want:
                cols["seam"] = self._seam(across[:, 0:1], along[:, 0:1])
            if "seam_chroma" in want:
                cols["seam_chroma"] = self._seam(across[:, 1:2] + across[:, 2:3], along[:, 1:2] + along[:, 2:3])
        out = [cols[name] for name in self.config.features]
        if self.config.stats:
            c = self._crop(ycc, 0)
            out += [self._mean(c, self.m_inner), self._mean(c, self.m_ring)]
        return torch.cat(out, dim=1)


# --------------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------------


def _correlate(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Valid 2-D correlation of (N, H, W) with (kh, kw), as conv2d computes it."""
    win = np.lib.stride_tricks.sliding_window_view(x, k.shape, axis=(1, 2))
    return np.einsum("nhwij,ij->nhw", win, k)


def evidence_numpy(crops: np.ndarray, config: EvidenceConfig = EvidenceConfig()) -> np.ndarray:
    """The reference of :class:`EvidenceFeatures` in float64 NumPy: (N, 3, S, S) BGR -> (N, K) float32."""
    geo = _geometry(config)
    mg, eps, want = geo.margin, config.eps, set(config.features)
    x = np.asarray(crops, np.float64)
    ycc = np.einsum("oc,nchw->nohw", _YCC, x)
    m = geo.masks

    def crop(a: np.ndarray, lost: int) -> np.ndarray:
        c = mg - lost
        return a[:, c:a.shape[1] - c, c:a.shape[2] - c] if c else a

    def mean(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return (a * mask).sum(axis=(1, 2)) / mask.sum()

    def wmean(a: np.ndarray, w: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return (a * w * mask).sum(axis=(1, 2)) / (w * mask).sum(axis=(1, 2))

    def across(a: np.ndarray, lost: int) -> tuple[np.ndarray, np.ndarray]:
        gx, gy = crop(_correlate(a, _SOBEL_X), lost + 1), crop(_correlate(a, _SOBEL_X.T), lost + 1)
        nx, ny = geo.normal
        return np.abs(gx * nx + gy * ny), np.abs(gy * nx - gx * ny)

    def seam(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        a, t = pair
        s, i, o = (np.log(mean(a, m[k]) + eps) - np.log(mean(t, m[k]) + eps) for k in ("seam", "seam_in", "seam_out"))
        return s - 0.5 * (i + o)

    def blur(a: np.ndarray, g: np.ndarray) -> np.ndarray:
        return _correlate(_correlate(a, g[None, :]), g[:, None])

    luma, cr, cb = ycc[:, 0], ycc[:, 1], ycc[:, 2]
    cols: dict[str, np.ndarray] = {}
    if "hf" in want:
        lap = crop(np.abs(_correlate(luma, _LAPLACE)), 1)
        cols["hf"] = np.log(mean(lap, m["inner"]) + eps) - np.log(mean(lap, m["ring"]) + eps)
    if want & {"noise", "chroma_noise", "seam_noise"}:
        res = [np.abs(_correlate(c, _IMMERKAER)) for c in (luma, cr, cb)]
        g = crop(np.abs(_correlate(luma, _SOBEL_X)) + np.abs(_correlate(luma, _SOBEL_X.T)), 1)
        scale = config.flat * mean(g, m["inner"] + m["ring"])[:, None, None] + eps
        w = 1.0 / (1.0 + (g / scale) ** 2)
        for name, ch in (("noise", crop(res[0], 1)), ("chroma_noise", crop(res[1] + res[2], 1))):
            cols[name] = np.log(wmean(ch, w, m["inner"]) + eps) - np.log(wmean(ch, w, m["ring"]) + eps)
        level = blur(res[0], geo.g_noise)
        cols["seam_noise"] = seam(across(np.log(level + eps), 1 + len(geo.g_noise) // 2))
    if want & {"seam", "seam_chroma"}:
        lost = len(geo.g_blur) // 2
        cols["seam"] = seam(across(blur(luma, geo.g_blur), lost))
        (a_cr, t_cr), (a_cb, t_cb) = across(blur(cr, geo.g_blur), lost), across(blur(cb, geo.g_blur), lost)
        cols["seam_chroma"] = seam((a_cr + a_cb, t_cr + t_cb))
    out = [cols[name] for name in config.features]
    if config.stats:
        c = ycc[:, :, mg:ycc.shape[2] - mg, mg:ycc.shape[3] - mg]
        for region in ("inner", "ring"):
            out += list(((c * m[region]).sum(axis=(2, 3)) / m[region].sum()).T)
    return np.stack(out, axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Crops and temporal evidence
# --------------------------------------------------------------------------------------------------


def warp_scales(landmarks: Sequence[np.ndarray], template: CropTemplate) -> np.ndarray:
    """(N,) crop px per frame px of each face's alignment: > 1 means the crop upsamples the face (its pixel-level
    evidence is then blurred by the warp and not comparable with a face seen at native resolution)."""
    return np.array([math.sqrt(abs(np.linalg.det(estimate_alignment(np.asarray(lm, np.float64), template)[:, :2])))
                     for lm in landmarks], np.float64)


def evidence_crops(frame_bgr: np.ndarray, landmarks: Sequence[np.ndarray],
                   config: EvidenceConfig = EvidenceConfig()) -> tuple[np.ndarray, np.ndarray]:
    """((N, 3, S, S) float32 input for :class:`EvidenceFeatures`, (N,) warp scales). Same warp as the scorer's
    ``crop_faces`` (area shrink for faces larger than the crop), at the evidence size."""
    template = config.template
    return to_input(crop_faces(frame_bgr, landmarks, template)), warp_scales(landmarks, template)


def flicker(values: np.ndarray, names: Sequence[str] = STAT_NAMES, *, floor: float = 0.25) -> float:
    """Temporal evidence of one track: log of (RMS frame-to-frame change of inner-minus-ring luma and colour) over
    (RMS frame-to-frame change of the ring's own luma and colour), each plus ``floor`` levels. A real face moves
    with its surroundings (ratio small); a pasted face re-coloured per frame flickers against them. ``values``:
    (T, K) rows of :class:`EvidenceFeatures` (or just the STAT_NAMES columns) for consecutive frames; NaN for
    fewer than 3 frames."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or len(values) < 3:
        return float("nan")
    col = {n: i for i, n in enumerate(names)}
    inner = values[:, [col[f"inner_{c}"] for c in ("y", "cr", "cb")]]
    ring = values[:, [col[f"ring_{c}"] for c in ("y", "cr", "cb")]]
    # First differences: slow drifts (a head turning, an auto-exposure ramp) are not flicker.
    rel = np.sqrt(np.mean(np.sum(np.diff(inner - ring, axis=0) ** 2, axis=1)))
    own = np.sqrt(np.mean(np.sum(np.diff(ring, axis=0) ** 2, axis=1)))
    return float(np.log((rel + floor) / (own + floor)))
