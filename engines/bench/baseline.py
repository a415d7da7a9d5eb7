"""The straightforward face-swap loop that users of InsightFace and OpenCV write, as a reference for ``bench``.

Per frame, synchronously, one face at a time::

    faces = detector.detect(frame)                        # every frame, no tracking
    out = frame.copy()
    for face in faces:
        crop, M = cv2.warpAffine(frame, align(face), S)   # per-face warp to the swapper's crop
        fake = swapper.generate(crop[None], [source])[0]  # batch of one
        fake = match_colour(fake, crop, mask)             # learned swappers only, as the pipeline does
        out = full_frame_paste(out, fake, M, mask)        # inverse warp of crop and mask to the whole frame,
                                                          # float blend over the whole frame
    for i, face in enumerate(faces):                      # the deepfake detector, per face, every frame
        deepfake.score_faces(out, [face with track_id=i], t)

It is what :meth:`insightface.model_zoo.inswapper.INSwapper.get` with ``paste_back=True`` does for each face,
with the models and post-processing of swapwatch so that the two paths compute the same picture:

- the same detector, swapper, source identity, crop template and feathered face mask as the pipeline; the
  mask is built once (in crop space) and reused. InsightFace instead rebuilds its mask every frame with a
  full-frame erode and Gaussian blur, which is slower still: this baseline is the faster variant of the loop.
- the paste is InsightFace's: ``cv2.warpAffine`` of the generated crop and of the mask to the frame's full
  size, then ``mask * fake + (1 - mask) * frame`` in float32 over every pixel and a cast back to uint8.
- the deepfake detector is the same model and the same per-track windows, with no strides (scorer and head
  on every frame for every face); without a tracker, a face's window is keyed by its index in the
  detector's output (a naive loop has no better identity).

Nothing here is slowed down on purpose; what differs from the pipeline is only how the frame path is
organised (detection every frame, no batching, full-frame paste, no overlap of decode/encode with inference).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import cv2
import numpy as np
from swapwatch.engines.faces import Face, FaceDetector, align_face, inverse_matrix
from swapwatch.engines.swap import FeatherMask, SourceIdentity, Swapper, match_colour

__all__ = ["BaselineLoop", "StageClock", "full_frame_paste"]


class StageClock:
    """Accumulates seconds per stage name for one frame: ``with clock("swap"): ...`` (stages may repeat, e.g.
    once per face; their times add up). ``take()`` returns the frame's totals and starts the next frame."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - t0

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def full_frame_paste(frame_bgr: np.ndarray, crop_bgr: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """InsightFace's paste-back: warp the crop and its mask back to the whole frame and blend every pixel in
    float32 (``INSwapper.get(paste_back=True)``). Returns a new frame."""
    h, w = frame_bgr.shape[:2]
    inv = inverse_matrix(matrix)
    fake = cv2.warpAffine(crop_bgr, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(np.asarray(mask, np.float32), inv, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha = np.clip(alpha, 0.0, 1.0)[:, :, None]
    merged = alpha * fake + (1.0 - alpha) * frame_bgr.astype(np.float32)
    return merged.astype(np.uint8)


class BaselineLoop:
    """One stream's straightforward loop (see the module docstring). Stateless apart from the deepfake
    detector's windows; ``deepfake`` is a :class:`~swapwatch.engines.deepfake.detector.DeepfakeDetector` built with
    no strides, or None to skip it."""

    def __init__(self, detector: FaceDetector, swapper: Swapper, source: SourceIdentity, *, deepfake=None,
                 colour_match: bool = True, masks: FeatherMask | None = None) -> None:
        self.detector = detector
        self.swapper = swapper
        self.source = source
        self.deepfake = deepfake
        self.colour_match = colour_match
        self.masks = masks if masks is not None else FeatherMask()
        self.faces_swapped = 0

    def process(self, frame_bgr: np.ndarray, t: float,
                clock: Callable[[str], contextlib.AbstractContextManager] | None = None) -> tuple[np.ndarray, list[Face]]:
        """The swapped frame and the faces found in it; per-stage times go to ``clock`` (a StageClock)."""
        clock = clock or StageClock()
        template = self.swapper.template
        with clock("detect"):
            faces = self.detector.detect(frame_bgr)
        out = frame_bgr
        for face in faces:
            with clock("align"):
                aligned = align_face(frame_bgr, face.landmarks, template)
            with clock("swap"):
                fake = self.swapper.generate(aligned.crop[None], [self.source])[0]
            with clock("paste"):
                mask = self.masks.face(template, index=aligned.template_index)
                if self.colour_match and self.swapper.learned:  # classic matches colours itself
                    fake = match_colour(fake, aligned.crop, mask)
                out = full_frame_paste(out, fake, aligned.matrix, mask)
            self.faces_swapped += 1
        if out is frame_bgr:
            out = frame_bgr.copy()
        if self.deepfake is not None:
            with clock("deepfake"):
                for i, face in enumerate(faces):
                    self.deepfake.score_faces(out, [replace(face, track_id=i)], t)
        return out, faces
