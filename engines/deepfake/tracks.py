"""Face tracks: the faces a run trains on, cut once from the media and swapped.

:class:`TrackBuilder` turns each :class:`~swapwatch.engines.deepfake.datasets.MediaItem` into face tracks
(:class:`FaceTrack`: YuNet + the keyframe tracker + a native-resolution region around the face, cached on
disk). :class:`SwapFaker` swaps another identity (or the track's own face) onto a track: swapwatch's own fakes,
from the weight-free ``classic`` swapper and, where installed, learned ones (:func:`make_swappers`).
:func:`prepare_data` gathers a run's tracks, split by identity, with their swaps (:class:`TrainingData`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from swapwatch.engines.deepfake.datasets import FAKE, REAL, MediaItem, split_identities
from swapwatch.engines.deepfake.detector import detector_template
from swapwatch.engines.deepfake.train_config import TrainConfig
from swapwatch.engines.faces import Face, align_face, estimate_alignment
from swapwatch.errors import InputError

log = logging.getLogger(__name__)

TRACK_CACHE_VERSION = 1


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
# swapwatch's own swaps as fakes
# --------------------------------------------------------------------------------------------------


class SwapFaker:
    """Swaps a source identity onto every frame of a track, in the track's own regions."""

    def __init__(self, swapper, *, keep_mouth: bool | None = None, self_only: bool = False) -> None:
        from swapwatch.engines.swap import FeatherMask

        self.swapper = swapper
        # A swapper that can only re-render a face from its own person (the autoencoder) is given no other
        # person's face: what it made of one would be noise, not a swap.
        self.self_only = self_only
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


def make_swappers(names: Sequence[str], *, tracks: Sequence[FaceTrack] = (), cache_dir: Path | None = None,
                  seed: int = 0, autoencoder_steps: int = 600,
                  echo: Callable[[str], None] = log.info) -> list[SwapFaker]:
    """Classic variants always; ``autoencoder`` trained here on ``tracks`` (the training people's real faces,
    cached in ``cache_dir``); other learned swappers only when their weights are installed (skipped otherwise)."""
    from swapwatch.engines.swap import ClassicSwapper

    fakers = []
    for name in names:
        if name == "classic":
            # Two variants: the target's own mouth kept or not, full or half lighting transfer.
            fakers += [SwapFaker(ClassicSwapper(keep_mouth=True, shading=1.0)),
                       SwapFaker(ClassicSwapper(keep_mouth=False, shading=0.5))]
            continue
        if name == "autoencoder":
            from swapwatch.engines.deepfake.aefakes import AutoencoderConfig, AutoencoderSwapper, train_autoencoder

            if not tracks:
                raise InputError("the autoencoder swapper is trained on the real training tracks: none given")
            ae = AutoencoderConfig(seed=seed, steps=autoencoder_steps)
            net = train_autoencoder(tracks, ae, cache_dir=cache_dir, echo=echo)
            fakers.append(SwapFaker(AutoencoderSwapper(net, ae.size), self_only=True))
            continue
        from swapwatch.engines.swap import create_swapper, installed

        if not installed(name):
            log.warning("swapper %s is not installed; its fakes are skipped", name)
            continue
        fakers.append(SwapFaker(create_swapper(name, backend="onnxruntime", device="cpu").swapper))
    if fakers and all(f.self_only for f in fakers):
        raise InputError(f"--swappers {','.join(names)}: the autoencoder only re-renders a person's own face; "
                         "add a swapper for other people's faces beside it (e.g. classic,autoencoder)")
    return fakers


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
        fakers = make_swappers(config.swappers, tracks=data.train_real, cache_dir=cache, seed=config.seed,
                               autoencoder_steps=config.autoencoder_steps, echo=echo)
        swappers = [f for f in fakers if not f.self_only]
        renderers = [f for f in fakers if f.self_only]  # each track's own face, re-rendered
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
                own = _self_source(target)
                if config.self_swaps:
                    sources.append(own)
                data.swaps[id(target)] = [swappers[(ti + k) % len(swappers)](target, src)
                                          for k, src in enumerate(sources)]
                data.swaps[id(target)] += [f(target, own) for f in renderers]
    return data
