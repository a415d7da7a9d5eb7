"""Video face tracking: stable ids across frames, landmark smoothing, and detection every k frames.

- :class:`OneEuroFilter` smooths a noisy signal with a cutoff that rises with its speed (little jitter at
  rest, little lag in motion).
- :class:`FaceTracker` gives each detection a ``track_id`` by optimal assignment on box overlap and
  landmark distance, with constant-velocity prediction so that faces crossing each other keep their ids.
- :class:`KeyframeTracker` runs the detector on every k-th frame only and carries each face's 5 landmarks
  through the frames in between with pyramidal Lucas-Kanade optical flow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from swapwatch.engines.faces.align import transform_points, umeyama_similarity
from swapwatch.engines.faces.face import Face, FaceDetector
from swapwatch.engines.faces.nms import box_iou

__all__ = [
    "FACE_SMOOTHING",
    "FaceTracker", "KeyframeTracker", "OneEuroConfig", "OneEuroFilter", "TrackState"]


# --------------------------------------------------------------------------------------------------
# One Euro filter
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneEuroConfig:
    """Parameters of a :class:`OneEuroFilter`: cutoffs in Hz, ``beta`` in Hz per (signal unit / second)."""

    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0


# Tuned for FaceTracker, which filters in face-diagonal units: at 25 fps a static landmark's jitter variance
# drops about 7x, and a brisk 1 diagonal/s head move lags by about half a frame.
FACE_SMOOTHING = OneEuroConfig(min_cutoff=1.0, beta=5.0, d_cutoff=1.0)


def _smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    # Exponential smoothing factor of a first-order low-pass filter with this cutoff, sampled every dt.
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The 1€ filter (G. Casiez, N. Roussel, D. Vogel, CHI 2012), element-wise on arrays of any shape.

    Each element is low-passed with cutoff ``min_cutoff + beta * |speed|``, where the speed is itself
    low-passed at ``d_cutoff``. Times are in seconds; the first sample passes through unchanged.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("cutoffs must be positive and beta non-negative")
        self.config = OneEuroConfig(float(min_cutoff), float(beta), float(d_cutoff))
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @classmethod
    def from_config(cls, config: OneEuroConfig) -> OneEuroFilter:
        return cls(config.min_cutoff, config.beta, config.d_cutoff)

    def reset(self) -> None:
        self._x = self._dx = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"signal shape changed from {self._x.shape} to {x.shape}; reset() first")
        dt = float(t) - self._t
        if dt <= 0:
            # A repeated or out-of-order timestamp carries no timing information: keep the estimate.
            return self._x.copy()
        cfg = self.config
        dx = (x - self._x) / dt
        a_d = _smoothing_factor(cfg.d_cutoff, dt)
        self._dx = self._dx + a_d * (dx - self._dx)
        a = _smoothing_factor(cfg.min_cutoff + cfg.beta * np.abs(self._dx), dt)
        self._x = self._x + a * (x - self._x)
        self._t = float(t)
        return self._x.copy()


# --------------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------------


def _box_diagonal(box: np.ndarray) -> float:
    return float(max(math.hypot(box[2] - box[0], box[3] - box[1]), 1e-6))


@dataclass(frozen=True)
class TrackState:
    """A read-only snapshot of a live track: its last measured (unsmoothed) box and landmarks."""

    track_id: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    missed: int
    hits: int
    t: float


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # last raw measurement, float64 (4,)
    landmarks: np.ndarray  # last raw measurement, float64 (5, 2)
    score: float
    t: float
    scale: float  # box diagonal at birth: the smoothing works in face-size units
    smoother: OneEuroFilter | None
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((7, 2)))  # [landmarks; box corners] px/s
    missed: int = 0
    hits: int = 1

    def points(self) -> np.ndarray:
        return np.concatenate([self.landmarks, self.box.reshape(2, 2)])

    def predicted(self, t: float) -> np.ndarray:
        return self.points() + self.velocity * max(t - self.t, 0.0)


class FaceTracker:
    """Assigns stable ``track_id``s to per-frame detections and optionally smooths their geometry.

    The cost of giving detection j to track i is ``iou_weight * (1 - IoU) + landmark_weight * d``, where ``d``
    is the mean distance between the detection's landmarks and the track's (predicted) landmarks divided by
    the track's box diagonal. Pairs with ``d > max_landmark_distance`` or ``IoU < min_iou`` are never
    matched; the rest are matched by the Hungarian algorithm. Tracks are compared at their constant-velocity
    prediction for this frame's time (``predict_motion``), which keeps faces that cross apart. Unmatched detections start new tracks with
    fresh ids (monotonic, never reused); a track survives ``max_missed`` frames without a match.

    With ``smoothing`` set, each track's landmarks and box corners go through a :class:`OneEuroFilter` in
    units of the track's face diagonal (so ``beta`` does not depend on the face's size in pixels); the
    raw measurements are kept in ``Face.extra["raw_landmarks"]`` and ``["raw_box"]``.
    """

    def __init__(
        self,
        *,
        max_missed: int = 10,
        iou_weight: float = 1.0,
        landmark_weight: float = 1.0,
        max_landmark_distance: float = 0.5,
        min_iou: float = 0.0,
        predict_motion: bool = True,
        velocity_smoothing: float = 0.5,
        smoothing: OneEuroConfig | None = None,
    ) -> None:
        if max_missed < 0:
            raise ValueError("max_missed must be >= 0")
        if not 0.0 < velocity_smoothing <= 1.0:
            raise ValueError("velocity_smoothing must be in (0, 1]")
        self.max_missed = int(max_missed)
        self.iou_weight = float(iou_weight)
        self.landmark_weight = float(landmark_weight)
        self.max_landmark_distance = float(max_landmark_distance)
        self.min_iou = float(min_iou)
        self.predict_motion = bool(predict_motion)
        self.velocity_smoothing = float(velocity_smoothing)
        self.smoothing = smoothing
        self._tracks: dict[int, _Track] = {}
        self._next_id = 0

    # ---- public API ------------------------------------------------------------------------------

    @property
    def tracks(self) -> tuple[TrackState, ...]:
        return tuple(
            TrackState(tr.track_id, tr.box.copy(), tr.landmarks.copy(), tr.score, tr.missed, tr.hits, tr.t)
            for tr in self._tracks.values()
        )

    def reset(self) -> None:
        """Forget every track (ids keep increasing: an id is never handed out twice)."""
        self._tracks.clear()

    def update(self, faces: Sequence[Face], t: float) -> list[Face]:
        """Match this frame's detections to tracks; returns copies in input order with ``track_id`` set."""
        faces = list(faces)
        tracks = list(self._tracks.values())
        pairs = self._associate(tracks, faces, t)
        out: list[Face | None] = [None] * len(faces)
        matched_tracks = set()
        for ti, fi in pairs:
            out[fi] = self._measure(tracks[ti], faces[fi], t)
            matched_tracks.add(tracks[ti].track_id)
        for fi, face in enumerate(faces):
            if out[fi] is None:
                track = self._new_track(face, t)
                out[fi] = self._measure(track, face, t)
                matched_tracks.add(track.track_id)
        self._age(matched_tracks)
        return [f for f in out if f is not None]

    def update_known(self, faces: Sequence[Face], t: float) -> list[Face]:
        """Update tracks whose ids the faces already carry (e.g. moved by optical flow), no association.

        Live tracks absent from ``faces`` count a missed frame.
        """
        out = []
        seen = set()
        for face in faces:
            track = self._tracks.get(face.track_id) if face.track_id is not None else None
            if track is None or face.track_id in seen:
                raise ValueError(f"no live track {face.track_id!r} (or given twice)")
            seen.add(track.track_id)
            out.append(self._measure(track, face, t))
        self._age(seen)
        return out

    # ---- internals -------------------------------------------------------------------------------

    def _associate(self, tracks: list[_Track], faces: list[Face], t: float) -> list[tuple[int, int]]:
        if not tracks or not faces:
            return []
        pred = np.stack([tr.predicted(t) if self.predict_motion else tr.points() for tr in tracks])
        pred_lmk, pred_box = pred[:, :5], pred[:, 5:].reshape(-1, 4)
        det_lmk = np.stack([f.landmarks for f in faces]).astype(np.float64)
        det_box = np.stack([f.box for f in faces]).astype(np.float64)
        iou = box_iou(pred_box, det_box).astype(np.float64)
        diag = np.array([_box_diagonal(b) for b in pred_box])
        dist = np.linalg.norm(pred_lmk[:, None] - det_lmk[None], axis=-1).mean(axis=-1) / diag[:, None]
        cost = self.iou_weight * (1.0 - iou) + self.landmark_weight * dist
        allowed = (dist <= self.max_landmark_distance) & (iou >= self.min_iou)
        big = 1e6  # finite, so that linear_sum_assignment always has a feasible solution
        rows, cols = linear_sum_assignment(np.where(allowed, cost, big))
        return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]

    def _new_track(self, face: Face, t: float) -> _Track:
        track_id = self._next_id
        self._next_id += 1
        smoother = OneEuroFilter.from_config(self.smoothing) if self.smoothing is not None else None
        track = _Track(
            track_id=track_id,
            box=face.box.astype(np.float64),
            landmarks=face.landmarks.astype(np.float64),
            score=face.score,
            t=float(t),
            scale=_box_diagonal(face.box),
            smoother=smoother,
            hits=0,  # _measure counts the first hit
        )
        self._tracks[track_id] = track
        return track

    def _measure(self, track: _Track, face: Face, t: float) -> Face:
        points = np.concatenate([face.landmarks, face.box.reshape(2, 2)]).astype(np.float64)
        dt = float(t) - track.t
        if track.hits > 0 and dt > 0:
            inst = (points - track.points()) / dt
            # The first velocity is the raw difference; later ones are exponentially averaged.
            a = 1.0 if track.hits == 1 else self.velocity_smoothing
            track.velocity = track.velocity + a * (inst - track.velocity)
        track.landmarks, track.box = points[:5].copy(), points[5:].reshape(4).copy()
        track.score, track.t = face.score, float(t)
        track.missed = 0
        track.hits += 1
        smoothed = points
        if track.smoother is not None:
            smoothed = track.smoother(points / track.scale, t) * track.scale
        extra = dict(face.extra)
        if track.smoother is not None:
            extra["raw_landmarks"] = face.landmarks.copy()
            extra["raw_box"] = face.box.copy()
        return replace(
            face,
            box=smoothed[5:].reshape(4).astype(np.float32),
            landmarks=smoothed[:5].astype(np.float32),
            track_id=track.track_id,
            extra=extra,
        )

    def _age(self, matched: set[int]) -> None:
        for track_id in list(self._tracks):
            if track_id in matched:
                continue
            track = self._tracks[track_id]
            track.missed += 1
            if track.missed > self.max_missed:
                del self._tracks[track_id]


# --------------------------------------------------------------------------------------------------
# Detection every k frames, optical flow in between
# --------------------------------------------------------------------------------------------------


class KeyframeTracker:
    """Detects faces on every ``k``-th frame and moves them by Lucas-Kanade optical flow in between.

    On a flow frame, each track seen on the previous frame has its 5 raw landmarks tracked from the previous
    grayscale frame (pyramidal LK); the box follows the landmarks' least-squares similarity. A point fails
    when LK loses it (status 0), its LK error exceeds ``max_lk_error``, or tracking it back lands more than
    ``max_fb_error`` box diagonals from where it started (forward-backward check); a frame whose similarity
    scales the face by more than ``max_scale_step`` fails too. On any failure the detector runs on this very
    frame, so a drifted face is never returned. ``k=1`` detects on every frame. Faces that enter between
    keyframes are picked up at the next keyframe; tracks the detector missed stay missed until then.
    """

    def __init__(
        self,
        detector: FaceDetector,
        tracker: FaceTracker | None = None,
        *,
        k: int = 5,
        win_size: int = 21,
        max_level: int = 3,
        max_lk_error: float | None = 30.0,
        max_fb_error: float = 0.02,
        max_scale_step: float = 1.25,
    ) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.detector = detector
        self.tracker = tracker if tracker is not None else FaceTracker()
        self.k = int(k)
        self.win_size = int(win_size)
        self.max_level = int(max_level)
        self.max_lk_error = max_lk_error
        self.max_fb_error = float(max_fb_error)
        self.max_scale_step = float(max_scale_step)
        self._prev_gray: np.ndarray | None = None
        self._since_detection = 0
        self.detections_run = 0
        self.frames_propagated = 0
        self.flow_failures = 0

    def reset(self) -> None:
        self.tracker.reset()
        self._prev_gray = None
        self._since_detection = 0

    def process(self, frame_bgr: np.ndarray, t: float) -> list[Face]:
        """Tracked faces on this frame (``extra["propagated"]`` is True where optical flow placed them)."""
        FaceDetector.check_image(frame_bgr)
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        faces: list[Face] | None = None
        due = (
            self._since_detection + 1 >= self.k
            or self._prev_gray is None
            or self._prev_gray.shape != gray.shape
        )
        if not due:
            faces = self._propagate(self._prev_gray, gray, t)
        if faces is None:
            faces = self.tracker.update(self.detector.detect(frame_bgr), t)
            self.detections_run += 1
            self._since_detection = 0
        else:
            self.frames_propagated += 1
            self._since_detection += 1
        self._prev_gray = gray
        return faces

    def _lk(self, a: np.ndarray, b: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nxt, status, err = cv2.calcOpticalFlowPyrLK(
            a,
            b,
            pts.astype(np.float32).reshape(-1, 1, 2),
            None,
            winSize=(self.win_size, self.win_size),
            maxLevel=self.max_level,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        )
        return nxt.reshape(-1, 2).astype(np.float64), status.reshape(-1).astype(bool), err.reshape(-1)

    def _propagate(self, prev: np.ndarray, cur: np.ndarray, t: float) -> list[Face] | None:
        """Faces moved by flow, or None when any track's flow fails (the caller then detects)."""
        live = [tr for tr in self.tracker.tracks if tr.missed == 0]
        if not live:
            return self.tracker.update_known([], t)
        start = np.concatenate([tr.landmarks for tr in live])
        fwd, ok_f, err = self._lk(prev, cur, start)
        back, ok_b, _ = self._lk(cur, prev, fwd)
        fb = np.linalg.norm(back - start, axis=1)
        faces = []
        for i, tr in enumerate(live):
            sl = slice(5 * i, 5 * i + 5)
            diag = _box_diagonal(tr.box)
            ok = bool(ok_f[sl].all() and ok_b[sl].all() and (fb[sl] <= self.max_fb_error * diag).all())
            if ok and self.max_lk_error is not None:
                ok = bool((err[sl] <= self.max_lk_error).all())
            if ok:
                m = umeyama_similarity(tr.landmarks, fwd[sl])
                scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
                ok = 1.0 / self.max_scale_step <= scale <= self.max_scale_step
            if not ok:
                self.flow_failures += 1
                return None
            centre = transform_points((tr.box[:2] + tr.box[2:]) / 2, m)
            half = (tr.box[2:] - tr.box[:2]) * scale / 2
            faces.append(
                Face(
                    box=np.concatenate([centre - half, centre + half]),
                    score=tr.score,
                    landmarks=fwd[sl],
                    track_id=tr.track_id,
                    extra={"propagated": True},
                )
            )
        return self.tracker.update_known(faces, t)
