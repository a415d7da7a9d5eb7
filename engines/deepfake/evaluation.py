"""Evaluating the deepfake detector on a labelled video dataset: video-level metrics and live-stream measures.

Metrics (pure functions of labels, 1 = fake, 0 = real, and scores, the probability of being fake):
:func:`roc_auc`, :func:`roc_curve`, :func:`equal_error_rate`, :func:`accuracy_at`,
:func:`expected_calibration_error` and :func:`reliability_bins` (10 equal-width bins on [0, 1]). Each video's
verdict is the model's thresholds applied to its score (REAL, UNCERTAIN or FAKE,
:class:`~swapwatch.engines.deepfake.thresholds.Thresholds`); :func:`verdict_counts` counts them per class.

Streams (what a user of live monitoring sees), through the live path exactly as ``serve`` and ``monitor``
run it: a fresh face tracker, ``DeepfakeDetector.score_faces`` (per-track ring buffers with their strides)
and a :class:`~swapwatch.engines.deepfake.monitor.FrameMonitor` whose model alert policy turns the scores into events:

* **time to alert** on spliced streams: the decoded frames of a fake clip B follow the decoded frames of a
  real clip A in one stream (B's frames resized to A's size, its timestamps shifted to continue A's at A's
  frame interval). One tracker runs through the whole stream, so the face keeps its track id when it stays
  in place across the splice (the usual case when B is a swap of A's own video: a live swap switched on
  mid-stream, and the detector's window still holds A's real frames) and gets a new one otherwise; every
  splice records which (``same_track``). Time to alert: seconds from the splice (B's first frame time) to
  the first model alert ``start`` at or after it (None: missed). A ``start`` before the splice is a false
  alert on real footage. The same for the monitor's change alert (a track's score stepping up over its own
  baseline, ``change.py``), beside the model's: it needs the face to keep its track id across the splice (a
  new track warms up on the fake) and A's scores to make up most of the track's warm-up (2 s of scores).
* **false alerts per hour**: the live path over every real video, model alert ``start`` events divided by
  the hours of real footage read; and the same for change alerts.

The watermark check is off in these runs: a watermarked fake would otherwise raise the monitor's verified
watermark alert, and this measures the model. :class:`Evaluator` reads each video once: the same tracked
faces feed the offline video score (``DeepfakeDetector.score_clip``, as ``score_video`` computes it) and, for
real videos, the live path.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swapwatch.engines.deepfake.thresholds import FAKE, REAL, UNCERTAIN, Thresholds
from swapwatch.errors import InputError

if TYPE_CHECKING:
    from swapwatch.engines.deepfake.alerts import AlertEvent, AlertPolicyConfig
    from swapwatch.engines.deepfake.change import ChangeConfig
    from swapwatch.engines.deepfake.datasets import MediaItem
    from swapwatch.engines.deepfake.detector import DeepfakeDetector
    from swapwatch.engines.faces import FaceDetector

__all__ = [
    "CALIBRATION_BINS", "DatasetReport", "Evaluator", "SpliceResult", "StreamSettings", "VideoResult",
    "accuracy_at", "dataset_metrics", "equal_error_rate", "evaluate", "expected_calibration_error",
    "reliability_bins", "roc_auc", "roc_curve", "splice_pairs", "stream_summary", "verdict_counts",
]

CALIBRATION_BINS = 10  # equal-width bins on [0, 1] for the calibration error and the reliability diagram


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _arrays(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return y.astype(np.int64), s


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); nan without both classes."""
    from scipy.stats import rankdata

    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve's vertices: (fpr, tpr, thresholds), thresholds falling from +inf through every distinct
    score. At threshold ``t`` a video is called fake when its score is ``>= t``: fpr is the fraction of real
    videos called fake, tpr the fraction of fake ones. Tied scores make one vertex (a diagonal step).
    Raises ValueError without both classes."""
    y, s = _arrays(labels, scores)
    fake, real = np.sort(s[y == 1]), np.sort(s[y == 0])
    if not len(fake) or not len(real):
        raise ValueError("a ROC curve needs both real and fake examples")
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = (len(fake) - np.searchsorted(fake, thresholds, side="left")) / len(fake)
    fpr = (len(real) - np.searchsorted(real, thresholds, side="left")) / len(real)
    return fpr, tpr, thresholds


def equal_error_rate(labels: Sequence[int], scores: Sequence[float]) -> tuple[float, float]:
    """(EER, its threshold): the error rate where the false-alarm rate (fpr) equals the miss rate (1 - tpr).

    The ROC polyline (:func:`roc_curve`, linear between vertices) crosses the line fpr = 1 - tpr once; the
    EER is the fpr at the crossing, interpolated along the segment it lies on. The threshold is that of the
    segment's vertex nearer the crossing (a threshold that can actually be applied; on a tie, the lower
    one). (nan, nan) without both classes."""
    try:
        fpr, tpr, thr = roc_curve(labels, scores)
    except ValueError:
        return float("nan"), float("nan")
    d = fpr + tpr - 1.0  # fpr - (1 - tpr): -1 at the first vertex, +1 at the last, non-decreasing
    i = int(np.argmax(d >= 0))  # first vertex at or past the crossing (i >= 1)
    if d[i] == 0:
        return float(fpr[i]), float(thr[i])
    a = -d[i - 1] / (d[i] - d[i - 1])  # where the segment (i-1, i) crosses
    eer = fpr[i - 1] + a * (fpr[i] - fpr[i - 1])
    nearer = i if a >= 0.5 or not np.isfinite(thr[i - 1]) else i - 1
    return float(eer), float(thr[nearer])


def accuracy_at(labels: Sequence[int], scores: Sequence[float], threshold: float) -> float:
    """Fraction of videos whose verdict at ``threshold`` (fake when score >= threshold) is right; nan if none."""
    y, s = _arrays(labels, scores)
    if not len(y):
        return float("nan")
    return float(np.mean((s >= threshold).astype(np.int64) == y))


def reliability_bins(labels: Sequence[int], scores: Sequence[float], bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per equal-width bin of the predicted probability: ``lo``, ``hi``, ``count``, ``mean_score`` (mean
    predicted probability of fake) and ``fraction_fake`` (observed); None for an empty bin's means. Bin ``i``
    holds scores with ``floor(bins * score) == i`` (``[i/bins, (i+1)/bins)``), the last one also 1.0; scores
    outside [0, 1] are clipped."""
    y, s = _arrays(labels, scores)
    s = np.clip(s, 0.0, 1.0)
    idx = np.minimum(np.floor(s * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        keep = idx == b
        n = int(keep.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                    "mean_score": float(s[keep].mean()) if n else None,
                    "fraction_fake": float(y[keep].mean()) if n else None})
    return out


def expected_calibration_error(labels: Sequence[int], scores: Sequence[float], bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error over ``bins`` equal-width bins of the probability of fake (10 by default):
    sum over bins of (bin size / N) * |fraction of fakes in the bin - mean score in the bin|. nan when empty.
    Binning as in :func:`reliability_bins`."""
    y, _ = _arrays(labels, scores)
    if not len(y):
        return float("nan")
    total = 0.0
    for b in reliability_bins(labels, scores, bins):
        if b["count"]:
            total += b["count"] * abs(b["fraction_fake"] - b["mean_score"])
    return float(total / len(y))


def dataset_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """The report's ``metrics``: auc, eer, eer_threshold (None without both classes), accuracy at
    ``threshold``, ece, and the class counts."""
    y, s = _arrays(labels, scores)
    eer, eer_thr = equal_error_rate(y, s)
    return {"auc": _num(roc_auc(y, s)), "eer": _num(eer), "eer_threshold": _num(eer_thr),
            "accuracy": _num(accuracy_at(y, s, threshold)), "threshold": float(threshold),
            "ece": _num(expected_calibration_error(y, s)), "ece_bins": CALIBRATION_BINS,
            "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}


def verdict_counts(labels: Sequence[int], scores: Sequence[float], thresholds: Thresholds) -> dict[str, dict[str, int]]:
    """Per class (``"real"``, ``"fake"``), how many videos got each verdict: ``{"real": {"REAL": n,
    "UNCERTAIN": n, "FAKE": n}, "fake": {...}}`` (every key present, zeros included)."""
    y, s = _arrays(labels, scores)
    out = {}
    for name, label in (("real", 0), ("fake", 1)):
        verdicts = [thresholds.verdict(float(x)) for x in s[y == label]]
        out[name] = {v: verdicts.count(v) for v in (REAL, UNCERTAIN, FAKE)}
    return out


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------

REAL_LABEL, FAKE_LABEL = REAL, FAKE


@dataclass
class VideoResult:
    """One video: its offline score and verdict (REAL, UNCERTAIN or FAKE by the model's thresholds; NO_FACES: no
    face was tracked; ERROR: unreadable), and for
    a real video the model and change alerts the live path raised on it (``alerts``, ``change_alerts``;
    None for fakes)."""

    path: str
    label: str  # REAL | FAKE
    score: float | None
    verdict: str  # REAL | UNCERTAIN | FAKE | NO_FACES | ERROR
    frames: int
    seconds: float
    tracks: int = 0
    alerts: int | None = None
    change_alerts: int | None = None
    error: str | None = None

    @property
    def y(self) -> int:
        return int(self.label == FAKE_LABEL)

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "label": self.label, "score": _round(self.score), "verdict": self.verdict,
               "frames": self.frames, "seconds": round(self.seconds, 3), "tracks": self.tracks,
               "alerts": self.alerts, "change_alerts": self.change_alerts}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class SpliceResult:
    """One spliced stream: ``real`` then ``fake`` (see the module docstring)."""

    real: str
    fake: str
    splice_s: float  # stream time of the fake's first frame
    real_frames: int
    fake_frames: int
    fake_seconds: float  # how long the fake part lasts (the most time an alert had)
    same_track: bool | None  # the face kept its track id across the splice (None: no face on one side)
    time_to_alert_s: float | None  # None: no model alert started during the fake part
    false_alert_before_splice: bool  # a model alert started on the real part
    alert_active_at_splice: bool  # ... and was still on when the fake began
    change_time_to_alert_s: float | None = None  # the same for the change alert
    change_false_alert_before_splice: bool = False
    error: str | None = None

    @property
    def missed(self) -> bool:
        return self.time_to_alert_s is None

    def to_json(self) -> dict[str, Any]:
        out = {"real": self.real, "fake": self.fake, "splice_s": round(self.splice_s, 3),
               "real_frames": self.real_frames, "fake_frames": self.fake_frames,
               "fake_seconds": round(self.fake_seconds, 3), "same_track": self.same_track,
               "time_to_alert_s": _round(self.time_to_alert_s, 3), "missed": self.missed,
               "false_alert_before_splice": self.false_alert_before_splice,
               "alert_active_at_splice": self.alert_active_at_splice,
               "change_time_to_alert_s": _round(self.change_time_to_alert_s, 3),
               "change_missed": self.change_time_to_alert_s is None,
               "change_false_alert_before_splice": self.change_false_alert_before_splice}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class DatasetReport:
    """Everything ``swapwatch eval-detector`` reports; :meth:`to_json` is its ``--json`` file."""

    videos: list[VideoResult]
    metrics: dict[str, Any]
    streams: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why

    @property
    def scored(self) -> list[VideoResult]:
        return [v for v in self.videos if v.score is not None]

    def to_json(self) -> dict[str, Any]:
        return {"videos": [v.to_json() for v in self.videos], "metrics": self.metrics,
                "streams": {**self.streams, "splices": [s.to_json() for s in self.streams.get("splices", [])]},
                "model": self.model, "notes": list(self.notes)}


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


# --------------------------------------------------------------------------------------------------
# Running videos and streams
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSettings:
    """How videos are read and monitored. The detector's own :class:`~swapwatch.engines.deepfake.detector.WindowConfig`
    holds the live strides; ``policy`` None is the monitor's model policy (``monitor.MODEL_POLICY``, with the
    model's REAL/FAKE band as its high/low when it has one: ``monitor.model_policy_for``), ``change`` None the
    monitor's change alert settings (``ChangeConfig()``)."""

    max_frames: int | None = None  # first N frames of each video (None: all)
    detect_every: int = 1  # face detection every k frames, optical flow in between (as `monitor --every`)
    policy: AlertPolicyConfig | None = None
    change: ChangeConfig | None = None

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError("--max-frames must be at least 1")
        if self.detect_every < 1:
            raise InputError("detect_every must be at least 1")


def _frame_interval(times: Sequence[float], default: float) -> float:
    if len(times) < 2:
        return default
    step = statistics.median(b - a for a, b in itertools.pairwise(times))
    return step if step > 0 else default


class Evaluator:
    """Runs the offline score and the live path over videos and spliced streams (one video at a time)."""

    def __init__(self, detector: DeepfakeDetector, face_detector: FaceDetector,
                 settings: StreamSettings = StreamSettings()) -> None:
        self.detector = detector
        self.face_detector = face_detector
        self.settings = settings

    # ---- building blocks ---------------------------------------------------------------------------

    def _tracker(self):
        from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker

        # The live pipeline's tracker settings (smoothed landmarks), as score_video uses them.
        return KeyframeTracker(self.face_detector, FaceTracker(smoothing=FACE_SMOOTHING), k=self.settings.detect_every)

    def _monitor(self):
        from swapwatch.engines.deepfake.monitor import FrameMonitor, MonitorConfig

        self.detector.reset()  # a new stream: no window carries over from the previous one
        # policy None: the monitor's own choice (MODEL_POLICY, or the model's REAL/FAKE band as its hysteresis)
        config = MonitorConfig(watermark_enabled=False, model_policy=self.settings.policy,
                               change=self.settings.change or MonitorConfig().change)
        return FrameMonitor(config, detector=self.detector)

    def _frames(self, path: Path) -> Iterator:
        from swapwatch.engines.runtime import iter_video

        limit = self.settings.max_frames
        for frame in iter_video(path):
            if limit is not None and frame.index >= limit:
                break
            yield frame

    # ---- one video ---------------------------------------------------------------------------------

    def video(self, item: MediaItem, *, thresholds: Thresholds, live: bool | None = None) -> VideoResult:
        """Score one video offline and give its verdict at ``thresholds``; with ``live`` (default: for real
        videos) also count the model and change alerts the live path raises on it. An unreadable video gives
        verdict ERROR (its message in ``error``)."""
        from swapwatch.engines.deepfake.datasets import FAKE as FAKE_ITEM

        label = FAKE_LABEL if item.label == FAKE_ITEM else REAL_LABEL
        live = (item.label != FAKE_ITEM) if live is None else live
        tracker = self._tracker()
        monitor = self._monitor() if live else None
        times: list[float] = []
        starts = _Starts()

        def frames():
            for frame in self._frames(item.path):
                faces = tracker.process(frame.image, frame.time)
                times.append(frame.time)
                if monitor is not None:
                    starts.add(monitor.process(frame.image, frame.time, faces))
                yield frame.image, faces, frame.time

        try:
            clip = self.detector.score_clip(frames())
        except InputError as exc:
            return VideoResult(str(item.path), label, None, "ERROR", len(times), _duration(times),
                               error=str(exc))
        if monitor is not None:
            starts.add(monitor.close())
        score = clip.score
        return VideoResult(str(item.path), label, score, thresholds.verdict(score), len(times), _duration(times),
                           tracks=len(clip.tracks), alerts=len(starts.model) if live else None,
                           change_alerts=len(starts.change) if live else None)

    # ---- one spliced stream ------------------------------------------------------------------------

    def splice(self, real: MediaItem, fake: MediaItem) -> SpliceResult:
        """The live path over ``real``'s frames followed by ``fake``'s (see the module docstring)."""
        import cv2

        tracker = self._tracker()
        monitor = self._monitor()
        starts = _Starts()
        last_real_ids: set[int] = set()
        first_fake_ids: set[int] | None = None
        real_times: list[float] = []
        fake_times: list[float] = []
        size: tuple[int, int] | None = None
        splice_t = 0.0
        active_at_splice = False

        def step(image, t: float) -> set[int]:
            faces = tracker.process(image, t)
            starts.add(monitor.process(image, t, faces))
            return {int(f.track_id) for f in faces if f.track_id is not None}

        try:
            for frame in self._frames(real.path):
                size = size or (frame.image.shape[1], frame.image.shape[0])
                image = _fit(frame.image, size, cv2)
                ids = step(image, frame.time)
                last_real_ids = ids or last_real_ids
                real_times.append(frame.time)
            dt = _frame_interval(real_times, 1.0 / 25)
            splice_t = (real_times[-1] + dt) if real_times else 0.0
            active_at_splice = bool(monitor.state.model_alerts)
            offset = None
            for frame in self._frames(fake.path):
                if offset is None:
                    offset = splice_t - frame.time
                t = frame.time + offset
                ids = step(_fit(frame.image, size or (frame.image.shape[1], frame.image.shape[0]), cv2), t)
                if ids and first_fake_ids is None:
                    first_fake_ids = ids
                fake_times.append(t)
        except InputError as exc:
            error = str(exc)
        else:
            error = None
        if fake_times:
            monitor.close(fake_times[-1])
        fake_seconds = (fake_times[-1] - splice_t + _frame_interval(fake_times, 1.0 / 25)) if fake_times else 0.0
        same = None if not (last_real_ids and first_fake_ids) else bool(last_real_ids & first_fake_ids)
        return SpliceResult(
            real=str(real.path), fake=str(fake.path), splice_s=splice_t, real_frames=len(real_times),
            fake_frames=len(fake_times), fake_seconds=max(fake_seconds, 0.0), same_track=same,
            time_to_alert_s=_time_after(starts.model, splice_t) if error is None else None,
            false_alert_before_splice=_any_before(starts.model, splice_t), alert_active_at_splice=active_at_splice,
            change_time_to_alert_s=_time_after(starts.change, splice_t) if error is None else None,
            change_false_alert_before_splice=_any_before(starts.change, splice_t), error=error)


def _fit(image: np.ndarray, size: tuple[int, int], cv2) -> np.ndarray:
    """A live stream keeps one frame size: B's frames are resized to A's."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@dataclass
class _Starts:
    """Times of the model and change alerts' ``start`` events on one stream (the end of their dwell)."""

    model: list[float] = field(default_factory=list)
    change: list[float] = field(default_factory=list)

    def add(self, events: Iterable[AlertEvent]) -> None:
        for e in events:
            if e.event == "start" and e.kind in ("model", "change"):
                getattr(self, e.kind).append(e.t_end)


def _time_after(starts: Sequence[float], splice_t: float) -> float | None:
    """Seconds from the splice to the first start at or after it; None: none."""
    after = [t for t in starts if t >= splice_t - 1e-9]
    return after[0] - splice_t if after else None


def _any_before(starts: Sequence[float], splice_t: float) -> bool:
    return any(t < splice_t - 1e-9 for t in starts)


def _duration(times: Sequence[float]) -> float:
    """Seconds of video read: first to last frame plus one frame interval."""
    if not times:
        return 0.0
    return float(times[-1] - times[0] + _frame_interval(times, 1.0 / 25))


# --------------------------------------------------------------------------------------------------
# A whole dataset
# --------------------------------------------------------------------------------------------------


def splice_pairs(reals: Sequence[MediaItem], fakes: Sequence[MediaItem], count: int) -> list[tuple]:
    """Up to ``count`` (real, fake) pairs, at most one per real video, in order: each real video is paired
    with an unused fake of the same identity (a swap of that person's video, as the layouts name it) when
    there is one, else with the fakes in turn."""
    pairs: list[tuple] = []
    if count <= 0 or not reals or not fakes:
        return pairs
    used: set[int] = set()
    for i, real in enumerate(reals):
        if len(pairs) >= count:
            break
        same = [j for j, f in enumerate(fakes) if f.identity == real.identity and j not in used]
        j = same[0] if same else i % len(fakes)
        used.add(j)
        pairs.append((real, fakes[j]))
    return pairs


def stream_summary(videos: Sequence[VideoResult], splices: Sequence[SpliceResult]) -> dict[str, Any]:
    """The report's ``streams``: splices, time to alert (median and mean over the splices that alerted, and
    how many missed), and false alerts per hour over the real videos the live path read; for the model alert,
    and with the prefix ``change_`` for the change alert."""
    done = [s for s in splices if s.error is None and s.fake_frames]
    reals = [v for v in videos if v.alerts is not None]
    hours = sum(v.seconds for v in reals) / 3600.0
    out: dict[str, Any] = {"splices": list(splices)}
    for prefix, times, before, counts in (
            ("", [s.time_to_alert_s for s in done], [s.false_alert_before_splice for s in done],
             [v.alerts for v in reals]),
            ("change_", [s.change_time_to_alert_s for s in done], [s.change_false_alert_before_splice for s in done],
             [v.change_alerts for v in reals])):
        false_alerts = sum(n or 0 for n in counts)
        out |= {f"{prefix}time_to_alert_s": _time_to_alert(times),
                f"{prefix}false_alerts_before_splice": sum(before),
                f"{prefix}false_alerts": false_alerts,
                f"{prefix}false_alerts_per_hour": _round(false_alerts / hours, 3) if hours > 0 else None}
    return out | {"real_hours": round(hours, 9), "real_videos": len(reals)}


def _time_to_alert(times: Sequence[float | None]) -> dict[str, Any]:
    """Median and mean over the splices that alerted (None: missed), and how many missed."""
    hits = [t for t in times if t is not None]
    return {"median": _round(statistics.median(hits), 3) if hits else None,
            "mean": _round(statistics.fmean(hits), 3) if hits else None,
            "missed": len(times) - len(hits), "alerted": len(hits), "splices": len(times)}


def evaluate(items: Sequence[MediaItem], evaluator: Evaluator, *, thresholds: Thresholds, splices: int = 10,
             model: dict | None = None, progress: Callable[[Iterable, int, str], Iterable] | None = None
             ) -> DatasetReport:
    """Score every item, run the live path over the real ones and over ``splices`` spliced streams, and
    collect the metrics: :func:`dataset_metrics` at the FAKE threshold (``threshold``), the REAL one
    (``real_threshold``) and the :func:`verdict_counts` (``verdicts``). ``progress(iterable, total,
    description)`` may wrap the loops (a progress bar)."""
    from swapwatch.engines.deepfake.datasets import FAKE as FAKE_ITEM

    wrap = progress or (lambda it, total, desc: it)
    videos = [evaluator.video(item, thresholds=thresholds) for item in wrap(items, len(items), "videos")]
    notes = []
    scored = [v for v in videos if v.score is not None]
    labels, scores = [v.y for v in scored], [v.score for v in scored]
    metrics = dataset_metrics(labels, scores, thresholds.fake)
    metrics["real_threshold"] = thresholds.real
    metrics["verdicts"] = verdict_counts(labels, scores, thresholds)
    metrics["n_no_faces"] = sum(v.verdict == "NO_FACES" for v in videos)
    metrics["n_errors"] = sum(v.verdict == "ERROR" for v in videos)
    if metrics["n_no_faces"]:
        notes.append(f"{metrics['n_no_faces']} video(s) without a tracked face: listed as NO_FACES, not in the metrics")
    if metrics["n_errors"]:
        notes.append(f"{metrics['n_errors']} unreadable video(s): listed as ERROR, not in the metrics")
    missing = [name for name, n in (("real", metrics["n_real"]), ("fake", metrics["n_fake"])) if not n]
    if missing:
        notes.append(f"no {' or '.join(missing)} video with a face: AUC and EER are undefined")
    ok = {id(item) for item, v in zip(items, videos) if v.verdict != "ERROR"}
    reals = [i for i in items if i.label != FAKE_ITEM and id(i) in ok]
    fakes = [i for i in items if i.label == FAKE_ITEM and id(i) in ok]
    pairs = splice_pairs(reals, fakes, splices)
    if splices > 0 and not pairs:
        notes.append("no spliced streams: they need a readable real and a readable fake video")
    spliced = [evaluator.splice(r, f) for r, f in wrap(pairs, len(pairs), "splices")]
    streams = stream_summary(videos, spliced)
    if streams["real_videos"] == 0:
        notes.append("no real video: false alerts per hour are undefined")
    return DatasetReport(videos, metrics, streams, model=dict(model or {}), notes=notes)
