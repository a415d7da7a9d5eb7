"""Seeded random stand-ins for DeepfakeBench's released detectors, in exactly the official format.

``xception_best.pth`` and ``effnb4_best.pth`` (release v1.0.1) are ``torch.save(detector.state_dict())`` of
DeepfakeBench's ``XceptionDetector`` / ``EfficientDetector``: the network lives in ``detector.backbone``, so
every key starts with ``backbone.``. The reference modules below restate those networks independently of
swapwatch's classes, with DeepfakeBench's attribute names (``training/networks/xception.py``: blocks built
with its ``grow_first``/``start_with_relu`` rules, the always-built ``adjust_channel``; ``efficientnetb4.py``:
efficientnet_pytorch's B4 with a plain stem conv, ``_fc`` = Identity and ``last_layer``), and compute the
probability the way its detectors do (``softmax(pred)[:, 1]`` after ToTensor + Normalize(0.5, 0.5) of RGB).

Weights are random with BatchNorm statistics measured on image-like inputs, so activations have realistic
scales: they exercise the key layout, loading, export and the data path, never detection quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class RefSeparableConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class RefBlock(nn.Module):
    """Units appended one relu/sepconv/bn triple at a time, as DeepfakeBench's ``Block`` does."""

    def __init__(self, in_filters, out_filters, reps, strides=1, start_with_relu=True, grow_first=True):
        super().__init__()
        if out_filters != in_filters or strides != 1:
            self.skip = nn.Conv2d(in_filters, out_filters, 1, stride=strides, bias=False)
            self.skipbn = nn.BatchNorm2d(out_filters)
        else:
            self.skip = None
        units = []
        filters = in_filters
        if grow_first:
            units += [nn.ReLU(), RefSeparableConv2d(in_filters, out_filters, 3, 1, 1), nn.BatchNorm2d(out_filters)]
            filters = out_filters
        for _ in range(reps - 1):
            units += [nn.ReLU(), RefSeparableConv2d(filters, filters, 3, 1, 1), nn.BatchNorm2d(filters)]
        if not grow_first:
            units += [nn.ReLU(), RefSeparableConv2d(in_filters, out_filters, 3, 1, 1), nn.BatchNorm2d(out_filters)]
        if not start_with_relu:
            units = units[1:]
        if strides != 1:
            units.append(nn.MaxPool2d(3, strides, 1))
        self.rep = nn.Sequential(*units)

    def forward(self, inp):
        skip = inp if self.skip is None else self.skipbn(self.skip(inp))
        return self.rep(inp) + skip


class RefXception(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.block1 = RefBlock(64, 128, 2, 2, start_with_relu=False, grow_first=True)
        self.block2 = RefBlock(128, 256, 2, 2, start_with_relu=True, grow_first=True)
        self.block3 = RefBlock(256, 728, 2, 2, start_with_relu=True, grow_first=True)
        for i in range(4, 12):
            setattr(self, f"block{i}", RefBlock(728, 728, 3, 1, start_with_relu=True, grow_first=True))
        self.block12 = RefBlock(728, 1024, 2, 2, start_with_relu=True, grow_first=False)
        self.conv3 = RefSeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = RefSeparableConv2d(1536, 2048, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(2048)
        self.last_linear = nn.Linear(2048, num_classes)
        self.adjust_channel = nn.Sequential(nn.Conv2d(2048, 512, 1, 1), nn.BatchNorm2d(512), nn.ReLU())

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.bn4(self.conv4(x))

    def classifier(self, features):
        x = F.adaptive_avg_pool2d(F.relu(features), (1, 1)).flatten(1)
        return self.last_linear(x)


class RefEfficientNetB4(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        self.efficientnet = EfficientNet.from_name("efficientnet-b4")  # DeepfakeBench: from_pretrained (ImageNet)
        self.efficientnet._conv_stem = nn.Conv2d(3, 48, kernel_size=3, stride=2, bias=False)
        self.efficientnet._fc = nn.Identity()
        self.efficientnet.set_swish(memory_efficient=False)
        self.last_layer = nn.Linear(1792, num_classes)

    def features(self, x):
        return self.efficientnet.extract_features(x)

    def classifier(self, x):
        return self.last_layer(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))


class RefDetector(nn.Module):
    """DeepfakeBench's detector shell: ``backbone`` plus a tensor-free loss, forward as in its detectors."""

    def __init__(self, arch: str):
        super().__init__()
        self.backbone = RefXception() if arch == "xception" else RefEfficientNetB4()
        self.loss_func = nn.CrossEntropyLoss()

    def forward(self, image):
        pred = self.backbone.classifier(self.backbone.features(image))
        return pred, torch.softmax(pred, dim=1)[:, 1]


def image_like(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 BGR crops: smooth colour fields plus noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
        img = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def deepfakebench_input(crops_bgr: np.ndarray) -> torch.Tensor:
    """DeepfakeBench's test-time input: BGR -> RGB, ToTensor (/255), Normalize(mean 0.5, std 0.5)."""
    rgb = crops_bgr[..., ::-1].astype(np.float32) / 255.0
    return (torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))) - 0.5) / 0.5


def reference_probability(ref: RefDetector, crops_bgr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return ref.eval()(deepfakebench_input(crops_bgr))[1].numpy()


def randomize_(ref: RefDetector, seed: int, size: int = 256) -> RefDetector:
    """Seeded He-normal weights, random BN affine parameters, then BN running statistics measured on
    image-like crops (cumulative average over one batch), so activations keep realistic scales."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.7 + 0.6 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        ref.eval()
        bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        ref.backbone.features(deepfakebench_input(image_like(4, size, seed)))
        for m in bns:
            m.num_batches_tracked.fill_(1000)
    return ref.eval()


def build_checkpoint(path: Path, arch: str, *, seed: int = 0) -> tuple[Path, RefDetector]:
    """``xception_best.pth`` / ``effnb4_best.pth`` in the released format; returns (path, the reference)."""
    ref = randomize_(RefDetector(arch), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), path)
    return path, ref


def save_state(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
