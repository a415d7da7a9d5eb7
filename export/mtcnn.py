"""MTCNN's three networks (PNet, RNet, ONet) with the parameter names of facenet-pytorch's state_dicts.

The facenet-pytorch wheel ships ``pnet.pt``, ``rnet.pt`` and ``onet.pt`` as plain state_dicts (converted from
the original Caffe release via TensorFlow). These modules load them with ``strict=True`` so a wrong file or a
drifted definition fails loudly instead of detecting nothing.

Input contract (all three nets): RGB, NCHW float32, normalised as ``(x - 127.5) * 0.0078125``.
Outputs are plain tensors (no dicts, no data-dependent control flow) so the nets export to ONNX as-is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from swapwatch.errors import ModelError

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")


def _pool(kernel: int) -> nn.MaxPool2d:
    # ceil_mode reproduces Caffe's pooling output size, which the released weights were trained with.
    return nn.MaxPool2d(kernel, 2, ceil_mode=True)


def _flatten_caffe_order(x: torch.Tensor) -> torch.Tensor:
    """Flatten a conv feature map in the order the dense weights expect.

    The original weights come from a Caffe model trained on transposed (column-major) images, so the first
    dense layer reads the features as (W, H, C) rather than PyTorch's (C, H, W).
    """
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field with stride 2, any input size >= 12.

    Returns ``(prob, reg)``: softmax face/non-face ``(N, 2, H', W')`` and box offsets ``(N, 4, H', W')``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = _pool(2)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


class RNet(nn.Module):
    """Refinement net on 24x24 crops. Returns ``(prob (N, 2), reg (N, 4))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = _pool(3)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = _pool(3)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_caffe_order(x)))
        return torch.softmax(self.dense5_1(x), dim=1), self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48x48 crops. Returns ``(prob (N, 2), reg (N, 4), landmarks (N, 10))``.

    ``landmarks`` holds the five x coordinates then the five y coordinates, relative to the crop (0..1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = _pool(3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = _pool(3)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = _pool(2)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_caffe_order(x)))
        return torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x)


# Per net: input side for the fixed-size stages (None: fully convolutional) and output names, shared by the
# exporter and the detector so an exported graph and a TorchEngine expose the same interface.
NET_INPUT_SIZE: dict[str, int | None] = {"pnet": None, "rnet": 24, "onet": 48}
NET_OUTPUTS: dict[str, tuple[str, ...]] = {
    "pnet": ("prob", "reg"),
    "rnet": ("prob", "reg"),
    "onet": ("prob", "reg", "landmarks"),
}


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"MTCNN weights not found: {path}")
    try:
        # weights_only: these are plain state_dicts, so never unpickle arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise ModelError(f"cannot read MTCNN weights {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a plain state_dict of tensors")
    return state


def load_net(module: nn.Module, path: str | Path) -> nn.Module:
    """Load one state_dict into ``module`` strictly and put it in eval mode."""
    path = Path(path)
    state = _load_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        raise ModelError(f"{path.name} does not match {type(module).__name__}: {exc}") from exc
    return module.eval()


def weight_paths(weights: str | Path | Mapping[str, str | Path]) -> dict[str, Path]:
    """``pnet.pt``/``rnet.pt``/``onet.pt`` -> path, from a folder or from a registry's file mapping."""
    if isinstance(weights, Mapping):
        missing = [name for name in WEIGHT_FILES if name not in weights]
        if missing:
            raise ModelError(f"MTCNN weights incomplete: no {', '.join(missing)} among {sorted(weights)}")
        return {name: Path(weights[name]) for name in WEIGHT_FILES}
    return {name: Path(weights) / name for name in WEIGHT_FILES}


def load_mtcnn_nets(weights: str | Path | Mapping[str, str | Path]) -> tuple[PNet, RNet, ONet]:
    """PNet, RNet and ONet from ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (a folder, or a filename -> path map)."""
    paths = weight_paths(weights)
    pnet = load_net(PNet(), paths["pnet.pt"])
    rnet = load_net(RNet(), paths["rnet.pt"])
    onet = load_net(ONet(), paths["onet.pt"])
    return pnet, rnet, onet


def onnx_dynamic_axes(name: str) -> dict[str, dict[int, str]]:
    """Dynamic axes of one net's graph: batch everywhere, and the spatial size for the fully conv PNet."""
    if NET_INPUT_SIZE[name] is None:
        spatial = {0: "batch", 2: "height", 3: "width"}
        out_spatial = {0: "batch", 2: "out_height", 3: "out_width"}
        return {"input": spatial, **{out: dict(out_spatial) for out in NET_OUTPUTS[name]}}
    return {"input": {0: "batch"}, **{out: {0: "batch"} for out in NET_OUTPUTS[name]}}


def example_input(name: str, *, batch: int = 1, height: int = 48, width: int = 48,
                  seed: int = 0) -> torch.Tensor:
    """A normalised-range random input for one net (RNet/ONet ignore height/width: their size is fixed)."""
    side = NET_INPUT_SIZE[name]
    h, w = (height, width) if side is None else (side, side)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=generator) * 2.0 - 1.0


def parity_inputs(name: str) -> list[tuple[np.ndarray]]:
    """Input sets for the PyTorch/ONNX parity check: several PNet sizes (odd, non-square, the smallest 12x12)
    and several batch sizes for RNet/ONet, none of them the shapes used at export."""
    if NET_INPUT_SIZE[name] is None:
        shapes = [(1, 12, 12), (1, 37, 53), (2, 120, 160), (1, 300, 400)]
    else:
        shapes = [(1, 0, 0), (7, 0, 0), (64, 0, 0)]
    return [(example_input(name, batch=b, height=h, width=w, seed=i).numpy(),)
            for i, (b, h, w) in enumerate(shapes)]


def export_mtcnn_onnx(nets: tuple[PNet, RNet, ONet], output_dir: str | Path, *,
                      opset: int = 17) -> dict[str, Path]:
    """Export the three nets to ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` in ``output_dir``."""
    from swapwatch.export.onnx_export import export_onnx

    output_dir = Path(output_dir)
    paths = {}
    for name, net in zip(NET_OUTPUTS, nets):
        # Export with batch 2 and a non-square PNet input so no dimension is mistaken for a constant.
        example = example_input(name, batch=2, height=31, width=45)
        paths[name] = export_onnx(net, (example,), output_dir / f"{name}.onnx", input_names=["input"],
                                  output_names=NET_OUTPUTS[name], dynamic_axes=onnx_dynamic_axes(name),
                                  opset=opset)
    return paths
