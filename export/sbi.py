"""Self-Blended Images' released EfficientNet-B4 (Shiohara and Yamasaki, CVPR 2022) as a swapwatch detector.

What the official files are, read from mapooon/SelfBlendedImages (paths in that repository):

- **Weights** (``README.md``, "Pretrained model"): EfficientNet-B4 trained on self-blended images made from the
  real videos of FaceForensics++ only, one file trained on FF-raw and one on FF-c23, both on Google Drive,
  placed as ``weights/FFraw.tar`` / ``weights/FFc23.tar`` (the README's commands use ``-w weights/FFraw.tar``;
  the first release called the raw file ``sbi.tar``, the same Drive file). Video AUCs the README reports for
  them: FF-raw CDF 93.82%, DFD 97.87%, DFDC 73.01%, DFDCP 85.70%, FFIW 84.52%; FF-c23 92.87%, 98.16%, 71.96%,
  85.51%, 83.22%. No checksum is published.
- **Checkpoint** (``src/train_sbi.py``): ``torch.save({"model": model.state_dict(), "optimizer":
  model.optimizer.state_dict(), "epoch": epoch}, path)``; ``src/inference/inference_video.py``,
  ``inference_image.py`` and ``inference_dataset.py`` read ``torch.load(path)["model"]`` and
  ``model.load_state_dict(...)`` (strict, torch's default) into ``Detector()``. ``optimizer`` (SAM around SGD,
  ``src/utils/sam.py``) and ``epoch`` are not needed to run the model and are ignored here.
- **Network** (``src/inference/model.py``; ``src/model.py`` is the same with training parts): ``Detector`` has
  ``self.net = EfficientNet.from_pretrained("efficientnet-b4", advprop=True, num_classes=2)`` and
  ``forward(x) = self.net(x)``. The training ``Detector`` adds ``cel`` (CrossEntropyLoss, no tensors) and
  ``optimizer`` (not a module), so the state_dict is exactly ``net.`` + efficientnet_pytorch's own names: 706
  tensors, ``net._conv_stem.weight`` (48, 3, 3, 3) to ``net._fc.weight`` (2, 1792). In efficientnet_pytorch
  0.7.1, ``from_pretrained`` is ``from_name(name, num_classes=2)`` followed by loading ImageNet (AdvProp)
  weights into everything but ``_fc``: ``from_name`` builds the identical module with nothing downloaded. Its
  static "same" paddings are computed for B4's default image size, 380, which is SBI's input size.
- **Input** (``src/inference/preprocess.py``, ``extract_frames`` / ``extract_face``): the frame is converted
  BGR -> RGB, the face cropped (below) and ``cv2.resize``d to 380x380 (bilinear), HWC -> CHW; the inference
  scripts then feed ``torch.tensor(faces).float() / 255``: RGB in [0, 1], no mean/std normalisation (also in
  training: ``src/utils/sbi.py`` divides RGB images by 255; ``src/configs/sbi/base.json``: ``image_size: 380``).
- **Output**: ``model(img).softmax(1)[:, 1]`` is the "fakeness" the scripts print (training labels: real 0,
  fake 1, ``SBI_Dataset.collate_fn``).
- **Face crop** (``preprocess.py``, ``crop_face(..., crop_by_bbox=True, phase='test')``): RetinaFace's box
  (``retinaface.pre_trained_models.get_model("resnet50_2020-07-20", max_size=2048)``) grown by a quarter of
  its size per side, halved in the test phase, i.e. 1/8 of its width left and right and 1/8 of its height above
  and below (int-truncated, clipped to the frame), then resized to 380x380 whatever its aspect ratio. Training
  draws each of the four margins from [0.05, 0.2] of the box size (``w/4 * U(0.2, 0.8)``) around the same
  RetinaFace boxes (``src/preprocess/crop_retina_ff.py``), so 1/8 is the middle of what the model saw.
- **Video score** (``inference_video.py``): per frame the largest probability over its faces (faces with at
  least half the largest box's area), then the mean over 32 frames taken evenly through the video (``-n 32``).
- **Licence** (``LICENSE``: "ACADEMIC OR NON-PROFIT ORGANIZATION NONCOMMERCIAL RESEARCH USE ONLY"; README:
  "Our code and pretrained model are freely available for research purpose. For commercial use: A license
  agreement is required."): the registry entry quotes it; ``detector.json`` adds that an exported folder is a
  derivative under the same terms (:data:`DERIVATIVES`).

How swapwatch uses them:

- :class:`SBIScorer` (a ``frame_detector.TwoClassScorer``) keeps efficientnet_pytorch's model itself as
  ``net`` (optional extra ``swapwatch[detectors]``), so the checkpoint's ``model`` entry loads into it key for
  key, strictly: missing, unexpected and wrongly shaped keys are named, as is a file that is not SBI's format.
  Its graph: ``crops`` (N, 3, 380, 380) BGR 0..255 -> SBI's aspect-ratio stretch (below) -> RGB, ``x/255`` ->
  network -> ``features`` (N, 1792, the pooled vector ``_fc`` reads) and ``logits`` = ``l1 - l0`` (sigmoid =
  SBI's ``softmax[:, 1]``). The window head is the mean frame probability (``frame_detector``), SBI's own way
  of averaging frames; the default window, 32 frames, is its frame count.
- **The crop.** swapwatch crops faces by a similarity warp from their 5 landmarks onto a template; SBI crops a
  RetinaFace box with a margin and squashes it to a square. Both are expressed in the ArcFace 112-px layout:
  where a face box sits there was measured with YuNet 2023mar (trained, like RetinaFace, on WIDER FACE's box
  annotations) on the shared test assets (5 photos, 6 GRID clips, the Intel head-pose clip; 37 faces): median
  box centre (55.5, 65.4), width 78.3, height 112.4 (height/width 1.44; tests/test_sbi_export.py re-measures
  it). SBI's region is that box grown to 1.25x: 97.9 x 140.5. The warp's crop is the square covering its
  height (``face_scale`` 112 / 140.5 about the box centre), in which SBI's region is the middle 264 of 380
  columns; the scorer graph stretches those columns to 380 (bilinear, as ``cv2.resize``), so the network sees
  faces with SBI's aspect distortion, not undistorted ones it never trained on. What stays approximate: our
  box is a fixed layout relative to the landmarks where RetinaFace's follows each face (pose, expression) and
  its detector; horizontal detail is limited to the crop's 264 columns for faces wider than ~210 px in the
  frame; at the frame's border SBI clips the region while the warp replicates edge pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from swapwatch.errors import ModelError
from swapwatch.export.checkpoints import SHOWN, read_checkpoint, state_mismatch
from swapwatch.export.frame_detector import (
    TwoClassScorer, check_window_and_threshold, efficientnet_class, write_frame_detector,
)
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, Tolerance

FORMAT = "sbi-v1"  # ``format`` in detector.json of an exported folder
RESOLUTION = 380  # src/configs/sbi/base.json image_size; preprocess.py image_size=(380, 380)
MARGIN = 0.125  # per side, in box widths / heights: crop_face's w/4 and h/4, halved in the test phase
# A WIDER FACE-style face box in the ArcFace 112-px layout (medians of YuNet 2023mar's boxes on the shared assets).
BOX_CENTRE = (55.5, 65.4)
BOX_SIZE = (78.3, 112.4)  # width, height
DEFAULT_WINDOW = 32  # inference_video.py averages 32 frames
DEFAULT_THRESHOLD = 0.5  # argmax of SBI's two logits
FEATURE_DIM = 1792
REGISTRY_NAME = "sbi-effnb4"  # FFraw.tar; "sbi-effnb4-c23" is FFc23.tar
REGISTRY_FILE = "FFraw.tar"
HOMEPAGE = "https://github.com/mapooon/SelfBlendedImages"
# Added to the registry entry's licence in detector.json (LICENSE, "DERIVATIVES" and "USES NOT PERMITTED").
DERIVATIVES = ("an exported folder is a derivative under the same terms: the licensor's, for your own noncommercial "
               "internal research, not to be distributed")
CHECKPOINT_LAYOUT = "{'model': Detector.state_dict(), 'optimizer': ..., 'epoch': ...} (src/train_sbi.py)"


# --------------------------------------------------------------------------------------------------
# The crop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropGeometry:
    """SBI's crop in swapwatch's terms. SBI's region is a face box (``box_centre``, ``box_size``: width, height in
    the ArcFace 112-px layout) grown by ``margin`` per side; the runtime warps a ``resolution`` square covering
    the region's height (``detector_template(resolution, face_scale, box_centre)``), in which the region is the
    middle ``columns`` columns, which the scorer stretches back to ``resolution``."""

    resolution: int = RESOLUTION
    margin: float = MARGIN
    box_centre: tuple[float, float] = BOX_CENTRE
    box_size: tuple[float, float] = BOX_SIZE

    def __post_init__(self) -> None:
        width, height = self.region
        if not 0.0 < width <= height:
            raise ValueError(f"expected a face box at least as tall as it is wide, got {self.box_size}")
        if self.columns < 2:
            raise ValueError(f"the region is {width:g} wide and {height:g} tall: too narrow for {self.resolution} px")

    @property
    def region(self) -> tuple[float, float]:
        """Width and height of SBI's region in the 112-px layout."""
        grow = 1.0 + 2.0 * self.margin
        return grow * self.box_size[0], grow * self.box_size[1]

    @property
    def face_scale(self) -> float:
        return 112.0 / self.region[1]

    @property
    def columns(self) -> int:
        """The region's width in crop pixels, rounded to an even count so that it sits on whole pixels in the
        middle of the crop."""
        width, height = self.region
        return 2 * round(self.resolution * width / height / 2.0)

    def to_json(self) -> dict[str, Any]:
        return {"rule": "face box grown by the margin per side, resized to a square (SBI's crop_face, test "
                        "phase), on a box placed by the landmarks (median YuNet box in the ArcFace layout)",
                "box_centre_112": list(self.box_centre), "box_size_112": list(self.box_size),
                "margin_per_side": self.margin, "stretched_columns": self.columns, "resolution": self.resolution}


CROP = CropGeometry()


# --------------------------------------------------------------------------------------------------
# The network and the frame scorer
# --------------------------------------------------------------------------------------------------


def build_network() -> nn.Module:
    """SBI's ``Detector.net``: efficientnet_pytorch's B4 with 2 classes, built from its config (no download),
    with the swish as plain ops (the memory-efficient autograd.Function cannot be exported)."""
    net = efficientnet_class("SBI").from_name("efficientnet-b4", num_classes=2)
    net.set_swish(memory_efficient=False)
    return net


class SBIScorer(TwoClassScorer):
    """The frame scorer (:class:`TwoClassScorer`) around SBI's network; ``net`` holds it under SBI's own names,
    so this module's state_dict is ``Detector.state_dict()``."""

    feature_dim = FEATURE_DIM

    def __init__(self, net: nn.Module, geometry: CropGeometry = CROP) -> None:
        super().__init__()
        self.net = net
        self.geometry = geometry
        self.resolution = geometry.resolution

    def stretch(self, crops: torch.Tensor) -> torch.Tensor:
        """The middle ``columns`` columns resized to the full width (bilinear, half-pixel centres: ``cv2.resize``'s
        INTER_LINEAR); the rows are unchanged."""
        size, columns = self.resolution, self.geometry.columns
        if columns == size:
            return crops
        left = (size - columns) // 2
        return F.interpolate(crops[..., left:left + columns], size=(size, size), mode="bilinear",
                             align_corners=False)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """BGR 0..255 -> SBI's region, RGB, ``x / 255`` (SBI feeds ``tensor(faces).float() / 255``)."""
        return torch.flip(self.stretch(crops), dims=(1,)) * (1.0 / 255.0)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))  # the network's _avg_pooling + flatten

    def classifier(self) -> nn.Linear:
        return self.net._fc


# --------------------------------------------------------------------------------------------------
# Loading the released checkpoints
# --------------------------------------------------------------------------------------------------


def _model_state(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """The ``model`` entry of an SBI checkpoint; a :class:`ModelError` saying what the file is otherwise."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"{name} is not an SBI checkpoint: it holds a {type(obj).__name__}, where SBI saves "
                         f"{CHECKPOINT_LAYOUT}")
    if "model" not in obj:
        keys = ", ".join(repr(k) for k in list(obj)[:SHOWN])
        hint = ""
        if any(isinstance(k, str) and k.startswith("backbone.") for k in obj):
            hint = "; it looks like a DeepfakeBench state_dict (swapwatch export deepfakebench)"
        raise ModelError(f"{name} is not an SBI checkpoint: no 'model' entry (keys: {keys or 'none'}), where SBI "
                         f"saves {CHECKPOINT_LAYOUT}{hint}")
    state = obj["model"]
    if not (isinstance(state, Mapping) and state
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise ModelError(f"{name}: its 'model' entry is a {type(state).__name__}, not named tensors (SBI saves "
                         "Detector.state_dict() there)")
    return dict(state)


def _load(path: Path, geometry: CropGeometry) -> tuple[SBIScorer, int | None]:
    """The scorer and the ``epoch`` the checkpoint records (None when absent)."""
    obj = read_checkpoint(path, what="SBI")
    state = _model_state(obj, path.name)
    scorer = SBIScorer(build_network(), geometry)
    problem = state_mismatch(scorer, state)
    if problem:
        raise ModelError(f"{path.name} does not match SBI's Detector (EfficientNet-B4, 2 classes; "
                         f"{len(scorer.state_dict())} tensors under 'net.'): {problem}")
    try:
        scorer.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path.name} does not load into SBI's Detector: {str(exc).splitlines()[0]}") from exc
    epoch = obj.get("epoch")
    return scorer.eval(), (epoch if isinstance(epoch, int) else None)


def load_sbi(path: str | Path, geometry: CropGeometry = CROP) -> SBIScorer:
    """A released SBI checkpoint (``FFraw.tar``, ``FFc23.tar``) as a frame scorer in eval mode. Only torch's
    ``weights_only`` loader reads the file; its ``model`` entry must fit SBI's Detector exactly (missing,
    unexpected and wrongly shaped keys are named in a :class:`ModelError`)."""
    return _load(Path(path), geometry)[0]


# --------------------------------------------------------------------------------------------------
# The detector folder
# --------------------------------------------------------------------------------------------------


def export_sbi(checkpoint: str | Path, folder: str | Path, *, window: int = DEFAULT_WINDOW,
               threshold: float = DEFAULT_THRESHOLD, geometry: CropGeometry = CROP,
               tolerance: Tolerance = DETECTOR_TOLERANCE, opset: int | None = None):
    """Released checkpoint -> detector folder for ``--model DIR`` (``scorer.onnx``, ``head.onnx``,
    ``detector.json``; see :func:`write_frame_detector`), checked against PyTorch; returns its DetectorInfo."""
    from swapwatch.engines.runtime import get_entry, sha256_file

    check_window_and_threshold(window, threshold)  # before the minutes a large export can take
    checkpoint = Path(checkpoint)
    scorer, epoch = _load(checkpoint, geometry)
    extra = {
        "format": FORMAT,
        "model": "Self-Blended Images EfficientNet-B4 (Shiohara and Yamasaki, CVPR 2022)",
        "note": (f"Self-Blended Images' EfficientNet-B4 from {checkpoint.name}, trained on FaceForensics++ real "
                 "videos only; its authors report a video AUC of 93.82% on Celeb-DF v2 for their FF-raw weights "
                 "(92.87% FF-c23), on their own RetinaFace crops. Noncommercial research use only."),
        "input": {"channels": "RGB (graph flips the BGR crops)", "scale": "x/255", "mean": [0.0] * 3,
                  "std": [1.0] * 3, "resolution": geometry.resolution},
        "crop": geometry.to_json(),
        "frame_logit": "l1 - l0 of SBI's two logits (sigmoid = softmax[:, 1] = P(fake))",
        "source": {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint),
                   "epoch": epoch,
                   "release": f"{HOMEPAGE} (README 'Pretrained model': FFraw.tar / FFc23.tar on Google Drive)"},
        "licence": f"{get_entry(REGISTRY_NAME).licence}; {DERIVATIVES}",
    }
    return write_frame_detector(scorer, folder, window=window, threshold=threshold,
                                face_scale=geometry.face_scale, crop_centre=geometry.box_centre, extra=extra,
                                tolerance=tolerance, opset=opset)
