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
- :class:`DeepfakeBenchScorer` (a ``frame_detector.TwoClassScorer``) is the frame scorer graph: ``crops``
  (N, 3, S, S) BGR 0..255 -> BGR->RGB, ``x/127.5 - 1`` -> network -> ``features`` (N, F) (the pooled vector
  ``last_linear``/``last_layer`` reads) and ``logits`` (N,) = ``l1 - l0``, whose sigmoid is exactly
  DeepfakeBench's ``softmax[:, 1]``. The crop is made at the network's resolution by the runtime's warp, so
  the graph needs no resize.
- :class:`MeanProbabilityHead` (``frame_detector``, shared with the other released frame classifiers, as is
  the folder writing) is the window head for such frame-only models: the mean of the frame
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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swapwatch.errors import ModelError
from swapwatch.export.checkpoints import SHOWN, read_checkpoint, state_dict_from, state_mismatch
from swapwatch.export.frame_detector import (
    MeanProbabilityHead, TwoClassScorer, efficientnet_class, export_head, head_parity_inputs, mean_head,
    write_frame_detector,
)
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, Tolerance

__all__ = [
    "ARCHS", "DEFAULT_THRESHOLD", "DEFAULT_WINDOW", "FACE_SCALE", "FORMAT", "RESOLUTION", "DeepfakeBenchScorer",
    "EfficientNetB4", "MeanProbabilityHead", "Xception", "build_network", "detect_arch", "export_deepfakebench",
    "export_head", "head_parity_inputs", "load_deepfakebench", "load_torch_detector", "mean_head", "write_detector",
]

FORMAT = "deepfakebench-v1"  # ``format`` in detector.json of an exported folder
RESOLUTION = 256  # both yamls: ``resolution: 256``
MARGIN_SCALE = 1.3  # preprocess.py: img_align_crop(scale=1.3)
FACE_SCALE = 1.0 / MARGIN_SCALE
CROP_CENTRE = (56.0, 56.0)  # the margin shrinks the template about the crop's centre
DEFAULT_WINDOW = 20
DEFAULT_THRESHOLD = 0.5  # argmax of DeepfakeBench's two logits
LICENCE = "CC BY-NC 4.0 (DeepfakeBench: non-commercial)"


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


# --------------------------------------------------------------------------------------------------
# EfficientNet-B4 (the efficientnet_pytorch model, modified as DeepfakeBench's ``efficientnetb4.py`` does)
# --------------------------------------------------------------------------------------------------


class EfficientNetB4(nn.Module):
    """``efficientnet-b4`` with DeepfakeBench's plain stem conv, no ``_fc``, and ``last_layer`` (1792 -> 2)."""

    feature_dim = 1792

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        net = efficientnet_class("DeepfakeBench").from_name("efficientnet-b4")
        net._conv_stem = nn.Conv2d(3, 48, kernel_size=3, stride=2, bias=False)
        net._fc = nn.Identity()
        net.set_swish(memory_efficient=False)  # x * sigmoid(x) as plain ops (the autograd.Function cannot export)
        self.efficientnet = net
        self.last_layer = nn.Linear(1792, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.efficientnet.extract_features(x).mean(dim=(2, 3))


def build_network(arch: str) -> nn.Module:
    if arch == "xception":
        return Xception()
    if arch == "effnb4":
        return EfficientNetB4()
    raise ModelError(f"unknown DeepfakeBench detector {arch!r}; supported: {', '.join(ARCHS)}")


# --------------------------------------------------------------------------------------------------
# The frame scorer (the window head is frame_detector.MeanProbabilityHead)
# --------------------------------------------------------------------------------------------------


class DeepfakeBenchScorer(TwoClassScorer):
    """The frame scorer (:class:`TwoClassScorer`) around a DeepfakeBench network: ``sigmoid(logits)`` is
    DeepfakeBench's ``softmax[:, 1]``, the probability of fake."""

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

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.pooled(x)

    def classifier(self) -> nn.Linear:
        return getattr(self.net, ARCHS[self.arch].classifier)


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


def write_detector(scorer: DeepfakeBenchScorer, folder: str | Path, *, window: int = DEFAULT_WINDOW,
                   threshold: float = DEFAULT_THRESHOLD, face_scale: float = FACE_SCALE,
                   source: Mapping[str, Any] | None = None, tolerance: Tolerance = DETECTOR_TOLERANCE,
                   opset: int | None = None):
    """The detector folder of a DeepfakeBench scorer (:func:`write_frame_detector`); returns its DetectorInfo."""
    arch = ARCHS[scorer.arch]
    extra = {
        "format": FORMAT,
        "arch": arch.name,
        "deepfakebench_model": arch.model,
        "input": {"channels": "RGB (graph flips the BGR crops)", "scale": "x/255", "mean": [0.5] * 3,
                  "std": [0.5] * 3, "resolution": scorer.resolution},
        "frame_logit": "l1 - l0 of DeepfakeBench's two logits (sigmoid = softmax[:, 1] = P(fake))",
        "source": dict(source or {}),
        "licence": LICENCE,
    }
    return write_frame_detector(scorer, folder, window=window, threshold=threshold, face_scale=face_scale,
                                crop_centre=CROP_CENTRE, extra=extra, tolerance=tolerance, opset=opset)


def export_deepfakebench(checkpoint: str | Path, folder: str | Path, *, arch: str | None = None,
                         window: int = DEFAULT_WINDOW, threshold: float = DEFAULT_THRESHOLD,
                         resolution: int = RESOLUTION, face_scale: float = FACE_SCALE,
                         tolerance: Tolerance = DETECTOR_TOLERANCE, opset: int | None = None):
    """Released checkpoint -> detector folder (see :func:`write_detector`); returns its DetectorInfo."""
    from swapwatch.engines.runtime import sha256_file

    checkpoint = Path(checkpoint)
    scorer = load_deepfakebench(checkpoint, arch, resolution=resolution)
    source = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint),
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
