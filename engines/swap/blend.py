"""Masks, paste-back and colour matching shared by every swapper.

- :class:`FeatherMask` draws a soft face mask (brows to chin, no hair or background) in a template's crop,
  derived from the template's 5 points alone, so it needs no parsing model; and a feathered mouth ellipse.
- :func:`paste_back` warps a crop and its mask back into the frame with the exact inverse of the alignment
  matrix, inside the face's rectangle only, and alpha-blends; pixels where the mask is 0 stay bit-identical.
- :func:`match_colour` moves a crop's LAB mean and spread inside the mask onto a reference's (Reinhard).
- :func:`poisson_paste` is the seamless-clone variant of :func:`paste_back`.
"""

from __future__ import annotations

import cv2
import numpy as np

from swapwatch.engines.faces import ARCFACE_112, CropTemplate, inverse_matrix, umeyama_similarity

__all__ = [
    "FeatherMask", "colour_support", "face_outline", "from_lab", "lab_stats", "match_colour", "paste_back",
    "paste_roi", "poisson_paste", "to_lab", "transfer_lab",
]

# Face outline (brow tops, temples, cheeks, jaw, chin) drawn once in ArcFace-112 crop coordinates, where
# the eyes sit at y~51.6 and the mouth corners at y~92.3. It stays inside the skin: above the brows but
# below the hairline, inside the cheek contour, down to the chin (mouth + ~0.6 eye-mouth distances).
# Any template gets it through the similarity between the ArcFace points and the template's points.
_OUTLINE_ARCFACE_112 = np.array(
    [
        [56.0, 21.0], [71.0, 22.5], [84.0, 28.5], [91.0, 40.0], [92.5, 55.0], [92.0, 68.0],
        [89.0, 82.0], [84.0, 95.0], [77.0, 106.0], [67.0, 113.5], [56.0, 116.0], [45.0, 113.5],
        [35.0, 106.0], [28.0, 95.0], [23.0, 82.0], [20.0, 68.0], [19.5, 55.0], [21.0, 44.0],
        [28.0, 28.5], [41.0, 22.5],
    ],
    dtype=np.float64,
)
_ARCFACE_POINTS = ARCFACE_112.points[0]
# Values this small change no uint8 pixel (255 / 512 < 0.5 level); zeroing them keeps the support tight.
_NEGLIGIBLE = 1.0 / 512.0


def _pose_index(template: CropTemplate, index: int | None) -> int:
    # Multi-pose sets (SimSwap's 5 poses) are ordered profile-left .. profile-right: the middle is frontal.
    if index is None:
        return template.num_templates // 2
    if not 0 <= index < template.num_templates:
        raise ValueError(f"template {template.name} has {template.num_templates} poses, got index {index}")
    return int(index)


def _template_points(template: CropTemplate, size: int, index: int | None) -> np.ndarray:
    return template.points[_pose_index(template, index)] * (size / template.size)


def face_outline(template: CropTemplate, size: int | None = None, *, index: int | None = None) -> np.ndarray:
    """The face outline polygon (K, 2) float64 in the crop of ``template`` at ``size`` (default its own)."""
    size = template.size if size is None else int(size)
    m = umeyama_similarity(_ARCFACE_POINTS, _template_points(template, size, index))
    return _OUTLINE_ARCFACE_112 @ m[:, :2].T + m[:, 2]


def _face_scale(points: np.ndarray) -> float:
    """Eye-centre to mouth-centre distance in crop pixels: the unit every mask width is measured in."""
    return float(np.linalg.norm(points[3:5].mean(axis=0) - points[0:2].mean(axis=0)))


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    canvas = np.zeros(shape, dtype=np.uint8)
    shift = 4  # sub-pixel vertices: the outline is in float crop coordinates
    pts = np.round(polygon * (1 << shift)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_AA, shift=shift)
    return canvas


def _feather(binary: np.ndarray, erode_px: float, sigma_px: float) -> np.ndarray:
    """Erode a 0/255 mask by ``erode_px``, then Gaussian-blur it: float32 in [0, 1], exact 0 and 1 plateaus."""
    mask = binary
    r = int(round(erode_px))
    if r > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        mask = cv2.erode(mask, kernel)
    out = mask.astype(np.float32) * np.float32(1.0 / 255.0)
    if sigma_px > 0:
        k = 2 * int(np.ceil(3.0 * sigma_px)) + 1
        out = cv2.GaussianBlur(out, (k, k), sigma_px, borderType=cv2.BORDER_CONSTANT)
    out[out < _NEGLIGIBLE] = 0.0
    out[out > 1.0 - _NEGLIGIBLE] = 1.0
    return out


class FeatherMask:
    """Soft face and mouth masks in a template's crop, cached per (template, size, pose) in this instance.

    Widths are fractions of the eye-to-mouth distance in the crop (itself proportional to the crop size S),
    so a mask looks the same at every S: the outline is eroded by ``erode`` and blurred with a Gaussian of
    sigma ``feather`` (truncated at 3 sigma). With the defaults the mask reaches at most 3 sigma - erode =
    0.03 eye-mouth distances past the outline and is exactly 0 beyond (the crop's corners, hair,
    background); it is exactly 1 over the eyes and nose. Values under 1/512, which change no
    uint8 pixel, are zeroed so that the paste-back rectangle stays tight.
    Returned arrays are read-only views of the cache.
    """

    def __init__(self, *, erode: float = 0.18, feather: float = 0.07, mouth_feather: float = 0.06) -> None:
        if erode < 0 or feather < 0 or mouth_feather < 0:
            raise ValueError("mask widths must be non-negative")
        self.erode = float(erode)
        self.feather = float(feather)
        self.mouth_feather = float(mouth_feather)
        self._cache: dict[tuple[object, ...], np.ndarray] = {}

    def _cached(self, key: tuple[object, ...], build) -> np.ndarray:
        mask = self._cache.get(key)
        if mask is None:
            mask = build()
            mask.setflags(write=False)
            self._cache[key] = mask
        return mask

    def face(self, template: CropTemplate, size: int | None = None, *, index: int | None = None,
             keep_mouth: bool = False) -> np.ndarray:
        """(S, S) float32 face mask in [0, 1]; with ``keep_mouth`` the mouth ellipse is cut out of it, so a
        blend through it keeps the target's own (moving) mouth."""
        size = template.size if size is None else int(size)
        pose = _pose_index(template, index)
        if keep_mouth:
            return self._cached(
                ("face-mouth", template, size, pose),
                lambda: self.face(template, size, index=pose) * (1.0 - self.mouth_region(size, template, index=pose)),
            )
        return self._cached(("face", template, size, pose), lambda: self._build_face(template, size, pose))

    __call__ = face

    def soften(self, hard: np.ndarray, template: CropTemplate, *, index: int | None = None) -> np.ndarray:
        """Feather a hard 0/1 mask in ``template``'s crop (a face-parsing mask) with this instance's widths."""
        hard = np.asarray(hard)
        scale = _face_scale(_template_points(template, hard.shape[0], _pose_index(template, index)))
        binary = (hard > 0.5).astype(np.uint8) * np.uint8(255)
        return _feather(binary, self.erode * scale, self.feather * scale)

    def mouth_region(self, size: int, template: CropTemplate, *, index: int | None = None) -> np.ndarray:
        """(S, S) float32 feathered mouth ellipse in [0, 1] (1 on the lips and teeth, 0 elsewhere)."""
        size = int(size)
        pose = _pose_index(template, index)
        return self._cached(("mouth", template, size, pose), lambda: self._build_mouth(template, size, pose))

    def _build_face(self, template: CropTemplate, size: int, pose: int) -> np.ndarray:
        scale = _face_scale(_template_points(template, size, pose))
        binary = _fill((size, size), face_outline(template, size, index=pose))
        return _feather(binary, self.erode * scale, self.feather * scale)

    def _build_mouth(self, template: CropTemplate, size: int, pose: int) -> np.ndarray:
        pts = _template_points(template, size, pose)
        scale = _face_scale(pts)
        left, right = pts[3], pts[4]
        axis = right - left
        width = float(np.linalg.norm(axis))
        angle = float(np.degrees(np.arctan2(axis[1], axis[0])))
        down = np.array([-axis[1], axis[0]]) / max(width, 1e-9)  # perpendicular, pointing to the chin
        # The lips extend past the corners and mostly below the corner line (lower lip, open jaw).
        centre = (left + right) / 2 + down * (0.1 * scale)
        axes = (0.5 * width * 1.25, 0.27 * scale)
        canvas = np.zeros((size, size), dtype=np.uint8)
        shift = 4
        cv2.ellipse(canvas, tuple(int(round(v * (1 << shift))) for v in centre),
                    tuple(int(round(v * (1 << shift))) for v in axes), angle, 0, 360, 255, -1,
                    cv2.LINE_AA, shift)
        return _feather(canvas, 0.0, self.mouth_feather * scale)


# --------------------------------------------------------------------------------------------------
# Paste-back
# --------------------------------------------------------------------------------------------------


def _support_rect(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding rectangle ``(x, y, w, h)`` of the mask's non-zero pixels, or None when it is all zero."""
    x, y, w, h = cv2.boundingRect((mask > 0).view(np.uint8))
    return None if w == 0 or h == 0 else (x, y, w, h)


def paste_roi(mask: np.ndarray, matrix: np.ndarray, frame_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Frame rectangle ``(x0, y0, x1, y1)`` (exclusive ends, clipped to the frame) that the crop-space
    ``mask``'s support covers once warped back through ``matrix``; None when nothing lands in the frame."""
    rect = _support_rect(mask)
    if rect is None:
        return None
    x, y, w, h = rect
    # A bilinear sample reaches one pixel past the support on each side.
    corners = np.array([[x - 1, y - 1], [x + w, y - 1], [x - 1, y + h], [x + w, y + h]], dtype=np.float64)
    inv = inverse_matrix(matrix)
    mapped = corners @ inv[:, :2].T + inv[:, 2]
    fh, fw = int(frame_hw[0]), int(frame_hw[1])
    x0 = max(int(np.floor(mapped[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(mapped[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(mapped[:, 0].max())) + 2, fw)
    y1 = min(int(np.ceil(mapped[:, 1].max())) + 2, fh)
    return None if x0 >= x1 or y0 >= y1 else (x0, y0, x1, y1)


def _warp_into_roi(crop: np.ndarray, mask: np.ndarray, matrix: np.ndarray,
                   roi: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The crop and the mask warped back onto the frame rectangle ``roi`` only (translation shifted)."""
    x0, y0, x1, y1 = roi
    inv = inverse_matrix(matrix)
    inv[:, 2] -= (x0, y0)
    dsize = (x1 - x0, y1 - y0)
    # Replicate the crop's edge so that a mask reaching the crop border never blends in black.
    warped = cv2.warpAffine(crop, inv, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, inv, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0.0)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    return warped, alpha


def _check_paste_args(frame: np.ndarray, crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError("expected a BGR uint8 frame (H, W, 3)")
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1] or crop.dtype != np.uint8:
        raise ValueError("expected a square BGR uint8 crop (S, S, 3)")
    if mask.shape != crop.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the crop's {crop.shape[:2]}")
    return np.asarray(mask, dtype=np.float32)


def _blend_into(dst: np.ndarray, src: np.ndarray, warped: np.ndarray, alpha: np.ndarray) -> None:
    """dst = alpha * warped + (1 - alpha) * src, rounded, in one cv2.blendLinear pass (~5x faster than
    float arithmetic). Where alpha is 0 the result is src exactly: blendLinear divides by the weights' sum
    plus 1e-5, which moves a uint8 value by at most 0.003 before rounding."""
    cv2.blendLinear(warped, src, alpha, 1.0 - alpha, dst=dst)


def _prepare_out(frame: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return frame.copy()
    if out.shape != frame.shape or out.dtype != frame.dtype:
        raise ValueError("out must have the frame's shape and dtype")
    if out is not frame:
        np.copyto(out, frame)
    return out


def paste_back(frame_bgr: np.ndarray, crop_bgr: np.ndarray, matrix: np.ndarray, mask: np.ndarray, *,
               out: np.ndarray | None = None) -> np.ndarray:
    """Blend ``crop_bgr`` (aligned with the image -> crop ``matrix``) into the frame through ``mask``.

    Only the frame rectangle covered by the mask's support is warped and touched. ``out`` may be the frame
    itself (in place) or another buffer of the same shape; by default a copy is returned.
    """
    mask = _check_paste_args(frame_bgr, crop_bgr, mask)
    result = _prepare_out(frame_bgr, out)
    roi = paste_roi(mask, matrix, frame_bgr.shape[:2])
    if roi is None:
        return result
    x0, y0, x1, y1 = roi
    warped, alpha = _warp_into_roi(crop_bgr, mask, matrix, roi)
    # Read the source pixels from `result` (already a copy of the frame), so in-place use works too.
    region = result[y0:y1, x0:x1]
    _blend_into(region, region, warped, alpha)
    return result


def poisson_paste(frame_bgr: np.ndarray, crop_bgr: np.ndarray, matrix: np.ndarray, mask: np.ndarray, *,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Seamless (Poisson, ``cv2.NORMAL_CLONE``) paste of the crop inside the mask's support, then feathered.

    The clone solves on a frame patch around the face rectangle only. The result is alpha-blended over the
    frame through the soft mask, so its edge stays soft and pixels outside the support stay bit-identical.
    Fallback: OpenCV's solver needs a ring of known frame pixels around the mask, so when the face
    rectangle touches the frame border this falls back to plain :func:`paste_back`.
    """
    mask = _check_paste_args(frame_bgr, crop_bgr, mask)
    fh, fw = frame_bgr.shape[:2]
    roi = paste_roi(mask, matrix, (fh, fw))
    if roi is None:
        return _prepare_out(frame_bgr, out)
    x0, y0, x1, y1 = roi
    if x0 <= 0 or y0 <= 0 or x1 >= fw or y1 >= fh:
        return paste_back(frame_bgr, crop_bgr, matrix, mask, out=out)
    warped, alpha = _warp_into_roi(crop_bgr, mask, matrix, roi)
    support = (alpha > 0).astype(np.uint8) * 255
    if not support.any():
        return _prepare_out(frame_bgr, out)
    # Pad the patch by 2 pixels of real frame (the roi does not touch the border, so they exist): the
    # solver's boundary condition comes from them.
    pad = 2
    py0, py1 = max(y0 - pad, 0), min(y1 + pad, fh)
    px0, px1 = max(x0 - pad, 0), min(x1 + pad, fw)
    patch = np.ascontiguousarray(frame_bgr[py0:py1, px0:px1])
    src = patch.copy()
    src[y0 - py0:y1 - py0, x0 - px0:x1 - px0] = warped
    big = np.zeros(patch.shape[:2], dtype=np.uint8)
    big[y0 - py0:y1 - py0, x0 - px0:x1 - px0] = support
    bx, by, bw, bh = cv2.boundingRect(big)
    centre = (bx + bw // 2, by + bh // 2)
    cloned = cv2.seamlessClone(src, patch, big, centre, cv2.NORMAL_CLONE)
    result = _prepare_out(frame_bgr, out)
    region = result[y0:y1, x0:x1]
    _blend_into(region, region, cloned[y0 - py0:y1 - py0, x0 - px0:x1 - px0], alpha)
    return result


# --------------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------------


def to_lab(bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR (..., H, W, 3) -> float32 LAB (L 0..100, a and b about -127..127), any leading dims.

    Float LAB, not OpenCV's 8-bit LAB: the 8-bit one quantises a and b to whole units, visible as banding
    once a transfer stretches them."""
    shape = bgr.shape
    f = bgr.reshape(-1, shape[-2], 3).astype(np.float32)
    f *= np.float32(1.0 / 255.0)
    return cv2.cvtColor(f, cv2.COLOR_BGR2Lab).reshape(shape)


def from_lab(lab: np.ndarray) -> np.ndarray:
    """float32 LAB (..., H, W, 3) -> uint8 BGR, out-of-gamut values clipped."""
    shape = lab.shape
    bgr = cv2.cvtColor(np.ascontiguousarray(lab.reshape(-1, shape[-2], 3), dtype=np.float32), cv2.COLOR_Lab2BGR)
    # convertScaleAbs scales, rounds and saturates in one pass, but takes |x|: clip negatives first.
    np.clip(bgr, 0.0, 1.0, out=bgr)
    return cv2.convertScaleAbs(bgr, alpha=255.0).reshape(shape)


def colour_support(mask: np.ndarray) -> np.ndarray:
    """uint8 0/1 map of the pixels colour statistics are measured on: the mask's inner part (>= 0.5), where
    the face is certain, so the feathered rim (hair, background) does not bias them."""
    inner = mask >= 0.5
    if not inner.any():
        inner = mask > 0
        if not inner.any():
            raise ValueError("the mask is empty: no pixels to take colour statistics from")
    return inner.view(np.uint8)


def lab_stats(lab: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64, (..., 3)) of LAB images (..., H, W, 3) over the
    0/1 ``support`` map (H, W) from :func:`colour_support`."""
    flat = lab.reshape(-1, *lab.shape[-3:])
    means, stds = np.empty((flat.shape[0], 3)), np.empty((flat.shape[0], 3))
    for i, image in enumerate(flat):  # a batch is a handful of faces; meanStdDev is a fast masked pass
        mean, std = cv2.meanStdDev(image, mask=support)
        means[i], stds[i] = mean[:, 0], std[:, 0]
    return means.reshape(*lab.shape[:-3], 3), stds.reshape(*lab.shape[:-3], 3)


def transfer_lab(lab: np.ndarray, source: tuple[np.ndarray, np.ndarray],
                 reference: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Reinhard transfer ``(x - mean_s) * std_r / std_s + mean_r`` per channel on float32 LAB images
    (..., H, W, 3), statistics (..., 3) as :func:`lab_stats` returns them. Returns a new array."""
    (mu_s, sd_s), (mu_r, sd_r) = source, reference
    gain = sd_r / np.maximum(sd_s, 1e-3)
    offset = mu_r - mu_s * gain
    flat = lab.reshape(-1, *lab.shape[-3:])
    gain, offset = gain.reshape(-1, 3), offset.reshape(-1, 3)
    out = np.empty_like(flat, dtype=np.float32)
    for i, image in enumerate(flat):
        # cv2.transform applies the per-channel multiply-add ~50x faster than NumPy broadcasting over 3.
        affine = np.concatenate([np.diag(gain[i]), offset[i][:, None]], axis=1).astype(np.float32)
        out[i] = cv2.transform(image, affine)
    return out.reshape(lab.shape)


def match_colour(crop_bgr: np.ndarray, reference_bgr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer in LAB: the crop's per-channel mean and standard deviation, measured inside
    ``mask``, become the reference's measured inside the same mask.

    "Inside" is where the (S, S) mask is >= 0.5 (:func:`colour_support`). Works on one crop (S, S, 3) or a
    batch (N, S, S, 3) with one reference per crop. The whole crop is transformed; the mask only chooses
    where the statistics come from.
    """
    if crop_bgr.shape != reference_bgr.shape or crop_bgr.shape[-1] != 3 or crop_bgr.dtype != np.uint8:
        raise ValueError("expected uint8 BGR crop and reference of the same shape (..., H, W, 3)")
    if mask.shape != crop_bgr.shape[-3:-1]:
        raise ValueError(f"mask shape {mask.shape} does not match the crops' {crop_bgr.shape[-3:-1]}")
    support = colour_support(mask)
    src = to_lab(crop_bgr)
    ref = to_lab(reference_bgr)
    return from_lab(transfer_lab(src, lab_stats(src, support), lab_stats(ref, support)))
