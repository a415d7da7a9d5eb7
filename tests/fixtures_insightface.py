"""Small seeded stand-ins for InsightFace's inswapper_128.onnx and w600k_r50.onnx (the real weights cannot
be fetched here; nothing built from these measures swap or recognition quality).

They keep the released files' interfaces, which is what the code under test depends on:

- inswapper: inputs ``target`` [1, 3, 128, 128] and ``source`` [1, 512], output ``output`` [1, 3, 128, 128]
  in [0, 1], and a 512x512 ``emap`` appended as the graph's *last* initializer, used by no node. The
  generator depends on both inputs: a conv encoder, AdaIN-style modulation of the bottleneck by the latent,
  a decoder with a sigmoid. Variants: the release's fixed batch of 1, and a dynamic batch.
- w600k_r50: input ``input.1`` [None, 3, 112, 112] and output ``683`` declared [1, 512] (as in the release,
  whose batch still runs because ONNX Runtime only warns about the declared output shape), a small conv net.
  An ``mxnet`` variant carries its own ``Sub``/``Mul`` normalisation nodes first and takes raw pixels, like
  InsightFace's MXNet-converted recognition models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from swapwatch.export.onnx_export import export_onnx

INSWAPPER_SIZE = 128
ARCFACE_SIZE = 112
DIM = 512


def _init(module: nn.Module, generator: torch.Generator) -> None:
    """He-normal weights and small biases from ``generator`` (reproducible across runs)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.05, generator=generator)


class TinyInswapper(nn.Module):
    """Encoder (128 -> 32), one identity-modulated block, decoder back to 128, sigmoid."""

    def __init__(self, generator: torch.Generator, channels: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, channels, 3, 2, 1), nn.ReLU())
        self.mix = nn.Conv2d(channels, channels, 3, 1, 1)
        self.style = nn.Linear(DIM, 2 * channels)
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(channels, 16, 3, 1, 1), nn.ReLU(),
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(16, 3, 3, 1, 1))
        _init(self, generator)
        with torch.no_grad():
            self.style.weight.mul_(8.0)  # unit-norm latents are small: make the identity matter visibly

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        x = self.mix(self.encoder(target))
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
        gain, bias = self.style(source)[:, :, None, None].chunk(2, dim=1)
        x = torch.relu((x - mean) / std * (1.0 + gain) + bias)
        return torch.sigmoid(self.decoder(x) + 2.0 * (target - 0.5))


class TinyArcFace(nn.Module):
    """Strided convs to 7x7, flatten (so the embedding depends on where features are), linear to 512."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.PReLU(16), nn.Conv2d(16, 32, 3, 2, 1), nn.PReLU(32),
            nn.Conv2d(32, 32, 3, 2, 1), nn.PReLU(32), nn.Conv2d(32, 32, 3, 2, 1), nn.PReLU(32))
        self.fc = nn.Linear(32 * 7 * 7, DIM)
        _init(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def _append_emap(path: Path, emap: np.ndarray) -> None:
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(emap.astype(np.float32), name="emap"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _release_output(path: Path, name: str) -> None:
    """Rename the output to the release's (TorchScript refuses numeric names) and declare its batch as 1, as
    the released w600k_r50 does (its input batch stays dynamic)."""
    model = onnx.load(str(path))
    output = model.graph.output[0]
    for node in model.graph.node:
        for i, out in enumerate(node.output):
            if out == output.name:
                node.output[i] = name
    output.name = name
    dim = output.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _prepend_mxnet_normalisation(path: Path, out: Path) -> None:
    """A copy taking raw 0..255 RGB, with ``(x - 127.5) * 0.0078125`` as its first nodes, named the way
    MXNet's converter names them (``_minus0``, ``_mul0``)."""
    model = onnx.load(str(path))
    graph = model.graph
    raw = graph.input[0].name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == raw:
                node.input[i] = "normed"
    consts = [numpy_helper.from_array(np.array(127.5, np.float32), "mean_c"),
              numpy_helper.from_array(np.array(0.0078125, np.float32), "scale_c")]
    nodes = [helper.make_node("Sub", [raw, "mean_c"], ["centred"], name="_minus0"),
             helper.make_node("Mul", ["centred", "scale_c"], ["normed"], name="_mul0")]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.initializer.extend(consts)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def build_insightface_fixtures(out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the fixture graphs to ``out_dir``: keys ``inswapper_fixed``, ``inswapper_dynamic``,
    ``arcface`` and ``arcface_mxnet``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    swapper = TinyInswapper(gen).eval()
    emap = (torch.randn(DIM, DIM, generator=gen) / DIM ** 0.5).numpy()
    arcface = TinyArcFace(gen).eval()

    paths: dict[str, Path] = {}
    names = {"input_names": ["target", "source"], "output_names": ["output"]}
    for variant, batch in (("fixed", 1), ("dynamic", 2)):
        example = (torch.rand(batch, 3, INSWAPPER_SIZE, INSWAPPER_SIZE, generator=gen),
                   torch.randn(batch, DIM, generator=gen))
        axes = None if variant == "fixed" else {"target": {0: "batch"}, "source": {0: "batch"},
                                                 "output": {0: "batch"}}
        path = export_onnx(swapper, example, out_dir / f"inswapper_{variant}.onnx", dynamic_axes=axes, **names)
        _append_emap(path, emap)
        paths[f"inswapper_{variant}"] = path

    example = (torch.rand(2, 3, ARCFACE_SIZE, ARCFACE_SIZE, generator=gen) * 2.0 - 1.0,)
    path = export_onnx(arcface, example, out_dir / "w600k_r50.onnx", input_names=["input.1"],
                       output_names=["embedding"], dynamic_axes={"input.1": {0: "None"}})
    _release_output(path, "683")
    paths["arcface"] = path
    paths["arcface_mxnet"] = out_dir / "w600k_mxnet.onnx"
    _prepend_mxnet_normalisation(path, paths["arcface_mxnet"])
    return paths
