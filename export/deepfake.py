"""The deepfake detector's two networks, their checkpoint format and their ONNX export.

- :class:`FrameScorer`: a compact ResNet over one aligned face crop with a margin. It returns a feature vector
  (the temporal head's input) and a per-frame fake logit (trained directly, so a frame can be scored alone).
- :class:`TemporalHead`: the original system's head (GRU 16 -> GRU 8 -> dropout -> dense 8 -> dense 1) over the
  features of the last W frames of one face track, masked so that a window shorter than W gives exactly the
  result of running the GRUs on the shorter sequence.

Why a compact ResNet (4 stages of one basic block, widths 16-32-64-128, ~0.3 M parameters) rather than a
MobileNetV3-Small or EfficientNet-lite style net: measured on the project's 2-core CPU at 128x128, one training
step of 32 crops costs 111 ms for this net and 91 ms for a hand-written MobileNetV3-Small, and one crop 2.2 ms
vs 2.1 ms in eager PyTorch, so depthwise separable blocks buy almost nothing at this size; dense 3x3
convolutions keep more channels at the high-resolution stages, where blending seams and resampling traces
live, and they map onto oneDNN, cuDNN and TensorRT kernels without the memory-bound depthwise layers, squeeze-
excitation and hard-swish that make small-batch GPU latency poor. The data this project can train on is tiny,
which also argues for few parameters.

Input contract (both backends): ``crops`` float32 (N, 3, S, S), BGR, raw pixel values 0..255 (the
normalisation is part of the graph, so callers only transpose and cast). Outputs ``features`` (N, F) and
``logits`` (N,). The head takes ``features`` (N, W, F) in time order (oldest first) and ``mask`` (N, W) with 1
for a real frame and 0 for padding; padding goes at the start (left), and returns ``logits`` (N,).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from swapwatch.errors import ModelError

FORMAT = "swapwatch-deepfake-v1"  # the ``format`` key of a checkpoint, checked when loading


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------


# Which way each evidence feature moves on a swap, measured on the training people's tracks (real vs swapped
# and self-blended, bench/evidence_features.py; never on evaluation data): a generated, pasted face has less
# fine detail and sensor noise than the skin around it, and a step where the blend mask falls off.
EVIDENCE_SIGNS = {"hf": -1.0, "noise": -1.0, "seam": 1.0, "seam_chroma": 1.0, "seam_noise": 1.0}


@dataclass(frozen=True)
class ScorerConfig:
    """Frame scorer: crop size, stage widths and basic blocks per stage (the first stage has stride 1 after
    the stride-2 stem, each later one halves the resolution)."""

    size: int = 128
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    dropout: float = 0.2  # on the pooled features before the frame classifier (training only)
    # Feed the stem the crop's high-frequency residual (pixels minus a 5x5 binomial blur, per channel) beside
    # the pixels: blending seams and a sharpness mismatch between a pasted face and its frame live there,
    # while most of what identifies a person (shape, colour) does not — a bias towards cues that transfer to
    # people the scorer was not trained on.
    highpass: bool = False
    # Training-only auxiliary output: a map of where the crop was altered, predicted from the second stage
    # (1/4 resolution). Dense supervision (which pixels differ from the real frame) teaches far more per
    # example than one label, the point of Face X-ray; the map is not part of the exported graph.
    aux_map: bool = False
    # Local evidence (K > 0): the frame's evidence is the altered-region map itself, predicted from the last
    # stage (so its receptive field is a patch, not the face), and the features are the map's K largest cell
    # logits, sorted. A patch cannot tell who a person is, only whether a seam or a mismatch is in it: with a
    # handful of training identities, a global pool learns "unfamiliar face = fake". Needs ``aux_map``; the
    # map is then part of the exported graph.
    local_topk: int = 0
    # "yunet": the stem is YuNet 2023mar's first layers (to stride 8, 64 channels), started from its real
    # weights (``FrameScorer.load_stem``): filters learned on hundreds of thousands of real faces, where our
    # own training sees 17 people. It reads raw BGR pixels, so it excludes ``highpass``.
    # "dlib": dlib's face-recognition ResNet up to its second level (``DlibStem``: 64 channels at stride 8),
    # frozen from the released weights (CC0): a network trained to tell about 7 500 people apart on about 3 M
    # faces, whose early layers see skin texture, not who it is. It takes dlib's own 150x150 input.
    stem: str = "resnet"
    # Identity-independent evidence beside the map's cells (engines/deepfake/evidence.py): each named log-ratio
    # of the inner face against the frame around it, computed on the same crop in the graph, oriented so that
    # larger reads "more like a swap" (EVIDENCE_SIGNS) and appended to the features of the monotone classifier.
    # Needs local evidence (local_topk). ``face_scale``: the crop template's, where the regions are drawn.
    evidence: tuple[str, ...] = ()
    face_scale: float = 0.75

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        object.__setattr__(self, "evidence", tuple(str(e) for e in self.evidence))
        unknown = [e for e in self.evidence if e not in EVIDENCE_SIGNS]
        if unknown:
            raise ValueError(f"unknown evidence {unknown}; choose from {', '.join(EVIDENCE_SIGNS)}")
        if self.evidence and not self.local_topk:
            raise ValueError("evidence features join the local evidence's monotone classifier: it needs local_topk")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError("widths and blocks need one entry per stage")
        if self.stem not in ("resnet", "yunet", "dlib"):
            raise ValueError(f"unknown stem {self.stem!r} (resnet, yunet or dlib)")
        if self.stem != "resnet" and self.highpass:
            raise ValueError(f"the {self.stem} stem reads raw pixels: no highpass")
        if self.stem == "dlib":
            if self.size != DlibStem.SIZE:
                raise ValueError(f"the dlib stem takes dlib's {DlibStem.SIZE}x{DlibStem.SIZE} input: --crop-size "
                                 f"{DlibStem.SIZE}")
        elif self.size % self.stride != 0:
            raise ValueError(f"crop size {self.size} must be divisible by {self.stride}")
        if self.local_topk:
            if not self.aux_map:
                raise ValueError("local_topk scores the altered-region map: it needs aux_map")
            cells = self.map_side ** 2
            if not 1 <= self.local_topk <= cells:
                raise ValueError(f"local_topk must lie in [1, {cells}] (the map's cells)")

    @property
    def stride(self) -> int:
        """The last stage's stride: the stem's (2, or 8 for YuNet's), and 2 for every stage after the first."""
        return (8 if self.stem in ("yunet", "dlib") else 2) * 2 ** (len(self.widths) - 1)

    @property
    def map_side(self) -> int:
        """Cells per side of the last stage's map (dlib's unpadded stem and pools do not divide evenly)."""
        if self.stem == "dlib":
            return math.ceil(DlibStem.OUT_SIDE / 2 ** (len(self.widths) - 1))
        return self.size // self.stride

    @property
    def map_stage(self) -> int:
        """Index of the stage the altered-region map is predicted from."""
        return len(self.widths) - 1 if self.local_topk else min(1, len(self.widths) - 1)

    @property
    def feature_dim(self) -> int:
        return (self.local_topk + len(self.evidence)) if self.local_topk else self.widths[-1]


@dataclass(frozen=True)
class HeadConfig:
    """Temporal head: the original GRU 16 -> GRU 8 -> dropout -> dense 8 -> dense 1 over ``window`` frames."""

    feature_dim: int = 128
    window: int = 20
    hidden: tuple[int, ...] = (16, 8)
    dense: int = 8
    dropout: float = 0.3
    # Residual variant: add the window's mean frame logit (from a frozen copy of the scorer's classifier) to
    # the GRU head's output, so the head learns a temporal correction to the frame scores. Off: the original.
    residual: bool = False
    # Frame-mean variant: the window's logit is the mean of its frames' logits (the frozen classifier copy),
    # no GRU and nothing to train. With a handful of training identities a learned head fits their windows
    # and can undo what the frames show on new people.
    frame_mean: bool = False
    # The scorer's classifier is a MonotoneLinear (local evidence): the frozen copy must be one too.
    monotone: bool = False
    # An affine map of the output logit (scale, bias), fitted on windows of people the models that produced
    # them were not trained on (``train-detector --calibrate``), so the 0.5 threshold and the live alert
    # levels mean the same for any model. Off: the logit as trained (a checkpoint without the buffer).
    calibrated: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.window < 1 or not self.hidden:
            raise ValueError("the head needs a window of at least 1 frame and at least one GRU layer")
        if self.residual and self.frame_mean:
            raise ValueError("a head is residual or frame-mean, not both")

    @property
    def uses_frame_classifier(self) -> bool:
        return self.residual or self.frame_mean

    @property
    def trainable(self) -> bool:
        return not self.frame_mean


# --------------------------------------------------------------------------------------------------
# Frame scorer
# --------------------------------------------------------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and a (projected when the shape changes) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = _conv_bn(cout, cout)
        self.shortcut = _conv_bn(cin, cout, stride, 1) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class YuNetStem(nn.Module):
    """YuNet 2023mar's first 11 convolutions (BN folded into biases in the released ONNX): a 3x3 stride-2
    convolution, then pointwise + depthwise 3x3 pairs with max pools, to 64 channels at stride 8. Input: BGR
    pixel values 0..255, as YuNet reads them."""

    PLAN = (16, "pool", 16, 32, 32, 64, "pool")  # output channels of each pointwise + depthwise pair
    CONVS = 11

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(inplace=True)]
        cin = 16
        for step in self.PLAN:
            if step == "pool":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(cin, step, 1), nn.Conv2d(step, step, 3, 1, 1, groups=step), nn.ReLU(inplace=True)]
            cin = step
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def load_onnx(self, path: str | Path) -> None:
        """Copy the weights of the first convolutions of a YuNet ONNX file (strict on shapes)."""
        from onnx import numpy_helper

        from swapwatch.export.onnx_export import read_onnx_graph

        graph = read_onnx_graph(path)
        weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        convs = [n for n in graph.node if n.op_type == "Conv"][:self.CONVS]
        ours = [m for m in self.layers if isinstance(m, nn.Conv2d)]
        if len(convs) < len(ours):
            raise ModelError(f"{path}: {len(convs)} convolutions, the YuNet stem needs {len(ours)}")
        with torch.no_grad():
            for node, conv in zip(convs, ours):
                w, b = (weights.get(name) for name in (node.input[1], node.input[2] if len(node.input) > 2 else ""))
                if w is None or b is None or tuple(w.shape) != tuple(conv.weight.shape):
                    raise ModelError(f"{path} does not look like YuNet 2023mar (convolution {node.name!r})")
                conv.weight.copy_(torch.from_numpy(w.copy()))
                conv.bias.copy_(torch.from_numpy(b.copy()))


class DlibStem(nn.Module):
    """dlib's face-recognition ResNet (``export/dlib_resnet.py``) up to feature level 2 (its stem, alevel4 and
    alevel3: 64 channels, 17x17 for the 150x150 input; 0.34 M parameters). Input: BGR 0..255, the scorer's
    contract; the channels are reordered to dlib's RGB and normalised inside."""

    LEVEL = 2
    SIZE = 150
    OUT_SIDE = 17

    def __init__(self) -> None:
        super().__init__()
        from swapwatch.export.dlib_resnet import DlibFaceResNet

        self.trunk = DlibFaceResNet().truncated(self.LEVEL)
        self.out_channels = 64
        self.register_buffer("bgr_to_rgb", torch.tensor([2, 1, 0]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x.index_select(1, self.bgr_to_rgb))

    def load_dat(self, path: str | Path) -> None:
        """The released weights from dlib's own ``dlib_face_recognition_resnet_model_v1.dat`` (strict)."""
        from swapwatch.export.dlib_resnet import load_dlib_resnet

        self.trunk.load_state_dict(load_dlib_resnet(path).truncated(self.LEVEL).state_dict())


class MonotoneLinear(nn.Linear):
    """A linear layer whose weights are kept positive (softplus of the stored ones): the output can only rise
    with each input. Over the map's sorted cell logits, a frame's score then only rises with its evidence; a
    free linear layer learned cues from the *shape* of the evidence (a flat map reading as fake), which told
    people apart rather than manipulations."""

    def __init__(self, in_features: int, out_features: int = 1) -> None:
        super().__init__(in_features, out_features)
        with torch.no_grad():  # start as the mean of the inputs
            self.weight.fill_(math.log(math.expm1(1.0 / in_features)))
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, nn.functional.softplus(self.weight), self.bias)


class FrameScorer(nn.Module):
    """Compact ResNet: stride-2 3x3 stem, one stage per width, global average pool -> features, linear -> logit."""

    # Fixed input normalisation inside the graph: 0..255 pixels to about [-2, 2].
    PIXEL_MEAN = 127.5
    PIXEL_SCALE = 1.0 / 64.0
    HIGHPASS_GAIN = 8.0  # residuals are small: bring them to about the pixels' range

    def __init__(self, config: ScorerConfig = ScorerConfig()) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        if config.highpass:
            k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
            k = torch.outer(k, k) / 256.0
            self.register_buffer("blur_kernel", k.expand(3, 1, 5, 5).clone(), persistent=False)
        if config.stem in ("yunet", "dlib"):
            self.stem = YuNetStem() if config.stem == "yunet" else DlibStem()
            cin = self.stem.out_channels
        else:
            self.stem = nn.Sequential(_conv_bn(6 if config.highpass else 3, widths[0], 2), nn.ReLU(inplace=True))
            cin = widths[0]
        stages = []
        for i, (width, blocks) in enumerate(zip(widths, config.blocks)):
            layers = [BasicBlock(cin if j == 0 else width, width, (1 if i == 0 else 2) if j == 0 else 1)
                      for j in range(blocks)]
            stages.append(nn.Sequential(*layers))
            cin = width
        self.stages = nn.Sequential(*stages)
        # The map's sorted logits are evidence, not a redundant embedding: no dropout on them.
        self.dropout = nn.Dropout(0.0 if config.local_topk else config.dropout)
        self.classifier = (MonotoneLinear if config.local_topk else nn.Linear)(config.feature_dim, 1)
        if config.aux_map:
            self.aux = nn.Conv2d(widths[config.map_stage], 1, 1)
        if config.evidence:
            from swapwatch.engines.deepfake import EvidenceConfig, EvidenceFeatures

            self.evidence = EvidenceFeatures(EvidenceConfig(size=config.size, face_scale=config.face_scale,
                                                            features=config.evidence, stats=False))
            self.register_buffer("evidence_signs", torch.tensor([EVIDENCE_SIGNS[e] for e in config.evidence]),
                                 persistent=False)
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("stem.trunk."):  # dlib's keeps its own init
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch: every block starts as the identity (stabler early training).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)

    def load_stem(self, path: str | Path) -> None:
        """Start a pretrained stem from its released file: YuNet's ONNX file, or dlib's ``.dat``."""
        if self.config.stem == "yunet":
            self.stem.load_onnx(path)
        elif self.config.stem == "dlib":
            self.stem.load_dat(path)
        else:
            raise ValueError("only the yunet and dlib stems load pretrained weights")

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits, _ = self.forward_train(crops, with_map=False)
        return features, logits

    def forward_train(self, crops: torch.Tensor, *, with_map: bool = True):
        """(features, logits, altered-region map logits (N, 1, h, w) at the map stage's resolution, or None)."""
        x = crops if self.config.stem != "resnet" else (crops - self.PIXEL_MEAN) * self.PIXEL_SCALE
        if self.config.highpass:
            blurred = nn.functional.conv2d(nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"),
                                           self.blur_kernel, groups=3)
            x = torch.cat([x, (x - blurred) * self.HIGHPASS_GAIN], dim=1)
        x = self.stem(x)
        region = None
        local = self.config.local_topk
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == self.config.map_stage and self.config.aux_map and (with_map or local):
                region = self.aux(x)
        if local:
            features = torch.topk(region.flatten(1), local, dim=1).values
            if self.config.evidence:
                features = torch.cat([features, self.evidence(crops) * self.evidence_signs], dim=1)
        else:
            features = x.mean(dim=(2, 3))
        return features, self.classifier(self.dropout(features)).squeeze(1), region if with_map else None


# --------------------------------------------------------------------------------------------------
# Temporal head
# --------------------------------------------------------------------------------------------------


class MaskedGRU(nn.Module):
    """One batch-first GRU layer whose state stays put on masked (padding) steps.

    Written with two Linear layers instead of ``nn.GRU`` so that it exports to plain ONNX MatMul/Sigmoid/Tanh
    ops (unrolled over the fixed window) and so that the mask is exact: ``h_t = m_t * gru(x_t, h_{t-1}) +
    (1 - m_t) * h_{t-1}``. With padding at the start and ``h_0 = 0`` a short window gives the same output as
    the unpadded sequence, whatever values the padded steps hold. Gate order (reset, update, new) and the
    ``b_hn`` inside the reset product follow ``nn.GRU``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_proj = nn.Linear(input_size, 3 * hidden_size)
        self.hidden_proj = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (N, T, I), ``mask`` (N, T) -> outputs (N, T, H) (the state after each step)."""
        n, steps, _ = x.shape
        h = x.new_zeros(n, self.hidden_size)
        gi_all = self.input_proj(x)  # one matmul for every step's input gates
        outputs = []
        for t in range(steps):
            gi = gi_all[:, t]
            gh = self.hidden_proj(h)
            i_r, i_z, i_n = gi.chunk(3, dim=1)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            cand = torch.tanh(i_n + r * h_n)
            new = (1.0 - z) * cand + z * h
            m = mask[:, t : t + 1]
            h = m * new + (1.0 - m) * h
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class TemporalHead(nn.Module):
    """GRU 16 -> GRU 8 -> dropout -> dense 8 (ReLU) -> dense 1 on the last step's state (or, with
    ``frame_mean``, the masked mean of the frames' logits).

    The scorer is frozen while the head trains, so the features are standardised with the training set's
    per-dimension mean and standard deviation, stored as buffers (part of the exported graph).
    """

    def __init__(self, config: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))
        if not config.frame_mean:
            sizes = (config.feature_dim, *config.hidden)
            self.grus = nn.ModuleList(MaskedGRU(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            self.dropout = nn.Dropout(config.dropout)
            self.dense = nn.Linear(sizes[-1], config.dense)
            self.out = nn.Linear(config.dense, 1)
        if config.uses_frame_classifier:
            self.frame_classifier = (MonotoneLinear if config.monotone else nn.Linear)(config.feature_dim, 1)
            self.frame_classifier.requires_grad_(False)
        if config.residual:
            nn.init.zeros_(self.out.weight)  # starts as the mean of the frame logits
            nn.init.zeros_(self.out.bias)
        if config.calibrated:
            self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(np.maximum(std, 1e-4), dtype=torch.float32))

    def set_frame_classifier(self, classifier: nn.Linear) -> None:
        """The residual and frame-mean variants' frozen copy of the scorer's per-frame classifier."""
        if type(classifier) is not type(self.frame_classifier):
            raise ValueError(f"the head copies a {type(self.frame_classifier).__name__}, "
                             f"the scorer has a {type(classifier).__name__} (HeadConfig.monotone)")
        self.frame_classifier.load_state_dict(classifier.state_dict())

    def set_calibration(self, scale: float, bias: float) -> None:
        """Output logit -> ``scale * logit + bias`` (a head built with ``calibrated``; ``scale`` > 0)."""
        if not self.config.calibrated:
            raise ValueError("this head has no calibration (HeadConfig.calibrated)")
        if not scale > 0:
            raise ValueError(f"a calibration must keep the order of the scores (scale {scale} <= 0)")
        self.calibration.copy_(torch.tensor([float(scale), float(bias)]))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(features.dtype)
        logit = None
        if not self.config.frame_mean:
            x = (features - self.feature_mean) / self.feature_std
            for gru in self.grus:
                x = gru(x, mask)
            h = self.dropout(x[:, -1])  # right-aligned windows: the newest frame is always the last step
            logit = self.out(torch.relu(self.dense(h))).squeeze(1)
        if self.config.uses_frame_classifier:
            frame = self.frame_classifier(features).squeeze(2)
            mean = (frame * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            logit = mean if logit is None else logit + mean
        if self.config.calibrated:
            logit = logit * self.calibration[0] + self.calibration[1]
        return logit


# --------------------------------------------------------------------------------------------------
# Checkpoints: one .pt with both state_dicts, configs and metadata (plain tensors and dicts only)
# --------------------------------------------------------------------------------------------------


@dataclass
class DetectorModels:
    """A scorer and a head with the metadata the runtime needs (crop template margin, threshold, ...)."""

    scorer: FrameScorer
    head: TemporalHead
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(models: DetectorModels, path: str | Path) -> Path:
    """Write ``path`` (.pt) atomically: state_dicts, configs and metadata, loadable with ``weights_only``."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "scorer_config": _plain(asdict(models.scorer.config)),
        "head_config": _plain(asdict(models.head.config)),
        "scorer": models.scorer.state_dict(),
        "head": models.head.state_dict(),
        "meta": json.dumps(models.meta),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> DetectorModels:
    """Read a checkpoint written by :func:`save_checkpoint` (strict: a mismatched file fails loudly)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"detector checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ModelError(f"cannot read {path.name} as a detector checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path.name} is not a swapwatch deepfake checkpoint (format {FORMAT})")
    scorer = FrameScorer(ScorerConfig(**payload["scorer_config"]))
    head = TemporalHead(HeadConfig(**payload["head_config"]))
    try:
        scorer.load_state_dict(payload["scorer"], strict=True)
        head.load_state_dict(payload["head"], strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path.name}: weights do not match the model definition: {exc}") from exc
    return DetectorModels(scorer.eval(), head.eval(), json.loads(payload.get("meta") or "{}"))


def _plain(value: Any) -> Any:
    # Tuples become lists so the config round-trips through weights_only loading and JSON alike.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------------

SCORER_INPUTS = ("crops",)
SCORER_OUTPUTS = ("features", "logits")
HEAD_INPUTS = ("features", "mask")
HEAD_OUTPUTS = ("logits",)


def export_scorer(scorer: FrameScorer, path: str | Path, *, opset: int | None = None) -> Path:
    """Scorer to ONNX with a dynamic batch dimension."""
    from swapwatch.export.onnx_export import DEFAULT_OPSET, export_onnx

    size = scorer.config.size
    example = (torch.zeros(2, 3, size, size),)
    return export_onnx(scorer.eval(), example, path, input_names=SCORER_INPUTS, output_names=SCORER_OUTPUTS,
                       dynamic_axes={"crops": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
                       opset=opset or DEFAULT_OPSET)


def export_head(head: TemporalHead, path: str | Path, *, opset: int | None = None) -> Path:
    """Head to ONNX: dynamic batch, the window fixed at ``config.window`` (the GRU loop is unrolled)."""
    from swapwatch.export.onnx_export import DEFAULT_OPSET, export_onnx

    cfg = head.config
    example = (torch.zeros(2, cfg.window, cfg.feature_dim), torch.ones(2, cfg.window))
    return export_onnx(head.eval(), example, path, input_names=HEAD_INPUTS, output_names=HEAD_OUTPUTS,
                       dynamic_axes={"features": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}},
                       opset=opset or DEFAULT_OPSET)


def scorer_parity_inputs(config: ScorerConfig, seed: int = 0,
                         batches: Sequence[int] = (1, 3)) -> list[tuple[np.ndarray]]:
    """Parity inputs for a :class:`FrameScorer` (see :func:`crop_parity_inputs`)."""
    return crop_parity_inputs(config.size, seed, batches)


def crop_parity_inputs(size: int, seed: int = 0, batches: Sequence[int] = (1, 3)) -> list[tuple[np.ndarray]]:
    """Image-like (N, 3, size, size) crops at several batch sizes (the batch dim is dynamic): smooth random
    colour fields with a little pixel noise. Uniform noise over 0..255 is no crop a face detector produces; it
    drives the logit of a trained scorer to hundreds, where a 1e-4 absolute tolerance measures float32
    rounding, not the export."""
    import cv2

    rng = np.random.default_rng(seed)
    sets = []
    for n in batches:
        crops = []
        for _ in range(n):
            field = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
            image = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
            image += rng.normal(0, 6, image.shape).astype(np.float32)
            crops.append(np.clip(image, 0, 255).transpose(2, 0, 1))
        sets.append((np.ascontiguousarray(np.stack(crops), dtype=np.float32),))
    return sets


def head_parity_inputs(config: HeadConfig, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full, short (left-padded) and single-frame windows, with garbage in the padded steps."""
    rng = np.random.default_rng(seed)
    sets = []
    for n, valid in ((1, config.window), (3, max(config.window // 2, 1)), (2, 1)):
        feats = rng.normal(0.5, 1.0, (n, config.window, config.feature_dim)).astype(np.float32)
        mask = np.zeros((n, config.window), np.float32)
        mask[:, config.window - valid:] = 1.0
        sets.append((feats, mask))
    return sets
