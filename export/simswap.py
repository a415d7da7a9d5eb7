"""SimSwap's ID-injection generators (224 and 512) with the parameter names of the released checkpoints.

The released generators (``people/latest_net_G.pth`` for 224, ``512/550000_net_G.pth`` for 512) are plain
state_dicts of ``Generator_Adain_Upsample(input_nc=3, output_nc=3, latent_size=512, n_blocks=9,
deep=False)`` from ``models/fs_networks.py`` and ``models/fs_networks_512.py``, saved with
``torch.save(net.cpu().state_dict())`` (no ``module.`` prefix; one is stripped if present).

Keys (224): ``first_layer.1`` conv7 3->64 and ``first_layer.2`` BN; ``down1..3`` (``.0`` conv3 stride 2,
``.1`` BN); ``BottleNeck.0..8`` ID-blocks with ``conv1.1``/``conv2.1`` (conv3 after reflect-pad, then
parameter-free instance norm) and ``style1.linear``/``style2.linear`` (Linear 512 -> 1024); ``up3..up1``
(``.1`` conv3, ``.2`` BN after bilinear x2); ``last_layer.1`` conv7 64->3. The 512 model has 32 channels in
``first_layer``/``last_layer`` and an extra ``down0`` (32->64) and ``up0`` (64->32).

I/O contract of the released code: ``target`` RGB in [0, 1] (no mean/std), ``source`` the L2-normalised
512-d ArcFace identity; output ``(tanh + 1) / 2`` in [0, 1]. (SimSwap's later ``fs_networks_fix.py``
normalises the input and drops the tanh: its checkpoints have the same keys but a different contract.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from swapwatch.errors import ModelError
from swapwatch.export.checkpoints import load_state_strict, read_checkpoint, state_dict_from
from swapwatch.export.onnx_export import save_onnx_atomically

LATENT_SIZE = 512
N_BLOCKS = 9
CROP_SIZES = (224, 512)
CHECKPOINT_FILES: Mapping[int, str] = {224: "latest_net_G.pth", 512: "550000_net_G.pth"}
# Names of the exported graph's inputs and output, shared with the swapper so every backend agrees.
INPUT_NAMES = ("target", "source")
OUTPUT_NAMES = ("output",)
# SimSwap's instance norm epsilon (added to the variance, inside the rsqrt).
IN_EPS = 1e-8


class InstanceNorm(nn.Module):
    """Parameter-free instance norm, ``(x - mean) * rsqrt(var + eps)`` over H, W (SimSwap's own, eps 1e-8).

    Written out rather than ``nn.InstanceNorm2d`` so the epsilon and the op order match the release.
    """

    def __init__(self, eps: float = IN_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        return x * torch.rsqrt((x * x).mean(dim=(2, 3), keepdim=True) + self.eps)


class ApplyStyle(nn.Module):
    """AdaIN-style modulation: ``x * (1 + g) + b`` with ``[g, b]`` = Linear(latent) viewed (N, 2, C, 1, 1)."""

    def __init__(self, latent_size: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent_size, channels * 2)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        style = self.linear(latent).view(-1, 2, x.shape[1], 1, 1)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class IDBlock(nn.Module):
    """One ID-injection residual block (SimSwap's ``ResnetBlock_Adain``): two reflect-pad conv3 + IN +
    style, ReLU between, residual add."""

    def __init__(self, dim: int, latent_size: int = LATENT_SIZE) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3), InstanceNorm())
        self.style1 = ApplyStyle(latent_size, dim)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3), InstanceNorm())
        self.style2 = ApplyStyle(latent_size, dim)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.style1(self.conv1(x), latent))
        return x + self.style2(self.conv2(y), latent)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                         nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class SimSwapGenerator(nn.Module):
    """``Generator_Adain_Upsample`` for ``crop_size`` 224 (base 64 channels) or 512 (base 32, one more
    down/up stage); ``forward(target, source)`` as in the module docstring."""

    def __init__(self, crop_size: int = 224, *, n_blocks: int = N_BLOCKS, latent_size: int = LATENT_SIZE) -> None:
        super().__init__()
        if crop_size not in CROP_SIZES:
            raise ValueError(f"SimSwap generators exist for crop sizes {CROP_SIZES}, not {crop_size}")
        self.crop_size = crop_size
        base = 64 if crop_size == 224 else 32
        self.first_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, base, kernel_size=7),
                                         nn.BatchNorm2d(base), nn.ReLU())
        if crop_size == 512:
            self.down0 = _down(32, 64)
        self.down1 = _down(64, 128)
        self.down2 = _down(128, 256)
        self.down3 = _down(256, 512)
        self.BottleNeck = nn.Sequential(*(IDBlock(512, latent_size) for _ in range(n_blocks)))
        self.up3 = _up(512, 256)
        self.up2 = _up(256, 128)
        self.up1 = _up(128, 64)
        if crop_size == 512:
            self.up0 = _up(64, 32)
        self.last_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(base, 3, kernel_size=7), nn.Tanh())

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        x = self.first_layer(target)
        if self.crop_size == 512:
            x = self.down0(x)
        x = self.down3(self.down2(self.down1(x)))
        for block in self.BottleNeck:
            x = block(x, source)
        x = self.up1(self.up2(self.up3(x)))
        if self.crop_size == 512:
            x = self.up0(x)
        return (self.last_layer(x) + 1.0) / 2.0


def crop_size_of(state: Mapping[str, torch.Tensor]) -> int:
    """224 or 512, from a generator state_dict's keys (only the 512 model has ``down0``/``up0``)."""
    return 512 if any(k.startswith(("down0.", "up0.")) for k in state) else 224


def load_generator(path: str | Path, crop_size: int | None = None) -> SimSwapGenerator:
    """A SimSwap generator from a released state_dict, strictly (every key and shape must match).

    ``crop_size`` None reads it from the keys; an explicit size that disagrees with the file fails with the
    missing/unexpected keys and shape mismatches named.
    """
    path = Path(path)
    state = state_dict_from(read_checkpoint(path, what="SimSwap generator"), path)
    size = crop_size_of(state) if crop_size is None else int(crop_size)
    try:
        model = SimSwapGenerator(size)
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    return load_state_strict(model, state, path, description=f"the SimSwap {size} generator",
                             fill_num_batches_tracked=True).eval()


def example_inputs(crop_size: int, batch: int = 1, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (target in [0, 1], L2-normalised latent) for export and parity checks."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 3, crop_size, crop_size, generator=generator)
    latent = torch.randn(batch, LATENT_SIZE, generator=generator)
    return target, latent / latent.norm(dim=1, keepdim=True)


# -- ONNX export ----------------------------------------------------------------------------------------------

# Batch sizes the parity checks run (neither is the export's example batch of 2).
PARITY_BATCHES = (1, 3)


def generator_dynamic_axes() -> dict[str, dict[int, str]]:
    return {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}


def export_generator_onnx(generator: SimSwapGenerator, path: str | Path, *, opset: int = 17) -> Path:
    """``target`` [N,3,S,S] + ``source`` [N,512] -> ``output`` [N,3,S,S], batch dynamic, spatial size fixed
    (TensorRT profiles vary the batch only)."""
    from swapwatch.export.onnx_export import export_onnx

    example = example_inputs(generator.crop_size, batch=2, seed=123)
    path = export_onnx(generator, example, path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                       dynamic_axes=generator_dynamic_axes(), opset=opset)
    size = generator.crop_size
    return _declare_output_shape(path, OUTPUT_NAMES[0], ("batch", 3, size, size))


def _declare_output_shape(path: Path, name: str, dims: Sequence[int | str]) -> Path:
    """Overwrite an output's declared shape (atomically).

    The TorchScript exporter infers the upsampled output's H and W symbolically and mislabels them (H as
    "batch"), which would tell consumers that H equals the batch size; the real shape is static.
    """
    import onnx

    model = onnx.load(str(path))
    output = next(o for o in model.graph.output if o.name == name)
    shape = output.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, str):
            entry.dim_param = dim
        else:
            entry.dim_value = int(dim)
    onnx.checker.check_model(model)
    save_onnx_atomically(model, path)
    return path


def generator_parity_inputs(crop_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(t.numpy() for t in example_inputs(crop_size, batch=b, seed=i))
            for i, b in enumerate(PARITY_BATCHES)]
