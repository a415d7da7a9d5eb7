"""SCRFD (InsightFace's det_10g / det_500m and the SCRFD repository's exports) through the engine layer.

The image is letterboxed top-left onto the input canvas, converted to RGB and normalised to
``(x - 127.5) / 128``. Each stride s (8/16/32, or 8..128 for the 5-level graphs) predicts, per grid cell
and anchor, a score, the distances (in strides) from the cell's top-left corner ``(c*s, r*s)`` to the four
box sides, and five keypoint offsets (in strides) from that corner. This is InsightFace's decoding.

The released files differ in output order, naming and whether outputs carry a batch dim, so the outputs
are identified by shape, not by position: the last dim tells score (1), box (4) or keypoints (10), the
row count tells the stride, and the stride-8 row count over the grid size gives the anchors per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from swapwatch.engines.faces.face import Face, FaceDetector
from swapwatch.engines.faces.letterbox import Letterbox, canvas_size_for
from swapwatch.engines.faces.nms import nms
from swapwatch.engines.runtime import Engine, load_onnx_engine
from swapwatch.errors import ModelError

# Output count -> (strides, whether keypoints are predicted), as InsightFace's SCRFD reads it.
_GRAPHS = {6: ((8, 16, 32), False), 9: ((8, 16, 32), True),
           10: ((8, 16, 32, 64, 128), False), 15: ((8, 16, 32, 64, 128), True)}
_KINDS = {1: "score", 4: "bbox", 10: "kps"}
INPUT_MEAN = 127.5
INPUT_STD = 128.0


@dataclass(frozen=True)
class SCRFDLayout:
    """Which output holds what, for one canvas size: per stride (in increasing order) the names of the
    score, box and keypoint outputs, and the anchors per grid cell."""

    strides: tuple[int, ...]
    score: tuple[str, ...]
    bbox: tuple[str, ...]
    kps: tuple[str, ...]
    anchors: int

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], canvas: tuple[int, int]) -> "SCRFDLayout":
        """Work the layout out from the output shapes of one run on a ``canvas`` (width, height) input."""
        if len(shapes) not in _GRAPHS:
            raise ModelError(f"SCRFD graphs have 6, 9, 10 or 15 outputs, this one has {len(shapes)}")
        strides, use_kps = _GRAPHS[len(shapes)]
        if not use_kps:
            raise ModelError("this SCRFD graph predicts no keypoints (a non-KPS variant); swapwatch needs the "
                             "five landmarks to align faces, use det_10g, det_500m or a *_kps/*_bnkps model")
        by_kind: dict[str, list[tuple[int, str]]] = {k: [] for k in _KINDS.values()}
        for name, shape in shapes.items():
            rows = _rows(shape)
            kind = _KINDS.get(shape[-1]) if rows is not None else None
            if kind is None:
                raise ModelError(f"SCRFD output {name!r} has shape {tuple(shape)}; expected [N, 1|4|10] "
                                 "or [1, N, 1|4|10]")
            by_kind[kind].append((rows, name))
        cells = [(canvas[1] // s) * (canvas[0] // s) for s in strides]
        anchors = 0
        for kind, found in by_kind.items():
            found.sort(key=lambda item: -item[0])  # most rows first: finest stride first
            rows = [r for r, _ in found]
            anchors = anchors or (rows[0] // cells[0] if rows else 0)
            if len(found) != len(strides) or anchors < 1 or rows != [c * anchors for c in cells]:
                raise ModelError(f"SCRFD {kind} outputs have {rows} rows; for a {canvas[0]}x{canvas[1]} "
                                 f"input and strides {strides} expected {[c * max(anchors, 1) for c in cells]}")
        return cls(strides, *(tuple(n for _, n in by_kind[k]) for k in ("score", "bbox", "kps")), anchors)


def _rows(shape: tuple[int, ...]) -> int | None:
    """Row count of an [N, C] or [1, N, C] output, None for any other shape."""
    if len(shape) == 2:
        return int(shape[0])
    if len(shape) == 3 and shape[0] == 1:
        return int(shape[1])
    return None


class SCRFDDetector(FaceDetector):
    """SCRFD on a BGR uint8 image.

    Defaults are InsightFace's: score threshold 0.5 (``det_thresh``), NMS IoU 0.4, a 640x640 canvas for
    graphs with dynamic spatial dims (a graph with fixed dims uses its own).
    """

    name = "scrfd"

    def __init__(self, model_path: str | Path, *, backend: str = "auto", device: str = "auto",
                 score_threshold: float = 0.5, nms_threshold: float = 0.4,
                 input_size: tuple[int, int] | None = None) -> None:
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError("score_threshold and nms_threshold must lie in [0, 1]")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.engine: Engine = load_onnx_engine(model_path, backend, device=device)
        if len(self.engine.inputs) != 1:
            raise ModelError(f"SCRFD expects one input, {Path(model_path).name} has {len(self.engine.inputs)}")
        n_out = len(self.engine.outputs)
        if n_out not in _GRAPHS:
            raise ModelError(f"{Path(model_path).name} is not an SCRFD graph: it has {n_out} outputs "
                             "(SCRFD has 6, 9, 10 or 15)")
        self._input_name = self.engine.inputs[0].name
        self.input_size = canvas_size_for(self.engine.inputs[0].shape, input_size, multiple=max(_GRAPHS[n_out][0]))
        # Output dims are often symbolic in the graph, so read the layout off one real run.
        probe = self.engine.run({self._input_name: np.zeros((1, 3, self.input_size[1], self.input_size[0]),
                                                            np.float32)})
        self.layout = SCRFDLayout.from_shapes({k: tuple(np.shape(v)) for k, v in probe.items()}, self.input_size)
        self._centres, self._stride = self._anchor_centres()

    def _anchor_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Top-left corners ``(c*s, r*s)`` of every cell, repeated per anchor, strides concatenated in
        order; and each row's stride."""
        w, h = self.input_size
        centres, strides = [], []
        for s in self.layout.strides:
            r, c = np.mgrid[: h // s, : w // s]
            xy = (np.stack([c.ravel(), r.ravel()], axis=1) * s).astype(np.float32)
            centres.append(np.repeat(xy, self.layout.anchors, axis=0))
            strides.append(np.full((xy.shape[0] * self.layout.anchors, 1), s, np.float32))
        return np.concatenate(centres), np.concatenate(strides)

    def _gather(self, outputs: Mapping[str, np.ndarray], names: tuple[str, ...], width: int) -> np.ndarray:
        return np.concatenate([np.asarray(outputs[n], dtype=np.float32).reshape(-1, width) for n in names])

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The NCHW float32 RGB blob for the canvas, and the letterbox that maps results back."""
        image = self.check_image(image_bgr)
        box = Letterbox.fit((image.shape[1], image.shape[0]), self.input_size)
        canvas = box.apply(image)[:, :, ::-1].astype(np.float32)
        blob = (canvas - np.float32(INPUT_MEAN)) * np.float32(1.0 / INPUT_STD)
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), box

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        blob, box = self.preprocess(image_bgr)
        outputs = self.engine.run({self._input_name: blob})
        boxes, scores, kps = self.decode(outputs, box)
        return [Face(b, s, k) for b, s, k in zip(boxes, scores, kps)]

    def decode(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs to kept ``boxes`` (N, 4) x1y1x2y2, ``scores`` (N,), ``kps`` (N, 5, 2) in image
        pixels, best first."""
        layout = self.layout
        scores = self._gather(outputs, layout.score, 1)[:, 0]
        keep = np.flatnonzero(scores >= self.score_threshold)
        scores = scores[keep]
        centres, stride = self._centres[keep], self._stride[keep]
        dist = self._gather(outputs, layout.bbox, 4)[keep] * stride
        boxes = np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1)
        offsets = self._gather(outputs, layout.kps, 10)[keep] * stride
        kps = offsets.reshape(-1, 5, 2) + centres[:, None, :]
        boxes, kps = box.to_image(boxes), box.to_image(kps)
        # InsightFace's NMS counts pixels inclusively (areas of (x2-x1+1)*(y2-y1+1)); widening by one pixel
        # reproduces it with our IoU so the kept set matches the reference implementation.
        order = nms(boxes + np.array([0, 0, 1, 1], np.float32), scores, self.nms_threshold)
        return boxes[order], scores[order], kps[order]
