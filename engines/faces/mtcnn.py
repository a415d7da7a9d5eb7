"""MTCNN face detection: the three-stage cascade (PNet proposals, RNet and ONet refinement) on any backend.

Each stage is an :class:`Engine` with one input named ``input`` (normalised RGB, NCHW float32), so the same
cascade runs on PyTorch modules or on exported ONNX graphs.

Boxes are kept in pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``, width ``x2 - x1``). The original
MTCNN works in 1-based inclusive pixel indices with ``fix()`` truncation; every place where that matters
(PNet window positions, crop rounding, the stage-1 regression width) is translated exactly, because the
released weights were tuned with those conventions and borderline detections (a fist in insightface's t1.jpg
scores 0.04-0.86 at the last stage under 3-pixel crop jitter) flip with one-pixel differences.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from swapwatch.engines.faces.face import Face, FaceDetector
from swapwatch.engines.faces.nms import nms
from swapwatch.engines.runtime import Engine, TensorSpec, choose_backend, load_onnx_engine
from swapwatch.errors import BackendUnavailable, ModelError

log = logging.getLogger(__name__)

NET_NAMES = ("pnet", "rnet", "onet")
_MEAN = 127.5  # the nets' input normalisation, (x - 127.5) * 0.0078125 on RGB
_SCALE = 0.0078125
_PAD_VALUE = (0.0 - _MEAN) * _SCALE  # crops that leave the image are padded with black, as in the original
_PNET_STRIDE = 2
_PNET_CELL = 12
# The reference implementation resamples pyramid levels and crops with area interpolation, up or down
# (OpenCV's INTER_AREA is a bilinear variant when enlarging).
_RESAMPLE = cv2.INTER_AREA


@dataclass(frozen=True)
class MTCNNConfig:
    """The cascade's knobs: the published MTCNN settings, except the last threshold.

    The paper and facenet-pytorch use 0.7 for ONet; InsightFace's MTCNN uses 0.8. We take 0.8: on
    t1.jpg a fist scores 0.71-0.77 at ONet depending on a few pixels of crop or a mirror flip, while
    every real face in the test assets scores above 0.96.
    """

    min_face_size: float = 20.0
    factor: float = 0.709  # pyramid step: each level is ~1/sqrt(2) of the previous in area
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    nms_scale: float = 0.5  # PNet, within one pyramid level (IoU)
    nms_pyramid: float = 0.7  # PNet, across levels (IoU)
    nms_rnet: float = 0.7  # IoU
    nms_onet: float = 0.7  # overlap over the smaller box, to drop a box nested inside a face

    def __post_init__(self) -> None:
        if self.min_face_size <= 0:
            raise ValueError("min_face_size must be positive")
        if not 0.0 < self.factor < 1.0:
            raise ValueError("factor must be in (0, 1)")


class _Candidates:
    """Boxes (N, 4) float32 in image pixels with their scores (N,); a tiny struct to keep stages readable."""

    def __init__(self, boxes: np.ndarray, scores: np.ndarray) -> None:
        self.boxes = boxes.astype(np.float32, copy=False).reshape(-1, 4)
        self.scores = scores.astype(np.float32, copy=False).reshape(-1)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def take(self, index: np.ndarray) -> "_Candidates":
        return _Candidates(self.boxes[index], self.scores[index])

    @classmethod
    def concat(cls, parts: Sequence["_Candidates"]) -> "_Candidates":
        if not parts:
            return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        return cls(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]))


def apply_regression(boxes: np.ndarray, reg: np.ndarray, *, size_offset: float = 0.0) -> np.ndarray:
    """Shift each edge by its offset times the box's width or height (MTCNN's bounding-box regression).

    ``size_offset=-1`` reproduces the original's first stage, which measures width as ``x2 - x1`` on
    inclusive indices (one pixel less than the later stages).
    """
    wh = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2] + size_offset] * 2, axis=1)
    return boxes + reg * wh


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the refinement nets take square crops)."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) * 0.5
    half = np.max(boxes[:, 2:4] - boxes[:, 0:2], axis=1, keepdims=True) * 0.5
    return np.concatenate([centre - half, centre + half], axis=1)


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which PNet's 12-pixel window covers faces from ``min_face_size`` up to the image size."""
    scale = _PNET_CELL / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= _PNET_CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def integer_boxes(boxes: np.ndarray) -> np.ndarray:
    """The original's ``fix()`` of 1-based inclusive coordinates, in edge coordinates."""
    int_boxes = np.empty(boxes.shape, np.int64)
    int_boxes[:, 0:2] = np.trunc(boxes[:, 0:2] + 1.0) - 1.0
    int_boxes[:, 2:4] = np.trunc(boxes[:, 2:4])
    return int_boxes


def crop_batch(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of ``image`` (normalised float HxWx3) at ``boxes`` made integer, resized to ``size`` x ``size``.

    Returns the NCHW batch and the integer boxes actually cropped (the frame of reference for the next net's
    regression and landmarks). Parts of a box outside the image are padded with black.
    """
    height, width = image.shape[:2]
    int_boxes = integer_boxes(boxes)
    batch = np.empty((len(int_boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(int_boxes):
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if sx1 == x1 and sy1 == y1 and sx2 == x2 and sy2 == y2:
            patch = image[y1:y2, x1:x2]
        else:
            patch = np.full((y2 - y1, x2 - x1, 3), _PAD_VALUE, np.float32)
            if sx2 > sx1 and sy2 > sy1:
                patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = image[sy1:sy2, sx1:sx2]
        batch[k] = cv2.resize(patch, (size, size), interpolation=_RESAMPLE)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), int_boxes.astype(np.float32)


class MTCNNDetector(FaceDetector):
    """MTCNN (Zhang et al. 2016) with the facenet-pytorch weights, on PyTorch or ONNX Runtime."""

    name = "mtcnn"

    def __init__(self, pnet: Engine, rnet: Engine, onet: Engine, config: MTCNNConfig | None = None) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.config = config or MTCNNConfig()

    @property
    def backend(self) -> str:
        return self.pnet.backend

    @classmethod
    def from_weights(cls, weights_dir: str | Path | Mapping[str, str | Path], backend: str = "auto",
                     device: str = "auto", onnx_dir: str | Path | None = None,
                     config: MTCNNConfig | None = None) -> "MTCNNDetector":
        """Build the detector from ``pnet.pt``, ``rnet.pt``, ``onet.pt``.

        ``weights_dir`` is their folder (or the registry's filename -> path mapping). ``backend``: ``torch``
        runs our modules eagerly; ``onnxruntime`` (or ``tensorrt``) runs ONNX graphs exported once, with a
        parity check, into ``onnx_dir`` (default ``<weights folder>/onnx``). ``auto`` takes ONNX Runtime
        (on this project's 2-core CPU, best of 15 runs on t1.jpg: ~210-240 ms against ~310-330 ms for eager
        PyTorch, and ~14 vs ~19 ms on a 480x270 frame), and PyTorch when ONNX Runtime is not installed.
        """
        from swapwatch.export.mtcnn import weight_paths

        weights = weight_paths(weights_dir)
        backend = _resolve_backend(backend)
        if backend == "torch":
            from swapwatch.export.mtcnn import load_mtcnn_nets

            nets = load_mtcnn_nets(weights)
            engines = [_torch_engine(name, net, device) for name, net in zip(NET_NAMES, nets)]
        else:
            choose_backend(backend)  # a clear error before exporting anything for an unusable backend
            default_dir = weights["pnet.pt"].parent / "onnx"
            paths = ensure_onnx(weights, Path(onnx_dir) if onnx_dir is not None else default_dir)
            if backend == "onnxruntime":
                device = _ort_device(device)
            engines = [load_onnx_engine(paths[name], backend, device=device) for name in NET_NAMES]
        return cls(*engines, config=config)

    # -- the cascade -------------------------------------------------------------------------------------

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        image_bgr = self.check_image(image_bgr)
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
        # Normalise once: resizing (a weighted average) commutes with this affine map.
        image = (rgb - _MEAN) * _SCALE
        cand = self._propose(image)
        if len(cand):
            cand = self._refine(image, cand)
        if not len(cand):
            return []
        return self._output(image, cand)

    def _propose(self, image: np.ndarray) -> _Candidates:
        """PNet over the image pyramid: candidates after per-level and cross-level NMS and regression."""
        cfg = self.config
        height, width = image.shape[:2]
        per_scale = []
        for scale in pyramid_scales(height, width, cfg.min_face_size, cfg.factor):
            h, w = int(math.ceil(height * scale)), int(math.ceil(width * scale))
            level = cv2.resize(image, (w, h), interpolation=_RESAMPLE)
            out = self.pnet.run({"input": np.ascontiguousarray(level.transpose(2, 0, 1)[None])})
            prob, reg = out["prob"][0, 1], out["reg"][0]
            ys, xs = np.nonzero(prob >= cfg.thresholds[0])
            if ys.size == 0:
                continue
            # Each output cell sees a 12x12 window at stride 2 in the scaled image; its first and last pixel,
            # mapped back and truncated as the original does (1-based), give the edges.
            origin = np.stack([xs, ys, xs, ys], axis=1).astype(np.float32) * _PNET_STRIDE
            windows = np.floor((origin + np.array([1, 1, _PNET_CELL, _PNET_CELL], np.float32)) / scale)
            windows[:, 0:2] -= 1.0
            cand = _Candidates(windows, prob[ys, xs])
            # Keep the regression with the box until after NMS, as the original does.
            offsets = reg[:, ys, xs].T
            keep = nms(cand.boxes, cand.scores, cfg.nms_scale)
            per_scale.append((cand.take(keep), offsets[keep]))
        if not per_scale:
            return _Candidates.concat([])
        cand = _Candidates.concat([c for c, _ in per_scale])
        offsets = np.concatenate([o for _, o in per_scale])
        keep = nms(cand.boxes, cand.scores, cfg.nms_pyramid)
        cand, offsets = cand.take(keep), offsets[keep]
        return _Candidates(square_boxes(apply_regression(cand.boxes, offsets, size_offset=-1.0)), cand.scores)

    def _refine(self, image: np.ndarray, cand: _Candidates) -> _Candidates:
        """RNet on 24x24 crops of all candidates in one batch."""
        cfg = self.config
        batch, crop_boxes = crop_batch(image, cand.boxes, 24)
        out = self.rnet.run({"input": batch})
        scores = out["prob"][:, 1]
        ok = np.nonzero(scores > cfg.thresholds[1])[0]
        cand, reg = _Candidates(crop_boxes[ok], scores[ok]), out["reg"][ok]
        keep = nms(cand.boxes, cand.scores, cfg.nms_rnet)
        cand, reg = cand.take(keep), reg[keep]
        return _Candidates(square_boxes(apply_regression(cand.boxes, reg)), cand.scores)

    def _output(self, image: np.ndarray, cand: _Candidates) -> list[Face]:
        """ONet on 48x48 crops: final score, box and five landmarks, then "min" NMS."""
        cfg = self.config
        batch, crop_boxes = crop_batch(image, cand.boxes, 48)
        out = self.onet.run({"input": batch})
        scores = out["prob"][:, 1]
        ok = np.nonzero(scores > cfg.thresholds[2])[0]
        if ok.size == 0:
            return []
        boxes, scores, reg, marks = crop_boxes[ok], scores[ok], out["reg"][ok], out["landmarks"][ok]
        # Landmarks are fractions of the crop: five x values, then five y values.
        size = boxes[:, 2:4] - boxes[:, 0:2]
        landmarks = np.stack([marks[:, 0:5], marks[:, 5:10]], axis=2) * size[:, None, :] + boxes[:, None, 0:2]
        boxes = apply_regression(boxes, reg)
        keep = nms(boxes, scores, cfg.nms_onet, mode="min")
        return [Face(boxes[i], float(scores[i]), landmarks[i]) for i in keep]


def _resolve_backend(requested: str) -> str:
    """``auto``: ONNX Runtime, else PyTorch. TensorRT only when asked for: our TensorRT builder makes
    batch-only shape profiles, and PNet sees a different height and width at every pyramid level."""
    if requested != "auto":
        return requested
    try:
        chosen = choose_backend("auto", for_file=Path("mtcnn.onnx"))
    except BackendUnavailable:
        return "torch"
    return "onnxruntime" if chosen == "tensorrt" else chosen


def _ort_device(device: str) -> str:
    """``auto`` becomes CUDA or CPU, never ONNX Runtime's TensorRT provider, which would rebuild an engine
    for every new PNet input size."""
    if device != "auto":
        return device
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def _torch_engine(name: str, module, device: str) -> Engine:
    from swapwatch.engines.runtime import TorchEngine
    from swapwatch.export.mtcnn import NET_INPUT_SIZE, NET_OUTPUTS

    side = NET_INPUT_SIZE[name]
    spec = TensorSpec("input", (None, 3, side, side), np.dtype(np.float32))
    return TorchEngine(module, [spec], NET_OUTPUTS[name], device=device)


def ensure_onnx(weights: Mapping[str, Path], onnx_dir: Path) -> dict[str, Path]:
    """ONNX graphs of the three nets in ``onnx_dir``, exported (with a parity check) if missing or older than
    the weights; PyTorch is only imported when an export is needed."""
    paths = {name: onnx_dir / f"{name}.onnx" for name in NET_NAMES}
    missing = [str(p) for p in weights.values() if not p.is_file()]
    if missing:
        raise ModelError(f"MTCNN weights not found: {', '.join(missing)}")
    newest_weights = max(p.stat().st_mtime for p in weights.values())
    if all(p.is_file() and p.stat().st_mtime >= newest_weights for p in paths.values()):
        return paths

    from swapwatch.export.mtcnn import export_mtcnn_onnx, load_mtcnn_nets, parity_inputs
    from swapwatch.export.onnx_export import check_parity

    log.info("exporting MTCNN to ONNX in %s", onnx_dir)
    nets = load_mtcnn_nets(weights)
    paths = export_mtcnn_onnx(nets, onnx_dir)
    for name, net in zip(NET_NAMES, nets):
        # Two shapes other than the export's, so a baked-in dimension cannot slip through.
        check_parity(net, paths[name], parity_inputs(name)[1:3])  # the default fp32 tolerance
    return paths
