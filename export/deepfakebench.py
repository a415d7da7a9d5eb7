"""DeepfakeBench's released Xception and EfficientNet-B4 detectors as swapwatch frame scorers.

What the official files are (read from SCLBD/DeepfakeBench, the NeurIPS 2023 benchmark; CC BY-NC 4.0):

- **Weights**: release ``v1.0.1`` (``https://github.com/SCLBD/DeepfakeBench/releases/tag/v1.0.1``) ships
  ``xception_best.pth`` and ``effnb4_best.pth``, evaluated by ``training/test.py`` with
  ``model.load_state_dict(torch.load(weights_path), strict=True)`` on the *detector* object. They are plain
  ``torch.save(model.state_dict())`` dicts (``training/trainer/trainer.py``, ``save_ckpt``; multi-GPU runs save
  ``model.module.state_dict()``, so no ``module.`` prefix; one is stripped here anyway when every key has it).
  Every key starts with ``backbone.`` because the detectors keep their network in ``self.backbone``
  (``training/detectors/xception_detector.py``, ``efficientnetb4_detector.py``; issues #113 and #79 of the
  repository show ``backbone.conv1.weight`` and ``backbone.efficientnet._conv_stem.weight`` in the released
  files). The detectors' loss modules have no tensors.
- **Xception** (``training/networks/xception.py``, config ``training/config/detector/xception.yaml``:
  ``mode: original, num_classes: 2, inc: 3, dropout: false``): the FaceForensics++/Cadene Xception. ``conv1``
  3->32 k3 s2 *no padding*, ``bn1``, ReLU, ``conv2`` 32->64 k3 no padding, ``bn2``, ReLU; ``block1..block12``
  (``rep`` = [ReLU, SeparableConv2d, BN] units with the first ReLU dropped in ``block1``, then MaxPool(3, s, 1)
  when strided; ``skip``/``skipbn`` 1x1 conv + BN where channels or stride change): 64->128, 128->256, 256->728
  (2 units, stride 2), eight 728->728 (3 units), 728->1024 (2 units, the channel growth in the last unit,
  stride 2); ``conv3`` SeparableConv2d 1024->1536 + ``bn3`` + ReLU, ``conv4`` 1536->2048 + ``bn4``; the
  classifier is ReLU, global average pool, ``last_linear`` Linear(2048, 2) (``last_linear.1`` when the config
  asks for dropout). ``SeparableConv2d`` is ``conv1`` (depthwise, no bias) then ``pointwise`` (1x1, no bias).
  The network always builds ``adjust_channel`` (Conv 2048->512 + BN + ReLU), used only in mode
  ``adjust_channel``: its 7 tensors are in the state_dict and unused by the Xception detector. They are
  accepted (exactly that set, with the right shapes) or absent, and dropped.
- **EfficientNet-B4** (``training/networks/efficientnetb4.py``, config ``efficientnetb4.yaml``: ``num_classes:
  2, inc: 3, dropout: false, mode: Original``): ``efficientnet_pytorch.EfficientNet`` ``'efficientnet-b4'``
  (lukemelas' package, 0.7.1 in DeepfakeBench's LICENSE list) with ``_conv_stem`` replaced by a plain
  ``nn.Conv2d(3, 48, 3, stride=2, bias=False)`` (no "same" padding) and ``_fc`` by ``nn.Identity``; features
  are ``extract_features`` (stem, 32 MBConv blocks, ``_conv_head`` + ``_bn1`` + swish, 1792 channels),
  then global average pool and ``last_layer`` Linear(1792, 2). Keys: ``backbone.efficientnet.<the package's
  own names>`` and ``backbone.last_layer.*``. The package builds the blocks' static "same" paddings for its
  380-px default image size whatever the input; using the package itself reproduces that exactly.
- **Input** (both yamls and ``training/dataset/abstract_dataset.py``): ``resolution: 256``, RGB, ``ToTensor``
  (/255) then ``Normalize(mean=[0.5]*3, std=[0.5]*3)``, i.e. ``x/127.5 - 1``. (Not 299: DeepfakeBench trains
  and tests its Xception at 256.)
- **Output**: ``pred`` (N, 2) logits; ``prob = softmax(pred)[:, 1]`` is the probability of *fake*
  (labels: real 0, fake 1 in ``training/config/test_config.yaml``). Video-level AUC there averages frame
  probabilities per video.
- **Face crop** (``preprocessing/preprocess.py``, ``extract_aligned_face_dlib``): dlib's frontal detector, five
  points from its 81-point predictor (indices 37, 44 = upper eyelids, 30 = nose tip, 49, 55 = next to the
  mouth corners), a similarity transform onto the ArcFace 112-px template scaled to 256 and shrunk by the
  margin ``scale=1.3`` about the crop's centre, ``cv2.warpAffine`` to 256x256.

How swapwatch uses them:

- The networks are our own modules with the same attribute names, so the checkpoint maps key for key after
  dropping ``backbone.``: :class:`Xception` is written here from the layout above (timm's ``legacy_xception``
  has the same layout, but timm needs torchvision, which pins one exact torch); EfficientNet-B4 is the
  ``efficientnet_pytorch`` model itself (optional extra ``swapwatch[detectors]``; a clear error names the pip
  command when it is missing). Loading is strict: missing, unexpected and wrongly shaped keys are named.
- :class:`DeepfakeBenchScorer` is the frame scorer graph: ``crops`` (N, 3, S, S) BGR 0..255 -> BGR->RGB,
  ``x/127.5 - 1`` -> network -> ``features`` (N, F) (the pooled vector ``last_linear``/``last_layer`` reads)
  and ``logits`` (N,) = ``l1 - l0``, whose sigmoid is exactly DeepfakeBench's ``softmax[:, 1]``. The crop is
  made at the network's resolution by the runtime's warp, so the graph needs no resize.
- :class:`MeanProbabilityHead` is the window head for such frame-only models: the mean of the frame
  probabilities over the (masked) window, returned as a logit (``log sum p - log sum (1 - p)``, computed with
  log-sigmoids so it is exact and finite for any frame logit). Probabilities rather than logits because that
  is how DeepfakeBench turns frame scores into a video score, and because a mean of probabilities bounds what
  one frame can do (a single frame with logit 40 cannot outvote nineteen clean frames). The runtime's ring
  buffers, strides and alerts then work unchanged.
- The crop: ``detector_template(256, 1/1.3, centre=(56, 56))`` is DeepfakeBench's template exactly (the
  ArcFace points scaled by 256/112 and shrunk by 1/1.3 about the crop centre). What differs is which points
  are fitted: swapwatch's face detectors give eye *centres* and mouth *corners*, dlib's indices 37/44 are
  upper-eyelid points (above and outside the eye centres) and 49/55 sit next to the corners, so faces come out
  slightly larger and a little higher in our crops than in DeepfakeBench's (a few percent of the crop);
  ``--face-scale`` adjusts the scale if a user measures it on their data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swapwatch.errors import ModelError
from swapwatch.export.checkpoints import SHOWN, read_checkpoint, state_dict_from, state_mismatch
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, Tolerance

FORMAT = "deepfakebench-v1"  # ``format`` in detector.json of an exported folder
RESOLUTION = 256  # both yamls: ``resolution: 256``
MARGIN_SCALE = 1.3  # preprocess.py: img_align_crop(scale=1.3)
FACE_SCALE = 1.0 / MARGIN_SCALE
CROP_CENTRE = (56.0, 56.0)  # the margin shrinks the template about the crop's centre
DEFAULT_WINDOW = 20
DEFAULT_THRESHOLD = 0.5  # argmax of DeepfakeBench's two logits
LICENCE = "CC BY-NC 4.0 (DeepfakeBench: non-commercial)"
EFFICIENTNET_PIP = "pip install 'swapwatch[detectors]'  (or: pip install efficientnet-pytorch==0.7.1)"


@dataclass(frozen=True)
class Arch:
    """One supported DeepfakeBench detector."""

    name: str  # --arch value
    model: str  # DeepfakeBench's model_name
    registry: str  # swapwatch registry entry
    filename: str  # released file name
    feature_dim: int
    classifier: str  # attribute name of the 2-class linear layer


ARCHS: Mapping[str, Arch] = {
    "xception": Arch("xception", "xception", "deepfakebench-xception", "xception_best.pth", 2048, "last_linear"),
    "effnb4": Arch("effnb4", "efficientnetb4", "deepfakebench-effnb4", "effnb4_best.pth", 1792, "last_layer"),
}


# --------------------------------------------------------------------------------------------------
# Xception (DeepfakeBench's ``training/networks/xception.py`` layout, mode "original")
# --------------------------------------------------------------------------------------------------


class SeparableConv2d(nn.Module):
    """Depthwise ``conv1`` then 1x1 ``pointwise``, both without bias."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, kernel, stride, padding, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class XceptionBlock(nn.Module):
    """``reps`` units of [ReLU, separable 3x3, BN] (the first ReLU left out when ``relu_first`` is False), a
    3x3 max-pool when strided, plus the input (through a 1x1 conv + BN when channels or stride change).

    ``grow_first``: the channel change happens in the first unit (entry flow), else in the last (exit flow).
    The ReLUs are kept as modules in ``rep`` so that its indices are the released checkpoint's.
    """

    def __init__(self, cin: int, cout: int, reps: int, stride: int, *, relu_first: bool, grow_first: bool) -> None:
        super().__init__()
        if grow_first:
            plan = [(cin, cout)] + [(cout, cout)] * (reps - 1)
        else:
            plan = [(cin, cin)] * (reps - 1) + [(cin, cout)]
        layers: list[nn.Module] = []
        for a, b in plan:
            layers += [nn.ReLU(), SeparableConv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b)]
        if not relu_first:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)
        if cout != cin or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)
        else:
            self.skip = None
            self.skipbn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + shortcut


# (in, out, units, stride, relu_first, grow_first) for block1..block12
_ENTRY_FLOW = ((64, 128, 2, 2, False, True), (128, 256, 2, 2, True, True), (256, 728, 2, 2, True, True))
_MIDDLE_FLOW = tuple((728, 728, 3, 1, True, True) for _ in range(8))
_EXIT_FLOW = ((728, 1024, 2, 2, True, False),)
_XCEPTION_BLOCKS = _ENTRY_FLOW + _MIDDLE_FLOW + _EXIT_FLOW


class Xception(nn.Module):
    """DeepfakeBench's Xception backbone (2 classes). ``pooled`` gives the 2048-d vector ``last_linear`` reads."""

    feature_dim = 2048

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        for i, (cin, cout, reps, stride, relu_first, grow_first) in enumerate(_XCEPTION_BLOCKS, start=1):
            setattr(self, f"block{i}", XceptionBlock(cin, cout, reps, stride, relu_first=relu_first,
                                                     grow_first=grow_first))
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = SeparableConv2d(1536, 2048, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(2048)
        self.last_linear = nn.Linear(2048, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for i in range(1, len(_XCEPTION_BLOCKS) + 1):
            x = getattr(self, f"block{i}")(x)
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.bn4(self.conv4(x))
        return F.relu(x).mean(dim=(2, 3))  # the classifier's ReLU + global average pool

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.last_linear(pooled)


# --------------------------------------------------------------------------------------------------
# EfficientNet-B4 (the efficientnet_pytorch model, modified as DeepfakeBench's ``efficientnetb4.py`` does)
# --------------------------------------------------------------------------------------------------


def _efficientnet_class():
    try:
        from efficientnet_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(f"DeepfakeBench's EfficientNet-B4 is built from the efficientnet-pytorch package, which "
                         f"is not installed: {EFFICIENTNET_PIP}") from exc
    return EfficientNet


class EfficientNetB4(nn.Module):
    """``efficientnet-b4`` with DeepfakeBench's plain stem conv, no ``_fc``, and ``last_layer`` (1792 -> 2)."""

    feature_dim = 1792

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        net = _efficientnet_class().from_name("efficientnet-b4")
        net._conv_stem = nn.Conv2d(3, 48, kernel_size=3, stride=2, bias=False)
        net._fc = nn.Identity()
        net.set_swish(memory_efficient=False)  # x * sigmoid(x) as plain ops (the autograd.Function cannot export)
        self.efficientnet = net
        self.last_layer = nn.Linear(1792, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.efficientnet.extract_features(x).mean(dim=(2, 3))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.last_layer(pooled)


def build_network(arch: str) -> nn.Module:
    if arch == "xception":
        return Xception()
    if arch == "effnb4":
        return EfficientNetB4()
    raise ModelError(f"unknown DeepfakeBench detector {arch!r}; supported: {', '.join(ARCHS)}")


# --------------------------------------------------------------------------------------------------
# The frame scorer and the window head
# --------------------------------------------------------------------------------------------------


class DeepfakeBenchScorer(nn.Module):
    """swapwatch's frame-scorer contract around a DeepfakeBench network.

    ``crops`` (N, 3, S, S) float BGR 0..255 -> ``features`` (N, F), ``logits`` (N,) = ``l1 - l0`` (so
    ``sigmoid(logits)`` is DeepfakeBench's ``softmax[:, 1]``, the probability of fake).
    """

    def __init__(self, arch: str, net: nn.Module, resolution: int = RESOLUTION) -> None:
        super().__init__()
        self.arch = arch
        self.net = net
        self.resolution = int(resolution)

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """BGR 0..255 -> RGB ``(x / 255 - 0.5) / 0.5`` (DeepfakeBench's ToTensor + Normalize)."""
        return torch.flip(crops, dims=(1,)) * (1.0 / 127.5) - 1.0

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.pooled(self.preprocess(crops))
        two = self.net.classify(features)
        return features, two[:, 1] - two[:, 0]

    def fake_direction(self) -> tuple[torch.Tensor, float]:
        """``(w, b)`` with ``features @ w + b == logits`` (the difference of the two class rows)."""
        layer: nn.Linear = getattr(self.net, ARCHS[self.arch].classifier)
        w = (layer.weight[1] - layer.weight[0]).detach().clone()
        b = float((layer.bias[1] - layer.bias[0]).detach())
        return w, b


def _log_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(z))`` for any z, with ops every exporter maps exactly (no Softplus/LogSigmoid kernels)."""
    return torch.clamp(z, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(z)))


class MeanProbabilityHead(nn.Module):
    """Window head of a frame-only detector: the logit of the mean frame probability over the valid frames.

    ``features`` (N, W, F), ``mask`` (N, W) -> ``logits`` (N,) with
    ``sigmoid(logits) = mean_{mask} sigmoid(features @ w + b)``, i.e.
    ``logits = logsumexp(log p_i) - logsumexp(log (1 - p_i))`` over the valid steps (the count cancels).
    """

    def __init__(self, weight: torch.Tensor, bias: float, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = int(window)
        self.feature_dim = int(weight.numel())
        self.register_buffer("weight", weight.detach().float().reshape(-1).clone())
        self.register_buffer("bias", torch.tensor(float(bias), dtype=torch.float32))

    def frame_logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight + self.bias

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.frame_logits(features)
        pad = (mask - 1.0) * 1.0e4  # 0 on valid steps, -1e4 (exp underflows to 0) on padding
        fake = torch.logsumexp(_log_sigmoid(z) + pad, dim=1)
        real = torch.logsumexp(_log_sigmoid(-z) + pad, dim=1)
        return fake - real


# --------------------------------------------------------------------------------------------------
# Loading the released checkpoints
# --------------------------------------------------------------------------------------------------


def _adjust_channel_shapes() -> dict[str, tuple[int, ...]]:
    unused = nn.Sequential(nn.Conv2d(2048, 512, 1, 1), nn.BatchNorm2d(512), nn.ReLU())
    return {f"adjust_channel.{k}": tuple(v.shape) for k, v in unused.state_dict().items()}


def detect_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which supported detector a (``backbone.``-stripped) state_dict belongs to, or None."""
    if "efficientnet._conv_stem.weight" in state or "last_layer.weight" in state:
        return "effnb4"
    if "block1.rep.0.conv1.weight" in state or "last_linear.weight" in state or "last_linear.1.weight" in state:
        return "xception"
    return None


def _backbone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the detector's ``backbone.`` prefix (when every key has it; ``module.`` is already gone)."""
    if state and all(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items()}
    return dict(state)


def _remap(arch: str, state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The documented variants onto our names: Xception's unused ``adjust_channel`` (all or nothing) is
    dropped, and its ``last_linear.1`` (the config's dropout variant) becomes ``last_linear``."""
    if arch != "xception":
        return state
    expected = _adjust_channel_shapes()
    present = {k: tuple(v.shape) for k, v in state.items() if k.startswith("adjust_channel.")}
    if present:
        wrong = [f"backbone.{k}: {present.get(k)} vs {v}" for k, v in expected.items() if present.get(k) != v]
        extra = [f"backbone.{k}" for k in present if k not in expected]
        if wrong or extra:
            raise ModelError(f"{where}: its backbone.adjust_channel tensors are not the Xception network's "
                             f"(Conv 2048->512 + BN): {', '.join((wrong + extra)[:SHOWN])}")
    state = {k: v for k, v in state.items() if not k.startswith("adjust_channel.")}
    if "last_linear.1.weight" in state and "last_linear.weight" not in state:
        state = {("last_linear." + k[len("last_linear.1."):] if k.startswith("last_linear.1.") else k): v
                 for k, v in state.items()}
    return state


def load_deepfakebench(path: str | Path, arch: str | None = None, *, resolution: int = RESOLUTION
                       ) -> DeepfakeBenchScorer:
    """A released DeepfakeBench checkpoint (``xception_best.pth``, ``effnb4_best.pth``) as a frame scorer in
    eval mode. ``arch`` (``xception`` or ``effnb4``) is read from the keys when not given. Only plain
    state_dicts are read (``torch.load(weights_only=True)``); anything else is a :class:`ModelError`, as is a
    missing, unexpected or wrongly shaped tensor (each named)."""
    path = Path(path)
    if arch is not None and arch not in ARCHS:
        raise ModelError(f"unknown DeepfakeBench detector {arch!r}; supported: {', '.join(ARCHS)}")
    obj = read_checkpoint(path, what="DeepfakeBench")
    state = _backbone_state(state_dict_from(obj, path))
    found = detect_arch(state)
    if arch is None:
        if found is None:
            keys = ", ".join(list(state)[:SHOWN])
            raise ModelError(f"{path.name} is not a DeepfakeBench Xception or EfficientNet-B4 state_dict "
                             f"(first keys: {keys}); pass --arch if it is one")
        arch = found
    state = _remap(arch, state, path.name)
    net = build_network(arch)
    problem = state_mismatch(net, state)
    if problem:
        hint = f"; its keys look like DeepfakeBench's {found}, not {arch}" if found and found != arch else ""
        raise ModelError(f"{path.name} does not match DeepfakeBench's {arch} ({len(net.state_dict())} tensors "
                         f"expected under 'backbone.'): {problem}{hint}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path.name} does not load into DeepfakeBench's {arch}: {str(exc).splitlines()[0]}"
                         ) from exc
    return DeepfakeBenchScorer(arch, net, resolution).eval()


# --------------------------------------------------------------------------------------------------
# ONNX export and the detector folder
# --------------------------------------------------------------------------------------------------


def scorer_parity_inputs(size: int, seed: int = 0, batches: Sequence[int] = (1, 2)) -> list[tuple[np.ndarray]]:
    """Image-like BGR crops at several batch sizes (the detector's own parity inputs)."""
    from swapwatch.export.deepfake import crop_parity_inputs

    return crop_parity_inputs(size, seed, batches)


def head_parity_inputs(feature_dim: int, window: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full, short (left-padded) and one-frame windows, with garbage in the padded steps."""
    rng = np.random.default_rng(seed)
    sets = []
    for n, valid in ((1, window), (3, max(window // 2, 1)), (2, 1)):
        feats = np.abs(rng.normal(0.0, 1.0, (n, window, feature_dim))).astype(np.float32)
        mask = np.zeros((n, window), np.float32)
        mask[:, window - valid:] = 1.0
        sets.append((feats, mask))
    return sets


def export_scorer(scorer: DeepfakeBenchScorer, path: str | Path, *, opset: int | None = None) -> Path:
    """The scorer to ONNX with a dynamic batch (input ``crops``, outputs ``features``, ``logits``)."""
    from swapwatch.export.onnx_export import DEFAULT_OPSET, export_onnx

    size = scorer.resolution
    return export_onnx(scorer.eval(), (torch.zeros(1, 3, size, size),), path, input_names=("crops",),
                       output_names=("features", "logits"),
                       dynamic_axes={"crops": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
                       opset=opset or DEFAULT_OPSET)


def export_head(head: MeanProbabilityHead, path: str | Path, *, opset: int | None = None) -> Path:
    """The window head to ONNX: dynamic batch, the window fixed (``DeepfakeDetector`` checks it)."""
    from swapwatch.export.onnx_export import DEFAULT_OPSET, export_onnx

    example = (torch.zeros(2, head.window, head.feature_dim), torch.ones(2, head.window))
    return export_onnx(head.eval(), example, path, input_names=("features", "mask"), output_names=("logits",),
                       dynamic_axes={"features": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}},
                       opset=opset or DEFAULT_OPSET)


def mean_head(scorer: DeepfakeBenchScorer, window: int) -> MeanProbabilityHead:
    w, b = scorer.fake_direction()
    return MeanProbabilityHead(w, b, window).eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_detector(scorer: DeepfakeBenchScorer, folder: str | Path, *, window: int = DEFAULT_WINDOW,
                   threshold: float = DEFAULT_THRESHOLD, face_scale: float = FACE_SCALE,
                   source: Mapping[str, Any] | None = None, tolerance: Tolerance = DETECTOR_TOLERANCE,
                   opset: int | None = None):
    """A folder :meth:`DeepfakeDetector.load` reads: ``scorer.onnx`` and ``head.onnx`` (each checked against
    PyTorch with ONNX Runtime, judged by ``tolerance``) and ``detector.json``. Returns its DetectorInfo."""
    from swapwatch.engines.deepfake import HEAD_FILE, INFO_FILE, SCORER_FILE, DetectorInfo
    from swapwatch.export.onnx_export import check_parity, parity_json

    folder = Path(folder)
    if window < 1:
        raise ModelError("window must be >= 1")
    if not 0.0 < threshold < 1.0:
        raise ModelError("threshold must be a probability strictly between 0 and 1")
    scorer = scorer.eval()
    head = mean_head(scorer, window)
    parity = {
        "scorer": check_parity(scorer, export_scorer(scorer, folder / SCORER_FILE, opset=opset),
                               scorer_parity_inputs(scorer.resolution), tolerance=tolerance),
        "head": check_parity(head, export_head(head, folder / HEAD_FILE, opset=opset),
                             head_parity_inputs(scorer.feature_dim, window), tolerance=tolerance),
    }
    arch = ARCHS[scorer.arch]
    info = DetectorInfo(
        crop_size=scorer.resolution, face_scale=float(face_scale), window=int(window),
        feature_dim=scorer.feature_dim, threshold=float(threshold),
        extra={
            "format": FORMAT,
            "graphs_only": True,  # no detector.pt: the torch backend cannot run this folder
            "arch": arch.name,
            "deepfakebench_model": arch.model,
            "crop_centre": list(CROP_CENTRE),
            "input": {"channels": "RGB (graph flips the BGR crops)", "scale": "x/255", "mean": [0.5] * 3,
                      "std": [0.5] * 3, "resolution": scorer.resolution},
            "frame_logit": "l1 - l0 of DeepfakeBench's two logits (sigmoid = softmax[:, 1] = P(fake))",
            "window_score": "mean of frame probabilities over the window (MeanProbabilityHead), as a logit",
            "source": dict(source or {}),
            "licence": LICENCE,
            **parity_json(parity),
            "sha256": {name: _sha256(folder / name) for name in (SCORER_FILE, HEAD_FILE)},
        })
    tmp = folder / f".{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    tmp.replace(folder / INFO_FILE)
    return info


def export_deepfakebench(checkpoint: str | Path, folder: str | Path, *, arch: str | None = None,
                         window: int = DEFAULT_WINDOW, threshold: float = DEFAULT_THRESHOLD,
                         resolution: int = RESOLUTION, face_scale: float = FACE_SCALE,
                         tolerance: Tolerance = DETECTOR_TOLERANCE, opset: int | None = None):
    """Released checkpoint -> detector folder (see :func:`write_detector`); returns its DetectorInfo."""
    checkpoint = Path(checkpoint)
    scorer = load_deepfakebench(checkpoint, arch, resolution=resolution)
    source = {"checkpoint": checkpoint.name, "sha256": _sha256(checkpoint),
              "release": f"https://github.com/SCLBD/DeepfakeBench/releases/tag/v1.0.1 ({ARCHS[scorer.arch].filename})"}
    return write_detector(scorer, folder, window=window, threshold=threshold, face_scale=face_scale,
                          source=source, tolerance=tolerance, opset=opset)


def load_torch_detector(checkpoint: str | Path, *, arch: str | None = None, window: int = DEFAULT_WINDOW,
                        threshold: float = DEFAULT_THRESHOLD, resolution: int = RESOLUTION,
                        face_scale: float = FACE_SCALE, device: str = "auto", config=None):
    """A :class:`DeepfakeDetector` running the checkpoint eagerly in PyTorch (no ONNX export)."""
    from swapwatch.engines.deepfake import DeepfakeDetector, DetectorInfo, WindowConfig
    from swapwatch.engines.runtime import TensorSpec, TorchEngine

    scorer = load_deepfakebench(checkpoint, arch, resolution=resolution)
    head = mean_head(scorer, window)
    f32 = np.dtype(np.float32)
    scorer_engine = TorchEngine(scorer, [TensorSpec("crops", ("batch", 3, resolution, resolution), f32)],
                                ["features", "logits"], device=device)
    head_engine = TorchEngine(head, [TensorSpec("features", ("batch", window, scorer.feature_dim), f32),
                                     TensorSpec("mask", ("batch", window), f32)], ["logits"], device=device)
    info = DetectorInfo(crop_size=resolution, face_scale=float(face_scale), window=int(window),
                        feature_dim=scorer.feature_dim, threshold=float(threshold),
                        extra={"format": FORMAT, "arch": scorer.arch, "crop_centre": list(CROP_CENTRE)})
    return DeepfakeDetector(scorer_engine, head_engine, info, config or WindowConfig())
