"""Five-point similarity alignment: crop templates, the warp to a face crop and its exact inverse.

A face crop is the image warped by a 2x3 *similarity* matrix ``M`` that maps image pixels to crop pixels
(OpenCV's ``warpAffine`` convention: pixel centres at integer coordinates). ``M`` is the least-squares
similarity (Umeyama 1991) from the detector's 5 landmarks to a named template's 5 points.

The NumPy/OpenCV path serves the CPU; :func:`warp_batch_torch` and :func:`warp_back_batch_torch` do the same
warps for a batch on any torch device, so the frame never leaves the GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ARCFACE_112",
    "AlignedFace",
    "CropTemplate",
    "FFHQ_512",
    "INSWAPPER_128",
    "SIMSWAP_224",
    "TEMPLATES",
    "affine_grid_for",
    "align_face",
    "arcface_template",
    "estimate_alignment",
    "ffhq_template",
    "inverse_matrix",
    "simswap_template",
    "template_errors",
    "transform_points",
    "umeyama_similarity",
    "warp_back",
    "warp_back_batch_torch",
    "warp_batch_torch",
    "warp_face",
]


# --------------------------------------------------------------------------------------------------
# Umeyama
# --------------------------------------------------------------------------------------------------


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) from ``src`` to ``dst``.

    ``src`` and ``dst`` are (N, 2) corresponding points, N >= 2. Returns the (2, 3) float64 matrix ``M``
    minimising ``sum ||M @ [src_i, 1] - dst_i||^2`` (S. Umeyama, "Least-squares estimation of transformation
    parameters between two point patterns", IEEE TPAMI 13(4), 1991).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = float((src_c**2).sum() / n)
    if var_src <= 1e-12:
        raise ValueError("source points are all coincident: similarity is undefined")
    cov = dst_c.T @ src_c / n
    u, sing, vt = np.linalg.svd(cov)
    # Flip the last axis when U V^T would be a reflection (Umeyama's S matrix); det(U)det(V) also covers the
    # rank-1 (collinear points) case, where det(cov) is 0.
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sing * d).sum() / var_src)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_dst - scale * rot @ mu_src
    return matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (..., 2) points (float64 result)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def inverse_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix: crop pixels back to image pixels."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


# --------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CropTemplate:
    """Where the 5 landmarks go in a ``size`` x ``size`` crop.

    ``points`` is (K, 5, 2) float64, read-only: K > 1 is a multi-template set (frontal, left, right, ...)
    of which the one with the lowest error is used for each face.
    """

    name: str
    size: int
    points: np.ndarray

    def __post_init__(self) -> None:
        pts = np.array(self.points, dtype=np.float64)  # a private copy, so that freezing it is safe
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[1:] != (5, 2) or pts.shape[0] < 1:
            raise ValueError(f"template points must be (K, 5, 2), got {pts.shape}")
        if int(self.size) <= 0:
            raise ValueError(f"template size must be positive, got {self.size}")
        pts.setflags(write=False)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "size", int(self.size))

    @property
    def num_templates(self) -> int:
        return int(self.points.shape[0])


# InsightFace's ArcFace 5 points at 112 (insightface.utils.face_align.arcface_dst), kept in float32 as
# InsightFace stores them, so our matrices agree with ``estimate_norm`` to float64 rounding.
_ARCFACE_112_F32 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

# InsightFace's older multi-pose set at 112 (left profile, left, frontal, right, right profile), used by
# SimSwap's insightface_func/utils/face_align_ffhqandnewarc.py (``src1..src5``), float32 there too.
_SIMSWAP_112_F32 = np.array(
    [
        [[51.642, 50.115], [57.617, 49.990], [35.740, 69.007], [51.157, 89.050], [57.025, 89.702]],
        [[45.031, 50.118], [65.568, 50.872], [39.677, 68.111], [45.177, 86.190], [64.246, 86.758]],
        [[39.730, 51.138], [72.270, 51.138], [56.000, 68.493], [42.463, 87.010], [69.537, 87.010]],
        [[46.845, 50.872], [67.382, 50.118], [72.737, 68.111], [48.167, 86.758], [67.236, 86.190]],
        [[54.796, 49.990], [60.771, 50.115], [76.673, 69.007], [55.388, 89.702], [61.257, 89.050]],
    ],
    dtype=np.float32,
)

# SimSwap's FFHQ 5 points at 512 (``ffhq_src`` in the same SimSwap file, float64 there).
_FFHQ_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)


def arcface_template(size: int) -> CropTemplate:
    """The ArcFace template at ``size``, exactly as ``insightface.utils.face_align.estimate_norm`` builds it.

    Sizes that are multiples of 112 scale the 112 points by ``size / 112``; otherwise (multiples of 128, the
    inswapper crop) they scale by ``size / 128`` and shift x by ``8 * size / 128`` (the 112 face centred in
    128).
    The arithmetic stays in float32 as InsightFace's does.
    """
    if size % 112 == 0:
        ratio, diff_x = float(size) / 112.0, 0.0
    elif size % 128 == 0:
        ratio = float(size) / 128.0
        diff_x = 8.0 * ratio
    else:
        raise ValueError(f"InsightFace's ArcFace crop needs a multiple of 112 or 128, got {size}")
    pts = _ARCFACE_112_F32 * np.float32(ratio)
    pts[:, 0] += np.float32(diff_x)
    return CropTemplate(f"arcface_{size}" if diff_x == 0 else f"inswapper_{size}", size, pts)


def simswap_template(size: int = 224) -> CropTemplate:
    """SimSwap's multi-template alignment (``estimate_norm(..., mode=None)``): the 112 set x ``size / 112``."""
    pts = _SIMSWAP_112_F32 * np.float32(size) / np.float32(112)  # float32 arithmetic as in SimSwap
    return CropTemplate(f"simswap_{size}", size, pts)


def ffhq_template(size: int = 512) -> CropTemplate:
    """SimSwap's FFHQ template (``mode='ffhq'``) scaled to ``size``; SimSwap 512 uses it at 512."""
    return CropTemplate(f"ffhq_{size}", size, _FFHQ_512 * size / 512)


# ArcFace recognition crop (InsightFace / SimSwap identity input).
ARCFACE_112 = arcface_template(112)
# inswapper_128's target crop: the ArcFace points at ratio 128/128 = 1 shifted 8 px right (InsightFace's
# estimate_norm with image_size=128).
INSWAPPER_128 = arcface_template(128)
# SimSwap 224 target crop: InsightFace's older 5-pose set x 2, lowest-error pose per face.
SIMSWAP_224 = simswap_template(224)
# SimSwap 512 target crop: the FFHQ template.
FFHQ_512 = ffhq_template(512)

TEMPLATES: Mapping[str, CropTemplate] = MappingProxyType(
    {t.name: t for t in (ARCFACE_112, INSWAPPER_128, SIMSWAP_224, FFHQ_512)}
)


# --------------------------------------------------------------------------------------------------
# Alignment and warps (NumPy / OpenCV)
# --------------------------------------------------------------------------------------------------


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    lmk = np.asarray(landmarks, dtype=np.float64)
    if lmk.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got {lmk.shape}")
    return lmk


def template_errors(landmarks: np.ndarray, template: CropTemplate) -> tuple[np.ndarray, np.ndarray]:
    """Per-template matrices (K, 2, 3) and errors (K,).

    The error is the sum over the 5 points of the Euclidean residual in crop pixels, the criterion SimSwap's
    (and InsightFace's older) multi-template ``estimate_norm`` minimises.
    """
    lmk = _check_landmarks(landmarks)
    mats = np.stack([umeyama_similarity(lmk, pts) for pts in template.points])
    residual = np.einsum("kij,nj->kni", mats[:, :, :2], lmk) + mats[:, None, :, 2] - template.points
    return mats, np.sqrt((residual**2).sum(axis=-1)).sum(axis=-1)


def _best(landmarks: np.ndarray, template: CropTemplate) -> tuple[np.ndarray, int]:
    mats, errors = template_errors(landmarks, template)
    index = int(np.argmin(errors))  # first minimum on ties, as SimSwap's strict "<" does
    return mats[index], index


def estimate_alignment(landmarks: np.ndarray, template: CropTemplate) -> np.ndarray:
    """(2, 3) float64 similarity mapping image pixels to ``template`` crop pixels for these 5 landmarks."""
    return _best(landmarks, template)[0]


def warp_face(
    image: np.ndarray,
    matrix: np.ndarray,
    size: int | tuple[int, int],
    *,
    border_mode: int = cv2.BORDER_CONSTANT,
    border_value: float = 0.0,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Crop ``size`` (or ``(h, w)``) pixels from ``image`` with ``matrix`` (image -> crop).

    The defaults (bilinear, constant black border) are InsightFace's and SimSwap's; ``cv2.BORDER_REFLECT``
    avoids black corners when a face sits at the frame's edge.
    """
    h, w = (size, size) if isinstance(size, int) else size
    return cv2.warpAffine(
        image,
        np.asarray(matrix, dtype=np.float64),
        (int(w), int(h)),
        flags=interpolation,
        borderMode=border_mode,
        borderValue=border_value,
    )


def warp_back(
    crop: np.ndarray,
    matrix: np.ndarray,
    image_shape: tuple[int, ...],
    *,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, np.ndarray]:
    """Put a crop back into image space: ``(warped crop, validity mask)``, both image-sized.

    ``matrix`` is the image -> crop matrix used by :func:`warp_face`; the crop is sampled through its inverse
    with the same interpolation. The mask (H, W) float32 in [0, 1] is the warped all-ones crop: 1 where the
    image pixel comes wholly from inside the crop, fractional on its border, 0 outside.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    inv = inverse_matrix(matrix)
    flags = {"flags": interpolation, "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    warped = cv2.warpAffine(crop, inv, (w, h), **flags)
    mask = cv2.warpAffine(np.ones(crop.shape[:2], dtype=np.float32), inv, (w, h), **flags)
    return warped, np.clip(mask, 0.0, 1.0)


@dataclass(frozen=True)
class AlignedFace:
    """A face crop and how it was made: ``matrix`` maps image pixels to crop pixels."""

    crop: np.ndarray
    matrix: np.ndarray
    template: str
    template_index: int = 0


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    template: CropTemplate,
    *,
    border_mode: int = cv2.BORDER_CONSTANT,
) -> AlignedFace:
    """Warp the face with these 5 landmarks to ``template``'s crop."""
    matrix, index = _best(landmarks, template)
    crop = warp_face(image, matrix, template.size, border_mode=border_mode)
    return AlignedFace(crop=crop, matrix=matrix, template=template.name, template_index=index)


# --------------------------------------------------------------------------------------------------
# Batched warps (torch, any device)
# --------------------------------------------------------------------------------------------------


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _as_matrices(matrices: np.ndarray | torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(matrices).to(dtype=torch.float64)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != (2, 3):
        raise ValueError(f"expected (N, 2, 3) matrices, got {tuple(m.shape)}")
    return m


def _invert_affine(m: torch.Tensor) -> torch.Tensor:
    a_inv = torch.linalg.inv(m[:, :, :2])
    return torch.cat([a_inv, -(a_inv @ m[:, :, 2:])], dim=2)


def _normalizer(hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """3x3 map from pixel coordinates (centres at integers) to grid_sample's align_corners=False [-1, 1]."""
    h, w = hw
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
        device=device,
    )


def _sampling_grid(
    out_to_in: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """Grid for grid_sample from (N, 2, 3) pixel-space matrices mapping *output* pixels to *input* pixels."""
    n = out_to_in.shape[0]
    dev = out_to_in.device
    bottom = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64, device=dev).expand(n, 1, 3)
    full = torch.cat([out_to_in, bottom], dim=1)
    # theta = N_in . (out -> in) . N_out^-1 acts on normalised output coordinates.
    theta = _normalizer(in_hw, dev) @ full @ torch.linalg.inv(_normalizer(out_hw, dev))
    return F.affine_grid(theta[:, :2].to(dtype), [n, 1, out_hw[0], out_hw[1]], align_corners=False)


def affine_grid_for(
    matrices: np.ndarray | torch.Tensor,
    src_hw: tuple[int, int],
    out_size: int | tuple[int, int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``grid_sample`` grid (N, S, S, 2) reproducing ``cv2.warpAffine(src, M, (S, S))`` for each M.

    ``matrices`` (N, 2, 3) map source pixels to output pixels, as for :func:`warp_face`.
    """
    m = _as_matrices(matrices)
    if device is not None:
        m = m.to(device)
    return _sampling_grid(_invert_affine(m), _hw(src_hw), _hw(out_size), dtype)


def warp_batch_torch(
    images: torch.Tensor,
    matrices: np.ndarray | torch.Tensor,
    out_size: int | tuple[int, int],
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Batched :func:`warp_face`: (N, C, H, W) float images -> (N, C, S, S) crops, on the images' device.

    One matrix may be shared by all images; ``padding_mode="reflection"`` plays ``BORDER_REFLECT``'s part.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError("expected a float (N, C, H, W) tensor")
    m = _as_matrices(matrices).to(images.device)
    if m.shape[0] == 1 and images.shape[0] > 1:
        m = m.expand(images.shape[0], 2, 3)
    grid = _sampling_grid(_invert_affine(m), (images.shape[2], images.shape[3]), _hw(out_size), images.dtype)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def warp_back_batch_torch(
    crops: torch.Tensor,
    matrices: np.ndarray | torch.Tensor,
    image_hw: tuple[int, int],
    *,
    mode: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`warp_back`: crops (N, C, S, S) -> (image-sized crops (N, C, H, W), masks (N, 1, H, W)).

    ``matrices`` are the image -> crop matrices used to make the crops.
    """
    if crops.ndim != 4 or not crops.is_floating_point():
        raise ValueError("expected a float (N, C, S, S) tensor")
    m = _as_matrices(matrices).to(crops.device)
    if m.shape[0] == 1 and crops.shape[0] > 1:
        m = m.expand(crops.shape[0], 2, 3)
    # Sampling the crop at M . p for each image pixel p is warpAffine with the inverted matrix.
    grid = _sampling_grid(m, (crops.shape[2], crops.shape[3]), _hw(image_hw), crops.dtype)
    warped = F.grid_sample(crops, grid, mode=mode, padding_mode="zeros", align_corners=False)
    ones = crops.new_ones((crops.shape[0], 1, crops.shape[2], crops.shape[3]))
    mask = F.grid_sample(ones, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return warped, mask.clamp_(0.0, 1.0)
