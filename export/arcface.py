"""SimSwap's identity encoder: an SE-ResNet with "IR" blocks (ArcFace-trained), 112x112 RGB in, 512-d out.

The released ``arcface_checkpoint.tar`` is a whole pickled ``nn.Module`` whose classes live in a module
named ``models.arcface_models`` (SimSwap's repository; ``models.models`` / ``models`` in older checkouts,
after foamliu/InsightFace-v2). :func:`load_arcface` unpickles it through an allow-list that maps those
classes onto the ones below (never importing the original code), then copies the weights into a freshly
built :class:`ResNet` with ``strict`` key and shape checks. A plain state_dict of the same network loads too.

Attribute names match the original classes exactly, because both the pickled module tree and state_dict
keys are named after them. Depth: SimSwap loads its checkpoint into ``ResNet(IRBlock, [3, 4, 23, 3])``
(the 101-layer variant, 52.2 M parameters) in code that re-uses its weights; the block counts are read
from the checkpoint itself, so other depths of the same family load as well.

Input contract: RGB, 112x112, ImageNet mean/std normalised. Output: the raw 512-d embedding after ``fc``
and ``bn3`` (L2-normalise it before use as SimSwap's identity latent).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from swapwatch.errors import ModelError
from swapwatch.export.checkpoints import (
    TORCH_NN_CLASSES,
    load_state_strict,
    read_checkpoint,
    state_dict_from,
)

INPUT_SIZE = 112
EMBEDDING_SIZE = 512
# The depth SimSwap's ArcFace uses (see the module docstring).
DEFAULT_LAYERS: tuple[int, int, int, int] = (3, 4, 23, 3)
# ImageNet statistics SimSwap normalises the source crop with (torchvision's Normalize).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FILE = "arcface_checkpoint.tar"


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: channel weights from the global average, through a 1/16 bottleneck."""

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction),
            nn.PReLU(),
            nn.Linear(channel // reduction, channel),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(self.avg_pool(x).flatten(1))
        return x * weights[:, :, None, None]


class IRBlock(nn.Module):
    """Improved residual block: BN-conv-BN-PReLU-conv-BN, SE, residual add, PReLU (one PReLU used twice)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 use_se: bool = True) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = _conv3x3(inplanes, inplanes)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.use_se = use_se
        if use_se:
            self.se = SEBlock(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        if self.use_se:
            out = self.se(out)
        residual = x if self.downsample is None else self.downsample(x)
        # Not in-place (the original's ``out += residual``) so the graph stays functional for export.
        return self.prelu(out + residual)


class ResNet(nn.Module):
    """The SE-ResNet-IR trunk: conv3 (no padding) 112 -> 110, max-pool -> 55, four stages -> 7x7x512,
    BN, dropout (identity in eval), fc to 512, BN."""

    def __init__(self, block: type[IRBlock] = IRBlock, layers: Sequence[int] = DEFAULT_LAYERS,
                 use_se: bool = True) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ResNet needs four positive stage depths, got {tuple(layers)}")
        self.inplanes = 64
        self.use_se = use_se
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc = nn.Linear(512 * 7 * 7, EMBEDDING_SIZE)
        self.bn3 = nn.BatchNorm1d(EMBEDDING_SIZE)

    def _make_layer(self, block: type[IRBlock], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample, use_se=self.use_se)]
        self.inplanes = planes
        stage += [block(self.inplanes, planes, use_se=self.use_se) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, f"layer{i}")) for i in range(1, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return self.bn3(self.fc(x.flatten(1)))


# Names the pickled classes may carry: SimSwap's module, its older `models.models`, and the package itself
# (SimSwap's models/__init__.py re-exports them; foamliu/InsightFace-v2 has a top-level models.py).
PICKLED_MODULES = ("models.arcface_models", "models.models", "models")
ARCFACE_CLASSES: Mapping[tuple[str, str], type] = {
    (module, cls.__name__): cls for module in PICKLED_MODULES for cls in (ResNet, IRBlock, SEBlock)
}

_STAGE_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def layers_in(state: Mapping[str, torch.Tensor]) -> tuple[int, int, int, int] | None:
    """Stage depths implied by ``layerN.K.`` keys, or None when the keys show no ArcFace stages."""
    depth = [0, 0, 0, 0]
    for key in state:
        match = _STAGE_KEY.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            depth[stage] = max(depth[stage], index + 1)
    return tuple(depth) if all(depth) else None  # type: ignore[return-value]


def load_arcface(path: str | Path, *, layers: Sequence[int] | None = None) -> ResNet:
    """SimSwap's ArcFace from ``arcface_checkpoint.tar`` (a pickled module) or a plain state_dict.

    ``layers`` fixes the stage depths; by default they are read from the checkpoint's keys (falling back to
    :data:`DEFAULT_LAYERS`). Raises :class:`ModelError` for unreadable files, globals outside the allow-list,
    and any key or shape mismatch.
    """
    path = Path(path)
    obj = read_checkpoint(path, allowed={**TORCH_NN_CLASSES, **ARCFACE_CLASSES}, what="SimSwap ArcFace")
    state = state_dict_from(obj, path, root_types=(ResNet,))
    depth = tuple(layers) if layers is not None else (layers_in(state) or DEFAULT_LAYERS)
    try:
        model = ResNet(IRBlock, depth)
    except ValueError as exc:
        raise ModelError(f"{path.name}: {exc}") from exc
    return load_state_strict(model, state, path, fill_num_batches_tracked=True,
                             description=f"SimSwap's ArcFace ResNet{depth}").eval()


def example_input(batch: int = 1, *, seed: int = 0) -> torch.Tensor:
    """A random ImageNet-normalised-range batch (N, 3, 112, 112)."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=generator) - mean) / std


# -- ONNX export ----------------------------------------------------------------------------------------------

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


def export_arcface_onnx(model: ResNet, path: str | Path, *, opset: int = 17) -> Path:
    """``input`` [N,3,112,112] (ImageNet-normalised RGB) -> ``embedding`` [N,512] (raw, not normalised)."""
    from swapwatch.export.onnx_export import export_onnx

    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    return export_onnx(model.eval(), (example_input(2, seed=123),), path, input_names=[INPUT_NAME],
                       output_names=[OUTPUT_NAME], dynamic_axes=axes, opset=opset)


def parity_inputs() -> list[tuple[np.ndarray]]:
    """Batches of 1 and 3 (the export used 2)."""
    return [(example_input(b, seed=i).numpy(),) for i, b in enumerate((1, 3))]
