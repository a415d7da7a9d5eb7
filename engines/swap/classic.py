"""The weight-free ``classic`` swapper: the source photo's aligned face, recoloured and relit to each target.

Both faces are aligned to the same template, so the source's eyes, nose and mouth land on the target's.
What makes the paste look like it belongs there is done per target crop:

1. Reinhard colour transfer in LAB inside the face mask (as :func:`~swapwatch.engines.swap.blend.match_colour`):
   skin tone, contrast and white balance follow the target.
2. Shading transfer: the target's low-frequency lighting (a lit and a shaded cheek, a darker jaw) replaces
   the source's, by adding the difference of their mask-normalised, heavily blurred L channels. The blur is
   wide (a fraction of the face) so that it carries light, not features.
3. The target's own mouth is kept (feathered mouth ellipse; ``keep_mouth=False`` turns it off): a photo's
   mouth never moves, and a static mouth on a talking head is the most visible give-away of a still paste.

All three steps run in float LAB, with the source's LAB crop and statistics computed once in
``prepare_source``: per frame that is one conversion to LAB and one back.

It needs no weights, so it is what tests, demos and machines without models use; the UI says it is not a
learned model (``learned = False``).
"""

from __future__ import annotations

import cv2
import numpy as np

from swapwatch.engines.faces import CropTemplate, Face, align_face, ffhq_template
from swapwatch.engines.swap.blend import FeatherMask, colour_support, from_lab, lab_stats, to_lab, transfer_lab
from swapwatch.engines.swap.swapper import SourceIdentity, Swapper

__all__ = ["ClassicSwapper"]


class _Lighting:
    """Low-frequency lighting of an L channel inside a fixed mask: the mask-normalised Gaussian mean
    ``blur(L * w) / blur(w)``, so pixels outside the face (hair, background) do not leak in.

    Computed at 1/``down`` resolution (the result is smooth, so this loses nothing and turns a ~100-tap
    kernel into a ~25-tap one); the blurred weights are the same for every frame and are computed once.
    """

    def __init__(self, weights: np.ndarray, sigma: float, down: int = 4) -> None:
        self.size = weights.shape[0]
        self.small = max(self.size // down, 8)
        self.sigma = sigma * self.small / self.size
        self.ksize = 2 * int(np.ceil(3.0 * self.sigma)) + 1
        self.weights = weights.astype(np.float32)
        self._small_weights = cv2.resize(self.weights, (self.small, self.small), interpolation=cv2.INTER_AREA)
        self._norm = np.maximum(self._blur(self._small_weights), 1e-3)

    def _blur(self, image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (self.ksize, self.ksize), self.sigma, borderType=cv2.BORDER_CONSTANT)

    def smooth_small(self, lightness: np.ndarray) -> np.ndarray:
        """(S, S) L channel -> its masked low-pass at the small size."""
        weighted = cv2.multiply(lightness, self.weights)
        small = cv2.resize(weighted, (self.small, self.small), interpolation=cv2.INTER_AREA)
        return self._blur(small) / self._norm

    def delta(self, lightness: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """(S, S) float32: what to add to ``lightness`` to give it ``reference``'s low-frequency lighting."""
        diff = self.smooth_small(reference) - self.smooth_small(lightness)
        return cv2.resize(diff, (self.size, self.size), interpolation=cv2.INTER_LINEAR)


def _support_slices(mask: np.ndarray) -> tuple[slice, slice]:
    x, y, w, h = cv2.boundingRect((mask > 0).view(np.uint8))
    return slice(y, y + h), slice(x, x + w)


class ClassicSwapper(Swapper):
    """Weight-free face swap on SimSwap's FFHQ template scaled to ``size`` (default 256).

    Why FFHQ: its crop holds the whole head with a margin, so the face mask (brows to chin) and its feather
    fit inside the crop; the ArcFace/inswapper (112/128) and SimSwap-224 crops cut the chin off, and a
    pasted face that stops above the chin shows a seam across the jaw. 256 px puts ~63 px between the eyes,
    about the size of a face in a 640x480 webcam frame; use 384 or 512 for close-ups in 720p and up.
    """

    name = "classic"
    learned = False

    def __init__(self, *, size: int = 256, keep_mouth: bool = True, shading: float = 1.0,
                 masks: FeatherMask | None = None) -> None:
        if size < 64:
            raise ValueError(f"crop size {size} is too small for a face swap (use 64 or more)")
        if not 0.0 <= shading <= 1.0:
            raise ValueError("shading must lie in [0, 1]")
        self.template: CropTemplate = ffhq_template(size)
        self.keep_mouth = bool(keep_mouth)
        self.shading = float(shading)
        self.masks = masks if masks is not None else FeatherMask()
        points = self.template.points[0]
        # Eye-mouth distance in crop pixels: the lighting blur is a fixed fraction of the face.
        face_scale = float(np.linalg.norm(points[3:5].mean(0) - points[0:2].mean(0)))
        mask = self.mask
        self._support = colour_support(mask)
        self._lighting = _Lighting(self._support.astype(np.float32), sigma=0.3 * face_scale)
        # The mouth blend touches only the mouth ellipse's rectangle, with a 3-channel copy of its weights.
        mouth = self.masks.mouth_region(size, self.template)
        self._mouth_box = _support_slices(mouth)
        self._mouth = cv2.merge([np.ascontiguousarray(mouth[self._mouth_box])] * 3)

    @property
    def mask(self) -> np.ndarray:
        """The face mask the pipeline should paste this swapper's crops with (S, S) float32."""
        return self.masks.face(self.template)

    def prepare_source(self, image_bgr: np.ndarray, face: Face) -> SourceIdentity:
        # Replicate the border: a source face near its photo's edge must not bring black into the crop.
        aligned = align_face(image_bgr, face.landmarks, self.template, border_mode=cv2.BORDER_REPLICATE)
        crop = aligned.crop
        crop.setflags(write=False)
        return SourceIdentity(swapper=self.name, embedding=None, crop=crop, extra=self._source_lab(crop))

    def _source_lab(self, crop: np.ndarray) -> dict[str, np.ndarray]:
        """The source crop in LAB and its colour statistics, computed once per source instead of per frame."""
        lab = to_lab(crop)
        mean, std = lab_stats(lab, colour_support(self.mask))
        lab.setflags(write=False)
        return {"lab": lab, "lab_mean": mean, "lab_std": std}

    def generate(self, target_crops: np.ndarray, sources: list[SourceIdentity]) -> np.ndarray:
        targets = self.checked_batch(target_crops, sources)
        if targets.shape[0] == 0:
            return targets.copy()
        prepared = [self._prepared(s) for s in sources]
        src_lab = np.stack([p["lab"] for p in prepared])
        src_stats = (np.stack([p["lab_mean"] for p in prepared]), np.stack([p["lab_std"] for p in prepared]))
        tgt_lab = to_lab(targets)  # the colour conversions run once for the whole batch
        # 1. colour: the source's LAB statistics become the target's (inside the face).
        out = transfer_lab(src_lab, src_stats, lab_stats(tgt_lab, self._support))
        for face, target in zip(out, tgt_lab):  # the rest are cv2 calls on one face at a time
            # 2. lighting: the source's low-frequency L replaced by the target's.
            if self.shading > 0:
                lightness = cv2.extractChannel(face, 0)
                delta = self._lighting.delta(lightness, cv2.extractChannel(target, 0))
                cv2.insertChannel(cv2.scaleAdd(delta, self.shading, lightness), face, 0)
            # 3. mouth: the target's own, so that it keeps moving.
            if self.keep_mouth:
                rows, cols = self._mouth_box
                region = face[rows, cols]
                region += cv2.multiply(self._mouth, target[rows, cols] - region)
        return from_lab(out)

    def _prepared(self, source: SourceIdentity) -> dict[str, np.ndarray]:
        size = self.template.size
        if source.crop is None or source.crop.shape != (size, size, 3):
            raise ValueError(f"source {source.swapper!r} has no {size}x{size} crop: prepare it with this swapper")
        if "lab" in source.extra:
            return source.extra
        return self._source_lab(source.crop)  # a SourceIdentity built by hand, without the cached LAB
