"""Seeded random stand-ins for SimSwap's released files, written in exactly the official formats.

- ``latest_net_G.pth`` / ``550000_net_G.pth``: plain state_dicts of the 224 / 512 generators, saved with
  ``torch.save(net.state_dict())`` as SimSwap's ``save_network`` does.
- ``arcface_checkpoint.tar``: a whole pickled ``nn.Module`` whose classes live in ``models.arcface_models``.
  That module is defined here independently of swapwatch's classes (same attribute names as SimSwap's),
  inserted into ``sys.modules`` only while saving and removed afterwards, so a loader that still needed the
  original code would fail.

The weights are random (scaled so activations stay in a sane range): they exercise loading, export and
the data path, never face quality.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

ARCFACE_MODULE = "models.arcface_models"


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded, variance-preserving random weights and plausible BatchNorm statistics, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "num_batches_tracked":
                tensor.fill_(1000)
            elif leaf == "running_mean":
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif leaf == "running_var":
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.ndim == 1 and leaf == "weight":  # BN / PReLU scales
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
                if tensor.numel() == 1:  # PReLU slope
                    tensor.fill_(0.25)
            elif leaf == "bias":
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=generator))
            else:
                fan_in = max(1, tensor[0].numel())
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1.0 / fan_in) ** 0.5)
    return module


def build_generator_checkpoint(path: Path, crop_size: int, *, seed: int = 0) -> Path:
    """A released-format generator state_dict (``latest_net_G.pth`` for 224, ``550000_net_G.pth`` for 512)."""
    from swapwatch.export.simswap import SimSwapGenerator

    net = randomize_(SimSwapGenerator(crop_size), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.cpu().state_dict(), path)
    return path


# -- SimSwap's ArcFace classes, as its repository defines them (independent of swapwatch's) -----------------


def _define_arcface_classes(module_name: str) -> dict[str, type]:
    def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)

    class SEBlock(nn.Module):
        def __init__(self, channel, reduction=16):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Sequential(nn.Linear(channel, channel // reduction), nn.PReLU(),
                                    nn.Linear(channel // reduction, channel), nn.Sigmoid())

        def forward(self, x):
            b, c, _, _ = x.size()
            return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)

    class IRBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None, use_se=True):
            super().__init__()
            self.bn0 = nn.BatchNorm2d(inplanes)
            self.conv1 = conv3x3(inplanes, inplanes)
            self.bn1 = nn.BatchNorm2d(inplanes)
            self.prelu = nn.PReLU()
            self.conv2 = conv3x3(inplanes, planes, stride)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride
            self.use_se = use_se
            if self.use_se:
                self.se = SEBlock(planes)

        def forward(self, x):
            residual = x
            out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
            out = self.bn2(self.conv2(out))
            if self.use_se:
                out = self.se(out)
            if self.downsample is not None:
                residual = self.downsample(x)
            out += residual
            return self.prelu(out)

    class ResNet(nn.Module):
        def __init__(self, block, layers, use_se=True):
            self.inplanes = 64
            self.use_se = use_se
            super().__init__()
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
            self.fc = nn.Linear(512 * 7 * 7, 512)
            self.bn3 = nn.BatchNorm1d(512)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample, use_se=self.use_se)]
            self.inplanes = planes
            layers += [block(self.inplanes, planes, use_se=self.use_se) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(self.bn2(x))
            return self.bn3(self.fc(x.view(x.size(0), -1)))

    classes = {"SEBlock": SEBlock, "IRBlock": IRBlock, "ResNet": ResNet}
    for name, cls in classes.items():
        cls.__module__, cls.__qualname__ = module_name, name
    return classes


@contextlib.contextmanager
def temporary_module(name: str, attributes: dict[str, object]) -> Iterator[types.ModuleType]:
    """``name`` (and its parent packages) importable only inside the block; refuses to shadow a real one."""
    parts = name.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    clashing = [n for n in names if n in sys.modules]
    if clashing:
        raise RuntimeError(f"module {clashing[0]!r} already exists; cannot fake SimSwap's {name}")
    modules = [types.ModuleType(n) for n in names]
    for parent, child in zip(modules, modules[1:]):
        parent.__path__ = []  # a package, so "models.arcface_models" resolves
        setattr(parent, child.__name__.rsplit(".", 1)[-1], child)
    for key, value in attributes.items():
        setattr(modules[-1], key, value)
    try:
        for module in modules:
            sys.modules[module.__name__] = module
        yield modules[-1]
    finally:
        for module in modules:
            sys.modules.pop(module.__name__, None)


def build_arcface_model(*, layers: Sequence[int] = (3, 4, 23, 3), seed: int = 1,
                        module_name: str = ARCFACE_MODULE) -> tuple[nn.Module, dict[str, type]]:
    """An original-style ArcFace (classes from ``module_name``) with seeded random weights, in eval mode."""
    classes = _define_arcface_classes(module_name)
    model = classes["ResNet"](classes["IRBlock"], list(layers))
    return randomize_(model, seed).eval(), classes


def build_arcface_checkpoint(path: Path, *, layers: Sequence[int] = (3, 4, 23, 3), seed: int = 1,
                             module_name: str = ARCFACE_MODULE, legacy_format: bool = False) -> nn.Module:
    """Write ``arcface_checkpoint.tar`` as SimSwap released it: ``torch.save(model)`` of the whole module.

    Returns the original-style model (for reference outputs); its classes are no longer importable.
    """
    model, classes = build_arcface_model(layers=layers, seed=seed, module_name=module_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_module(module_name, classes), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy format warns that it cannot find the classes' source
        torch.save(model, path, _use_new_zipfile_serialization=not legacy_format)
    return model


class _RunsShell:
    """Pickles as a call to os.system: what a hostile 'checkpoint' does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def build_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save file that runs ``touch marker`` when unpickled with plain pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _RunsShell(f"touch {marker}")}, path)
    return path
