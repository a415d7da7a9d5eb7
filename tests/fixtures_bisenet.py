"""Seeded stand-ins for face-parsing.PyTorch's ``79999_iter.pth`` (the real weights cannot be fetched here).

The checkpoint is written the way the release is: ``torch.save`` of the BiSeNet's state_dict. Weights are
He-normal, BatchNorm affine parameters random, and BatchNorm running statistics calibrated on one random batch
so activations stay of order one through the network (plain random statistics make the logits explode or
vanish, and parity tolerances meaningless).
Nothing built from it measures parsing quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from swapwatch.export.bisenet import BiSeNet, example_input


def seeded_bisenet(seed: int = 0, *, calibration_size: int = 256) -> BiSeNet:
    gen = torch.Generator().manual_seed(seed)
    model = BiSeNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.momentum = None  # cumulative average: the calibration batch sets the statistics outright
        for head in (model.conv_out, model.conv_out16, model.conv_out32):
            head.conv_out.weight.mul_(0.05)  # logits of order 1-10, as a trained classifier gives
        model.train()
        model(example_input(2, calibration_size, seed=seed))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def write_checkpoint(path: str | Path, *, seed: int = 0) -> Path:
    """``79999_iter.pth``-style state_dict file of :func:`seeded_bisenet`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(seeded_bisenet(seed).state_dict(), path)
    return path


class _OtherNet(nn.Module):
    """A different architecture, to stand in for a wrong file (e.g. a segmentation model of another repo)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 19, 1)


def write_wrong_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_OtherNet().state_dict(), path)
    return path
