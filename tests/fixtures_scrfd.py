"""A small seeded stand-in for InsightFace's SCRFD ONNX files (the real weights cannot be fetched here).

It has det_10g's interface: input ``input.1`` of shape [1, 3, H, W] (H and W dynamic), nine outputs, for
strides 8/16/32 a score [N, 1] (sigmoid), box distances [N, 4] and keypoint offsets [N, 10], both in units
of the stride, with N = (H/s) * (W/s) * 2 anchors, rows ordered location-major then anchor. Layout
variants mirror the released files: det_10g's (flat outputs named '448', '471', ... grouped score, box,
keypoints), the SCRFD repository's export (a leading batch dim, names score_8 ... kps_32), an interleaved
output order, and a graph with fixed 640x640 input. The weights are random: detections exercise the
decoding, never face quality.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from swapwatch.export.onnx_export import retry_spurious_ast_error

STRIDES = (8, 16, 32)
ANCHORS = 2
# det_10g's output names, score/box/keypoints for strides 8, 16, 32.
DET_10G_NAMES = {"score": ("448", "471", "494"), "bbox": ("451", "474", "497"), "kps": ("454", "477", "500")}
WIDTHS = {"score": 1, "bbox": 4, "kps": 10}
VARIANTS = ("det_10g", "batched", "interleaved", "static")


class _TinySCRFD(nn.Module):
    """Three conv stages (strides 8, 16, 32), each with score / box / keypoint 1x1 heads."""

    def __init__(self, generator: torch.Generator, *, score_bias: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU()) for _ in STRIDES[1:]])
        self.heads = nn.ModuleList([
            nn.ModuleDict({k: nn.Conv2d(16, ANCHORS * w, 1) for k, w in WIDTHS.items()}) for _ in STRIDES])
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                    nn.init.normal_(module.weight, 0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                    nn.init.normal_(module.bias, 0.0, 0.1, generator=generator)
            for head in self.heads:
                # Few, image-dependent confident anchors: a strong negative prior on the score logit.
                head["score"].weight.mul_(4.0)
                head["score"].bias.fill_(score_bias)

    @staticmethod
    def _flat(x: torch.Tensor, width: int) -> torch.Tensor:
        # [1, A*width, h, w] -> [h*w*A, width]: location-major, then anchor, as SCRFD's head permutes it.
        return x.permute(0, 2, 3, 1).reshape(-1, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = [self.stem(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        scores, boxes, kps = [], [], []
        for feat, head in zip(feats, self.heads):
            scores.append(self._flat(torch.sigmoid(head["score"](feat)), 1))
            # Distances of 1..4 strides to each side; keypoints within +-2 strides of the anchor centre.
            boxes.append(self._flat(1.0 + 3.0 * torch.sigmoid(head["bbox"](feat)), 4))
            kps.append(self._flat(2.0 * torch.tanh(head["kps"](feat)), 10))
        return (*scores, *boxes, *kps)


KINDS = ("score", "bbox", "kps")
# The forward's order and the names the base export gets: grouped by kind, strides ascending.
CANONICAL = tuple(f"{kind}_{s}" for kind in KINDS for s in STRIDES)
FIXTURE_SIZE = 640


def export_base(*, seed: int = 0, score_bias: float = -4.0) -> onnx.ModelProto:
    """The seeded network exported once (dynamic H and W, flat outputs named ``score_8`` ... ``kps_32``).

    ``score_bias`` sets how rare confident anchors are: -4 gives a few dozen faces on a photo, enough to
    exercise thresholding and NMS without flooding them.
    """
    model = _TinySCRFD(torch.Generator().manual_seed(seed), score_bias=score_bias).eval()
    height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)

    def export():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own internal deprecation notices
            return torch.onnx.export(model, (torch.zeros(1, 3, FIXTURE_SIZE, FIXTURE_SIZE),), None,
                                     input_names=["input.1"], output_names=list(CANONICAL),
                                     dynamic_shapes=({2: height, 3: width},), opset_version=18, dynamo=True,
                                     external_data=False, verbose=False)

    return retry_spurious_ast_error(export).model_proto


def make_variant(base: onnx.ModelProto, variant: str) -> onnx.ModelProto:
    """One released layout of the same network:

    - ``det_10g``: InsightFace's buffalo_l file: flat [N, C] outputs named '448' ... '500', grouped
      score / bbox / kps, dynamic H and W;
    - ``batched``: the SCRFD repository's export: [1, N, C] outputs named score_8 ... kps_32;
    - ``interleaved``: score_8, bbox_8, kps_8, score_16, ... (an order some third-party exports use);
    - ``static``: det_10g's names with the input fixed at 640x640 (``scrfd2onnx.py --shape 640 640``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SCRFD fixture variant {variant!r}; choose from {', '.join(VARIANTS)}")
    model = onnx.ModelProto()
    model.CopyFrom(base)
    graph = model.graph
    if variant == "batched":
        axes = numpy_helper.from_array(np.zeros(1, np.int64), "batch_axis")
        graph.initializer.append(axes)
        for value in graph.output:
            # The network's flat tensor gets a new name; the graph output becomes its unsqueezed copy.
            _rename(graph, value.name, f"{value.name}_flat", graph_outputs=False)
            graph.node.append(helper.make_node("Unsqueeze", [f"{value.name}_flat", "batch_axis"], [value.name]))
            flat = list(value.type.tensor_type.shape.dim)
            del value.type.tensor_type.shape.dim[:]
            value.type.tensor_type.shape.dim.add().dim_value = 1
            value.type.tensor_type.shape.dim.extend(flat)
    elif variant == "interleaved":
        by_name = {v.name: v for v in graph.output}
        ordered = [by_name[f"{kind}_{s}"] for s in STRIDES for kind in KINDS]
        copies = [onnx.ValueInfoProto() for _ in ordered]
        for copy, value in zip(copies, ordered):
            copy.CopyFrom(value)
        del graph.output[:]
        graph.output.extend(copies)
    else:
        numeric = [n for kind in KINDS for n in DET_10G_NAMES[kind]]
        for old, new in zip(CANONICAL, numeric):
            _rename(graph, old, new)
        if variant == "static":
            del graph.value_info[:]  # intermediate shapes were inferred for symbolic H and W
            for dim, size in zip(graph.input[0].type.tensor_type.shape.dim[2:], (FIXTURE_SIZE, FIXTURE_SIZE)):
                dim.dim_value = size
            for value, canonical in zip(graph.output, CANONICAL):
                stride = int(canonical.split("_")[1])
                value.type.tensor_type.shape.dim[0].dim_value = (FIXTURE_SIZE // stride) ** 2 * ANCHORS
    onnx.checker.check_model(model)
    return model


def _rename(graph: onnx.GraphProto, old: str, new: str, *, graph_outputs: bool = True) -> None:
    for node in graph.node:
        node.output[:] = [new if n == old else n for n in node.output]
        node.input[:] = [new if n == old else n for n in node.input]
    for value in (list(graph.output) if graph_outputs else []) + list(graph.value_info):
        if value.name == old:
            value.name = new


def build_scrfd_fixtures(folder: str | Path, variants: tuple[str, ...] = VARIANTS, *, seed: int = 0,
                         score_bias: float = -4.0) -> dict[str, Path]:
    """Write ``scrfd_<variant>.onnx`` for each variant (one export, shared weights) into ``folder``."""
    base = export_base(seed=seed, score_bias=score_bias)
    paths = {}
    for variant in variants:
        paths[variant] = Path(folder) / f"scrfd_{variant}.onnx"
        onnx.save(make_variant(base, variant), str(paths[variant]))
    return paths
