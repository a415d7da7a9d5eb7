"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch) with the parameter names of ``79999_iter.pth``.

The released checkpoint is a plain state_dict trained on CelebAMask-HQ (19 classes, see
:data:`swapwatch.engines.swap.parsing.LABELS`). Its network: a ResNet-18 context path (features at 1/8, 1/16,
1/32), attention refinement on the 1/16 and 1/32 features plus a global-context branch, and a feature fusion
module that fuses the 1/8 ResNet features (they stand in for BiSeNet's spatial path, which the release
dropped) with the upsampled context. Three heads exist (main, and the 1/8 and 1/16 auxiliary heads used in
training); the module keeps all three so the checkpoint loads strictly, but ``forward`` returns only the main
head: that is all inference uses, and the exported graph then carries no dead branches.

Input contract: RGB, NCHW float32, ``(x / 255 - mean) / std`` with ImageNet mean and std, at 512x512 (the
training size). Output: logits (N, 19, H, W) at the input size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swapwatch.export.checkpoints import load_state_strict, read_checkpoint, state_dict_from

NUM_CLASSES = 19
INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ConvBNReLU(nn.Module):
    """Conv (no bias) + BatchNorm + ReLU: submodules ``conv`` and ``bn`` as in the checkpoint."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; the 1x1 projection shortcut (``downsample.0/1``) exists when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if in_ch != out_ch or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))


class ResNet18Features(nn.Module):
    """ResNet-18 trunk (no classifier) returning the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    """Conv block, then channel attention from its global average (1x1 conv, BN, sigmoid)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 + attention refinement at 1/16 and 1/32 + global context, upsampled to 1/8 (nearest)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18Features()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        up32 = self.arm32(feat32) + F.interpolate(context, feat32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(up32, feat16.shape[2:], mode="nearest"))
        up16 = self.arm16(feat16) + up32
        up16 = self.conv_head16(F.interpolate(up16, feat8.shape[2:], mode="nearest"))
        return feat8, up16, up32


class FeatureFusion(nn.Module):
    """Concatenate, 1x1 conv block, then a squeeze-excite style attention added back (``x + x * a``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, kernel=1, padding=0)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat + feat * atten


class OutputHead(nn.Module):
    """Conv block then a 1x1 classifier (no bias)."""

    def __init__(self, in_ch: int, mid_ch: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch)
        self.conv_out = nn.Conv2d(mid_ch, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The face-parsing network; ``forward`` returns the main head's logits at the input size."""

    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        # Auxiliary training heads: unused at inference, present so the released checkpoint loads strictly.
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        # The release upsamples with align_corners=True; the labels depend on it at class borders.
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def load_bisenet(path: str | Path, *, n_classes: int = NUM_CLASSES) -> BiSeNet:
    """BiSeNet in eval mode from a ``79999_iter.pth``-style state_dict (``module.`` prefix accepted).

    Read with torch's ``weights_only`` loader (the release is a plain state_dict: nothing else is
    unpickled) and loaded strictly; the one tolerance is BatchNorm ``num_batches_tracked`` counters missing
    from checkpoints of torch before 0.4.1, which never affect inference.
    """
    path = Path(path)
    state = state_dict_from(read_checkpoint(path, what="face-parsing"), path)
    model = load_state_strict(BiSeNet(n_classes), state, path, fill_num_batches_tracked=True,
                              description="a face-parsing BiSeNet (79999_iter.pth layout)")
    return model.eval()


def example_input(batch: int = 1, size: int = INPUT_SIZE, *, seed: int = 0) -> torch.Tensor:
    """A random input in the normalised range (ImageNet-normalised [0, 1] RGB)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def export_bisenet_onnx(model: BiSeNet, path: str | Path, *, size: int = INPUT_SIZE, opset: int = 17) -> Path:
    """Export to ONNX with a dynamic batch and a fixed ``size`` x ``size`` input (the parser resizes to it)."""
    from swapwatch.export.onnx_export import export_onnx

    # Export with batch 2 so the batch dim is never folded into a constant.
    return export_onnx(model, (example_input(2, size),), path, input_names=[INPUT_NAME],
                       output_names=[OUTPUT_NAME],
                       dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset=opset)


def parity_inputs(size: int = INPUT_SIZE) -> list[tuple[np.ndarray]]:
    """Input sets for :func:`swapwatch.export.onnx_export.check_parity` (batch sizes unlike the export's)."""
    return [(example_input(b, size, seed=10 + i).numpy(),) for i, b in enumerate((1, 3))]
