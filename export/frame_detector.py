"""Released frame-level deepfake classifiers as swapwatch detector folders: what every such export shares.

A released detector (DeepfakeBench's Xception and EfficientNet-B4, Self-Blended Images' EfficientNet-B4)
classifies one face crop into two classes (real 0, fake 1). swapwatch runs detectors as a frame scorer plus a
window head (``engines/deepfake/detector.py``), so such a model becomes:

- :class:`TwoClassScorer`, the frame scorer graph: ``crops`` (N, 3, S, S) BGR 0..255 -> the model's own
  preprocessing (a subclass's :meth:`TwoClassScorer.preprocess`) -> the pooled vector its classifier reads
  (``features``, N x F) and ``logits`` (N,) = ``l1 - l0`` of its two logits, whose sigmoid is exactly its
  ``softmax[:, 1]``, the probability of *fake*;
- :class:`MeanProbabilityHead`, the window head: the mean of the frame probabilities over the (masked) window,
  returned as a logit (``log sum p - log sum (1 - p)``, computed with log-sigmoids so it is exact and finite for
  any frame logit). Probabilities rather than logits because that is how these releases turn frame scores into
  a video score, and because a mean of probabilities bounds what one frame can do (a single frame with logit 40
  cannot outvote nineteen clean frames). The runtime's ring buffers, strides and alerts then work unchanged;
- :func:`write_frame_detector`: ``scorer.onnx`` and ``head.onnx``, each checked against PyTorch with ONNX
  Runtime (:func:`swapwatch.export.onnx_export.check_parity`, judged by a :class:`Tolerance`), and
  ``detector.json`` (crop size and template, window, threshold, the caller's description of the model, parity
  figures, the graphs' sha256), written last, so a folder with a ``detector.json`` is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from swapwatch.errors import ModelError
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, Tolerance

EFFICIENTNET_PIP = "pip install 'swapwatch[detectors]'  (or: pip install efficientnet-pytorch==0.7.1)"


def efficientnet_class(owner: str):
    """efficientnet_pytorch's ``EfficientNet`` (optional extra ``swapwatch[detectors]``); a clear error naming
    the pip command when it is missing. ``owner`` says whose EfficientNet-B4 needs it."""
    try:
        from efficientnet_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(f"{owner}'s EfficientNet-B4 is built from the efficientnet-pytorch package, which is not "
                         f"installed: {EFFICIENTNET_PIP}") from exc
    return EfficientNet


# --------------------------------------------------------------------------------------------------
# The frame scorer and the window head
# --------------------------------------------------------------------------------------------------


class TwoClassScorer(nn.Module):
    """swapwatch's frame-scorer contract around a two-class (real 0, fake 1) network.

    ``crops`` (N, 3, S, S) float BGR 0..255 -> ``features`` (N, F), ``logits`` (N,) = ``l1 - l0`` (so
    ``sigmoid(logits)`` is the network's ``softmax[:, 1]``, the probability of fake). Subclasses give the
    network's input (:meth:`preprocess`), its pooled features (:meth:`pooled`) and its final linear layer
    (:meth:`classifier`, applied to those features as the network does; dropout before it is inactive in eval).
    """

    feature_dim: int
    resolution: int

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classifier(self) -> nn.Linear:
        raise NotImplementedError

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pooled(self.preprocess(crops))
        two = self.classifier()(features)
        return features, two[:, 1] - two[:, 0]

    def fake_direction(self) -> tuple[torch.Tensor, float]:
        """``(w, b)`` with ``features @ w + b == logits`` (the difference of the two class rows)."""
        layer = self.classifier()
        w = (layer.weight[1] - layer.weight[0]).detach().clone()
        b = float((layer.bias[1] - layer.bias[0]).detach())
        return w, b


def _log_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(z))`` for any z, with ops every exporter maps exactly (no Softplus/LogSigmoid kernels)."""
    return torch.clamp(z, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(z)))


class MeanProbabilityHead(nn.Module):
    """Window head of a frame-only detector: the logit of the mean frame probability over the valid frames.

    ``features`` (N, W, F), ``mask`` (N, W) -> ``logits`` (N,) with
    ``sigmoid(logits) = mean_{mask} sigmoid(features @ w + b)``, i.e.
    ``logits = logsumexp(log p_i) - logsumexp(log (1 - p_i))`` over the valid steps (the count cancels).
    """

    def __init__(self, weight: torch.Tensor, bias: float, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = int(window)
        self.feature_dim = int(weight.numel())
        self.register_buffer("weight", weight.detach().float().reshape(-1).clone())
        self.register_buffer("bias", torch.tensor(float(bias), dtype=torch.float32))

    def frame_logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight + self.bias

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.frame_logits(features)
        pad = (mask - 1.0) * 1.0e4  # 0 on valid steps, -1e4 (exp underflows to 0) on padding
        fake = torch.logsumexp(_log_sigmoid(z) + pad, dim=1)
        real = torch.logsumexp(_log_sigmoid(-z) + pad, dim=1)
        return fake - real


def mean_head(scorer: TwoClassScorer, window: int) -> MeanProbabilityHead:
    w, b = scorer.fake_direction()
    return MeanProbabilityHead(w, b, window).eval()


# --------------------------------------------------------------------------------------------------
# ONNX export and the detector folder
# --------------------------------------------------------------------------------------------------


def scorer_parity_inputs(size: int, seed: int = 0, batches: Sequence[int] = (1, 2)) -> list[tuple[np.ndarray]]:
    """Image-like BGR crops at several batch sizes (the detector's own parity inputs)."""
    from swapwatch.export.deepfake import crop_parity_inputs

    return crop_parity_inputs(size, seed, batches)


def head_parity_inputs(feature_dim: int, window: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full, short (left-padded) and one-frame windows, with garbage in the padded steps."""
    rng = np.random.default_rng(seed)
    sets = []
    for n, valid in ((1, window), (3, max(window // 2, 1)), (2, 1)):
        feats = np.abs(rng.normal(0.0, 1.0, (n, window, feature_dim))).astype(np.float32)
        mask = np.zeros((n, window), np.float32)
        mask[:, window - valid:] = 1.0
        sets.append((feats, mask))
    return sets


def export_scorer(scorer: TwoClassScorer, path: str | Path, *, opset: int | None = None) -> Path:
    """The scorer to ONNX with a dynamic batch (input ``crops``, outputs ``features``, ``logits``)."""
    from swapwatch.export.onnx_export import DEFAULT_OPSET, export_onnx

    size = scorer.resolution
    return export_onnx(scorer.eval(), (torch.zeros(1, 3, size, size),), path, input_names=("crops",),
                       output_names=("features", "logits"),
                       dynamic_axes={"crops": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
                       opset=opset or DEFAULT_OPSET)


def export_head(head: MeanProbabilityHead, path: str | Path, *, opset: int | None = None) -> Path:
    """The window head to ONNX: dynamic batch, the window fixed (``DeepfakeDetector`` checks it)."""
    from swapwatch.export.onnx_export import DEFAULT_OPSET, export_onnx

    example = (torch.zeros(2, head.window, head.feature_dim), torch.ones(2, head.window))
    return export_onnx(head.eval(), example, path, input_names=("features", "mask"), output_names=("logits",),
                       dynamic_axes={"features": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}},
                       opset=opset or DEFAULT_OPSET)


def check_window_and_threshold(window: int, threshold: float) -> None:
    if window < 1:
        raise ModelError("window must be >= 1")
    if not 0.0 < threshold < 1.0:
        raise ModelError("threshold must be a probability strictly between 0 and 1")


def write_frame_detector(scorer: TwoClassScorer, folder: str | Path, *, window: int, threshold: float,
                         face_scale: float, crop_centre: tuple[float, float], extra: Mapping[str, Any],
                         tolerance: Tolerance = DETECTOR_TOLERANCE, opset: int | None = None):
    """A folder :meth:`DeepfakeDetector.load` reads: ``scorer.onnx`` and ``head.onnx`` (each checked against
    PyTorch with ONNX Runtime, judged by ``tolerance``) and ``detector.json``: the crop (``scorer.resolution``
    pixels, ``detector_template(size, face_scale, crop_centre)``), ``window``, ``threshold``, then ``extra``
    (the model's own description: format, input, source, licence), the parity figures and the graphs' sha256.
    The folder holds no ``detector.pt`` (``graphs_only``), so the torch backend cannot run it. Returns its
    DetectorInfo."""
    from swapwatch.engines.deepfake import HEAD_FILE, INFO_FILE, SCORER_FILE, DetectorInfo
    from swapwatch.engines.runtime import sha256_file
    from swapwatch.export.onnx_export import check_parity, parity_json

    folder = Path(folder)
    check_window_and_threshold(window, threshold)
    scorer = scorer.eval()
    head = mean_head(scorer, window)
    parity = {
        "scorer": check_parity(scorer, export_scorer(scorer, folder / SCORER_FILE, opset=opset),
                               scorer_parity_inputs(scorer.resolution), tolerance=tolerance),
        "head": check_parity(head, export_head(head, folder / HEAD_FILE, opset=opset),
                             head_parity_inputs(scorer.feature_dim, window), tolerance=tolerance),
    }
    info = DetectorInfo(
        crop_size=scorer.resolution, face_scale=float(face_scale), window=int(window),
        feature_dim=scorer.feature_dim, threshold=float(threshold),
        extra={
            **extra,
            "graphs_only": True,  # no detector.pt: the torch backend cannot run this folder
            "crop_centre": [float(crop_centre[0]), float(crop_centre[1])],
            "window_score": "mean of frame probabilities over the window (MeanProbabilityHead), as a logit",
            **parity_json(parity),
            "sha256": {name: sha256_file(folder / name) for name in (SCORER_FILE, HEAD_FILE)},
        })
    tmp = folder / f".{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    tmp.replace(folder / INFO_FILE)
    return info
