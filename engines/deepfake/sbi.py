"""Self-blended images: pseudo-fakes made from one real face, for training a detector on real faces only.

The idea (Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022), written here from
the paper's description: a face is blended with a slightly altered copy of itself, under a soft mask shaped
like the face. The result carries the generic traces every face-swap pipeline leaves (a blending seam, a
colour or sharpness mismatch between the inner face and its surroundings, a small misregistration) without
any particular generator's fingerprint, so a detector trained on them is pushed towards those traces.

The steps, all parameterised by one :class:`SBIParams` drawn from a NumPy ``Generator``:

1. source and target are two copies of the image; one of them (chosen at random) gets colour changes
   (per-channel shift, hue and saturation, brightness and contrast), and one gets a frequency change
   (downscale then upscale, or an unsharp mask);
2. the source is shifted and scaled a little about the face centre;
3. the mask: the face outline derived from the 5 landmarks (``blend.face_outline`` on an aligned crop),
   its top sometimes cut above the eyes (or, with ``SBIConfig.top_cut``, at a random forehead height),
   randomly stretched, elastically warped, blurred, cut to its core, blurred again, then scaled by a blend
   ratio drawn from {0.25, 0.5, 0.75, 1, 1, 1};
4. ``target * (1 - mask) + source * mask``, then (optionally) JPEG at a quality in [40, 100].

All face-relative quantities (shift, mask shape, elastic field) are expressed in the aligned crop's frame, so
one :class:`SBIParams` applied to every frame of a clip gives a temporally consistent fake that follows the
face: the temporal head then sees the same manipulation throughout a window, as with a real deepfake.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from swapwatch.engines.faces import CropTemplate, arcface_template, estimate_alignment, umeyama_similarity
from swapwatch.engines.swap import face_outline

__all__ = ["BLEND_RATIOS", "SBIConfig", "SBIParams", "SBIResult", "SelfBlender", "jpeg", "mask_template"]

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # the paper's set: full blends twice as likely as the others


def mask_template(size: int = 128) -> CropTemplate:
    """The crop the mask is drawn in: the ArcFace points shrunk to 70% and centred in ``size``, so the face
    outline (which reaches below the ArcFace crop's chin) and its blurred rim fit inside."""
    base = arcface_template(112).points[0]
    pts = (base - np.array([56.0, 62.0])) * (0.7 * size / 112.0) + size / 2.0
    return CropTemplate(f"sbi_mask_{size}", size, pts)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at ``quality`` (1..100)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


@dataclass(frozen=True)
class SBIConfig:
    """Ranges the parameters are drawn from (face-relative units are fractions of the mask crop's size)."""

    mask_size: int = 128
    rgb_shift: float = 20.0  # max per-channel shift, in 0..255 levels
    hue_shift: float = 10.0  # max hue shift in degrees
    saturation: float = 0.3  # saturation scaled by 1 +- this
    brightness: float = 0.1  # brightness moved by +- this x 255
    contrast: float = 0.1  # contrast scaled by 1 +- this
    downscale: tuple[float, float] = (2.0, 4.0)  # factor of the down/up-scale frequency change
    sharpen: tuple[float, float] = (0.2, 0.6)  # unsharp-mask amount
    shift: float = 0.03  # max source shift, fraction of the crop
    scale: float = 0.05  # source scale 1 +- this
    stretch: tuple[float, float] = (0.85, 1.1)  # mask outline stretched per axis about its centre
    elastic: tuple[float, float] = (0.0, 0.05)  # elastic displacement amplitude, fraction of the crop
    blur1: tuple[float, float] = (0.01, 0.03)  # first mask blur sigma (the core cut erodes ~3x it)
    blur2: tuple[float, float] = (0.01, 0.05)  # second mask blur sigma
    jpeg_quality: tuple[int, int] = (40, 100)
    # None: a mask's top is the outline's (mid-forehead) or, for 30% of draws, a fixed cut above the eyes.
    # (lo, hi): every mask's top is cut at a height drawn from this range, 0 at that fixed cut and 1 at the
    # outline's top, so the seam's height on the forehead is not the same few rows in every fake.
    top_cut: tuple[float, float] | None = None


@dataclass(frozen=True)
class SBIParams:
    """One draw of every random choice: apply it to each frame of a clip for a consistent fake."""

    colour_on_source: bool
    rgb_shift: tuple[float, float, float]
    hue_shift: float
    saturation: float
    brightness: float
    contrast: float
    freq_on_source: bool
    freq_kind: str  # "downscale" or "sharpen"
    freq_amount: float
    shift: tuple[float, float]
    scale: float
    inner_mask: bool  # outline cut at the brows (eyes-to-chin) instead of the full outline
    stretch: tuple[float, float]
    elastic_amplitude: float
    elastic_seed: int
    blur1: float
    blur2: float
    ratio: float
    jpeg_quality: int
    top: float | None = None  # the mask's top cut (SBIConfig.top_cut); None: as ``inner_mask`` says

    @classmethod
    def draw(cls, rng: np.random.Generator, config: SBIConfig = SBIConfig()) -> SBIParams:
        c = config
        u = rng.uniform
        colour_on_source = bool(rng.random() < 0.5)
        rgb_shift = tuple(float(v) for v in u(-c.rgb_shift, c.rgb_shift, 3))
        hue_shift = float(u(-c.hue_shift, c.hue_shift))
        saturation = float(u(1 - c.saturation, 1 + c.saturation))
        brightness = float(u(-c.brightness, c.brightness))
        contrast = float(u(1 - c.contrast, 1 + c.contrast))
        freq_on_source = bool(rng.random() < 0.5)
        freq_kind = "downscale" if rng.random() < 0.5 else "sharpen"
        freq_amount = float(u(*(c.downscale if freq_kind == "downscale" else c.sharpen)))
        return cls(
            colour_on_source=colour_on_source, rgb_shift=rgb_shift, hue_shift=hue_shift, saturation=saturation,
            brightness=brightness, contrast=contrast, freq_on_source=freq_on_source, freq_kind=freq_kind,
            freq_amount=freq_amount,
            shift=tuple(float(v) for v in u(-c.shift, c.shift, 2)),
            scale=float(u(1 - c.scale, 1 + c.scale)),
            inner_mask=bool(rng.random() < 0.3),
            stretch=tuple(float(v) for v in u(*c.stretch, 2)),
            elastic_amplitude=float(u(*c.elastic)),
            elastic_seed=int(rng.integers(0, 2**31 - 1)),
            blur1=float(u(*c.blur1)),
            blur2=float(u(*c.blur2)),
            ratio=float(BLEND_RATIOS[int(rng.integers(len(BLEND_RATIOS)))]),
            jpeg_quality=int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)),
            # Drawn last and only when asked for: the other draws stay what they were without it.
            top=float(u(*c.top_cut)) if c.top_cut is not None else None,
        )


@dataclass(frozen=True)
class SBIResult:
    """The self-blended image and its real counterpart.

    ``real`` is the target copy the face was blended into (with its colour or frequency change, if it got
    one, and the same JPEG): train on (``real``, ``image``) pairs. Comparing ``image`` with the untouched input
    instead would let a detector learn "a globally recoloured or blurred image is fake", a shortcut that
    says nothing about blending.
    """

    image: np.ndarray  # BGR uint8, the self-blended image
    real: np.ndarray  # BGR uint8, the target it was blended into: identical to ``image`` where ``mask`` is 0
    mask: np.ndarray  # (H, W) float32 in [0, 1]: the blend weight actually used (ratio included)
    params: SBIParams


class SelfBlender:
    """Makes self-blended images of one face (5 landmarks) in a BGR uint8 image of any size."""

    def __init__(self, config: SBIConfig = SBIConfig()) -> None:
        self.config = config
        self.template = mask_template(config.mask_size)
        self._outline = face_outline(self.template)
        # A clip reuses one SBIParams for every frame: its crop-space mask is drawn once. Training renders pairs
        # on a thread pool with one blender, so the cache is shared between threads: a lock guards it.
        self._masks: dict[SBIParams, np.ndarray] = {}
        self._masks_lock = threading.Lock()

    def __call__(self, image: np.ndarray, landmarks: np.ndarray, rng_or_params: np.random.Generator | SBIParams,
                 *, compress: bool = True) -> SBIResult:
        """Self-blend the face with these landmarks. Pass a Generator for fresh parameters, or the same
        :class:`SBIParams` for every frame of a clip. ``compress`` applies the JPEG step to the result."""
        params = rng_or_params if isinstance(rng_or_params, SBIParams) else SBIParams.draw(rng_or_params, self.config)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("expected a BGR uint8 image (H, W, 3)")
        lmk = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        source = image.copy()
        target = image.copy()
        if params.colour_on_source:
            source = self._colour(source, params)
        else:
            target = self._colour(target, params)
        if params.freq_on_source:
            source = self._frequency(source, params)
        else:
            target = self._frequency(target, params)
        source = self._move(source, lmk, params)
        mask = self.mask(image.shape[:2], lmk, params)
        alpha = mask[..., None]
        blended = target.astype(np.float32) * (1.0 - alpha) + source.astype(np.float32) * alpha
        # Outside the mask the output is the target exactly (before JPEG).
        out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        if compress:
            out, target = jpeg(out, params.jpeg_quality), jpeg(target, params.jpeg_quality)
        return SBIResult(out, target, mask, params)

    # ---- the mask -----------------------------------------------------------------------------------

    def mask(self, image_hw: tuple[int, int], landmarks: np.ndarray, params: SBIParams) -> np.ndarray:
        """(H, W) float32 blend weights in [0, 1] for this face, from the params' outline, warp and blurs."""
        with self._masks_lock:
            crop_mask = self._masks.get(params)
        if crop_mask is None:
            crop_mask = self._crop_mask(params)  # outside the lock: two threads may draw the same mask, no harm
            with self._masks_lock:
                while len(self._masks) >= 64:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[params] = crop_mask
        matrix = estimate_alignment(np.asarray(landmarks, np.float64).reshape(5, 2), self.template)
        h, w = int(image_hw[0]), int(image_hw[1])
        out = cv2.warpAffine(crop_mask, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        out[out < 1.0 / 512.0] = 0.0  # no faint tail over the whole image: changes stay near the face
        return np.clip(out, 0.0, 1.0)

    def _crop_mask(self, params: SBIParams) -> np.ndarray:
        size = self.template.size
        outline = self._outline.copy()
        brow_cut = float(self.template.points[0][:2, 1].mean()) - 0.08 * size  # just above the eyes
        if params.top is not None:
            cut = brow_cut + params.top * (float(outline[:, 1].min()) - brow_cut)
            outline[:, 1] = np.maximum(outline[:, 1], cut)
        elif params.inner_mask:
            # Cut the outline at the eye line: the forehead and brows stay the target's.
            outline[:, 1] = np.maximum(outline[:, 1], brow_cut)
        centre = outline.mean(axis=0)
        outline = (outline - centre) * np.asarray(params.stretch) + centre
        canvas = np.zeros((size, size), np.uint8)
        cv2.fillPoly(canvas, [np.round(outline * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
        mask = canvas.astype(np.float32) / 255.0
        if params.elastic_amplitude > 0:
            mask = self._elastic(mask, params)
        # Blur, keep only the core (values that stayed 1: an erosion by about the blur width), blur again:
        # the seam lands a random distance inside the outline with a random softness.
        mask = _gauss(mask, params.blur1 * size)
        mask = np.where(mask >= mask.max() - 1e-3, 1.0, 0.0).astype(np.float32) if mask.max() > 0 else mask
        mask = _gauss(mask, params.blur2 * size)
        peak = float(mask.max())
        if peak > 0:
            mask /= peak
        return (mask * params.ratio).astype(np.float32)

    def _elastic(self, mask: np.ndarray, params: SBIParams) -> np.ndarray:
        size = mask.shape[0]
        field = np.random.default_rng(params.elastic_seed).uniform(-1.0, 1.0, (2, 6, 6)).astype(np.float32)
        # A smooth displacement: a 6x6 random grid upsampled (bicubic) to the crop.
        dx = cv2.resize(field[0], (size, size), interpolation=cv2.INTER_CUBIC) * (params.elastic_amplitude * size)
        dy = cv2.resize(field[1], (size, size), interpolation=cv2.INTER_CUBIC) * (params.elastic_amplitude * size)
        gx, gy = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        return cv2.remap(mask, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    # ---- source and target changes -----------------------------------------------------------------

    @staticmethod
    def _colour(image: np.ndarray, params: SBIParams) -> np.ndarray:
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + params.hue_shift * 256.0 / 360.0) % 256.0
        hsv[..., 1] = np.clip(hsv[..., 1] * params.saturation, 0, 255)
        out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR_FULL).astype(np.float32)
        out += np.asarray(params.rgb_shift[::-1], np.float32)  # drawn as RGB, applied to BGR
        mean = float(out.mean())
        out = (out - mean) * params.contrast + mean + params.brightness * 255.0
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    @staticmethod
    def _frequency(image: np.ndarray, params: SBIParams) -> np.ndarray:
        h, w = image.shape[:2]
        if params.freq_kind == "downscale":
            small = cv2.resize(image, (max(int(round(w / params.freq_amount)), 1),
                                       max(int(round(h / params.freq_amount)), 1)), interpolation=cv2.INTER_AREA)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
        return cv2.addWeighted(image, 1.0 + params.freq_amount, blurred, -params.freq_amount, 0)

    def _move(self, image: np.ndarray, landmarks: np.ndarray, params: SBIParams) -> np.ndarray:
        """Shift and scale the source about the face centre, in face-relative units (crop fractions)."""
        to_crop = umeyama_similarity(landmarks, self.template.points[0])
        px_per_crop = self.template.size / np.sqrt(abs(np.linalg.det(to_crop[:, :2])))  # image px per crop
        centre = landmarks.mean(axis=0)
        shift = np.asarray(params.shift) * px_per_crop
        m = np.array([[params.scale, 0.0, (1 - params.scale) * centre[0] + shift[0]],
                      [0.0, params.scale, (1 - params.scale) * centre[1] + shift[1]]])
        h, w = image.shape[:2]
        return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _gauss(mask: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.3:
        return mask
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(mask, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
