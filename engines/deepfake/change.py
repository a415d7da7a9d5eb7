"""Change alerts: a face track's own score steps up and stays up (a swap switched on mid-stream).

A deepfake detector's score *level* moves from person to person more than with the manipulation (the model
card's leave-one-speaker-out table: real clips of new speakers score from 0.03 to 0.89, fakes from 0.25 up),
so the model alert's fixed threshold raises false alarms on people who just score high. Within one person,
though, every fake scored above that person's real clip. The change alert therefore judges each face track
against its own baseline, with no calibration across people:

* **warm-up**: a track's first ``warmup`` seconds of scores (and at least ``min_scores`` of them) give its
  baseline, their median (a stray score does not move it). A track still warming up raises nothing.
* **baseline**: after the warm-up it follows the track's scores with a slow EMA (half-life
  ``baseline_halflife``; None: frozen), but only while the track has no active change alert and its rise is
  below ``step`` (no dwell under way), so that a sustained step is never absorbed into it.
* **fast score**: an EMA of the track's scores with a short half-life (``fast_halflife``), from its first.
* **rise**: ``fast - baseline`` clipped to [0, 1] (probability units), the stream fed to an
  :class:`~swapwatch.engines.deepfake.alerts.AlertPolicy` of kind ``"change"``: an alert starts once the rise
  has stayed ``>= step`` for ``min_dwell`` seconds and ends when it falls below ``release * step``. Its
  events' ``peak`` and ``mean`` are rises: how far above its own baseline the face scored.

A track the policy forgets (unseen for ``track_timeout``) loses its baseline too: a track id seen later warms
up again. One :class:`ChangePolicy` per stream; no global state.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

from swapwatch.engines.deepfake.alerts import AlertEvent, AlertPolicy, AlertPolicyConfig


@dataclass(frozen=True)
class ChangeConfig:
    """Settings of the change alert; times in seconds (the scores' clock).

    How the defaults were chosen: at serve's strides the live detector scores a track every 10th frame
    (0.33-0.4 s) once its first 40-frame window is full, so a 2 s warm-up is 5-6 scores, enough for a median.
    On the six shared GRID clips (9 s of the real clip, then its classic swap with ``max_Luciano``; the
    shipped model, which trained on four of these speakers; serve's strides), a real track's scores stayed
    within 0.15 of their median (``grid_lbbc2a``: 0.13-0.40 around 0.25), and five swaps rose 0.5-0.9
    above it (the sixth, ``grid_s2_swwp2s``, scores 0.76 real and 0.67 swapped: there is no step to see).
    A step of 0.25 held for 1 s (three scores in a row) lies between the two: it alerted 2.1-2.5 s after the
    splice on those five, the detector's 1.6 s window included, with no change alert on the real parts
    (the model alert: 2 of 6 within the swaps' 3 s, and a false alarm on ``grid_s2_swwp2s``). A fast
    half-life of 0.3 s follows a step within about one score; the baseline's 30 s half-life follows slow
    drift (light, pose) and rises smaller than a step (it stops while a rise reaches the step). Refractory,
    updates and track timeout are the model alert's.
    """

    warmup: float = 2.0  # seconds of scores before a track has a baseline (and can alert)
    min_scores: int = 5  # ... and at least this many scores
    fast_halflife: float = 0.3  # half-life of the fast score's EMA
    baseline_halflife: float | None = 30.0  # half-life of the baseline's EMA after the warm-up (None: frozen)
    step: float = 0.25  # rise (fast - baseline, in probability) at or above which an alert may start
    release: float = 0.5  # an active alert ends when the rise falls below release * step
    min_dwell: float = 1.0  # the rise stays >= step this long before `start`
    refractory: float = 2.0  # no new `start` on a track this soon after its `end`
    update_every: float | None = 1.0  # period of `update` events while active; None: no updates
    track_timeout: float = 1.0  # a track unseen for longer than this is gone (its alert ends, its baseline too)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_scores < 1:
            raise ValueError("warmup must be >= 0 and min_scores >= 1")
        if self.fast_halflife <= 0 or (self.baseline_halflife is not None and self.baseline_halflife <= 0):
            raise ValueError("fast_halflife and baseline_halflife must be > 0 (baseline_halflife may be None)")
        if not 0.0 < self.step <= 1.0 or not 0.0 <= self.release <= 1.0:
            raise ValueError(f"need 0 < step <= 1 and 0 <= release <= 1, got step={self.step}, "
                             f"release={self.release}")
        _ = self.policy  # building it validates the timings

    @property
    def policy(self) -> AlertPolicyConfig:
        """The alert policy the rise goes through (no smoothing of its own: the fast EMA is the smoothing)."""
        return AlertPolicyConfig(high=self.step, low=self.release * self.step, ema_alpha=1.0,
                                 min_dwell=self.min_dwell, refractory=self.refractory,
                                 update_every=self.update_every, track_timeout=self.track_timeout)


@dataclass
class _Level:
    """One track's scores so far: the fast EMA, the warm-up scores, then the baseline."""

    first_t: float
    last_t: float
    fast: float
    warmup: list[float] = field(default_factory=list)
    baseline: float | None = None


def _ema_weight(dt: float, halflife: float) -> float:
    """Weight of a new sample ``dt`` seconds after the last in an EMA with this half-life."""
    return 1.0 - 0.5 ** (max(dt, 0.0) / halflife)


class ChangePolicy:
    """Per-track score streams -> change alert events (see the module docstring); :class:`AlertPolicy`'s
    interface: :meth:`step` once per frame, :meth:`flush` when the stream closes."""

    def __init__(self, config: ChangeConfig | None = None) -> None:
        self.config = config or ChangeConfig()
        self.policy = AlertPolicy(self.config.policy, kind="change", verified=False)
        self._levels: dict[int, _Level] = {}

    # ---- queries -------------------------------------------------------------------------------------

    @property
    def active(self) -> dict[int, float]:
        """Tracks with an active change alert -> their current rise."""
        return self.policy.active

    def baseline(self, track_id: int) -> float | None:
        """The track's baseline; None while it warms up (or unknown)."""
        level = self._levels.get(track_id)
        return level.baseline if level is not None else None

    def rise(self, track_id: int) -> float | None:
        """The track's last rise (fast - baseline, clipped to [0, 1]); None while it warms up (or unknown)."""
        return self.policy.smoothed(track_id)

    # ---- feeding -------------------------------------------------------------------------------------

    def step(self, t: float, scores: Mapping[int, float | None]) -> list[AlertEvent]:
        """One frame: the scores of the tracks present (None: present without a score), as AlertPolicy.step."""
        t = float(t)
        events = self.policy.expire(t, keep=scores.keys())
        known = self.policy.tracks
        for tid in [tid for tid in self._levels if tid not in known and tid not in scores]:
            del self._levels[tid]
        active = self.policy.active
        rises = {tid: self._rise(tid, t, score, tid in active) for tid, score in scores.items()}
        return events + self.policy.step(t, rises)

    def flush(self, t: float) -> list[AlertEvent]:
        """The stream closed at ``t``: every active alert ends; all state is cleared."""
        self._levels.clear()
        return self.policy.flush(t)

    # ---- internals -----------------------------------------------------------------------------------

    def _rise(self, track_id: int, t: float, score: float | None, active: bool) -> float | None:
        if score is None or math.isnan(float(score)):
            return None
        x = min(max(float(score), 0.0), 1.0)
        cfg = self.config
        level = self._levels.get(track_id)
        if level is None:
            level = self._levels[track_id] = _Level(first_t=t, last_t=t, fast=x, warmup=[x])
        else:
            dt = t - level.last_t
            level.fast += _ema_weight(dt, cfg.fast_halflife) * (x - level.fast)
            if level.baseline is None:
                level.warmup.append(x)
            elif cfg.baseline_halflife is not None and not active and level.fast - level.baseline < cfg.step:
                # frozen while the track alerts or dwells towards an alert: a step is never absorbed
                level.baseline += _ema_weight(dt, cfg.baseline_halflife) * (x - level.baseline)
            level.last_t = t
        if level.baseline is None:
            if t - level.first_t < cfg.warmup - 1e-9 or len(level.warmup) < cfg.min_scores:
                return None
            level.baseline, level.warmup = statistics.median(level.warmup), []
        return min(max(level.fast - level.baseline, 0.0), 1.0)
