"""The model registry: what each model file is, where it comes from, its sha256 and its licence.

Entries are declarative and frozen; adding a model is one :class:`ModelEntry` in ``_ENTRIES``. Files live in
``<models_home()>/models/<name>/<filename>``. Fetching (mirror folders, HTTPS, PyPI wheels and sdists, atomic
writes and hash checks) is in :mod:`swapwatch.engines.runtime.fetch`; this module only decides *what* is needed.

Functions that take a model accept either a registered name or a :class:`ModelEntry`, so tests and callers
can use entries that are not in :data:`REGISTRY` without mutating it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Union

from swapwatch.errors import ModelError

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Weights that ship inside the package (package data of swapwatch.engines): YuNet, the default deepfake detector.
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


# ----------------------------------------------------------------------------------------------------------
# Sources: where a file's bytes come from.


@dataclass(frozen=True)
class UrlSource:
    """An https URL; with ``member``, the URL is a zip archive and the file is that path inside it."""

    url: str
    member: str | None = None

    kind = "url"

    def describe(self) -> str:
        return f"{self.url}" + (f" [{self.member}]" if self.member else "")


@dataclass(frozen=True)
class PyPIWheelSource:
    """A file inside a release file on PyPI: a wheel (``.whl``, a zip) or a source distribution (``.tar.gz``),
    told apart by ``wheel_filename``'s suffix. The archive is found through the package index (PEP 691), or by
    its file name in a mirror folder, and checked by hash."""

    package: str
    version: str
    wheel_filename: str  # the archive's file name on the index: a wheel or an sdist
    wheel_sha256: str
    member: str

    kind = "pypi-wheel"

    def __post_init__(self) -> None:
        if not _SHA256_RE.match(self.wheel_sha256):
            raise ValueError(f"wheel_sha256 of {self.wheel_filename} must be 64 lowercase hex digits")
        if not self.wheel_filename.endswith((".whl", ".tar.gz")):
            raise ValueError(f"{self.wheel_filename} is neither a wheel (.whl) nor an sdist (.tar.gz)")

    @property
    def is_sdist(self) -> bool:
        """True for a source distribution (a gzipped tar), False for a wheel (a zip)."""
        return self.wheel_filename.endswith(".tar.gz")

    def describe(self) -> str:
        return f"pypi:{self.package}=={self.version} {self.wheel_filename} [{self.member}]"


@dataclass(frozen=True)
class LocalSource:
    """A file the user must obtain and place themselves (licence or availability); ``hint`` says how."""

    hint: str

    kind = "local"

    def describe(self) -> str:
        return f"user-provided: {self.hint}"


@dataclass(frozen=True)
class PackagedSource:
    """A file shipped inside swapwatch itself (``engines/weights/<path>``), so that a default needs no network;
    it is still copied into the cache through the same sha256 check as a download. ``upstream`` says where the
    bytes were published."""

    path: str
    upstream: str

    kind = "package"

    def __post_init__(self) -> None:
        if not self.path or self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"packaged path must be relative inside engines/weights, got {self.path!r}")

    def location(self) -> Path:
        """Where the file lies in the installed package (a plain file: the package is installed unzipped)."""
        return SHIPPED_WEIGHTS / self.path

    def describe(self) -> str:
        return f"shipped in swapwatch (engines/weights/{self.path}); upstream {self.upstream}"


Source = Union[UrlSource, PyPIWheelSource, LocalSource, PackagedSource]


def source_kind(source: Source) -> str:
    """Short label for listings: ``url``, ``url-zip``, ``pypi-wheel``, ``pypi-sdist``, ``local`` or ``package``."""
    if isinstance(source, UrlSource) and source.member:
        return "url-zip"
    if isinstance(source, PyPIWheelSource) and source.is_sdist:
        return "pypi-sdist"
    return source.kind


@dataclass(frozen=True)
class ModelFile:
    """One file of a model; ``sha256`` is None only where no trustworthy published value exists."""

    filename: str
    source: Source
    sha256: str | None = None

    def __post_init__(self) -> None:
        # The filename becomes a path in the cache: keep it a plain name so it cannot escape the model folder.
        if not self.filename or self.filename in (".", "..") or "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"model filename must be a plain file name, got {self.filename!r}")
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise ValueError(f"sha256 of {self.filename} must be 64 lowercase hex digits")


@dataclass(frozen=True)
class ModelEntry:
    """A model: its files, what it does, its licence and its input/output contract."""

    name: str
    task: str
    files: tuple[ModelFile, ...]
    licence: str
    contract: str
    homepage: str
    description: str
    user_provided: bool = False

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", self.name):
            raise ValueError(f"model name {self.name!r} must be letters, digits, '.', '_' or '-'")
        names = [f.filename for f in self.files]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"model {self.name} needs at least one file and unique file names")

    def file(self, filename: str) -> ModelFile:
        for f in self.files:
            if f.filename == filename:
                return f
        raise ModelError(f"model {self.name} has no file {filename!r}; its files are "
                         f"{', '.join(f.filename for f in self.files)}")


# ----------------------------------------------------------------------------------------------------------
# The entries.

_FACENET_WHEEL = dict(package="facenet-pytorch", version="2.6.0",
                      wheel_filename="facenet_pytorch-2.6.0-py3-none-any.whl",
                      wheel_sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca")
# Member hashes computed from the wheel above (whose own hash is PyPI's published one).
_MTCNN_SHA256 = {
    "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}

# dlib's face-recognition ResNet (Davis King, dlib-models), as packaged in the face_recognition_models 0.3.0 sdist
# on PyPI (sha256 as PyPI publishes it); the member's hash was computed from that sdist. The sdist's LICENSE is
# "CC0 1.0 Universal"; its README: "These models were created by Davis King ... and are licensed in the public
# domain or under CC0 1.0 Universal. See LICENSE." (its setup.py classifier says MIT, for the packaging code).
# Read by swapwatch.export.dlib_resnet.
_DLIB_RESNET_SDIST = {"package": "face-recognition-models", "version": "0.3.0",
                      "wheel_filename": "face_recognition_models-0.3.0.tar.gz",
                      "wheel_sha256": "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"}
_DLIB_RESNET_MEMBER = ("face_recognition_models-0.3.0/face_recognition_models/models/"
                       "dlib_face_recognition_resnet_model_v1.dat")

_INSIGHTFACE_LICENCE = "non-commercial research only (InsightFace pretrained models)"
_INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7"
_SCRFD_CONTRACT = ("RGB 1x3xHxW float, (x-127.5)/128 (640x640 typical); 9 outputs: score, bbox, kps "
                   "at strides 8/16/32, 2 anchors per location")

_SIMSWAP_RELEASE = "https://github.com/neuralchen/SimSwap/releases/download"
_SIMSWAP_LICENCE = "CC BY-NC 4.0 (SimSwap: non-commercial)"

# DeepfakeBench (SCLBD/DeepfakeBench, LICENSE: CC BY-NC 4.0) publishes its trained detectors in release v1.0.1
# without hashes. Read by swapwatch.export.deepfakebench; `swapwatch export deepfakebench` makes them a detector.
_DEEPFAKEBENCH_RELEASE = "https://github.com/SCLBD/DeepfakeBench/releases/download/v1.0.1"
_DEEPFAKEBENCH_LICENCE = "CC BY-NC 4.0 (DeepfakeBench: non-commercial)"
_DEEPFAKEBENCH_INPUT = ("RGB 256x256, x/255 normalised with mean 0.5 and std 0.5, on DeepfakeBench's crop (5 dlib "
                        "points onto the ArcFace template with a 1.3 margin); P(fake) = softmax(logits)[:, 1]")

# Self-Blended Images (mapooon/SelfBlendedImages, CVPR 2022) links its EfficientNet-B4 weights from its README to
# Google Drive only, without hashes: the user brings the file. Its LICENSE is titled "ACADEMIC OR NON-PROFIT
# ORGANIZATION NONCOMMERCIAL RESEARCH USE ONLY" and grants "a personal, non-exclusive, non-transferable license to use
# the Software for noncommercial research purposes, without the right to sublicense"; its README: "Our code and
# pretrained model are freely available for research purpose. For commercial use: A license agreement is required."
# Read by swapwatch.export.sbi; `swapwatch export sbi` makes them a detector.
_SBI_HOMEPAGE = "https://github.com/mapooon/SelfBlendedImages"
_SBI_LICENCE = ('SBI: "ACADEMIC OR NON-PROFIT ORGANIZATION NONCOMMERCIAL RESEARCH USE ONLY" (commercial use needs a '
                "licence agreement with the authors)")
_SBI_CONTRACT = ("dict {'model': state_dict of SBI's Detector (keys 'net.*': efficientnet_pytorch's EfficientNet-B4, "
                 "_fc 1792 -> 2), 'optimizer', 'epoch'}; RGB 380x380, x/255 (no mean/std), on a RetinaFace box grown "
                 "by 1/8 per side and resized to a square; P(fake) = softmax(logits)[:, 1]; needs the "
                 "efficientnet-pytorch package (swapwatch[detectors])")


def _sbi_entry(name: str, filename: str, variant: str, drive_id: str, description: str) -> ModelEntry:
    """One of SBI's released checkpoints: user-provided, from its README's Google Drive link."""
    hint = (f"SBI's {variant} weights: the '{variant}' link under 'Pretrained model' in {_SBI_HOMEPAGE} (Google "
            f"Drive https://drive.google.com/file/d/{drive_id}/view); then `swapwatch models install {name} FILE`")
    return ModelEntry(name=name, task="deepfake-detection", files=(ModelFile(filename, LocalSource(hint)),),
                      licence=_SBI_LICENCE, contract=_SBI_CONTRACT, homepage=_SBI_HOMEPAGE, description=description,
                      user_provided=True)


_ENTRIES: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="mtcnn",
        task="face-detection",
        files=tuple(
            ModelFile(fn, PyPIWheelSource(**_FACENET_WHEEL, member=f"facenet_pytorch/data/{fn}"), sha)
            for fn, sha in _MTCNN_SHA256.items()
        ),
        licence="MIT",
        contract=("three torch state_dicts (P-Net, R-Net 24x24, O-Net 48x48) of facenet-pytorch's MTCNN; "
                  "RGB NCHW float, (x-127.5)*0.0078125; O-Net gives box regression, 5 landmarks, face prob"),
        homepage="https://github.com/timesler/facenet-pytorch",
        description="MTCNN cascade face detector weights, taken from the facenet-pytorch wheel on PyPI",
    ),
    ModelEntry(
        name="dlib-resnet-v1",
        task="face-recognition",
        files=(ModelFile("dlib_face_recognition_resnet_model_v1.dat",
                         PyPIWheelSource(**_DLIB_RESNET_SDIST, member=_DLIB_RESNET_MEMBER),
                         "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"),),
        licence="CC0 1.0 (dlib-models; face_recognition_models' LICENSE)",
        contract=("dlib's own serialisation of anet_type (loss_metric, ResNet-29, fc_no_bias 128), read by "
                  "swapwatch.export.dlib_resnet; input [N,3,150,150] RGB 0..255 on a dlib face chip (5 points, "
                  "padding 0.25), normalised inside as (x - (122.782, 117.001, 104.298)) / 256; output [N,128] "
                  "descriptor, not normalised; same person when the Euclidean distance is below 0.6"),
        homepage="https://github.com/davisking/dlib-models",
        description=("dlib's face-recognition ResNet v1 (99.38% on LFW per dlib), from the face_recognition_models "
                     "sdist on PyPI"),
    ),
    ModelEntry(
        name="yunet-2023mar",
        task="face-detection",
        files=(
            # The default face detector of every command: shipped inside the package (232 KB, MIT) so that a
            # fresh machine with no network works; the bytes are opencv_zoo's, checked by the same hash.
            ModelFile(
                "face_detection_yunet_2023mar.onnx",
                PackagedSource("yunet/face_detection_yunet_2023mar.onnx",
                               "https://github.com/opencv/opencv_zoo/blob/main/models/face_detection_yunet/"
                               "face_detection_yunet_2023mar.onnx"),
                "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            ),
        ),
        licence="MIT",
        contract=("BGR input 1x3x640x640 float 0..255; 12 outputs: cls/obj/bbox/kps at strides 8/16/32 "
                  "(cls_8 [1,6400,1] ... kps_32 [1,400,10])"),
        homepage="https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet",
        description="YuNet face detector (OpenCV Zoo, March 2023 release)",
    ),
    # InsightFace publishes no hashes for its model packs, so these stay unpinned. They are marked
    # user_provided so that `models fetch --all` never pulls non-commercial weights without an explicit ask.
    ModelEntry(
        name="scrfd-10g",
        task="face-detection",
        files=(ModelFile("det_10g.onnx", UrlSource(f"{_INSIGHTFACE_RELEASE}/buffalo_l.zip", "det_10g.onnx")),),
        licence=_INSIGHTFACE_LICENCE,
        contract=_SCRFD_CONTRACT,
        homepage="https://github.com/deepinsight/insightface/tree/master/detection/scrfd",
        description="SCRFD-10GF face detector from InsightFace's buffalo_l pack (no published sha256)",
        user_provided=True,
    ),
    ModelEntry(
        name="scrfd-500m",
        task="face-detection",
        files=(ModelFile("det_500m.onnx", UrlSource(f"{_INSIGHTFACE_RELEASE}/buffalo_sc.zip", "det_500m.onnx")),),
        licence=_INSIGHTFACE_LICENCE,
        contract=_SCRFD_CONTRACT,
        homepage="https://github.com/deepinsight/insightface/tree/master/detection/scrfd",
        description="SCRFD-500MF face detector from InsightFace's buffalo_sc pack (no published sha256)",
        user_provided=True,
    ),
    ModelEntry(
        name="w600k-r50",
        task="face-identity",
        files=(ModelFile("w600k_r50.onnx", UrlSource(f"{_INSIGHTFACE_RELEASE}/buffalo_l.zip", "w600k_r50.onnx")),),
        licence=_INSIGHTFACE_LICENCE,
        contract="input.1 [N,3,112,112] RGB (x-127.5)/127.5 on an ArcFace-aligned crop; output [N,512] embedding",
        homepage="https://github.com/deepinsight/insightface/tree/master/model_zoo",
        description="ArcFace ResNet-50 (WebFace600K) identity embedder from buffalo_l; inswapper's identities",
        user_provided=True,
    ),
    # InsightFace withdrew inswapper_128 from its own downloads: the user brings the file.
    ModelEntry(
        name="inswapper-128",
        task="face-swap",
        files=(ModelFile("inswapper_128.onnx", LocalSource(
            "InsightFace's inswapper_128.onnx (non-commercial research only); no official download remains")),),
        licence=_INSIGHTFACE_LICENCE,
        contract=("target [1,3,128,128] RGB in [0,1] (ArcFace template scaled to 128, +8 px in x), source [1,512] "
                  "= normalize(w600k embedding @ emap); output [1,3,128,128] in [0,1]"),
        homepage="https://github.com/deepinsight/insightface/tree/master/examples/in_swapper",
        description="InsightFace inswapper_128 face swapper (needs w600k-r50 for identities)",
        user_provided=True,
    ),
    # SimSwap's releases publish no hashes: unpinned, fetched only on an explicit ask.
    ModelEntry(
        name="simswap-224",
        task="face-swap",
        files=(ModelFile("latest_net_G.pth", UrlSource(f"{_SIMSWAP_RELEASE}/1.0/checkpoints.zip",
                                                       "people/latest_net_G.pth")),),
        licence=_SIMSWAP_LICENCE,
        contract=("state_dict of Generator_Adain_Upsample; target [N,3,224,224] RGB in [0,1] (SimSwap 224 "
                  "alignment), source [N,512] L2-normalised ArcFace identity; output [N,3,224,224] in [0,1]"),
        homepage="https://github.com/neuralchen/SimSwap",
        description="SimSwap 224 'people' generator (ID-injection through AdaIN ID-Blocks); needs arcface-simswap",
        user_provided=True,
    ),
    ModelEntry(
        name="simswap-512",
        task="face-swap",
        files=(ModelFile("550000_net_G.pth", UrlSource(f"{_SIMSWAP_RELEASE}/512_beta/512.zip",
                                                       "512/550000_net_G.pth")),),
        licence=_SIMSWAP_LICENCE,
        contract="as simswap-224 at 512x512 with the FFHQ alignment",
        homepage="https://github.com/neuralchen/SimSwap",
        description="SimSwap 512 beta generator; needs arcface-simswap",
        user_provided=True,
    ),
    ModelEntry(
        name="arcface-simswap",
        task="face-identity",
        files=(ModelFile("arcface_checkpoint.tar", UrlSource(f"{_SIMSWAP_RELEASE}/1.0/arcface_checkpoint.tar")),),
        licence=_SIMSWAP_LICENCE,
        contract=("whole pickled SE-ResNet-50 IR module (classes of models.arcface_models), loaded by a restricted "
                  "unpickler; input [N,3,112,112] ImageNet-normalised RGB; output [N,512]"),
        homepage="https://github.com/neuralchen/SimSwap",
        description="SimSwap's ArcFace identity encoder",
        user_provided=True,
    ),
    ModelEntry(
        name="deepfakebench-xception",
        task="deepfake-detection",
        files=(ModelFile("xception_best.pth", UrlSource(f"{_DEEPFAKEBENCH_RELEASE}/xception_best.pth")),),
        licence=_DEEPFAKEBENCH_LICENCE,
        contract=("state_dict of DeepfakeBench's XceptionDetector (keys 'backbone.*': Xception, last_linear "
                  f"2048 -> 2, unused adjust_channel); {_DEEPFAKEBENCH_INPUT}"),
        homepage="https://github.com/SCLBD/DeepfakeBench",
        description=("DeepfakeBench's Xception frame detector (trained on FaceForensics++ c23); a frame scorer "
                     "after `swapwatch export deepfakebench --arch xception`"),
        user_provided=True,
    ),
    ModelEntry(
        name="deepfakebench-effnb4",
        task="deepfake-detection",
        files=(ModelFile("effnb4_best.pth", UrlSource(f"{_DEEPFAKEBENCH_RELEASE}/effnb4_best.pth")),),
        licence=_DEEPFAKEBENCH_LICENCE,
        contract=("state_dict of DeepfakeBench's EfficientDetector (keys 'backbone.efficientnet.*' of "
                  "efficientnet_pytorch's B4 with a plain stem conv, 'backbone.last_layer' 1792 -> 2); "
                  f"{_DEEPFAKEBENCH_INPUT}; needs the efficientnet-pytorch package (swapwatch[detectors])"),
        homepage="https://github.com/SCLBD/DeepfakeBench",
        description=("DeepfakeBench's EfficientNet-B4 frame detector (trained on FaceForensics++ c23); a frame "
                     "scorer after `swapwatch export deepfakebench --arch effnb4`"),
        user_provided=True,
    ),
    _sbi_entry("sbi-effnb4", "FFraw.tar", "raw", "12sLyqBp0VFwdpA-oZLdIOkOTkz_ZnIhV",
               "Self-Blended Images' EfficientNet-B4 trained on FaceForensics++ real videos only (raw; first released "
               "as sbi.tar; video AUC 93.82% on Celeb-DF v2 in its README); a detector folder after `swapwatch "
               "export sbi`"),
    _sbi_entry("sbi-effnb4-c23", "FFc23.tar", "c23", "1X0-NYT8KPursLZZdxduRQju6E52hauV0",
               "Self-Blended Images' EfficientNet-B4 trained on FaceForensics++ c23 real videos (92.87% on Celeb-DF "
               "v2 in its README); `swapwatch export sbi --checkpoint FILE` makes it a detector"),
    # MediaPipe's 468-point FaceMesh (Apache-2.0), taken from the mediapipe wheel on PyPI (the wheel is PyPI's
    # published sha256; the member's hash computed from it). Read without TensorFlow by
    # swapwatch.export.mediapipe_facemesh.
    ModelEntry(
        name="mediapipe-facemesh",
        task="face-landmarks",
        files=(ModelFile("face_landmark.tflite", PyPIWheelSource(
            package="mediapipe", version="0.10.21",
            wheel_filename="mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
            wheel_sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
            member="mediapipe/modules/face_landmark/face_landmark.tflite"),
            "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),),
        licence="Apache-2.0",
        contract=("TFLite FlatBuffer, float16 weights; input input_1 [1,192,192,3] RGB in [0,1] on a face crop "
                  "(FaceMeshNet takes (N,3,192,192) 0..255); outputs conv2d_21 [1,1,1,1404] = 468 x (x, y, z) in "
                  "pixels of the 192x192 input and conv2d_31 [1,1,1,1] face-presence logit (sigmoid > 0.5: face)"),
        homepage="https://github.com/google-ai-edge/mediapipe/tree/master/mediapipe/modules/face_landmark",
        description="MediaPipe FaceMesh 468-point face landmark model from the mediapipe 0.10.21 wheel on PyPI",
    ),
    ModelEntry(
        name="bisenet-faceparsing",
        task="face-parsing",
        files=(ModelFile("79999_iter.pth", UrlSource(f"{_SIMSWAP_RELEASE}/1.0/79999_iter.pth")),),
        licence="MIT (face-parsing.PyTorch)",
        contract="state_dict of BiSeNet (ResNet-18); input [N,3,512,512] ImageNet-normalised RGB; 19 classes",
        homepage="https://github.com/zllrunning/face-parsing.PyTorch",
        description="BiSeNet face parsing (CelebAMask-HQ labels), used for swap masks when present",
        user_provided=True,
    ),
)

REGISTRY: Mapping[str, ModelEntry] = MappingProxyType({e.name: e for e in _ENTRIES})

ModelRef = Union[str, ModelEntry]


# ----------------------------------------------------------------------------------------------------------
# Lookup and cache paths.


def get_entry(name: ModelRef) -> ModelEntry:
    if isinstance(name, ModelEntry):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


def models_home() -> Path:
    """``$SWAPWATCH_HOME`` if set, else ``~/.cache/swapwatch``."""
    home = os.environ.get("SWAPWATCH_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "swapwatch"


def model_dir(name: ModelRef) -> Path:
    return models_home() / "models" / get_entry(name).name


def model_file(name: ModelRef, filename: str | None = None) -> Path:
    """Cache path of one file of a model, present or not; ``filename`` may be omitted for one-file models."""
    entry = get_entry(name)
    if filename is None:
        if len(entry.files) != 1:
            raise ModelError(f"model {entry.name} has {len(entry.files)} files; name one of "
                             f"{', '.join(f.filename for f in entry.files)}")
        filename = entry.files[0].filename
    return model_dir(entry) / entry.file(filename).filename


def is_present(name: ModelRef) -> bool:
    entry = get_entry(name)
    return all(model_file(entry, f.filename).is_file() for f in entry.files)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Fetching and verifying.


def ensure_model(name: ModelRef, *, progress: bool = True) -> dict[str, Path]:
    """Fetch whatever files of a model are missing and return ``{filename: path}`` for all of them.

    Fetched files are hash-checked before they are moved into place, so a present fetched file is trusted
    here (``verify`` re-hashes on demand). User-provided files are re-checked, since the user put them there.
    A missing user-provided file raises :class:`ModelError` saying where to put it.
    """
    from swapwatch.engines.runtime.fetch import fetch_files

    entry = get_entry(name)
    paths = {f.filename: model_file(entry, f.filename) for f in entry.files}
    for f in entry.files:
        if isinstance(f.source, LocalSource) and f.sha256 and paths[f.filename].is_file():
            _check_hash(entry, f, paths[f.filename])
    missing = [f for f in entry.files if not paths[f.filename].is_file()]
    if missing:
        fetch_files(missing, model_dir(entry), progress=progress)
    return paths


def install_file(name: ModelRef, src: str | Path, filename: str | None = None) -> Path:
    """Copy a file the user obtained into the cache (hash-checked where pinned, written atomically)."""
    from swapwatch.engines.runtime.fetch import copy_verified

    entry = get_entry(name)
    dest = model_file(entry, filename)
    src = Path(src).expanduser()
    if not src.is_file():
        raise ModelError(f"cannot install {src}: no such file")
    copy_verified(src, dest, entry.file(dest.name).sha256)
    return dest


def _check_hash(entry: ModelEntry, f: ModelFile, path: Path) -> None:
    actual = sha256_file(path)
    if actual != f.sha256:
        raise ModelError(f"sha256 mismatch for {path}: expected {f.sha256}, got {actual}; "
                         f"replace the file with the genuine {entry.name} {f.filename}")


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one file: ``ok``, ``missing``, ``mismatch`` or ``unpinned`` (present, no hash)."""

    model: str
    filename: str
    path: Path
    status: str
    expected: str | None = None
    actual: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unpinned")

    def describe(self) -> str:
        if self.status == "mismatch":
            return f"{self.model}/{self.filename}: sha256 MISMATCH (expected {self.expected}, got {self.actual})"
        if self.status == "unpinned":
            return f"{self.model}/{self.filename}: present, no pinned sha256 (sha256 {self.actual})"
        if self.status == "missing":
            return f"{self.model}/{self.filename}: missing ({self.path})"
        return f"{self.model}/{self.filename}: ok"


def verify(name: ModelRef) -> list[VerifyResult]:
    """Re-hash every present file of a model against its pinned sha256."""
    entry = get_entry(name)
    results = []
    for f in entry.files:
        path = model_file(entry, f.filename)
        if not path.is_file():
            results.append(VerifyResult(entry.name, f.filename, path, "missing", f.sha256))
            continue
        actual = sha256_file(path)
        status = "unpinned" if f.sha256 is None else ("ok" if actual == f.sha256 else "mismatch")
        results.append(VerifyResult(entry.name, f.filename, path, status, f.sha256, actual))
    return results
