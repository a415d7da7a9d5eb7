"""What a face detector returns, and the interface every detector implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Landmark order used everywhere in swapwatch (and by InsightFace, SCRFD, YuNet, MTCNN):
# the eye and mouth corner on the image's left first.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One detected face in image pixel coordinates.

    ``box`` is ``[x1, y1, x2, y2]`` (float32, shape (4,)), ``landmarks`` is (5, 2) float32 in
    :data:`LANDMARK_NAMES` order, ``score`` is the detector's confidence in [0, 1].
    ``track_id`` is set by the tracker for video.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    track_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)
        self.score = float(self.score)

    @property
    def area(self) -> float:
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(max(w, 0.0) * max(h, 0.0))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(self.score, 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out


class FaceDetector(abc.ABC):
    """Finds faces in one BGR uint8 image (H, W, 3), as OpenCV and PyAV ``bgr24`` deliver frames."""

    name: str = "?"

    @abc.abstractmethod
    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces sorted by descending score, boxes and landmarks in ``image_bgr``'s pixel coordinates."""

    @staticmethod
    def check_image(image_bgr: np.ndarray) -> np.ndarray:
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError("expected a BGR image of shape (H, W, 3)")
        if image_bgr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image_bgr.dtype}")
        return image_bgr
