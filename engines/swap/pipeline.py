"""A frame's path through the swap side, top to bottom.

    frame -> detect + track (smoothed landmarks)                      tracker.process
          -> choose faces -> align crops                              plan
          -> generate (one batch)                                     swapper.generate
          -> mask -> colour match -> inverse warp + blend             paste
          -> visible label + invisible watermark                      labeller

One :class:`SwapPipeline` serves one stream (its tracker holds per-stream state); the models inside it may be
shared between pipelines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from swapwatch.engines.faces import (
    FACE_SMOOTHING, AlignedFace, Face, FaceDetector, FaceTracker, KeyframeTracker, align_face,
)
from swapwatch.engines.swap.blend import FeatherMask, match_colour, paste_back, poisson_paste
from swapwatch.engines.swap.identity import IdentityEmbedder, normed
from swapwatch.engines.swap.labelling import SyntheticLabeller
from swapwatch.engines.swap.selection import DEFAULT_SOURCE, FaceSelection
from swapwatch.engines.swap.swapper import SourceIdentity, Swapper
from swapwatch.errors import InputError

log = logging.getLogger(__name__)

MASKS = ("feather", "parsing")
BLENDS = ("alpha", "poisson")


@dataclass(frozen=True)
class SwapOptions:
    mask: str = "feather"  # feather: a soft face ellipse; parsing: a BiSeNet face-parsing mask
    keep_mouth: bool = False  # keep the target's own mouth (speech stays natural)
    colour_match: bool = True  # move the generated face's colours to the target's skin
    blend: str = "alpha"  # alpha, or poisson (seamless, slower)
    detect_every: int = 1  # run the detector every k frames, optical-flow tracking in between
    smoothing: bool = True  # One Euro filter on landmarks against flicker

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise InputError(f"unknown mask {self.mask!r}; choose from {', '.join(MASKS)}")
        if self.blend not in BLENDS:
            raise InputError(f"unknown blend {self.blend!r}; choose from {', '.join(BLENDS)}")
        if self.detect_every < 1:
            raise InputError("detect_every must be at least 1")


@dataclass
class SwapPlan:
    """A frame after face choice and alignment, before the swapper runs (the seam where a server batches
    ``generate`` across streams)."""

    frame: np.ndarray
    faces: list[Face]
    chosen: list[tuple[Face, str]] = field(default_factory=list)  # faces to swap, with their source key
    aligned: list[AlignedFace] = field(default_factory=list)
    crops: np.ndarray | None = None  # (N, S, S, 3) BGR uint8 in the swapper's template; None: nothing to swap
    # (or planned with align=False)
    sources: list[SourceIdentity] = field(default_factory=list)


@dataclass
class SwapResult:
    frame: np.ndarray
    faces: list[Face]  # every tracked face in the frame
    swapped: list[tuple[Face, str]] = field(default_factory=list)  # the faces swapped, with their source key


class SwapPipeline:
    def __init__(self, detector: FaceDetector, swapper: Swapper, *, options: SwapOptions = SwapOptions(),
                 selection: FaceSelection | None = None, identity: IdentityEmbedder | None = None,
                 parser=None, labeller: SyntheticLabeller | None = None) -> None:
        """``identity`` embeds faces for ``match:``/``map:`` selection; ``parser`` (a FaceParser) is needed for
        ``mask="parsing"``; ``labeller`` marks swapped frames (visible badge and invisible watermark)."""
        self.detector = detector
        self.swapper = swapper
        self.options = options
        self.identity = identity
        self.parser = parser
        self.labeller = labeller
        if options.mask == "parsing" and parser is None:
            raise InputError("mask 'parsing' needs the bisenet-faceparsing model "
                             "(swapwatch models fetch bisenet-faceparsing)")
        selection = selection or FaceSelection.parse("all")
        if selection.needs_embeddings:
            if identity is None:
                raise InputError(f"face selection {selection.mode!r} needs an identity model "
                                 "(w600k-r50 or arcface-simswap); see `swapwatch models list`")
            selection = selection.resolve(self._embed_photo)
        self.selection = selection
        self.tracker = KeyframeTracker(detector, FaceTracker(smoothing=FACE_SMOOTHING if options.smoothing else None),
                                       k=options.detect_every)
        self.masks = FeatherMask()
        self.sources: dict[str, SourceIdentity] = {}

    # ---- sources: prepared once per photo --------------------------------------------------------------

    def add_source(self, image_bgr: np.ndarray, key: str = DEFAULT_SOURCE, *, name: str = "source photo") -> Face:
        """Compute the identity of the largest face in a source photo, once; later frames reuse it."""
        faces = self.detector.detect(image_bgr)
        if not faces:
            raise InputError(f"{name}: no face found; use a photo with a clear, frontal face")
        face = max(faces, key=lambda f: f.area)
        self.sources[key] = self.swapper.prepare_source(image_bgr, face)
        return face

    def _embed_photo(self, path) -> np.ndarray:
        from swapwatch.engines.runtime import read_image

        image = read_image(path)
        faces = self.detector.detect(image)
        if not faces:
            raise InputError(f"{path}: no face found in the reference photo")
        return normed(self.identity.embed(image, max(faces, key=lambda f: f.area)))

    def _embed_faces(self, frame: np.ndarray, faces: list[Face]) -> np.ndarray:
        crops = np.stack([align_face(frame, f.landmarks, self.identity.template).crop for f in faces])
        return normed(self.identity.embed_crops(crops))

    # ---- the frame path ------------------------------------------------------------------------------

    def process(self, frame_bgr: np.ndarray, t: float) -> SwapResult:
        faces = self.tracker.process(frame_bgr, t)
        plan = self.plan(frame_bgr, faces)
        if plan.crops is None:
            return SwapResult(frame_bgr.copy(), faces)
        out = self.paste(plan, self.swapper.generate(plan.crops, plan.sources))
        if self.labeller is not None:
            out = self.labeller(out)
        return SwapResult(out, faces, plan.chosen)

    def plan(self, frame_bgr: np.ndarray, faces: list[Face], *, align: bool = True) -> SwapPlan:
        """Choose the faces to swap in this frame and align their crops to the swapper's template
        (``align=False``: faces and sources only, no crops, for a caller that warps its own, as the device
        path does)."""
        missing = set(self.selection.source_keys) - set(self.sources)
        if missing:
            raise InputError(f"no source photo for {', '.join(sorted(missing))}")
        chosen = self.selection.select(faces, frame_bgr, self._embed_faces)
        plan = SwapPlan(frame_bgr, faces, chosen)
        if chosen:
            if align:
                plan.aligned = [align_face(frame_bgr, f.landmarks, self.swapper.template) for f, _ in chosen]
                plan.crops = np.stack([a.crop for a in plan.aligned])
            plan.sources = [self.sources[key] for _, key in chosen]
        return plan

    def paste(self, plan: SwapPlan, generated: np.ndarray) -> np.ndarray:
        """Mask, colour-match and blend the swapper's output crops back into a copy of the frame."""
        masks = self.masks_for(plan.crops, plan.aligned)
        if self.options.colour_match and self.swapper.learned:  # classic matches colours itself
            generated = np.stack([match_colour(g, c, m) for g, c, m in zip(generated, plan.crops, masks)])
        paste = poisson_paste if self.options.blend == "poisson" else paste_back
        out = plan.frame.copy()
        for crop, a, mask in zip(generated, plan.aligned, masks):
            out = paste(out, crop, a.matrix, mask, out=out)
        return out

    def masks_for(self, crops: np.ndarray, aligned: list[AlignedFace]) -> list[np.ndarray]:
        """One blend mask per aligned crop: face parsing when asked and installed, else the feathered ellipse."""
        keep_mouth = self.options.keep_mouth
        template = self.swapper.template
        if self.parser is not None and self.options.mask == "parsing":
            hard = self.parser.face_masks(crops, keep_mouth=keep_mouth)
            return [self.masks.soften(m, template, index=a.template_index) for m, a in zip(hard, aligned)]
        return [self.masks.face(template, index=a.template_index, keep_mouth=keep_mouth) for a in aligned]
