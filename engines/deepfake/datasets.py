"""Training media: which files a run trains on, with their labels and whose face each shows.

:class:`MediaItem` lists come from the shared assets (plus face images shipped inside installed packages),
user folders (``real``/``fake``), FaceForensics++ and DFDC layouts; a :class:`DataSpec` says which
(:func:`collect_items`). Items are split by identity (:func:`split_identities`), so no face seen in training is
used to validate.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from swapwatch.engines.runtime import IMAGE_SUFFIXES
from swapwatch.errors import InputError

log = logging.getLogger(__name__)

REAL, FAKE = 0, 1
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".gif", ".m4v", ".flv", ".wmv"}
LAYOUTS = ("folders", "ffpp", "dfdc")

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
