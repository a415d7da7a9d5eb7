"""YuNet (OpenCV Zoo, 2023mar) face detector run through the engine layer, with our own decoding.

The decoding follows OpenCV's ``FaceDetectorYN`` for the 2023mar graph: for every cell ``(c, r)`` of the
stride-8/16/32 grids, score = sqrt(clip(cls) * clip(obj)), box centre = ``(c + dx, r + dy) * stride``,
size = ``exp(dw, dh) * stride``, and five keypoints ``(c + kx, r + ky) * stride``. Unlike OpenCV (whose DNN
module reshapes the graph to any input size) ONNX Runtime and TensorRT run the graph at its declared size,
so the image is letterboxed onto that canvas and the results are scaled back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swapwatch.engines.faces.face import Face, FaceDetector
from swapwatch.engines.faces.letterbox import Letterbox, canvas_size_for
from swapwatch.engines.faces.nms import nms
from swapwatch.engines.runtime import Engine, load_onnx_engine
from swapwatch.errors import ModelError

STRIDES = (8, 16, 32)
_HEADS = ("cls", "obj", "bbox", "kps")
_WIDTHS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}


class YuNetDetector(FaceDetector):
    """YuNet 2023mar on a BGR uint8 image.

    NMS IoU 0.3 and top-k 5000 are OpenCV's ``FaceDetectorYN.create`` defaults. Its score default of 0.9
    is not kept: at the 640x640 canvas real faces score 0.88-0.96 (t1.jpg's six faces 0.88-0.93, a turned
    head in the Intel clip 0.90), so 0.9 loses some of them, while the best non-face candidate over all
    the shared test assets scores 0.28; 0.6 sits in that gap with a wide margin on both sides.
    ``input_size`` only matters for a graph exported with dynamic spatial dims; the released file is
    fixed at 640x640.
    """

    name = "yunet"

    def __init__(self, model_path: str | Path, *, backend: str = "auto", device: str = "auto",
                 score_threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 5000,
                 input_size: tuple[int, int] | None = None) -> None:
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError("score_threshold and nms_threshold must lie in [0, 1]")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.engine: Engine = load_onnx_engine(model_path, backend, device=device)
        if len(self.engine.inputs) != 1:
            raise ModelError(f"YuNet expects one input, {Path(model_path).name} has {len(self.engine.inputs)}")
        self._input_name = self.engine.inputs[0].name
        names = {spec.name for spec in self.engine.outputs}
        missing = [f"{h}_{s}" for h in _HEADS for s in STRIDES if f"{h}_{s}" not in names]
        if missing:
            raise ModelError(f"{Path(model_path).name} is not a YuNet 2023mar graph (no outputs "
                             f"{', '.join(missing)}); older YuNet releases are not supported")
        self.input_size = canvas_size_for(self.engine.inputs[0].shape, input_size, multiple=max(STRIDES))
        self._grid, self._stride = self._priors(self.input_size)

    @staticmethod
    def _priors(canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Cell indices ``(c, r)`` (N, 2) and their stride (N, 1), row-major per stride, strides in order."""
        w, h = canvas
        grids, strides = [], []
        for s in STRIDES:
            rows, cols = -(-h // s), -(-w // s)
            r, c = np.mgrid[:rows, :cols]
            grids.append(np.stack([c.ravel(), r.ravel()], axis=1))
            strides.append(np.full((rows * cols, 1), s))
        return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)

    def _gather(self, outputs: dict[str, np.ndarray], head: str) -> np.ndarray:
        parts = [np.asarray(outputs[f"{head}_{s}"], dtype=np.float32).reshape(-1, _WIDTHS[head]) for s in STRIDES]
        out = np.concatenate(parts)
        if out.shape[0] != self._grid.shape[0]:
            raise ModelError(f"YuNet {head} outputs have {out.shape[0]} rows, expected {self._grid.shape[0]} "
                             f"for a {self.input_size[0]}x{self.input_size[1]} input")
        return out

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        image = self.check_image(image_bgr)
        box = Letterbox.fit((image.shape[1], image.shape[0]), self.input_size)
        # YuNet takes raw BGR values 0..255, no mean or scale.
        blob = np.ascontiguousarray(box.apply(image).transpose(2, 0, 1)[None], dtype=np.float32)
        outputs = self.engine.run({self._input_name: blob})
        boxes, scores, kps = self.decode(outputs)
        if scores.size == 0:
            return []
        return [Face(b, s, k) for b, s, k in zip(box.to_image(boxes), scores, box.to_image(kps))]

    def decode(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs to kept ``boxes`` (N, 4) x1y1x2y2, ``scores`` (N,), ``kps`` (N, 5, 2) on the canvas,
        best first."""
        cls = np.clip(self._gather(outputs, "cls")[:, 0], 0.0, 1.0)
        obj = np.clip(self._gather(outputs, "obj")[:, 0], 0.0, 1.0)
        scores = np.sqrt(cls * obj)
        keep = np.flatnonzero(scores >= self.score_threshold)
        if self.top_k > 0 and keep.size > self.top_k:
            # OpenCV keeps the top-k candidates before NMS.
            keep = keep[np.argsort(-scores[keep], kind="stable")[: self.top_k]]
        scores = scores[keep]
        grid, stride = self._grid[keep], self._stride[keep]
        deltas = self._gather(outputs, "bbox")[keep]
        centre = (grid + deltas[:, :2]) * stride
        size = np.exp(deltas[:, 2:]) * stride
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        kps = (self._gather(outputs, "kps")[keep].reshape(-1, 5, 2) + grid[:, None, :]) * stride[:, None, :]
        order = nms(boxes, scores, self.nms_threshold)
        return boxes[order], scores[order], kps[order]
