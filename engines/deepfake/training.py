"""Training the deepfake detector: data, pseudo-fakes, identity splits, the two training stages, export.

Data
    :class:`MediaItem` lists come from the shared assets, user folders (``real``/``fake``), FaceForensics++
    and DFDC layouts. :class:`TrackBuilder` turns each item into a :class:`FaceTrack` (YuNet + the keyframe
    tracker + a native-resolution region around the face, cached on disk). Items are split by identity, so
    no face seen in training is used to validate.
Fakes
    self-blended images (``engines/deepfake/sbi.py``; one parameter draw per clip, so the fake is consistent through a
    window), swapwatch's own swaps of another identity onto a track (the weight-free ``classic`` swapper and,
    where installed, learned ones), and user-labelled fake media.
Rendering
    every clip, real or fake, goes through the same per-clip augmentation (:class:`ClipAugment`: colour,
    resolution loss, noise, JPEG, crop jitter, flip) before the aligned crop, so the label is the only
    systematic difference between a real clip and its fake.
Training
    stage 1 trains the frame scorer on (real, fake) pairs of the same frame; stage 2 freezes it, renders
    clips, computes their features and trains the temporal head on windows sampled with frame-rate changes,
    frame drops and stalls and random lengths (masked). Every epoch is checkpointed; each epoch's random
    draws derive from ``(seed, stage, epoch, batch)`` alone, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from swapwatch.engines.deepfake.detector import detector_template, sigmoid, to_input
from swapwatch.engines.deepfake.evaluation import roc_auc
from swapwatch.engines.deepfake.sbi import SBIConfig, SBIParams, SelfBlender, jpeg
from swapwatch.engines.faces import Face, align_face, estimate_alignment
from swapwatch.engines.runtime import IMAGE_SUFFIXES
from swapwatch.errors import InputError

log = logging.getLogger(__name__)

REAL, FAKE = 0, 1
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".gif", ".m4v", ".flv", ".wmv"}
LAYOUTS = ("folders", "ffpp", "dfdc")
TRACK_CACHE_VERSION = 1

# The shared assets: each GRID clip is a different speaker (checked by eye: three men, three women); the Intel
# head-pose GIF and its first frame are one person. Any other file is its own identity (its stem).
ASSET_IDENTITIES = {
    "head-pose-face-detection-female.gif": "intel_headpose_female",
    "intel_headpose_female_frame0.png": "intel_headpose_female",
}
# Images shipped inside installed packages. insightface's mask_*.jpg are pictures of face masks with no face
# in them (YuNet finds none), so they are not listed.
DEPENDENCY_IMAGES = {
    "insightface": ("data/images/t1.jpg", "data/images/Tom_Hanks_54745.png"),
    "matplotlib": ("mpl-data/sample_data/grace_hopper.jpg",),  # a project dependency (plots)
    "skimage": ("data/astronaut.png",),  # scikit-image, which insightface depends on
}
GROUP_PHOTOS = {"t1.jpg"}  # every face is a different person


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """Where the training media come from."""

    real: tuple[Path, ...] = ()  # files or folders of real media (layout "folders")
    fake: tuple[Path, ...] = ()  # files or folders of fake media (layout "folders")
    layout: str = "folders"
    datasets: tuple[Path, ...] = ()  # FaceForensics++ or DFDC roots (layouts "ffpp", "dfdc")
    use_assets: bool = False  # the shared assets + images shipped in dependencies
    assets_dir: Path | None = None
    ffpp_compression: str = "c23"
    max_videos: int | None = None  # per source, after sorting (a quick subset of a large dataset)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"unknown layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Defaults train the committed default model in ~15 minutes on 2 cores."""

    out: Path = Path("out/deepfake")
    seed: int = 0
    # stage 1: frame scorer
    epochs: int = 12
    pairs_per_epoch: int = 2048  # (real, fake) pairs per epoch
    batch_pairs: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05  # AdamW's usual vision setting: with a handful of identities, memorising is the risk
    sbi_fraction: float = 0.6  # a pair's fake is self-blended with this probability, else a swap (if any)
    rank_weight: float = 1.0  # weight of the within-pair ranking loss (fake above its own real frame)
    bce_weight: float = 0.5  # weight of the per-frame BCE (keeps the logit calibrated)
    # stage 2: temporal head
    head_epochs: int = 8
    head_windows_per_epoch: int = 4096
    head_batch: int = 64
    head_lr: float = 3e-3
    head_renders: int = 3  # renders of each (track, kind) clip whose features the head trains on
    # "gru": the original head; "residual": the GRU corrects the window's mean frame logit (measured on the
    # first model: no better); "mean": the mean frame logit itself, nothing to train (HeadConfig.frame_mean).
    head: str = "gru"
    head_feature_noise: float = 0.5  # Gaussian noise on the standardised features while the head trains
    window: int = 20
    min_window: int = 6  # shortest (masked) window the head trains on
    max_rate: float = 3.0  # frame-rate changes: windows sample the clip every 0.5 .. max_rate frames
    drop_prob: float = 0.1  # a frame dropped (skipped)
    stall_prob: float = 0.05  # a frame repeated
    # models and crops
    scorer_size: int = 128
    scorer_widths: tuple[int, ...] = (16, 32, 64, 128)
    scorer_blocks: tuple[int, ...] = (1, 1, 1, 1)
    scorer_highpass: bool = False
    scorer_aux_map: float = 0.0  # weight of the altered-region map loss (0: no map head)
    scorer_local_topk: int = 0  # K > 0: the frame's evidence is the map's K largest cells (ScorerConfig.local_topk)
    # What the region map learns for a self-blended fake: "diff" (where it differs from its real frame) or
    # "boundary" (where the blend mask blends, Face X-ray's 4M(1-M)). Fakes without a mask always use "diff".
    region_target: str = "diff"
    scorer_stem: str = "resnet"  # "yunet": YuNet's first layers, started from its real weights (ScorerConfig.stem)
    # Learning-rate factor of the pretrained YuNet stem (no weight decay on it); 0 freezes it: its filters
    # were learned on far more faces than any training set here, and 17 people can only narrow them.
    stem_lr_scale: float = 0.1
    # 0: render fresh pairs for every batch. N: render N pairs once and draw every epoch's batches from them
    # (with flips): rendering, not the network, bounds a step on a CPU, so a pool buys many more steps.
    pair_pool: int = 0
    # Turn each training pair by a random multiple of 90 degrees (real and fake alike): a seam is a seam at
    # any angle, while "an edge across the forehead" is a position the blend masks' tops share with wrinkles.
    rotate_pairs: bool = False
    # Self-blend masks cut at a random forehead height (SBIConfig.top_cut), not at the outline's top or a
    # fixed line above the eyes: the seam's height then says nothing, as with rotation, but upright.
    vary_mask_top: bool = False
    face_scale: float = 0.75
    threshold: float = 0.5
    # K >= 2: fit the head's output calibration on K cross-fitted fold models (engines/deepfake/calibration.py), which
    # trains K more models. 0: the logit as trained.
    calibration_folds: int = 0
    # data
    max_frames: int = 96  # first N frames of each video
    still_frames: int = 24  # a photo becomes a clip of this many jittered frames
    min_track_frames: int = 8
    val_identities: tuple[str, ...] = ()  # explicit held-out identities (else val_fraction of them, seeded)
    val_fraction: float = 0.25
    swap_fakes: bool = False  # swapwatch's own swaps as fakes
    swappers: tuple[str, ...] = ("classic",)
    swap_sources: int = 0  # other identities swapped onto each track (see _self_source for why 0 on tiny data)
    self_swaps: bool = True  # also swap each track with its own face (another frame, or its mirror image)
    max_items: int | None = None  # quick runs: the first N items after sorting
    threads: int = 0  # torch threads (0: torch's default)
    cache_dir: Path | None = None  # face-track cache (default OUT/cache)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.head_epochs < 0:
            raise InputError("epochs must be >= 0")
        if not 1 <= self.min_window <= self.window:
            raise InputError("min_window must lie in [1, window]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError("val_fraction must lie in [0, 1)")
        if self.scorer_local_topk and self.scorer_aux_map <= 0:
            raise InputError("local evidence scores the region map: give --region-map a weight > 0")
        if self.region_target not in REGION_TARGETS:
            raise InputError(f"region target must be one of {', '.join(REGION_TARGETS)}")
        if self.head not in HEADS:
            raise InputError(f"head must be one of {', '.join(HEADS)}")
        if self.calibration_folds == 1 or self.calibration_folds < 0:
            raise InputError("calibration needs at least 2 folds (0: no calibration)")
        if self.stem_lr_scale < 0:
            raise InputError("stem_lr_scale must be >= 0 (0 freezes the stem)")
        self.scorer_config()  # crop size, widths and K checked before any data is read

    def sbi_config(self) -> SBIConfig:
        """How training self-blends are drawn."""
        return SBIConfig(top_cut=(0.0, 1.0)) if self.vary_mask_top else SBIConfig()

    def scorer_config(self):
        """The frame scorer's :class:`~swapwatch.export.deepfake.ScorerConfig` (InputError when inconsistent)."""
        from swapwatch.export.deepfake import ScorerConfig

        try:
            return ScorerConfig(self.scorer_size, self.scorer_widths, self.scorer_blocks,
                                highpass=self.scorer_highpass, aux_map=self.scorer_aux_map > 0,
                                local_topk=self.scorer_local_topk, stem=self.scorer_stem)
        except ValueError as exc:
            raise InputError(f"scorer: {exc}") from None

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the checkpoint (epoch counts may grow)."""
        skip = {"out", "epochs", "head_epochs", "threads", "cache_dir", "progress"}
        return {k: _jsonable(v) for k, v in asdict(self).items() if k not in skip}


# --------------------------------------------------------------------------------------------------
# Media items and dataset layouts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaItem:
    path: Path
    label: int  # REAL or FAKE
    identity: str  # the person (the split unit); for a fake, the target's identity
    origin: str  # assets | folders | ffpp | dfdc
    all_faces: bool = False  # a group photo: every face is a separate identity

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


def default_assets_dir() -> Path:
    env = os.environ.get("SWAPWATCH_SHARED_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "assets"


def asset_items(assets_dir: Path | None = None, *, dependency_images: bool = True) -> list[MediaItem]:
    """The shared assets' clips and photos, plus face images shipped inside installed packages."""
    root = Path(assets_dir) if assets_dir else default_assets_dir()
    if not root.is_dir():
        raise InputError(f"shared assets not found at {root} (set SWAPWATCH_SHARED_ASSETS or --assets)")
    items = []
    for sub in ("videos", "faces"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
                items.append(MediaItem(path, REAL, ASSET_IDENTITIES.get(path.name, path.stem), "assets"))
    if dependency_images:
        import importlib.util

        for package, files in DEPENDENCY_IMAGES.items():
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.origin:
                continue
            base = Path(spec.origin).parent
            for rel in files:
                path = base / rel
                if path.is_file():
                    items.append(MediaItem(path, REAL, path.stem, "assets", all_faces=path.name in GROUP_PHOTOS))
    return items


def _media_files(root: Path) -> list[Path]:
    suffixes = VIDEO_SUFFIXES | IMAGE_SUFFIXES
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def folder_items(paths: Sequence[Path], label: int) -> list[MediaItem]:
    """Files, or folders of files, with one label. Identity: the first sub-folder under a given folder
    (``real/alice/*.mp4`` -> alice), else the file's stem (each loose file is its own person)."""
    items = []
    for root in paths:
        root = Path(root)
        for path in _media_files(root):
            rel = path.relative_to(root) if root.is_dir() else Path(path.name)
            identity = rel.parts[0] if len(rel.parts) > 1 else path.stem
            items.append(MediaItem(path, label, identity, "folders"))
    return items


def ffpp_items(root: Path, compression: str = "c23") -> list[MediaItem]:
    """FaceForensics++: ``original_sequences/youtube/<c>/videos/NNN.mp4`` are real (identity NNN);
    ``manipulated_sequences/<method>/<c>/videos/TTT_SSS.mp4`` are fake, target TTT (the identity whose
    frames they are), source SSS."""
    root = Path(root)
    real_dir = root / "original_sequences" / "youtube" / compression / "videos"
    if not real_dir.is_dir():
        raise InputError(f"{root}: not a FaceForensics++ root (no original_sequences/youtube/{compression}/videos)")
    items = [MediaItem(p, REAL, p.stem, "ffpp") for p in sorted(real_dir.glob("*.mp4"))]
    manip = root / "manipulated_sequences"
    if manip.is_dir():
        for method in sorted(p for p in manip.iterdir() if p.is_dir()):
            videos = method / compression / "videos"
            if not videos.is_dir():
                continue
            for p in sorted(videos.glob("*.mp4")):
                items.append(MediaItem(p, FAKE, p.stem.split("_")[0], "ffpp"))
    return items


def dfdc_items(root: Path) -> list[MediaItem]:
    """DFDC: every ``metadata.json`` under ``root`` maps a video file beside it to ``{"label": "REAL"|"FAKE",
    "original": "x.mp4"}``. Identity: the original video for a fake, the video itself for a real one (DFDC
    does not name its actors, so two originals of one actor count as two identities)."""
    root = Path(root)
    metas = sorted(root.rglob("metadata.json"))
    if not metas:
        raise InputError(f"{root}: no DFDC metadata.json found")
    items = []
    for meta in metas:
        try:
            entries = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{meta}: not readable JSON ({exc})") from None
        for name, entry in sorted(entries.items()):
            label = str(entry.get("label", "")).upper()
            if label not in ("REAL", "FAKE"):
                raise InputError(f"{meta}: {name} has label {entry.get('label')!r} (expected REAL or FAKE)")
            path = meta.parent / name
            if not path.is_file():
                log.warning("%s: %s is listed but missing; skipped", meta, name)
                continue
            original = entry.get("original") if label == "FAKE" else None
            identity = Path(original).stem if original else path.stem
            items.append(MediaItem(path, REAL if label == "REAL" else FAKE, identity, "dfdc"))
    return items


def collect_items(spec: DataSpec) -> list[MediaItem]:
    items: list[MediaItem] = []
    if spec.use_assets:
        items += asset_items(spec.assets_dir)
    if spec.layout == "folders":
        real = folder_items(spec.real, REAL)
        fake = folder_items(spec.fake, FAKE)
        if spec.max_videos:
            real, fake = real[: spec.max_videos], fake[: spec.max_videos]
        items += real + fake
        if spec.datasets:
            raise InputError("dataset roots need --layout ffpp or dfdc")
    else:
        roots = list(spec.datasets) + list(spec.real) + list(spec.fake)  # labels come from the layout
        if not roots:
            raise InputError(f"--layout {spec.layout} needs a dataset root")
        for root in roots:
            found = ffpp_items(root, spec.ffpp_compression) if spec.layout == "ffpp" else dfdc_items(root)
            items += found[: spec.max_videos] if spec.max_videos else found
    if not items:
        raise InputError("no training media: pass --use-assets, --data-real/--data-fake or a dataset layout")
    return items


# --------------------------------------------------------------------------------------------------
# Face tracks
# --------------------------------------------------------------------------------------------------


@dataclass
class FaceTrack:
    """One face through a clip (or one photo): a native-resolution region of the frame around it per frame,
    with the landmarks and box in that region's pixels."""

    identity: str
    label: int
    origin: str
    rois: np.ndarray  # (T, H, W, 3) uint8
    landmarks: np.ndarray  # (T, 5, 2) float32
    boxes: np.ndarray  # (T, 4) float32
    times: np.ndarray  # (T,) seconds
    still: bool = False
    kind: str = "real"  # real | file-fake | swap (another identity swapped in) | selfswap (its own face)
    source: str | None = None  # a swap's source identity (whose face was pasted in)

    def __len__(self) -> int:
        return len(self.rois)

    def face(self, index: int) -> Face:
        return Face(self.boxes[index], 1.0, self.landmarks[index])


class TrackBuilder:
    """YuNet + keyframe tracker over a video (or YuNet on a photo) -> face tracks, cached per file."""

    def __init__(self, detector_model: Path, *, max_frames: int = 96, min_track_frames: int = 8,
                 roi_expand: float = 2.3, template=None, cache_dir: Path | None = None) -> None:
        from swapwatch.engines.faces import YuNetDetector

        # The crop template tells how much of the frame a crop covers (about 2 box widths with the default).
        self.template = template if template is not None else detector_template()
        self.detector = YuNetDetector(detector_model, backend="onnxruntime", device="cpu")
        self.max_frames = int(max_frames)
        self.min_track_frames = int(min_track_frames)
        self.roi_expand = float(roi_expand)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def build(self, item: MediaItem) -> list[FaceTrack]:
        cached = self._cache_path(item)
        if cached is not None and cached.is_file():
            try:
                return self._load(cached, item)
            except (OSError, ValueError, KeyError):
                log.warning("track cache %s unreadable; rebuilding", cached)
        tracks = self._video(item) if item.is_video else self._image(item)
        if cached is not None:
            self._save(cached, tracks)
        return tracks

    # ---- building -----------------------------------------------------------------------------------

    def _image(self, item: MediaItem) -> list[FaceTrack]:
        from swapwatch.engines.runtime import read_image

        image = read_image(item.path)
        # A tightly cropped face (an aligned 112 px photo) is missed or cut without some border around it.
        pad = max(image.shape[:2]) // 2
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        faces = sorted(self.detector.detect(padded), key=lambda f: -f.area)
        if not item.all_faces:
            faces = faces[:1]
        else:
            faces = sorted(faces, key=lambda f: (float(f.box[0]), float(f.box[1])))  # stable left-to-right ids
        tracks = []
        for i, face in enumerate(faces):
            identity = f"{item.identity}#{i}" if item.all_faces else item.identity
            tracks.append(self._make_track(item, identity, [padded], [face], [0.0], still=True))
        return tracks

    def _video(self, item: MediaItem) -> list[FaceTrack]:
        from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker
        from swapwatch.engines.runtime import iter_video

        tracker = KeyframeTracker(self.detector, FaceTracker(smoothing=FACE_SMOOTHING), k=1)
        frames: list[np.ndarray] = []
        per_track: dict[int, list[tuple[int, Face, float]]] = {}
        for frame in iter_video(item.path):
            if frame.index >= self.max_frames:
                break
            frames.append(frame.image)
            for face in tracker.process(frame.image, frame.time):
                per_track.setdefault(int(face.track_id), []).append((len(frames) - 1, face, frame.time))
        if not per_track:
            return []
        # The longest track: one person per video (a labelled fake's swapped face is normally the main one).
        best = max(per_track.values(), key=len)
        if len(best) < self.min_track_frames:
            return []
        return [self._make_track(item, item.identity, [frames[i] for i, _, _ in best], [f for _, f, _ in best],
                                 [t for _, _, t in best], still=False)]

    def _make_track(self, item: MediaItem, identity: str, frames: list[np.ndarray], faces: list[Face],
                    times: list[float], *, still: bool) -> FaceTrack:
        """Cut one fixed square region (the union of the boxes, expanded) from every frame. A large face is
        shrunk (area averaging) so that the crop warp downsamples it at most by the runtime's
        ``MIN_WARP_SCALE``: the detector's ``crop_faces`` shrinks large faces by the same rule, so crops look
        alike in training and at run time, and smaller regions make training faster."""
        from swapwatch.engines.deepfake.detector import MIN_WARP_SCALE

        boxes = np.stack([f.box for f in faces]).astype(np.float64)
        x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
        x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
        face_px = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
        side = max(x1 - x0, y1 - y0) + face_px * (self.roi_expand - 1.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        median_lmk = np.median(np.stack([f.landmarks for f in faces]).astype(np.float64), axis=0)
        warp_scale = math.sqrt(abs(np.linalg.det(estimate_alignment(median_lmk, self.template)[:, :2])))
        scale = min(1.0, warp_scale / MIN_WARP_SCALE)
        out = int(math.ceil(side * scale))
        # Region = translate to the square's corner, then scale; replicate the frame's edge outside it.
        m = np.array([[scale, 0.0, -(cx - side / 2) * scale], [0.0, scale, -(cy - side / 2) * scale]])
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        rois = np.stack([_region(f, m, out, interp) for f in frames])
        lmk = np.stack([f.landmarks for f in faces]).astype(np.float64) * scale + m[:, 2]
        bxs = boxes * scale + np.tile(m[:, 2], 2)
        kind = "real" if item.label == REAL else "file-fake"
        return FaceTrack(identity, item.label, item.path.name, rois, lmk.astype(np.float32), bxs.astype(np.float32),
                         np.asarray(times, np.float64), still=still, kind=kind)

    # ---- cache ----------------------------------------------------------------------------------------

    def _cache_path(self, item: MediaItem) -> Path | None:
        if self.cache_dir is None:
            return None
        st = item.path.stat()
        key = json.dumps([TRACK_CACHE_VERSION, str(item.path.resolve()), st.st_size, st.st_mtime_ns,
                          self.max_frames, self.min_track_frames, self.roi_expand, self.template.name,
                          self.template.points.tolist(), item.all_faces])
        return self.cache_dir / f"{item.path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"

    @staticmethod
    def _save(path: Path, tracks: list[FaceTrack]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"count": np.array(len(tracks))}
        for i, t in enumerate(tracks):
            arrays.update({f"{i}_rois": t.rois, f"{i}_landmarks": t.landmarks, f"{i}_boxes": t.boxes,
                           f"{i}_times": t.times, f"{i}_meta": np.array(json.dumps([t.identity, t.still]))})
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @staticmethod
    def _load(path: Path, item: MediaItem) -> list[FaceTrack]:
        with np.load(path) as data:
            tracks = []
            for i in range(int(data["count"])):
                identity, still = json.loads(str(data[f"{i}_meta"]))
                tracks.append(FaceTrack(identity, item.label, item.path.name, data[f"{i}_rois"],
                                        data[f"{i}_landmarks"], data[f"{i}_boxes"], data[f"{i}_times"],
                                        still=bool(still), kind="real" if item.label == REAL else "file-fake"))
        return tracks


def _region(frame: np.ndarray, m: np.ndarray, out: int, interp: int) -> np.ndarray:
    """The square region of ``frame`` that ``m`` (scale + translation) maps onto (out, out)."""
    scale = float(m[0, 0])
    if interp == cv2.INTER_AREA:
        # warpAffine has no area filter: cut the source square (replicated past the frame's edge), then resize.
        side = int(math.ceil(out / scale))
        x0, y0 = int(math.floor(-m[0, 2] / scale)), int(math.floor(-m[1, 2] / scale))
        h, w = frame.shape[:2]
        pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
        src = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else frame
        square = src[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
        return cv2.resize(square, (out, out), interpolation=cv2.INTER_AREA)
    return cv2.warpAffine(frame, m, (out, out), flags=interp, borderMode=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------------------------------
# Identity split
# --------------------------------------------------------------------------------------------------


def split_identities(identities: Sequence[str], *, val_identities: Sequence[str] = (), val_fraction: float = 0.25,
                     seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) identity lists: the named ones held out, else a seeded ``val_fraction`` of them."""
    ids = sorted(set(identities))
    if val_identities:
        unknown = sorted(set(val_identities) - set(ids))
        if unknown:
            raise InputError(f"unknown validation identities {', '.join(unknown)}; known: {', '.join(ids)}")
        val = sorted(set(val_identities))
    else:
        n_val = int(round(val_fraction * len(ids)))
        if val_fraction > 0 and len(ids) > 1:
            n_val = max(n_val, 1)
        order = np.random.default_rng([seed, 7]).permutation(len(ids))
        val = sorted(ids[i] for i in order[:n_val])
    train = [i for i in ids if i not in set(val)]
    if not train:
        raise InputError("every identity is held out for validation: nothing left to train on")
    return train, val


# --------------------------------------------------------------------------------------------------
# swapwatch's own swaps as fakes
# --------------------------------------------------------------------------------------------------


class SwapFaker:
    """Swaps a source identity onto every frame of a track, in the track's own regions."""

    def __init__(self, swapper, *, keep_mouth: bool | None = None) -> None:
        from swapwatch.engines.swap import FeatherMask

        self.swapper = swapper
        self.masks = FeatherMask()
        self.keep_mouth = keep_mouth

    @property
    def name(self) -> str:
        return self.swapper.name

    def __call__(self, target: FaceTrack, source: FaceTrack) -> FaceTrack:
        from swapwatch.engines.swap import match_colour, paste_back

        mid = len(source) // 2
        src = self.swapper.prepare_source(source.rois[mid], source.face(mid))
        template = self.swapper.template
        rois = np.empty_like(target.rois)
        for i in range(len(target)):
            aligned = align_face(target.rois[i], target.landmarks[i], template, border_mode=cv2.BORDER_REPLICATE)
            generated = self.swapper.generate(aligned.crop[None], [src])[0]
            mask = self.masks.face(template, index=aligned.template_index)
            if self.swapper.learned:  # the classic swapper matches colours itself
                generated = match_colour(generated, aligned.crop, mask)
            rois[i] = paste_back(target.rois[i], generated, aligned.matrix, mask)
        kind = "selfswap" if source.identity == target.identity else "swap"
        return replace(target, rois=rois, label=FAKE, origin=f"{self.name}:{source.identity}->{target.identity}",
                       kind=kind, source=source.identity)


def _self_source(track: FaceTrack) -> FaceTrack:
    """The track's own face as a swap source: a frame far from the middle one (another expression), or for a
    photo its mirror image. A self-swap carries the swapper's traces (pasted, recoloured, relit face; seam;
    a face that does not move with the head) without a change of identity: with a handful of identities,
    cross-identity swaps alone teach "an unfamiliar face on a familiar head is fake", which on a new person
    reads as "unfamiliar is fake"."""
    if not track.still:
        return replace(track, rois=track.rois[:1], landmarks=track.landmarks[:1], boxes=track.boxes[:1],
                       times=track.times[:1])
    w = track.rois.shape[2]
    lmk = track.landmarks.copy()
    lmk[..., 0] = w - 1 - lmk[..., 0]
    lmk = lmk[:, [1, 0, 2, 4, 3]]  # left and right swap places in a mirror
    boxes = track.boxes.copy()
    boxes[:, [0, 2]] = w - 1 - track.boxes[:, [2, 0]]
    return replace(track, rois=np.ascontiguousarray(track.rois[:, :, ::-1]), landmarks=lmk, boxes=boxes)


def make_swappers(names: Sequence[str]) -> list[SwapFaker]:
    """Classic variants always; learned swappers only when their weights are installed (skipped otherwise)."""
    from swapwatch.engines.swap import ClassicSwapper

    fakers = []
    for name in names:
        if name == "classic":
            # Two variants: the target's own mouth kept or not, full or half lighting transfer.
            fakers += [SwapFaker(ClassicSwapper(keep_mouth=True, shading=1.0)),
                       SwapFaker(ClassicSwapper(keep_mouth=False, shading=0.5))]
            continue
        from swapwatch.engines.swap import create_swapper, installed

        if not installed(name):
            log.warning("swapper %s is not installed; its fakes are skipped", name)
            continue
        fakers.append(SwapFaker(create_swapper(name, backend="onnxruntime", device="cpu").swapper))
    return fakers


# --------------------------------------------------------------------------------------------------
# Rendering: per-clip augmentation shared by a real clip and its fakes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipAugment:
    """One draw of the per-clip conditions: the same for every frame of a clip and for a real clip and its
    fake, so that only the manipulation tells them apart. Per-frame randomness (landmark jitter, sensor noise)
    comes from ``seed`` and the frame's position."""

    brightness: float
    contrast: float
    resolution: float  # 1: none; < 1: the region is downscaled by this and back (low-resolution sources)
    quality: int | None  # JPEG quality, None: no compression
    noise: float  # Gaussian sensor noise sigma, 0..255 levels
    blur: float  # Gaussian blur sigma in region pixels (0: none): defocus, motion, soft webcams
    gray: bool  # black-and-white source (old photos, some cameras)
    crop_scale: float
    crop_shift: tuple[float, float]  # fraction of the crop
    rotation: float  # degrees, about the crop centre (landmark detectors err on roll too)
    flip: bool
    jitter: float  # per-frame landmark noise, fraction of the crop
    seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ClipAugment:
        return cls(
            brightness=float(rng.uniform(-20, 20)),
            contrast=float(rng.uniform(0.85, 1.15)),
            resolution=float(rng.uniform(0.35, 0.85)) if rng.random() < 0.3 else 1.0,
            quality=int(rng.integers(40, 101)) if rng.random() < 0.6 else None,
            noise=float(rng.uniform(0, 4)) if rng.random() < 0.3 else 0.0,
            blur=float(rng.uniform(0.4, 1.2)) if rng.random() < 0.15 else 0.0,
            gray=bool(rng.random() < 0.1),
            crop_scale=float(rng.uniform(0.9, 1.1)),
            crop_shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
            rotation=float(rng.uniform(-10, 10)),
            flip=bool(rng.random() < 0.5),
            jitter=float(rng.uniform(0.0, 0.006)),
            seed=int(rng.integers(0, 2**31 - 1)),
        )

    def degrade(self, roi: np.ndarray, position: int) -> np.ndarray:
        # convertTo-style saturating affine on uint8 (one pass, no float copy of the region).
        img = cv2.addWeighted(roi, self.contrast, roi, 0.0, 128.0 * (1.0 - self.contrast) + self.brightness)
        if self.gray:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        if self.blur > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.blur)
        if self.noise > 0:
            noise = np.random.default_rng([self.seed, position, 1]).normal(0, self.noise, img.shape)
            img = np.clip(img + np.rint(noise), 0, 255).astype(np.uint8)
        h, w = img.shape[:2]
        if self.resolution < 1.0:
            small = cv2.resize(img, (max(int(w * self.resolution), 8), max(int(h * self.resolution), 8)),
                               interpolation=cv2.INTER_AREA)
            if self.quality is not None:
                small = jpeg(small, self.quality)  # compression at the low resolution, as a small video has
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return jpeg(img, self.quality) if self.quality is not None else img

    def crop(self, roi: np.ndarray, landmarks: np.ndarray, template, position: int) -> np.ndarray:
        size = template.size
        lmk = np.asarray(landmarks, np.float64)
        if self.jitter > 0:
            m0 = estimate_alignment(lmk, template)
            px = size / math.sqrt(abs(np.linalg.det(m0[:, :2])))  # image pixels per crop
            noise = np.random.default_rng([self.seed, position, 2]).normal(0, self.jitter * px, lmk.shape)
            lmk = lmk + noise
        m = estimate_alignment(lmk, template)
        # Then rotate and scale about the crop centre and shift, in crop pixels.
        c = size / 2.0
        post = np.vstack([cv2.getRotationMatrix2D((c, c), self.rotation, self.crop_scale), [0, 0, 1.0]])
        post[:2, 2] += np.asarray(self.crop_shift) * size
        m = (post @ np.vstack([m, [0, 0, 1]]))[:2]
        crop = cv2.warpAffine(roi, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return crop[:, ::-1].copy() if self.flip else crop


class ClipRenderer:
    """Renders aligned crops of a track as real, self-blended (one SBIParams per clip) or a prepared fake."""

    def __init__(self, template, blender: SelfBlender | None = None) -> None:
        self.template = template
        self.blender = blender or SelfBlender()

    def render(self, track: FaceTrack, positions: Sequence[int], kinds: Sequence[str], rng: np.random.Generator,
               fakes: dict[str, FaceTrack] | None = None, masks: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """One (T, S, S, 3) crop array per kind ("real", "sbi", or a key of ``fakes``: a prepared fake track
        frame-aligned with ``track``), all under one :class:`ClipAugment` draw. With "sbi" and a ``masks``
        list, each frame's blend mask (its shape: scaled to a peak of 1, ratio left out) is appended to it as
        an (S, S) float32 crop warped like the frame."""
        aug = ClipAugment.draw(rng)
        params = SBIParams.draw(rng, self.blender.config) if "sbi" in kinds else None
        size = self.template.size
        outs = [np.empty((len(positions), size, size, 3), np.uint8) for _ in kinds]
        for k, i in enumerate(positions):
            real = track.rois[i]
            sbi = None
            if params is not None:
                result = self.blender(real, track.landmarks[i], params, compress=False)
                # The real counterpart of a self-blended fake is its target (see SBIResult): rendered together,
                # they differ only by the blend.
                real, sbi = result.real, result.image
                if masks is not None:
                    shape = result.mask / max(float(result.mask.max()), 1e-6)
                    masks.append(aug.crop(shape, track.landmarks[i], self.template, k))
            for out, kind in zip(outs, kinds):
                roi = real if kind == "real" else sbi if kind == "sbi" else (fakes or {})[kind].rois[i]
                out[k] = aug.crop(aug.degrade(roi, k), track.landmarks[i], self.template, k)
        return outs


def clip_positions(track: FaceTrack, still_frames: int) -> list[int]:
    """Frame indices of a track's full clip: a photo repeats its one frame (the jitter makes them differ)."""
    return [0] * still_frames if track.still else list(range(len(track)))


# --------------------------------------------------------------------------------------------------
# Temporal augmentation of feature sequences
# --------------------------------------------------------------------------------------------------


def sample_window(length: int, window: int, rng: np.random.Generator, *, min_window: int = 1,
                  max_rate: float = 3.0, drop_prob: float = 0.1, stall_prob: float = 0.05,
                  full_prob: float = 0.7) -> np.ndarray:
    """Indices (L,) into a clip of ``length`` frames for one training window, L <= window.

    Models what a live stream does to the frames a window holds: a different frame rate (a step of 0.5 to
    ``max_rate`` source frames per window slot, so 12.5 to 50 fps views of a 25 fps clip), dropped frames
    (skipped) and stalls (a repeated frame); and a shorter window (masked) while a track is young.
    """
    n = window if rng.random() < full_prob else int(rng.integers(min_window, window + 1))
    rate = float(rng.uniform(0.5, max_rate))
    rate = min(rate, max((length - 1) / max(n - 1, 1), 0.5))  # the window must fit in the clip
    steps = np.full(n - 1, rate)
    r = rng.random(n - 1)
    steps[r < stall_prob] = 0.0
    steps[(r >= stall_prob) & (r < stall_prob + drop_prob)] *= 2.0  # a drop: the next frame is skipped
    pos = np.concatenate([[0.0], np.cumsum(steps)])
    span = pos[-1]
    start = float(rng.uniform(0, max(length - 1 - span, 0)))
    return np.clip(np.rint(pos + start), 0, length - 1).astype(np.int64)


def rotate_pairs(crops: np.ndarray, masks: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Each (real, fake) pair (consecutive crops, (2N, S, S, C)) and its fake's mask ((N, S, S)) turned by the
    same random multiple of 90 degrees."""
    turns = rng.integers(4, size=len(crops) // 2)
    crops = np.stack([np.rot90(crops[2 * i + j], t) for i, t in enumerate(turns) for j in (0, 1)])
    if masks is not None:
        masks = np.stack([np.rot90(m, t) for m, t in zip(masks, turns)])
    return crops, masks


def pack_windows(seqs: Sequence[np.ndarray], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-align each (L, F) sequence in a (W, F) window: (N, W, F) features and (N, W) masks."""
    dim = seqs[0].shape[1]
    feats = np.zeros((len(seqs), window, dim), np.float32)
    masks = np.zeros((len(seqs), window), np.float32)
    for i, s in enumerate(seqs):
        s = s[-window:]
        feats[i, window - len(s):] = s
        masks[i, window - len(s):] = 1.0
    return feats, masks


# --------------------------------------------------------------------------------------------------
# The data a run trains and validates on
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    train_real: list[FaceTrack]
    train_fake: list[FaceTrack]  # labelled fake media (not frame-aligned with a real track)
    val_real: list[FaceTrack]
    val_fake: list[FaceTrack]
    swaps: dict[int, list[FaceTrack]]  # id(real track) -> its swapped versions
    train_ids: list[str]
    val_ids: list[str]

    def swaps_of(self, track: FaceTrack) -> list[FaceTrack]:
        return self.swaps.get(id(track), [])

    def summary(self) -> dict:
        def count(tracks):
            return {"tracks": len(tracks), "frames": int(sum(len(t) for t in tracks))}

        return {"train_identities": self.train_ids, "val_identities": self.val_ids,
                "train_real": count(self.train_real), "train_labelled_fake": count(self.train_fake),
                "val_real": count(self.val_real), "val_labelled_fake": count(self.val_fake),
                "swapped_tracks": sum(len(v) for v in self.swaps.values())}


def prepare_data(items: Sequence[MediaItem], config: TrainConfig, *, detector_model: Path,
                 echo: Callable[[str], None] = print) -> TrainingData:
    """Tracks for every item, the identity split, and the swapped fakes (deterministic for a seed)."""
    from tqdm import tqdm

    cache = config.cache_dir or (config.out / "cache")
    builder = TrackBuilder(detector_model, max_frames=config.max_frames, min_track_frames=config.min_track_frames,
                           template=detector_template(config.scorer_size, config.face_scale), cache_dir=cache)
    items = sorted(items, key=lambda it: (it.origin, str(it.path)))
    if config.max_items:
        items = items[: config.max_items]
    tracks: list[FaceTrack] = []
    for item in tqdm(items, desc="face tracks", unit="file", disable=not config.progress or None, file=sys.stderr):
        found = builder.build(item)
        if not found:
            log.warning("%s: no usable face track; skipped", item.path)
        tracks += found
    if not tracks:
        raise InputError("no faces found in the training media")
    train_ids, val_ids = split_identities([t.identity for t in tracks], val_identities=config.val_identities,
                                          val_fraction=config.val_fraction, seed=config.seed)
    val_set = set(val_ids)
    data = TrainingData(
        train_real=[t for t in tracks if t.label == REAL and t.identity not in val_set],
        train_fake=[t for t in tracks if t.label == FAKE and t.identity not in val_set],
        val_real=[t for t in tracks if t.label == REAL and t.identity in val_set],
        val_fake=[t for t in tracks if t.label == FAKE and t.identity in val_set],
        swaps={}, train_ids=train_ids, val_ids=val_ids)
    if not data.train_real:
        raise InputError("no real face track among the training identities (self-blending needs real faces)")
    if config.swap_fakes:
        fakers = make_swappers(config.swappers)
        rng = np.random.default_rng([config.seed, 11])
        for pool in (data.train_real, data.val_real):
            targets = pool
            for ti, target in enumerate(tqdm(targets, desc="swaps", unit="track", file=sys.stderr,
                                             disable=not config.progress or None)):
                others = [s for s in pool if s.identity != target.identity]
                if not others:  # a lone validation identity borrows sources from training
                    others = [s for s in data.train_real if s.identity != target.identity]
                # Validation always gets a swap from another identity: that is the fake the detector is for.
                n_cross = config.swap_sources if pool is data.train_real else max(config.swap_sources, 1)
                picks = rng.permutation(len(others))[:n_cross]
                sources = [others[j] for j in picks]
                if config.self_swaps:
                    sources.append(_self_source(target))
                data.swaps[id(target)] = [fakers[(ti + k) % len(fakers)](target, src)
                                          for k, src in enumerate(sources)]
    return data


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


@dataclass
class ValSet:
    """Validation clips rendered once: per clip its crops, label, kind and name."""

    crops: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    out: Path
    history: list[dict]
    metrics: dict
    seconds: float


# A mean absolute difference of this many grey levels over a map cell counts as fully altered.
REGION_DIFF_LEVELS = 8.0
REGION_TARGETS = ("diff", "boundary")
HEADS = ("gru", "residual", "mean")


class DetectorTrainer:
    def __init__(self, config: TrainConfig, data: TrainingData, *, echo: Callable[[str], None] = print,
                 stem_weights: Path | None = None) -> None:
        import torch

        from swapwatch.export.deepfake import FrameScorer, HeadConfig, TemporalHead

        self.config = config
        self.data = data
        self.echo = echo
        if config.threads:
            torch.set_num_threads(config.threads)
        self.template = detector_template(config.scorer_size, config.face_scale)
        # Training renders use the run's augmentation settings; validation always the defaults, so that runs
        # with different settings are validated on the same clips.
        self.renderer = ClipRenderer(self.template, SelfBlender(config.sbi_config()))
        self.val_renderer = ClipRenderer(self.template)
        torch.manual_seed(config.seed)
        scfg = config.scorer_config()
        self.scorer = FrameScorer(scfg)
        self.head = TemporalHead(HeadConfig(feature_dim=scfg.feature_dim, window=config.window,
                                            residual=config.head == "residual", frame_mean=config.head == "mean",
                                            monotone=bool(scfg.local_topk), calibrated=config.calibration_folds > 0))
        self.calibration = None  # a Calibration to fold into the head before the final validation and export
        params: list = list(self.scorer.parameters())
        if scfg.stem == "yunet":
            if stem_weights is None:
                raise InputError("the yunet stem starts from YuNet's weights: no YuNet model was given")
            self.scorer.load_stem(stem_weights)
            # Pretrained filters: a smaller learning rate and no weight decay (which would pull them to 0), or
            # frozen (then not in the optimizer at all, and no gradient is computed through them).
            named = list(self.scorer.named_parameters())
            params = [{"params": [p for n, p in named if not n.startswith("stem.")]}]
            if config.stem_lr_scale > 0:
                params.append({"params": [p for n, p in named if n.startswith("stem.")],
                               "lr_scale": config.stem_lr_scale, "weight_decay": 0.0})
            else:
                self.scorer.stem.requires_grad_(False)
        self.scorer_opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.head_opt = (torch.optim.AdamW(self.head.parameters(), lr=config.head_lr,
                                           weight_decay=config.weight_decay) if self.head.config.trainable else None)
        self.history: list[dict] = []
        self.stage, self.epoch = "scorer", 0  # the next epoch to run
        self.val = self._render_val()
        self.probe = self._render_val(data.train_real, frames=6, stream=6)
        self._head_train: list[list[tuple[np.ndarray, int]]] | None = None
        self._val_features: list[np.ndarray] | None = None  # per val clip, from the last validate_frames()
        self._pair_pool: np.ndarray | None = None
        self._pool_masks: np.ndarray | None = None  # (N, S, S) blend masks of the pool's fakes (-1: none)

    # ---- checkpoints ------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.config.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        import torch

        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"stage": self.stage, "epoch": self.epoch, "history": json.dumps(self.history),
                   "fingerprint": json.dumps(self.config.fingerprint()),
                   "scorer": self.scorer.state_dict(), "head": self.head.state_dict(),
                   "scorer_opt": self.scorer_opt.state_dict(),
                   "head_opt": self.head_opt.state_dict() if self.head_opt else {}}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self) -> bool:
        """Continue from ``checkpoint.pt`` if there is one; False when starting fresh."""
        import torch

        path = self.checkpoint_path
        if not path.is_file():
            self.echo(f"no checkpoint at {path}; starting from scratch")
            return False
        payload = torch.load(path, map_location="cpu", weights_only=True)
        # A setting added after the checkpoint was written had its default then.
        saved = {**TrainConfig(out=self.config.out).fingerprint(), **json.loads(payload["fingerprint"])}
        current = self.config.fingerprint()
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise InputError(f"{path} was written with other settings ({', '.join(diff)}); resume with the same "
                             f"options (only --epochs/--head-epochs may change) or start in a new --out")
        self.scorer.load_state_dict(payload["scorer"])
        self.head.load_state_dict(payload["head"])
        self.scorer_opt.load_state_dict(payload["scorer_opt"])
        if self.head_opt:
            self.head_opt.load_state_dict(payload["head_opt"])
        self.stage, self.epoch = payload["stage"], int(payload["epoch"])
        self.history = json.loads(payload["history"])
        self.echo(f"resumed from {path}: {self.stage} stage, next epoch {self.epoch + 1}")
        return True

    # ---- validation set ---------------------------------------------------------------------------------

    def _render_val(self, tracks: Sequence[FaceTrack] | None = None, frames: int | None = None,
                    stream: int = 3) -> ValSet:
        """Real, self-blended and swapped clips of every held-out track, plus labelled val fakes, rendered
        once with a fixed seed. With ``tracks`` and ``frames``: the first frames of those tracks instead (the
        training-set probe that tells fitting from generalising)."""
        val = ValSet()
        cfg = self.config
        probe = tracks is not None
        for n, track in enumerate(self.data.val_real if tracks is None else tracks):
            rng = np.random.default_rng([cfg.seed, stream, n])
            pos = clip_positions(track, cfg.still_frames)[:frames]
            swaps = {f"swap{j}": s for j, s in enumerate(self.data.swaps_of(track))}
            # The real clip as it is (not a self-blend's recoloured target) and its fakes, all under the same
            # ClipAugment draw: it is the first draw of each render, so two generators with one seed agree.
            kinds = ["real", *swaps, "sbi"]
            rendered = self.val_renderer.render(track, pos, kinds[:-1], rng, swaps)
            rendered += self.val_renderer.render(track, pos, ["sbi"], np.random.default_rng([cfg.seed, stream, n]))
            for kind, crops in zip(kinds, rendered):
                val.crops.append(crops)
                val.labels.append(REAL if kind == "real" else FAKE)
                val.kinds.append(swaps[kind].kind if kind in swaps else kind)
                val.names.append(f"{track.identity}:{swaps[kind].origin if kind in swaps else kind}")
        for n, track in enumerate([] if probe else self.data.val_fake):
            rng = np.random.default_rng([cfg.seed, 4, n])
            val.crops.append(self.val_renderer.render(track, clip_positions(track, cfg.still_frames), ["real"], rng)[0])
            val.labels.append(FAKE)
            val.kinds.append("labelled")
            val.names.append(f"{track.identity}:{track.origin}")
        return val

    # ---- stage 1: frame scorer ----------------------------------------------------------------------------

    def _pool(self) -> np.ndarray:
        """The rendered pair pool, (N, 2, S, S, 3) uint8 as (real, fake), built once (seeded, so a resumed
        run rebuilds the same pool)."""
        if self._pair_pool is None:
            from tqdm import tqdm

            cfg = self.config
            batches = max(cfg.pair_pool // cfg.batch_pairs, 1)
            with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
                parts = list(tqdm(pool.map(lambda i: self._pair_batch(-1, i), range(batches)), total=batches,
                                  desc="rendering pair pool", unit="batch", file=sys.stderr,
                                  disable=not cfg.progress or None, leave=False))
            crops = np.concatenate([part[0] for part in parts])
            self._pair_pool = crops.reshape(-1, 2, *crops.shape[1:])
            if parts[0][2] is not None:
                self._pool_masks = np.concatenate([part[2] for part in parts])
        return self._pair_pool

    def _batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One training batch of (real, fake) pairs: from the pool or freshly rendered, optionally turned."""
        cfg = self.config
        crops, labels, masks = (self._pool_batch if cfg.pair_pool else self._pair_batch)(epoch, index)
        if cfg.rotate_pairs:
            crops, masks = rotate_pairs(crops, masks, np.random.default_rng([cfg.seed, 9, epoch, index]))
        return crops, labels, masks

    def _pool_batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cfg = self.config
        pool = self._pool()
        rng = np.random.default_rng([cfg.seed, 8, epoch, index])
        chosen = rng.choice(len(pool), min(cfg.batch_pairs, len(pool)), replace=False)
        pairs = pool[chosen]
        masks = self._pool_masks[chosen] if self._pool_masks is not None else None
        flip = rng.random(len(pairs)) < 0.5
        pairs[flip] = pairs[flip][:, :, :, ::-1]  # a copy (fancy indexing): the pool is untouched
        if masks is not None:
            masks[flip] = masks[flip][:, :, ::-1]
            masks = np.ascontiguousarray(masks)
        labels = np.tile(np.asarray([REAL, FAKE], np.float32), len(pairs))
        return np.ascontiguousarray(pairs.reshape(-1, *pairs.shape[2:])), labels, masks

    def _pair_batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``batch_pairs`` (real, fake) pairs as (crops, labels, blend masks): with the boundary target, the
        masks are (P, S, S) float16, each self-blended fake's mask shape in its crop (peak 1) and -1 everywhere
        for fakes without one; else None. Every draw derives from (seed, epoch, index)."""
        cfg = self.config
        # epoch -1: the pair pool's batches (their own stream)
        rng = np.random.default_rng([cfg.seed, 1, epoch, index] if epoch >= 0 else [cfg.seed, 7, index])
        crops, labels, masks = [], [], []
        size = self.template.size
        want_masks = cfg.region_target == "boundary"
        reals, files = self.data.train_real, self.data.train_fake
        for _ in range(cfg.batch_pairs):
            track = reals[int(rng.integers(len(reals)))]
            i = int(rng.integers(len(track)))
            swaps = self.data.swaps_of(track)
            pair_is_sbi = False
            if files and rng.random() < 0.5:  # a labelled fake frame, with its own conditions
                fake_track = files[int(rng.integers(len(files)))]
                real = self.renderer.render(track, [i], ["real"], rng)[0]
                j = int(rng.integers(len(fake_track)))
                fake = self.renderer.render(fake_track, [j], ["real"], rng)[0]
                pair = [real, fake]
            elif swaps and rng.random() >= cfg.sbi_fraction:
                swap = swaps[int(rng.integers(len(swaps)))]
                pair = self.renderer.render(track, [i], ["real", "swap"], rng, {"swap": swap})
            else:
                pair_is_sbi, shapes = True, []
                pair = self.renderer.render(track, [i], ["real", "sbi"], rng, masks=shapes if want_masks else None)
            crops += [pair[0][0], pair[1][0]]
            labels += [REAL, FAKE]
            if want_masks:
                masks.append(shapes[0] if pair_is_sbi else np.full((size, size), -1.0, np.float32))
        boundary = np.stack(masks).astype(np.float16) if want_masks else None
        return np.stack(crops), np.asarray(labels, np.float32), boundary

    def _lr(self, base: float, step: int, total: int, warmup: int = 50) -> float:
        if step < warmup:
            return base * (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _scorer_loss(self, logits, labels):
        """BCE per frame plus a ranking loss per (real, fake) pair of the same frame.

        The ranking term asks only that a frame's fake score above the frame itself, which no property of the
        person can achieve: with a handful of identities, BCE alone is also lowered by recognising the
        training faces as "real", and a new face then looks fake.
        """
        import torch.nn.functional as F

        cfg = self.config
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        pairs = logits.view(-1, 2)  # batches are (real, fake) pairs in order
        rank = F.softplus(pairs[:, 0] - pairs[:, 1]).mean()
        return cfg.bce_weight * bce + cfg.rank_weight * rank

    @staticmethod
    def _region_loss(region, crops: np.ndarray, masks: np.ndarray | None = None):
        """BCE of the predicted altered-region map against where each fake differs from its real frame (the
        pairs are rendered under one augmentation draw, so outside the manipulation they are equal up to
        noise and compression), pooled to the map's size; zero maps for the real frames. Where ``masks``
        gives a fake's blend mask M (>= 0), its target is the blend's boundary 4M(1-M) instead."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(crops.astype(np.float32)).view(-1, 2, *crops.shape[1:])  # (P, 2, S, S, 3)
        diff = (x[:, 1] - x[:, 0]).abs().mean(dim=3, keepdim=True).permute(0, 3, 1, 2)  # (P, 1, S, S)
        diff = F.adaptive_avg_pool2d(diff, region.shape[-2:])
        target = (diff / REGION_DIFF_LEVELS).clamp(0.0, 1.0)
        if masks is not None:  # Face X-ray's boundary 4M(1-M) where the blend mask M is known
            m = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)  # (P, 1, S, S)
            known = m.flatten(1).min(dim=1).values >= 0
            if known.any():
                edge = F.adaptive_max_pool2d(4.0 * m[known] * (1.0 - m[known]), region.shape[-2:])
                target = target.clone()
                target[known] = edge.clamp(0.0, 1.0)
        targets = torch.stack([torch.zeros_like(target), target], dim=1).view_as(region)
        return F.binary_cross_entropy_with_logits(region, targets)

    def train_scorer_epoch(self, epoch: int) -> dict:
        import torch
        from tqdm import tqdm

        cfg = self.config
        torch.manual_seed(cfg.seed * 1000 + epoch)
        steps = max(cfg.pairs_per_epoch // cfg.batch_pairs, 1)
        total = steps * max(cfg.epochs, 1)
        self.scorer.train()
        losses = []
        bar = tqdm(total=steps, desc=f"scorer {epoch + 1}/{cfg.epochs}", unit="batch", file=sys.stderr,
                   disable=not cfg.progress or None, leave=False)
        # Render the next batch in a thread while this one trains (OpenCV releases the GIL).
        if cfg.pair_pool:
            self._pool()
        with ThreadPoolExecutor(1) as pool, bar:
            future = pool.submit(self._batch, epoch, 0)
            for k in range(steps):
                crops, labels, masks = future.result()
                if k + 1 < steps:
                    future = pool.submit(self._batch, epoch, k + 1)
                for group in self.scorer_opt.param_groups:
                    group["lr"] = self._lr(cfg.lr, epoch * steps + k, total) * group.get("lr_scale", 1.0)
                _, logits, region = self.scorer.forward_train(torch.from_numpy(to_input(crops)))
                loss = self._scorer_loss(logits, torch.from_numpy(labels))
                if region is not None:
                    loss = loss + cfg.scorer_aux_map * self._region_loss(region, crops, masks)
                self.scorer_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.scorer_opt.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return {"loss": float(np.mean(losses))}

    def features(self, crops: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Scorer features and frame probabilities of (N, S, S, 3) crops, in eval mode."""
        import torch

        self.scorer.eval()
        feats, probs = [], []
        with torch.inference_mode():
            for s in range(0, len(crops), batch):
                f, lg = self.scorer(torch.from_numpy(to_input(crops[s:s + batch])))
                feats.append(f.numpy())
                probs.append(sigmoid(lg.numpy()))
        return np.concatenate(feats), np.concatenate(probs)

    def validate_frames(self) -> dict:
        """Frame-level AUC on the held-out identities, overall and per fake kind, and the AUC of the mean frame
        probability over full windows (the head's baseline)."""
        if not self.val.crops:
            return {}
        clip_feats, clip_probs = zip(*(self.features(c) for c in self.val.crops))
        self._val_features = list(clip_feats)
        out = {}
        labels = np.concatenate([[y] * len(p) for y, p in zip(self.val.labels, clip_probs)])
        kinds = np.concatenate([[k] * len(p) for k, p in zip(self.val.kinds, clip_probs)])
        probs = np.concatenate(clip_probs)
        out["frame_auc"] = roc_auc(labels, probs)
        for kind in sorted(set(self.val.kinds) - {"real"}):
            keep = (kinds == "real") | (kinds == kind)
            out[f"frame_auc_{kind}"] = roc_auc(labels[keep], probs[keep])
        wl, ws, _, _ = self._val_windows(lambda seqs, masks: np.array([
            float(np.mean(s[m > 0])) for s, m in zip(seqs, masks)]), use_probs=clip_probs)
        out["window_mean_auc"] = roc_auc(wl, ws)
        probe = [self.features(c)[1] for c in self.probe.crops]
        out["train_frame_auc"] = roc_auc(np.concatenate([[y] * len(p) for y, p in zip(self.probe.labels, probe)]),
                                         np.concatenate(probe))
        for name, label in (("real", REAL), ("fake", FAKE)):
            means = [p.mean() for p, y in zip(clip_probs, self.val.labels) if y == label]
            out[f"{name}_clip_mean_prob"] = float(np.mean(means))
        return out

    def _val_windows(self, score: Callable, *, use_probs=None, stride: int = 5):
        """Every full window (stride 5) of every val clip -> (labels, scores, kinds, index of the window's clip)."""
        w = self.config.window
        labels, kinds, clips, seqs = [], [], [], []
        source = use_probs if use_probs is not None else self._val_features
        for clip, (values, y, kind) in enumerate(zip(source, self.val.labels, self.val.kinds)):
            values = np.asarray(values, np.float32)
            if values.ndim == 1:
                values = values[:, None]
            ends = list(range(min(w, len(values)) - 1, len(values), stride))
            for e in ends:
                seqs.append(values[max(0, e + 1 - w):e + 1])
                labels.append(y)
                kinds.append(kind)
                clips.append(clip)
        feats, masks = pack_windows(seqs, w)
        scores = score(feats[..., 0] if use_probs is not None else feats, masks)
        return np.asarray(labels), np.asarray(scores), np.asarray(kinds), np.asarray(clips)

    # ---- stage 2: temporal head ---------------------------------------------------------------------------

    def _head_sequences(self) -> list[list[tuple[np.ndarray, int]]]:
        """Feature sequences of rendered training clips, grouped by render: a real clip with its self-blended
        and swapped versions under the same conditions (frame-aligned), or one labelled fake clip."""
        from tqdm import tqdm

        cfg = self.config
        groups: list[list[tuple[np.ndarray, int]]] = []
        jobs = []
        for n, track in enumerate(self.data.train_real):
            swaps = {f"swap{j}": s for j, s in enumerate(self.data.swaps_of(track))}
            for r in range(cfg.head_renders):
                jobs.append((n, r, track, ["real", "sbi", *swaps], swaps))
        for n, track in enumerate(self.data.train_fake):
            for r in range(cfg.head_renders):
                jobs.append((len(self.data.train_real) + n, r, track, ["real"], {}))
        for n, r, track, kinds, swaps in tqdm(jobs, desc="head features", unit="clip", file=sys.stderr,
                                              disable=not cfg.progress or None, leave=False):
            rng = np.random.default_rng([cfg.seed, 5, n, r])
            crops = self.renderer.render(track, clip_positions(track, cfg.still_frames), kinds, rng, swaps)
            groups.append([(self.features(c)[0], track.label if kind == "real" else FAKE)
                           for kind, c in zip(kinds, crops)])
        return groups

    def _head_pair(self, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
        """A (real, fake) pair of windows: one render's real clip and one of its fakes through the same frame
        drops and rate changes; a labelled fake clip is paired with a random real clip instead."""
        groups = self._head_train
        group = groups[int(rng.integers(len(groups)))]
        if len(group) > 1:
            real, fake = group[0], group[1 + int(rng.integers(len(group) - 1))]
            idx = self._window_indices(len(real[0]), rng)
            return [real[0][idx], fake[0][idx]], [REAL, FAKE]
        paired = [g for g in groups if len(g) > 1]
        real = paired[int(rng.integers(len(paired)))][0][0]
        return ([real[self._window_indices(len(real), rng)], group[0][0][self._window_indices(len(group[0][0]), rng)]],
                [REAL, group[0][1]])

    def _window_indices(self, length: int, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        return sample_window(length, cfg.window, rng, min_window=cfg.min_window, max_rate=cfg.max_rate,
                             drop_prob=cfg.drop_prob, stall_prob=cfg.stall_prob)

    def train_head_epoch(self, epoch: int) -> dict:
        import torch

        cfg = self.config
        if self._head_train is None:
            self._head_train = self._head_sequences()
            feats = np.concatenate([s for g in self._head_train for s, _ in g])
            if self.stage == "head" and epoch == 0:
                self.head.set_normalisation(feats.mean(0), feats.std(0))
        torch.manual_seed(cfg.seed * 1000 + 500 + epoch)
        rng = np.random.default_rng([cfg.seed, 2, epoch])
        self.head.train()
        self.scorer.eval()
        steps = max(cfg.head_windows_per_epoch // cfg.head_batch, 1)
        total = steps * max(cfg.head_epochs, 1)
        losses = []
        for k in range(steps):
            windows, labels = [], []
            for _ in range(max(cfg.head_batch // 2, 1)):
                w, y = self._head_pair(rng)
                windows += w
                labels += y
            feats, masks = pack_windows(windows, cfg.window)
            for group in self.head_opt.param_groups:
                group["lr"] = self._lr(cfg.head_lr, epoch * steps + k, total, warmup=20)
            x = torch.from_numpy(feats)
            if cfg.head_feature_noise > 0:
                # Noise in standardised units: the scorer is sharper on its own training faces than on new
                # ones, and a head fitted to those clean features would be over-confident elsewhere.
                noise = torch.from_numpy(rng.normal(0, cfg.head_feature_noise, feats.shape).astype(np.float32))
                x = x + noise * self.head.feature_std
            logits = self.head(x, torch.from_numpy(masks))
            # The same loss as the scorer's: per-window BCE plus the within-pair ranking term.
            loss = self._scorer_loss(logits, torch.tensor(labels, dtype=torch.float32))
            self.head_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.head_opt.step()
            losses.append(loss.item())
        return {"loss": float(np.mean(losses))}

    def _head_logits(self, feats: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The head's logits of packed windows, in eval mode."""
        import torch

        self.head.eval()
        with torch.inference_mode():
            return self.head(torch.from_numpy(feats), torch.from_numpy(masks)).numpy()

    def window_logits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, head logits, kinds) of every full validation window (stride 5)."""
        return self._head_windows()[:3]

    def _head_windows(self):
        if self._val_features is None:
            self.validate_frames()
        return self._val_windows(self._head_logits)

    def validate_head(self) -> dict:
        if not self.val.crops:
            return {}
        labels, logits, kinds, clips = self._head_windows()
        scores = sigmoid(logits)
        out = {"window_auc": roc_auc(labels, scores)}
        for kind in sorted(set(kinds.tolist()) - {"real"}):
            keep = (kinds == "real") | (kinds == kind)
            out[f"window_auc_{kind}"] = roc_auc(labels[keep], scores[keep])
        thr = self.config.threshold
        out["real_windows_flagged"] = float(np.mean(scores[labels == REAL] >= thr)) if (labels == REAL).any() else None
        out["fake_windows_flagged"] = float(np.mean(scores[labels == FAKE] >= thr)) if (labels == FAKE).any() else None
        out["clips"] = [{"clip": name, "label": "FAKE" if y else "REAL",
                         "mean_window_prob": round(float(np.mean(scores[clips == i])), 4)}
                        for i, (name, y) in enumerate(zip(self.val.names, self.val.labels))]
        return out

    # ---- the whole run --------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train both stages (from the checkpoint with ``resume``), then export. ``stop_after`` ends the run after
        that many epochs of this call (for tests of resuming)."""
        cfg = self.config
        start = time.perf_counter()
        if resume:
            self.load_checkpoint()
        ran = 0
        if self.stage == "scorer":
            while self.epoch < cfg.epochs:
                if stop_after is not None and ran >= stop_after:
                    return TrainResult(cfg.out, self.history, {}, time.perf_counter() - start)
                t0 = time.perf_counter()
                stats = self.train_scorer_epoch(self.epoch)
                stats.update(self.validate_frames())
                self._log("scorer", self.epoch, cfg.epochs, stats, time.perf_counter() - t0)
                self.epoch += 1
                ran += 1
                self.save_checkpoint()
            self.stage, self.epoch = "head", 0
            if self.head.config.uses_frame_classifier:  # the scorer is final from here on
                self.head.set_frame_classifier(self.scorer.classifier)
            self.save_checkpoint()
        while self.head.config.trainable and self.epoch < cfg.head_epochs:
            if stop_after is not None and ran >= stop_after:
                return TrainResult(cfg.out, self.history, {}, time.perf_counter() - start)
            t0 = time.perf_counter()
            stats = self.train_head_epoch(self.epoch)
            stats.update({k: v for k, v in self.validate_head().items() if k != "clips"})
            self._log("head", self.epoch, cfg.head_epochs, stats, time.perf_counter() - t0)
            self.epoch += 1
            ran += 1
            self.save_checkpoint()
        if self.calibration is not None:
            self.head.set_calibration(self.calibration.scale, self.calibration.bias)
            self.echo(f"calibrated the window logit: {self.calibration.scale:.3f} x logit + "
                      f"{self.calibration.bias:.3f} (fitted on the calibration folds)")
        metrics = {**self.validate_frames(), **self.validate_head()}
        self.export(metrics, time.perf_counter() - start)
        return TrainResult(cfg.out, self.history, metrics, time.perf_counter() - start)

    def _log(self, stage: str, epoch: int, epochs: int, stats: dict, seconds: float) -> None:
        entry = {"stage": stage, "epoch": epoch + 1, "seconds": round(seconds, 1),
                 **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}}
        self.history.append(entry)
        shown = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in entry.items() if k not in ("stage", "epoch", "seconds") and v is not None)
        self.echo(f"{stage} epoch {epoch + 1}/{epochs} ({seconds:.0f} s): {shown}")
        _write_json(self.config.out / "training_log.json",
                    {"config": _jsonable(asdict(self.config)), "data": self.data.summary(), "epochs": self.history})

    # ---- export ---------------------------------------------------------------------------------------------

    def export(self, metrics: dict, seconds: float) -> None:
        """detector.pt, scorer.onnx and head.onnx (parity-checked), detector.json and the training log."""
        import torch

        from swapwatch.engines.deepfake.detector import write_detector
        from swapwatch.export.deepfake import DetectorModels
        from swapwatch.export.onnx_export import describe_parity

        cfg = self.config
        self.scorer.eval()
        self.head.eval()
        meta = {"face_scale": cfg.face_scale, "threshold": cfg.threshold, "seed": cfg.seed}
        calibration = {"calibration": self.calibration.report()} if self.calibration is not None else {}
        info = write_detector(DetectorModels(self.scorer, self.head, meta), cfg.out, extra={
            "data": self.data.summary(), "validation": {k: v for k, v in metrics.items() if k != "clips"},
            **calibration, "train_seconds": round(seconds, 1), "torch": torch.__version__})
        _write_json(cfg.out / "training_log.json", {"config": _jsonable(asdict(cfg)), "data": self.data.summary(),
                                                    "epochs": self.history, "final": metrics, **calibration})
        self.echo(f"parity vs PyTorch: {describe_parity(info.extra)}")
        self.echo(f"wrote {cfg.out / 'detector.pt'}, scorer.onnx, head.onnx, detector.json, training_log.json")


def train(config: TrainConfig, spec: DataSpec, *, resume: bool = False, detector_model: Path | None = None,
          echo: Callable[[str], None] = print, stop_after: int | None = None) -> TrainResult:
    """Collect media, build tracks and fakes, train, export: what ``swapwatch train-detector`` runs."""
    started = time.perf_counter()
    model = detector_model or _yunet_path(spec)
    items = collect_items(spec)
    data = prepare_data(items, config, detector_model=model, echo=echo)
    s = data.summary()
    echo(f"data: {s['train_real']['tracks']} real training tracks ({len(data.train_ids)} identities), "
         f"{s['val_real']['tracks']} validation tracks ({', '.join(data.val_ids) or 'none'}), "
         f"{s['swapped_tracks']} swapped tracks, {s['train_labelled_fake']['tracks']} + "
         f"{s['val_labelled_fake']['tracks']} labelled fake tracks ({time.perf_counter() - started:.0f} s)")
    calibration = None
    if config.calibration_folds:
        from swapwatch.engines.deepfake.calibration import cross_fit

        # Fold models resume from their own checkpoints, so --resume is implied for them.
        calibration = cross_fit(config, data, stem_weights=model, echo=echo)
    trainer = DetectorTrainer(config, data, echo=echo, stem_weights=model)
    trainer.calibration = calibration
    result = trainer.run(resume=resume, stop_after=stop_after)
    result.seconds = time.perf_counter() - started
    return result


def _yunet_path(spec: DataSpec) -> Path:
    """YuNet from the shared assets when present, else through the model registry."""
    local = (spec.assets_dir or default_assets_dir()) / "models" / "face_detection_yunet_2023mar.onnx"
    if local.is_file():
        return local
    from swapwatch.engines.runtime import ensure_model

    return next(iter(ensure_model("yunet-2023mar").values()))


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)

