"""Fit an image onto a fixed model canvas: keep the aspect ratio, align top-left, pad with zeros.

Top-left alignment (as InsightFace's SCRFD and OpenCV's FaceDetectorYN padding do) means that mapping a
point back to the image is one division by the scale, with no offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``image_size`` lands on a canvas of ``canvas_size`` (both ``(width, height)``)."""

    image_size: tuple[int, int]
    canvas_size: tuple[int, int]
    resized_size: tuple[int, int]
    scale: float

    @classmethod
    def fit(cls, image_size: tuple[int, int], canvas_size: tuple[int, int]) -> "Letterbox":
        """The largest aspect-preserving resize of ``image_size`` that fits in ``canvas_size``.

        The sizes and the single scale are computed exactly as InsightFace's SCRFD does (truncate the
        short side, scale = new height / old height), so that our boxes match its reference to float
        precision.
        """
        w, h = int(image_size[0]), int(image_size[1])
        cw, ch = int(canvas_size[0]), int(canvas_size[1])
        if w <= 0 or h <= 0 or cw <= 0 or ch <= 0:
            raise ValueError(f"cannot letterbox an image of {w}x{h} onto a {cw}x{ch} canvas")
        image_ratio = h / w
        if image_ratio > ch / cw:
            new_h = ch
            new_w = max(1, min(cw, int(new_h / image_ratio)))
        else:
            new_w = cw
            new_h = max(1, min(ch, int(new_w * image_ratio)))
        return cls((w, h), (cw, ch), (new_w, new_h), new_h / h)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image resized (bilinear) and pasted at the top-left of a zero canvas, same dtype."""
        if (image.shape[1], image.shape[0]) != self.image_size:
            raise ValueError(f"letterbox was fitted for {self.image_size}, got an image of "
                             f"{(image.shape[1], image.shape[0])}")
        new_w, new_h = self.resized_size
        resized = image if (new_w, new_h) == self.image_size else cv2.resize(image, (new_w, new_h))
        if (new_w, new_h) == self.canvas_size:
            return np.ascontiguousarray(resized)
        canvas = np.zeros((self.canvas_size[1], self.canvas_size[0]) + image.shape[2:], dtype=image.dtype)
        canvas[:new_h, :new_w] = resized
        return canvas

    def to_image(self, coords: np.ndarray) -> np.ndarray:
        """Canvas coordinates (any shape, x/y interleaved) back to image pixels."""
        return np.asarray(coords, dtype=np.float32) / np.float32(self.scale)


def canvas_size_for(input_shape: tuple, requested: tuple[int, int] | None, *,
                    default: tuple[int, int] = (640, 640), multiple: int = 32) -> tuple[int, int]:
    """The ``(width, height)`` to letterbox onto, given a model's NCHW input shape.

    A graph with fixed spatial dims dictates the canvas (a different ``requested`` size is an error, since
    ONNX Runtime and TensorRT cannot run it); a graph with dynamic dims takes ``requested`` or ``default``,
    which must be a multiple of the detector's largest stride so every feature map covers it exactly.
    """
    if len(input_shape) != 4:
        raise ValueError(f"expected an NCHW model input, got shape {input_shape}")
    h, w = input_shape[2], input_shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        if requested is not None and tuple(requested) != (w, h):
            raise ValueError(f"this model has a fixed input of {w}x{h}; input_size={tuple(requested)} "
                             "cannot be used with it")
        return (w, h)
    size = tuple(int(v) for v in (requested or default))
    if len(size) != 2 or size[0] <= 0 or size[1] <= 0 or size[0] % multiple or size[1] % multiple:
        raise ValueError(f"input_size must be (width, height), each a positive multiple of {multiple}; "
                         f"got {requested}")
    return size  # type: ignore[return-value]
