"""Alert policy: per-track score streams -> ``start`` / ``update`` / ``end`` alert events.

A detector gives, per face track, one score in [0, 1] per analysed frame or window. Raw scores flicker, so an
alert follows the *smoothed* score through a state machine per track (the semantics that work for streaming
detectors elsewhere, e.g. wake-word spotting: sustained evidence, hysteresis, then a refractory period):

* **smoothing**: an exponential moving average (``ema_alpha``), or a k-of-n rule (``k_of_n=(k, n)``: the
  smoothed score is the k-th largest of the last n raw scores, so "smoothed >= high" reads "at least k of
  the last n scores are >= high", the DFDC winner's frame rule).
* **hysteresis**: an alert can start when the smoothed score is ``>= high`` and ends when it drops ``< low``.
* **dwell**: the smoothed score must stay ``>= high`` for ``min_dwell`` seconds before ``start`` (the alert's
  ``t_start`` is when the dwell began, not when it was confirmed).
* **refractory**: after an ``end``, a track is disarmed for ``refractory`` seconds; the dwell of a new alert
  begins at the first sample ``>= high`` once it is armed again.
* **updates**: while active, an ``update`` at most every ``update_every`` seconds (None: never).
* **tracks**: a track absent for more than ``track_timeout`` seconds is forgotten: its alert ends at the
  last time it was seen, and a track id seen later starts clean. ``flush(t)`` ends every alert when the
  stream closes.

``peak`` and ``mean`` are of the raw scores of the samples inside the alert (from ``t_start`` up to the last
sample at which the alert was still active). There is no global state: one :class:`AlertPolicy` per stream
and per kind of evidence (``KINDS``: the model's score, swapwatch's watermark, and ``change``, a track's score
stepping up over its own baseline, which ``change.py`` feeds through this same machinery).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

EVENTS = ("start", "update", "end")
KINDS = ("model", "watermark", "change")


@dataclass(frozen=True)
class AlertPolicyConfig:
    """Thresholds and timings of an :class:`AlertPolicy`; times in seconds (the scores' clock)."""

    high: float = 0.7  # smoothed score at or above which an alert may start
    low: float = 0.4  # smoothed score below which an active alert ends
    ema_alpha: float = 0.5  # weight of the newest score in the moving average (1.0: no smoothing)
    k_of_n: tuple[int, int] | None = None  # (k, n): k-th largest of the last n scores, instead of the EMA
    min_dwell: float = 0.5  # the smoothed score stays >= high this long before `start`
    refractory: float = 2.0  # no new `start` on a track this soon after its `end`
    update_every: float | None = 1.0  # period of `update` events while active; None: no updates
    track_timeout: float = 1.0  # a track unseen for longer than this is gone (its alert ends)

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={self.low}, high={self.high}")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError("ema_alpha must be in (0, 1]")
        if self.k_of_n is not None:
            k, n = self.k_of_n
            if not 1 <= k <= n:
                raise ValueError(f"k_of_n needs 1 <= k <= n, got {self.k_of_n}")
        if self.min_dwell < 0 or self.refractory < 0 or self.track_timeout < 0:
            raise ValueError("min_dwell, refractory and track_timeout must be >= 0")
        if self.update_every is not None and self.update_every <= 0:
            raise ValueError("update_every must be > 0 (or None for no updates)")


@dataclass(frozen=True)
class AlertEvent:
    """One alert event, as sent on the websocket (stream/PROTOCOL.md)."""

    event: str  # start | update | end
    track_id: int  # face track id; -1 for whole-frame evidence (the watermark)
    t_start: float
    t_end: float
    peak: float
    mean: float
    kind: str = "model"  # model | watermark | change (a track's own score stepped up: change.py)
    verified: bool = False  # True only for a verified swapwatch watermark

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {self.event!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        # Exactly the protocol's alert message; rounding keeps messages short and stable.
        return {
            "type": "alert",
            "event": self.event,
            "track_id": int(self.track_id),
            "t_start": round(float(self.t_start), 3),
            "t_end": round(float(self.t_end), 3),
            "peak": round(float(self.peak), 4),
            "mean": round(float(self.mean), 4),
            "kind": self.kind,
            "verified": bool(self.verified),
        }


@dataclass
class _Track:
    """Per-track state of the policy."""

    last_seen: float
    smoothed: float | None = None
    window: deque[float] = field(default_factory=deque)  # k-of-n: the last n raw scores
    dwell_start: float | None = None  # time the smoothed score went >= high (while armed and inactive)
    active: bool = False
    armed_at: float = -math.inf  # refractory: no start before this time
    last_emit: float = 0.0  # time of the last start/update
    peak: float = 0.0
    total: float = 0.0
    count: int = 0

    def begin_span(self, t: float) -> None:
        self.dwell_start = t
        self.peak, self.total, self.count = 0.0, 0.0, 0

    def add(self, score: float) -> None:
        self.peak = max(self.peak, score)
        self.total += score
        self.count += 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class AlertPolicy:
    """Turns per-track scores over time into alert events (see the module docstring for the rules).

    Feed it with :meth:`step` once per frame (the scores of the tracks present on that frame; ``None`` for a
    track that is present but has no score this frame) or :meth:`observe` per sample; call :meth:`flush`
    when the stream closes. Times must not go backwards.
    """

    def __init__(self, config: AlertPolicyConfig | None = None, *, kind: str = "model",
                 verified: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.config = config or AlertPolicyConfig()
        self.kind = kind
        self.verified = verified
        self._tracks: dict[int, _Track] = {}

    # ---- queries -------------------------------------------------------------------------------------

    @property
    def active(self) -> dict[int, float]:
        """Tracks with an active alert -> their current smoothed score."""
        return {tid: tr.smoothed or 0.0 for tid, tr in self._tracks.items() if tr.active}

    @property
    def tracks(self) -> set[int]:
        """Track ids the policy follows (seen, not yet timed out or ended)."""
        return set(self._tracks)

    def smoothed(self, track_id: int) -> float | None:
        tr = self._tracks.get(track_id)
        return tr.smoothed if tr is not None else None

    # ---- feeding -------------------------------------------------------------------------------------

    def step(self, t: float, scores: Mapping[int, float | None]) -> list[AlertEvent]:
        """One frame: tracks timed out first (in id order), then each present track's score (in id order)."""
        events = self.expire(t, keep=scores.keys())
        for track_id in sorted(scores):
            events += self.observe(track_id, t, scores[track_id])
        return events

    def observe(self, track_id: int, t: float, score: float | None) -> list[AlertEvent]:
        """One sample of one track (``score`` None: seen, but nothing to score)."""
        t = float(t)
        tr = self._tracks.get(track_id)
        if tr is None:
            tr = self._tracks[track_id] = _Track(last_seen=t)
        tr.last_seen = t
        if score is None:
            return []
        x = float(score)
        if math.isnan(x):
            return []
        x = min(max(x, 0.0), 1.0)
        cfg = self.config
        s = tr.smoothed = self._smooth(tr, x)

        if tr.active:
            if s < cfg.low:
                event = self._event("end", track_id, tr, t)
                tr.active = False
                tr.armed_at = t + cfg.refractory
                tr.dwell_start = None
                return [event]
            tr.add(x)
            if cfg.update_every is not None and t - tr.last_emit >= cfg.update_every - 1e-9:
                tr.last_emit = t
                return [self._event("update", track_id, tr, t)]
            return []

        if s < cfg.high or t < tr.armed_at:
            tr.dwell_start = None
            return []
        if tr.dwell_start is None:
            tr.begin_span(t)
        tr.add(x)
        if t - tr.dwell_start >= cfg.min_dwell - 1e-9:  # tolerance: frame times are sums of floats
            tr.active = True
            tr.last_emit = t
            return [self._event("start", track_id, tr, t)]
        return []

    def end_track(self, track_id: int, t: float | None = None) -> list[AlertEvent]:
        """Forget a track now (e.g. the tracker dropped it); its active alert ends at ``t`` or when last seen."""
        tr = self._tracks.pop(track_id, None)
        if tr is None or not tr.active:
            return []
        return [self._event("end", track_id, tr, tr.last_seen if t is None else float(t))]

    def expire(self, t: float, keep: Iterable[int] = ()) -> list[AlertEvent]:
        """End and forget tracks not seen for more than ``track_timeout`` (except those in ``keep``)."""
        keep = set(keep)
        gone = [tid for tid, tr in self._tracks.items()
                if tid not in keep and t - tr.last_seen > self.config.track_timeout + 1e-9]
        events: list[AlertEvent] = []
        for tid in sorted(gone):
            events += self.end_track(tid)
        return events

    def flush(self, t: float) -> list[AlertEvent]:
        """The stream closed at ``t``: every active alert ends at ``t``; all state is cleared."""
        events: list[AlertEvent] = []
        for tid in sorted(self._tracks):
            events += self.end_track(tid, t)
        self._tracks.clear()
        return events

    # ---- internals -----------------------------------------------------------------------------------

    def _smooth(self, tr: _Track, x: float) -> float:
        cfg = self.config
        if cfg.k_of_n is not None:
            k, n = cfg.k_of_n
            tr.window.append(x)
            while len(tr.window) > n:
                tr.window.popleft()
            if len(tr.window) < k:
                return 0.0
            return sorted(tr.window, reverse=True)[k - 1]
        if tr.smoothed is None:  # the first sample starts the average (no bias towards 0)
            return x
        return cfg.ema_alpha * x + (1.0 - cfg.ema_alpha) * tr.smoothed

    def _event(self, event: str, track_id: int, tr: _Track, t_end: float) -> AlertEvent:
        return AlertEvent(event=event, track_id=track_id, t_start=tr.dwell_start if tr.dwell_start is not None
                          else t_end, t_end=t_end, peak=tr.peak, mean=tr.mean, kind=self.kind,
                          verified=self.verified)
