"""The sliding-window deepfake detector at run time: per-face features, per-track windows, window scores.

    frame + tracked faces -> aligned crops with a margin -> frame scorer (one batch for every face due)
        -> per-track ring buffer of the last W features -> temporal head (one batch for every window due)
        -> probability that the face is fake, per track id

:class:`DeepfakeDetector` implements ``score_faces(frame_bgr, faces, t) -> {track_id: probability | None}``
(``None`` on frames without a new window score), which the live monitor calls every frame. Two strides keep it
cheap: the scorer runs on every ``feature_stride``-th frame of a track (the window then spans W x stride
frames) and the head runs after every ``score_stride``-th new feature (``latest`` gives the last score in
between). :meth:`DeepfakeDetector.score_clip` scores a whole clip offline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from swapwatch.engines.deepfake.thresholds import Thresholds
from swapwatch.engines.faces import CropTemplate, Face, arcface_template, estimate_alignment, warp_face
from swapwatch.engines.runtime import SHIPPED_WEIGHTS, Engine, TensorSpec, fixed_batch, load_onnx_engine, run_batched
from swapwatch.errors import InputError, ModelError
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, ParityReport, Tolerance, check_parity, parity_json

__all__ = [
    "DEFAULT_MODEL_DIR", "ClipScores", "DeepfakeDetector", "DetectorInfo", "TrackScores", "WindowConfig",
    "create_deepfake_detector", "crop_faces", "detector_template", "sigmoid",
]

# The committed default model (trained by `swapwatch train-detector` on the shared assets; see its card).
DEFAULT_MODEL_DIR = SHIPPED_WEIGHTS / "deepfake"  # shipped as package data
INFO_FILE = "detector.json"
SCORER_FILE = "scorer.onnx"
HEAD_FILE = "head.onnx"
CHECKPOINT_FILE = "detector.pt"


def detector_template(size: int = 128, face_scale: float = 0.75,
                      centre: tuple[float, float] = (56.0, 62.0)) -> CropTemplate:
    """The scorer's crop: the ArcFace 5 points shrunk to ``face_scale`` of their 112-px layout and centred
    (on the point halfway between the ArcFace crop's centre and its chin), so the whole face outline, the
    seam around it and some hair and background fit in the crop: a blend boundary is what the scorer looks
    for, and a crop that cuts it off hides it. ``centre`` (in the 112-px layout) is the point that lands in
    the middle of the crop; detectors trained on other crops set it in ``detector.json`` (``crop_centre``)."""
    base = arcface_template(112).points[0]
    pts = (base - np.asarray(centre, np.float64)) * (face_scale * size / 112.0) + size / 2.0
    return CropTemplate(f"deepfake_{size}", size, pts)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + e^-x)) never overflows, for logits of either sign and any size.
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


# The scorer trains on crops warped from regions where the face is at most this much downsampled by the warp
# (see tracks.TrackBuilder); a larger face is first shrunk with area averaging, as in training, because a
# bilinear warp that downsamples more than ~1.5x aliases and makes textures the scorer never saw.
MIN_WARP_SCALE = 0.66


def crop_faces(frame_bgr: np.ndarray, landmarks: Sequence[np.ndarray], template: CropTemplate) -> np.ndarray:
    """(N, S, S, 3) uint8 aligned crops. Edge pixels are replicated (as in training), so a face at the frame's
    border does not get a black band that the scorer never saw."""
    size = template.size
    if not landmarks:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([_crop_one(frame_bgr, estimate_alignment(lmk, template), size) for lmk in landmarks])


def _crop_one(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale >= MIN_WARP_SCALE:
        return warp_face(frame, matrix, size, border_mode=cv2.BORDER_REPLICATE)
    # Shrink the frame region under the crop (area averaging), then warp the rest of the way.
    inv = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inv[:, :2].T + inv[:, 2]
    h, w = frame.shape[:2]
    x0, y0 = (max(int(np.floor(v)) - 2, 0) for v in corners.min(axis=0))
    x1, y1 = min(int(np.ceil(corners[:, 0].max())) + 2, w), min(int(np.ceil(corners[:, 1].max())) + 2, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return warp_face(frame, matrix, size, border_mode=cv2.BORDER_REPLICATE)
    f = scale / MIN_WARP_SCALE  # < 1: the shrink that leaves the warp a scale of MIN_WARP_SCALE
    region = frame[y0:y1, x0:x1]
    small = cv2.resize(region, (max(int(round((x1 - x0) * f)), 1), max(int(round((y1 - y0) * f)), 1)),
                       interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / (x1 - x0), small.shape[0] / (y1 - y0)
    # crop = M . p and p = (q / f) + offset for a point q of the shrunk region.
    m = np.empty((2, 3))
    m[:, 0] = matrix[:, 0] / fx
    m[:, 1] = matrix[:, 1] / fy
    m[:, 2] = matrix[:, :2] @ np.array([x0, y0], np.float64) + matrix[:, 2]
    return warp_face(small, m, size, border_mode=cv2.BORDER_REPLICATE)


def to_input(crops: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 BGR -> the scorer's (N, 3, S, S) float32 0..255."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)


@dataclass(frozen=True)
class DetectorInfo:
    """What the runtime needs to know about a trained detector (``detector.json`` beside the graphs).

    ``threshold``: the probability at or above which a window, track or video is called FAKE;
    ``real_threshold``: the one below which it is called REAL, UNCERTAIN in between (None: the same as
    ``threshold``, no UNCERTAIN band). See :class:`~swapwatch.engines.deepfake.thresholds.Thresholds`."""

    crop_size: int = 128
    face_scale: float = 0.75
    window: int = 20
    feature_dim: int = 128
    threshold: float = 0.5
    real_threshold: float | None = None
    extra: dict = field(default_factory=dict)

    FIELDS = ("crop_size", "face_scale", "window", "feature_dim", "threshold", "real_threshold")

    def __post_init__(self) -> None:
        self.thresholds  # noqa: B018 -- raises ValueError for a pair that is not 0 <= real <= fake <= 1

    @classmethod
    def read(cls, path: Path) -> DetectorInfo:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from exc
        known = {k: data[k] for k in cls.FIELDS if k in data}
        try:
            return cls(**known, extra={k: v for k, v in data.items() if k not in known})
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{path}: {exc}") from None

    def write(self, path: Path) -> None:
        """``detector.json`` at ``path``, written atomically (a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)

    def to_json(self) -> dict:
        out = {"crop_size": self.crop_size, "face_scale": self.face_scale, "window": self.window,
               "feature_dim": self.feature_dim, "threshold": self.threshold}
        if self.real_threshold is not None:  # a model with one threshold keeps its file as it was
            out["real_threshold"] = self.real_threshold
        return out | self.extra

    @property
    def thresholds(self) -> Thresholds:
        """The model's FAKE and REAL thresholds (equal without ``real_threshold``)."""
        real = self.threshold if self.real_threshold is None else self.real_threshold
        return Thresholds(fake=self.threshold, real=real)

    @property
    def template(self) -> CropTemplate:
        centre = self.extra.get("crop_centre")
        if centre is None:
            return detector_template(self.crop_size, self.face_scale)
        return detector_template(self.crop_size, self.face_scale, (float(centre[0]), float(centre[1])))


@dataclass(frozen=True)
class WindowConfig:
    """How the live detector windows each track.

    ``min_window``: features needed before a track gets a score (default: the full window); shorter windows
    are masked. ``feature_stride``: score every k-th frame of a track. ``score_stride``: run the head after
    every s-th new feature. ``max_missed``: calls without the track before its buffer is dropped.
    ``max_batch``: most crops per scorer call (bounds latency and memory with many faces).
    """

    min_window: int | None = None
    feature_stride: int = 1
    score_stride: int = 1
    max_missed: int = 30
    max_batch: int = 32

    def __post_init__(self) -> None:
        if self.feature_stride < 1 or self.score_stride < 1 or self.max_missed < 0 or self.max_batch < 1:
            raise ValueError("strides and max_batch must be >= 1 and max_missed >= 0")
        if self.min_window is not None and self.min_window < 1:
            raise ValueError("min_window must be >= 1")


class _TrackBuffer:
    """Ring buffer of one track's last W features and its latest score."""

    def __init__(self, window: int, dim: int) -> None:
        self.data = np.zeros((window, dim), np.float32)
        self.count = 0  # features ever pushed
        self.frames = 0  # frames seen (scored or skipped by the feature stride)
        self.since_score = 0  # features pushed since the head last ran
        self.missed = 0
        self.last_prob: float | None = None
        self.last_frame_prob: float | None = None

    def push(self, feature: np.ndarray) -> None:
        self.data[self.count % len(self.data)] = feature
        self.count += 1
        self.since_score += 1

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, F) features oldest first, right-aligned (padding first), and the (W,) mask."""
        w = len(self.data)
        n = min(self.count, w)
        feats = np.zeros_like(self.data)
        mask = np.zeros(w, np.float32)
        if n:
            order = [(self.count - n + i) % w for i in range(n)]
            feats[w - n:] = self.data[order]
            mask[w - n:] = 1.0
        return feats, mask


@dataclass
class TrackScores:
    """One track through a clip: per scored frame its time and frame probability, per window its end time
    and probability."""

    track_id: int
    frame_times: list[float] = field(default_factory=list)
    frame_probs: list[float] = field(default_factory=list)
    window_times: list[float] = field(default_factory=list)
    window_probs: list[float] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """The track's probability of being fake: the mean over its windows (None without a window)."""
        return float(np.mean(self.window_probs)) if self.window_probs else None


@dataclass
class ClipScores:
    """Every track of a clip and the thresholds its verdicts use."""

    tracks: dict[int, TrackScores]
    thresholds: Thresholds

    @property
    def threshold(self) -> float:
        """The FAKE threshold."""
        return self.thresholds.fake

    @property
    def score(self) -> float | None:
        """The clip's probability of being fake: its most suspicious track (one swapped face makes it fake),
        among tracks seen on at least a quarter as many frames as the longest (a detector's brief false
        positive must not decide a video); None when no face was seen."""
        scored = [t for t in self.tracks.values() if t.score is not None]
        if not scored:
            return None
        longest = max(len(t.frame_probs) for t in scored)
        return max(t.score for t in scored if 4 * len(t.frame_probs) >= longest)

    @property
    def verdict(self) -> str:
        """REAL, UNCERTAIN or FAKE by :attr:`score`; NO_FACES without one."""
        return self.thresholds.verdict(self.score)

    def track_verdict(self, track_id: int) -> str | None:
        """One track's REAL, UNCERTAIN or FAKE (None: the track has no window score)."""
        score = self.tracks[track_id].score
        return None if score is None else self.thresholds.verdict(score)


class DeepfakeDetector:
    """Frame scorer + temporal head behind the engine layer, with per-track sliding windows."""

    def __init__(self, scorer: Engine, head: Engine, info: DetectorInfo, config: WindowConfig = WindowConfig()):
        self.scorer = scorer
        self.head = head
        self.info = info
        self.config = config
        self.template = info.template
        self.window = info.window
        self.min_window = min(config.min_window or info.window, info.window)
        self._scorer_batch = fixed_batch(scorer.inputs[0])
        self._head_batch = fixed_batch(head.inputs[0])
        self._check_specs()
        self._tracks: dict[int, _TrackBuffer] = {}

    # ---- loading ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, *, backend: str = "auto", device: str = "auto",
             config: WindowConfig = WindowConfig()) -> DeepfakeDetector:
        """Load a detector folder (``None`` or ``"default"``: the committed default model).

        ONNX backends (``auto``, ``onnxruntime``, ``tensorrt``) read ``scorer.onnx`` and ``head.onnx``;
        ``torch`` reads ``detector.pt`` (a folder or the .pt file itself) and runs it eagerly.
        """
        folder = DEFAULT_MODEL_DIR if path in (None, "default") else Path(path)
        if folder.is_file() and folder.suffix == ".pt":
            folder, pt = folder.parent, folder
        else:
            pt = folder / CHECKPOINT_FILE
        if not folder.is_dir():
            raise ModelError(f"deepfake detector folder not found: {folder}")
        info_path = folder / INFO_FILE
        info = DetectorInfo.read(info_path) if info_path.is_file() else None
        if backend == "torch" and info is not None and info.extra.get("graphs_only"):
            raise ModelError(f"{folder} holds ONNX graphs only (no {CHECKPOINT_FILE}): use backend onnxruntime "
                             "or tensorrt (a DeepfakeBench checkpoint runs in PyTorch through "
                             "swapwatch.export.deepfakebench.load_torch_detector)")
        if backend == "torch":
            scorer, head, info_pt = _torch_engines(pt, device)
            return cls(scorer, head, info or info_pt, config)
        if info is None:
            raise ModelError(f"{info_path} missing: not a detector folder")
        onnx_dir = folder
        if not ((folder / SCORER_FILE).is_file() and (folder / HEAD_FILE).is_file()):
            onnx_dir = _exported_from_checkpoint(pt)
        scorer = load_onnx_engine(onnx_dir / SCORER_FILE, backend, device=device)
        head = load_onnx_engine(onnx_dir / HEAD_FILE, backend, device=device)
        return cls(scorer, head, info, config)

    def fork(self, config: WindowConfig | None = None) -> DeepfakeDetector:
        """A detector with the same engines and empty track buffers: one per live session, so sessions share
        the loaded models but never each other's windows."""
        return type(self)(self.scorer, self.head, self.info, config or self.config)

    def _check_specs(self) -> None:
        names = [s.name for s in self.scorer.inputs]
        if names != ["crops"] or {s.name for s in self.scorer.outputs} != {"features", "logits"}:
            raise ModelError(f"not a swapwatch frame scorer: inputs {names}")
        if [s.name for s in self.head.inputs] != ["features", "mask"]:
            raise ModelError("not a swapwatch temporal head (inputs must be features, mask)")
        w = self.head.inputs[0].shape[1] if len(self.head.inputs[0].shape) > 1 else None
        if isinstance(w, int) and w != self.window:
            raise ModelError(f"head window {w} does not match detector.json's {self.window}")

    # ---- batched model calls ------------------------------------------------------------------------

    def frame_features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 crops -> features (N, F) float32 and frame logits (N,), in chunks of max_batch."""
        if len(crops) == 0:
            return np.zeros((0, self.info.feature_dim), np.float32), np.zeros(0, np.float32)
        feats, logits = [], []
        step = self.config.max_batch
        for start in range(0, len(crops), step):
            out = run_batched(self.scorer, {"crops": to_input(crops[start:start + step])}, self._scorer_batch)
            feats.append(np.asarray(out["features"], np.float32))
            logits.append(np.asarray(out["logits"], np.float32).reshape(-1))
        return np.concatenate(feats), np.concatenate(logits)

    def window_logits(self, features: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Windows (N, W, F) and masks (N, W) -> logits (N,)."""
        if len(features) == 0:
            return np.zeros(0, np.float32)
        out = run_batched(self.head, {"features": np.ascontiguousarray(features, np.float32),
                                      "mask": np.ascontiguousarray(masks, np.float32)}, self._head_batch)
        return np.asarray(out["logits"], np.float32).reshape(-1)

    # ---- live: one call per frame ---------------------------------------------------------------------

    def score_faces(self, frame_bgr: np.ndarray, faces: Sequence[Face], t: float) -> dict[int, float | None]:
        """Probability of being fake per track id, for the tracks whose window was scored on this frame; None
        for the others (window shorter than ``min_window``, or a frame skipped by the strides), so that an
        alert policy counts each window once. Faces without a ``track_id`` are ignored (windows are per track).
        """
        cfg = self.config
        due: list[tuple[int, np.ndarray]] = []
        present: list[int] = []
        for face in faces:
            if face.track_id is None:
                continue
            tid = int(face.track_id)
            if tid in present:
                raise InputError(f"track {tid} appears twice in one frame")
            present.append(tid)
            buf = self._tracks.get(tid)
            if buf is None:
                buf = self._tracks[tid] = _TrackBuffer(self.window, self.info.feature_dim)
            buf.missed = 0
            if buf.frames % cfg.feature_stride == 0:
                due.append((tid, face.landmarks))
            buf.frames += 1
        fresh: dict[int, float] = {}
        if due:
            feats, logits = self.frame_features(crop_faces(frame_bgr, [lmk for _, lmk in due], self.template))
            heads = []
            for (tid, _), feat, logit in zip(due, feats, logits):
                buf = self._tracks[tid]
                buf.push(feat)
                buf.last_frame_prob = float(sigmoid(logit))
                ready = min(buf.count, self.window) >= self.min_window
                if ready and (buf.last_prob is None or buf.since_score >= cfg.score_stride):
                    heads.append(tid)
            if heads:
                windows = [self._tracks[tid].window() for tid in heads]
                probs = sigmoid(self.window_logits(np.stack([w[0] for w in windows]),
                                                   np.stack([w[1] for w in windows])))
                for tid, p in zip(heads, probs):
                    self._tracks[tid].last_prob = fresh[tid] = float(p)
                    self._tracks[tid].since_score = 0
        self._age(set(present))
        return {tid: fresh.get(tid) for tid in present}

    def latest(self, track_id: int) -> float | None:
        """A track's most recent window probability (also on frames where the head did not run)."""
        buf = self._tracks.get(int(track_id))
        return None if buf is None else buf.last_prob

    def _age(self, present: set[int]) -> None:
        for tid in list(self._tracks):
            if tid not in present:
                buf = self._tracks[tid]
                buf.missed += 1
                if buf.missed > self.config.max_missed:
                    del self._tracks[tid]

    def frame_probability(self, track_id: int) -> float | None:
        """The latest single-frame probability of a track (no window), for overlays and debugging."""
        buf = self._tracks.get(track_id)
        return None if buf is None else buf.last_frame_prob

    def reset_track(self, track_id: int) -> None:
        """Forget a track's window (call on a track change: a new person must not inherit old frames)."""
        self._tracks.pop(int(track_id), None)

    def reset(self) -> None:
        self._tracks.clear()

    # ---- offline ----------------------------------------------------------------------------------------

    def score_clip(self, frames_with_faces: Iterable[tuple[np.ndarray, Sequence[Face], float]], *,
                   window_stride: int | None = None, min_window: int | None = None) -> ClipScores:
        """Score a clip given ``(frame_bgr, tracked faces, t)`` per frame.

        Every face of every frame is scored (crops are batched across frames); then for each track a window
        ends at every ``window_stride``-th feature (default: the live ``score_stride``), masked while
        shorter than W, from ``min_window`` features on (default 1 offline, so a short clip or a photo still
        gets a score). Stateless: the live buffers are not touched.
        """
        stride = window_stride or self.config.score_stride
        least = min(min_window or 1, self.window)
        pending: list[tuple[int, float, np.ndarray]] = []
        feats_by_track: dict[int, list[tuple[float, np.ndarray, float]]] = {}

        def flush() -> None:
            if not pending:
                return
            crops = np.stack([c for _, _, c in pending])
            feats, logits = self.frame_features(crops)
            for (tid, t, _), f, lg in zip(pending, feats, logits):
                feats_by_track.setdefault(tid, []).append((t, f, float(sigmoid(lg))))
            pending.clear()

        for frame, faces, t in frames_with_faces:
            if not faces:
                continue
            tids = []
            for i, face in enumerate(faces):
                tids.append(int(face.track_id) if face.track_id is not None else -(i + 1))
            crops = crop_faces(frame, [f.landmarks for f in faces], self.template)
            pending.extend((tid, float(t), c) for tid, c in zip(tids, crops))
            if len(pending) >= self.config.max_batch:
                flush()
        flush()
        tracks: dict[int, TrackScores] = {}
        for tid, items in feats_by_track.items():
            ts = tracks[tid] = TrackScores(tid, [t for t, _, _ in items], [p for _, _, p in items])
            feats = np.stack([f for _, f, _ in items])
            wins, masks, ends = [], [], []
            last = len(items) - 1
            # Windows end at the first index with `least` features, then every `stride`, and at the last one.
            for end in (e for e in range(least - 1, len(items)) if (e - least + 1) % stride == 0 or e == last):
                n = min(end + 1, self.window)
                w = np.zeros((self.window, feats.shape[1]), np.float32)
                m = np.zeros(self.window, np.float32)
                w[self.window - n:] = feats[end + 1 - n:end + 1]
                m[self.window - n:] = 1.0
                wins.append(w)
                masks.append(m)
                ends.append(items[end][0])
            if wins:
                probs = sigmoid(self.window_logits(np.stack(wins), np.stack(masks)))
                ts.window_times, ts.window_probs = ends, [float(p) for p in probs]
        return ClipScores(tracks, self.info.thresholds)


def create_deepfake_detector(config) -> DeepfakeDetector | None:
    """The live detector a :class:`swapwatch.config.DeepfakeConfig` asks for (None when ``model`` is None)."""
    if config.model is None:
        return None
    return DeepfakeDetector.load(config.model, backend=config.backend, device=config.device,
                                 config=WindowConfig(feature_stride=config.feature_stride,
                                                     score_stride=config.score_stride))


def _torch_engines(pt: Path, device: str) -> tuple[Engine, Engine, DetectorInfo]:
    from swapwatch.engines.runtime import TorchEngine
    from swapwatch.export.deepfake import load_checkpoint

    models = load_checkpoint(pt)
    s, h = models.scorer.config, models.head.config
    scorer = TorchEngine(models.scorer, [TensorSpec("crops", ("batch", 3, s.size, s.size), np.dtype(np.float32))],
                         ["features", "logits"], device=device)
    head = TorchEngine(models.head, [TensorSpec("features", ("batch", h.window, h.feature_dim), np.dtype(np.float32)),
                                     TensorSpec("mask", ("batch", h.window), np.dtype(np.float32))],
                       ["logits"], device=device)
    meta = models.meta
    info = DetectorInfo(crop_size=s.size, face_scale=float(meta.get("face_scale", 0.75)), window=h.window,
                        feature_dim=h.feature_dim, threshold=float(meta.get("threshold", 0.5)),
                        real_threshold=_optional_float(meta.get("real_threshold")))
    return scorer, head, info


def score_video(path: str | Path, detector: DeepfakeDetector, face_detector, *, detect_every: int = 1,
                max_frames: int | None = None, window_stride: int | None = None,
                progress: Callable[[int], None] | None = None,
                on_frame: Callable[[np.ndarray, float], None] | None = None) -> ClipScores:
    """Detect and track faces through a video file (YuNet or any FaceDetector) and score every track.
    ``progress(n)`` is called after each of the first n frames has been decoded and tracked; ``on_frame(image,
    t)`` sees every decoded frame (BGR) first, for whole-frame evidence such as the watermark."""
    from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker
    from swapwatch.engines.runtime import iter_video

    # The same tracker settings as the live pipeline (smoothed landmarks), so crops match what serve sees.
    tracker = KeyframeTracker(face_detector, FaceTracker(smoothing=FACE_SMOOTHING), k=detect_every)

    def frames():
        for frame in iter_video(path):
            if max_frames is not None and frame.index >= max_frames:
                break
            if on_frame is not None:
                on_frame(frame.image, frame.time)
            faces = tracker.process(frame.image, frame.time)
            if progress is not None:
                progress(frame.index + 1)
            yield frame.image, faces, frame.time

    return detector.score_clip(frames(), window_stride=window_stride)


def export_graphs(models, folder: Path, *,
                  tolerance: Tolerance = DETECTOR_TOLERANCE) -> dict[str, ParityReport]:
    """``scorer.onnx`` and ``head.onnx`` in ``folder``, each checked against PyTorch (see :class:`Tolerance`:
    the scorer's features by cosine too, logits relative to their scale); graph name -> its parity report."""
    from swapwatch.export.deepfake import export_head, export_scorer, head_parity_inputs, scorer_parity_inputs

    folder = Path(folder)
    scorer, head = models.scorer.eval(), models.head.eval()
    parity = {}
    for name, model, exporter, inputs in (
            ("scorer", scorer, export_scorer, scorer_parity_inputs(scorer.config)),
            ("head", head, export_head, head_parity_inputs(head.config))):
        path = exporter(model, folder / (SCORER_FILE if name == "scorer" else HEAD_FILE))
        parity[name] = check_parity(model, path, inputs, tolerance=tolerance)
    return parity


def write_detector(models, folder: str | Path, *, extra: dict | None = None,
                   tolerance: Tolerance = DETECTOR_TOLERANCE) -> DetectorInfo:
    """A complete detector folder: ``detector.pt`` (the source of truth), ``scorer.onnx`` and ``head.onnx``
    (parity-checked) and ``detector.json``; returns its :class:`DetectorInfo`."""
    import hashlib

    from swapwatch.export.deepfake import save_checkpoint

    folder = Path(folder)
    save_checkpoint(models, folder / CHECKPOINT_FILE)
    parity = export_graphs(models, folder, tolerance=tolerance)
    meta = models.meta
    sha = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
           for name in (CHECKPOINT_FILE, SCORER_FILE, HEAD_FILE)}
    info = DetectorInfo(crop_size=models.scorer.config.size, face_scale=float(meta.get("face_scale", 0.75)),
                        window=models.head.config.window, feature_dim=models.scorer.config.feature_dim,
                        threshold=float(meta.get("threshold", 0.5)),
                        real_threshold=_optional_float(meta.get("real_threshold")),
                        extra={"format": "swapwatch-deepfake-v1",
                               "scorer": {"widths": list(models.scorer.config.widths),
                                          "blocks": list(models.scorer.config.blocks)},
                               **parity_json(parity), "sha256": sha, **(extra or {})})
    info.write(folder / INFO_FILE)
    return info


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def _exported_from_checkpoint(pt: Path) -> Path:
    """ONNX graphs for a folder that ships only ``detector.pt`` (the repository ignores ``*.onnx``): exported
    once, parity-checked, into the model cache under the checkpoint's hash."""
    import hashlib

    from swapwatch.engines.runtime import models_home
    from swapwatch.export.deepfake import load_checkpoint

    if not pt.is_file():
        raise ModelError(f"{pt.parent}: neither {SCORER_FILE}/{HEAD_FILE} nor {CHECKPOINT_FILE} found")
    digest = hashlib.sha256(pt.read_bytes()).hexdigest()[:16]
    out = models_home() / "models" / f"deepfake-{digest}"
    if not ((out / SCORER_FILE).is_file() and (out / HEAD_FILE).is_file()):
        export_graphs(load_checkpoint(pt), out)
    return out
