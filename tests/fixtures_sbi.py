"""A seeded random stand-in for Self-Blended Images' released weights (FFraw.tar, FFc23.tar), in exactly the
official format.

``src/train_sbi.py`` saves ``{"model": model.state_dict(), "optimizer": model.optimizer.state_dict(), "epoch":
epoch}`` of its ``Detector`` (``src/model.py``): ``net`` is efficientnet_pytorch's B4 with 2 classes, ``cel`` a
CrossEntropyLoss, ``optimizer`` SAM around SGD (lr 0.001, momentum 0.9, rho 0.05), whose state holds SAM's
``e_w`` tensors. :class:`RefSBIDetector` restates that Detector independently of swapwatch's classes, and
:func:`reference_probability` scores crops the way SBI's inference scripts do (RGB, ``/255``,
``softmax(model(x))[:, 1]``).

Weights are random, with BatchNorm statistics measured on image-like crops in SBI's input scale (through
fixtures_deepfakebench's ``randomize_``), so activations have realistic scales: they exercise the key layout,
loading, export and the data path, never detection quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fixtures_deepfakebench import randomize_

RESOLUTION = 380
# SAM keeps e_w for every parameter; a few are enough to give the file its real structure at a fraction of the size.
OPTIMIZER_STATES = 3


class _SBIInput:
    """What ``randomize_`` calibrates BatchNorm through (``ref.backbone.features`` on DeepfakeBench's input,
    ``x/127.5 - 1`` of RGB): ``(x + 1) / 2`` turns that back into SBI's ``x/255``."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features((x + 1.0) / 2.0)


class RefSBIDetector(nn.Module):
    """SBI's ``Detector``: ``net`` (``EfficientNet.from_pretrained("efficientnet-b4", advprop=True,
    num_classes=2)`` there; the same module from its config here) and a tensor-free loss."""

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-b4", num_classes=2)
        self.net.set_swish(memory_efficient=False)
        self.cel = nn.CrossEntropyLoss()

    @property
    def backbone(self) -> _SBIInput:
        return _SBIInput(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def sbi_input(faces_rgb: np.ndarray) -> torch.Tensor:
    """SBI's inference input from (N, S, S, 3) RGB faces: CHW, ``float() / 255``."""
    return torch.from_numpy(np.ascontiguousarray(faces_rgb.transpose(0, 3, 1, 2), dtype=np.float32)) / 255.0


def reference_probability(ref: RefSBIDetector, faces_rgb: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return ref.eval()(sbi_input(faces_rgb)).softmax(1)[:, 1].numpy()


def sam_state(ref: RefSBIDetector) -> dict:
    """``SAM(params, SGD, lr=0.001, momentum=0.9).state_dict()`` after training steps, as SBI saves it."""
    params = list(ref.parameters())
    group = {"lr": 0.001, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": False, "rho": 0.05,
             "params": list(range(len(params)))}
    g = torch.Generator().manual_seed(1)
    state = {i: {"e_w": 1e-4 * torch.randn(params[i].shape, generator=g)} for i in range(OPTIMIZER_STATES)}
    return {"state": state, "param_groups": [group]}


def build_checkpoint(path: Path, *, seed: int = 0, epoch: int = 99) -> tuple[Path, RefSBIDetector]:
    """``FFraw.tar`` in the released format; returns (path, the reference detector)."""
    ref = randomize_(RefSBIDetector(), seed, size=RESOLUTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ref.state_dict(), "optimizer": sam_state(ref), "epoch": epoch}, path)
    return path, ref
