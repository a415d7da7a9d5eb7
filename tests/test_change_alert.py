"""The change alert (engines/deepfake/change.py) on synthetic per-track score streams: a face whose own score
steps up and stays up raises one ``kind="change"`` alert; a face that just scores high, a blip, or a track too
young for a baseline raises none; a sustained step is never absorbed into the baseline. Properties, not
exact floats: the exact timings belong to the AlertPolicy tests (test_alerts.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from swapwatch.engines.deepfake import KINDS, MODEL_POLICY, AlertPolicy, ChangeConfig, ChangePolicy

FPS = 25
CFG = ChangeConfig()


def feed(policy: ChangePolicy, score: Callable[[float], float | None], seconds: float, *, track_id: int = 1,
         start: float = 0.0, fps: int = FPS) -> list:
    """``score(t)`` for one track on every frame from ``start`` for ``seconds``; the events, then a flush."""
    events = []
    for i in range(round(seconds * fps)):
        t = round(start + i / fps, 6)
        events += policy.step(t, {track_id: score(t)})
    return events


def starts(events, kind: str = "change") -> list:
    return [e for e in events if e.event == "start" and e.kind == kind]


def step_at(t0: float, low: float = 0.3, high: float = 0.8) -> Callable[[float], float]:
    return lambda t: high if t >= t0 else low


def test_change_is_an_alert_kind_and_uses_the_alert_policy():
    assert "change" in KINDS
    p = ChangePolicy()
    assert isinstance(p.policy, AlertPolicy) and p.policy.kind == "change" and not p.policy.verified
    pc = CFG.policy
    assert (pc.high, pc.low, pc.min_dwell, pc.ema_alpha) == (CFG.step, CFG.release * CFG.step, CFG.min_dwell, 1.0)
    # The defaults the docstring explains: ~2 s of scores, a step of 0.25 in probability, ~1 s of dwell.
    assert (CFG.warmup, CFG.step, CFG.min_dwell) == (2.0, 0.25, 1.0)


def test_flat_high_score_raises_no_change_alert():
    """A person who just scores high: the model alert's fixed threshold fires, the change alert does not."""
    p = ChangePolicy()
    events = feed(p, lambda t: 0.9, 30.0) + p.flush(30.0)
    assert events == []
    assert p.baseline(1) is None  # flushed
    model = AlertPolicy(MODEL_POLICY)
    assert any(e.event == "start" for i in range(30 * FPS) for e in model.observe(1, i / FPS, 0.9))


def test_flat_noisy_score_raises_no_change_alert():
    # A real face's score wanders: +-0.1 around 0.5, in a slow wave and a fast zig-zag.
    p = ChangePolicy()
    events = feed(p, lambda t: 0.5 + 0.1 * ((int(t * 3) % 2) * 2 - 1) * (1 if int(t) % 2 else 0.5), 60.0)
    assert starts(events) == []


def test_step_held_raises_exactly_one_alert_from_the_step():
    t0, hold = 4.0, 3.0
    p = ChangePolicy()
    events = feed(p, step_at(t0), t0 + hold)
    (start,) = starts(events)
    assert all(e.kind == "change" and e.track_id == 1 and not e.verified for e in events)
    # t_start is when the dwell began: within the dwell of the step; `start` comes one dwell later.
    assert t0 <= start.t_start <= t0 + CFG.min_dwell
    assert start.t_end == pytest.approx(start.t_start + CFG.min_dwell, abs=1.5 / FPS)
    # peak and mean are rises over the baseline (0.3): at least the step, at most the full 0.5.
    assert CFG.step <= start.mean <= start.peak <= 0.5 + 1e-9
    assert p.baseline(1) == pytest.approx(0.3, abs=0.01) and 1 in p.active
    end = p.flush(t0 + hold)
    assert [e.event for e in end] == ["end"] and end[0].t_start == start.t_start
    assert len(starts(events + end)) == 1


def test_step_down_ends_the_alert_and_a_later_step_alerts_again():
    p = ChangePolicy()
    events = feed(p, lambda t: 0.8 if 4.0 <= t < 7.0 or t >= 12.0 else 0.3, 15.0)
    change = [e for e in events if e.event in ("start", "end")]
    assert [e.event for e in change] == ["start", "end", "start"]
    assert 7.0 <= change[1].t_end <= 8.0  # ended soon after the score went back down
    assert change[2].t_start >= 12.0


def test_short_blip_raises_nothing():
    p = ChangePolicy()
    blip = feed(p, lambda t: 0.9 if 4.0 <= t < 4.5 else 0.3, 10.0)
    assert starts(blip) == []


def test_track_younger_than_the_warm_up_raises_nothing():
    p = ChangePolicy()
    # Present from 0 s; a step at 0.5 s and a long hold: the warm-up's median is the stepped level.
    events = feed(p, step_at(0.5), CFG.warmup - 0.1)
    assert events == [] and p.baseline(1) is None and p.rise(1) is None
    events = feed(p, step_at(0.5), 10.0, start=CFG.warmup - 0.1 + 1 / FPS)
    assert starts(events) == [] and p.baseline(1) == pytest.approx(0.8)
    # Scores that stop short of the warm-up's minimum count: no baseline, whatever the time.
    sparse = ChangePolicy(ChangeConfig(min_scores=5, track_timeout=10.0))
    assert sparse.step(0.0, {2: 0.1}) == [] and sparse.step(3.0, {2: 0.1}) == [] and sparse.step(6.0, {2: 0.9}) == []
    assert sparse.baseline(2) is None
    # Present without scores (the detector's window filling up) does not count either.
    silent = ChangePolicy()
    assert feed(silent, lambda t: None if t < 5.0 else 0.3, 6.0) == [] and silent.baseline(1) is None


def test_baseline_is_not_absorbed_during_a_sustained_step():
    p = ChangePolicy()
    events = feed(p, step_at(4.0), 124.0)  # the step held two minutes, four baseline half-lives
    assert len(starts(events)) == 1 and not [e for e in events if e.event == "end"]
    assert p.baseline(1) == pytest.approx(0.3, abs=0.02) and 1 in p.active
    assert p.rise(1) == pytest.approx(0.5, abs=0.02)
    # Without an alert, the same EMA does follow a small (sub-step) rise: slow drift is absorbed.
    drift = ChangePolicy()
    assert starts(feed(drift, step_at(4.0, 0.3, 0.45), 124.0)) == []
    assert drift.baseline(1) > 0.42
    frozen = ChangePolicy(ChangeConfig(baseline_halflife=None))
    feed(frozen, step_at(4.0, 0.3, 0.45), 60.0)
    assert frozen.baseline(1) == pytest.approx(0.3)


def test_tracks_are_judged_apart_and_forgotten_after_the_timeout():
    p = ChangePolicy()
    events = []
    for i in range(10 * FPS):
        t = i / FPS
        scores = {1: 0.8 if t >= 4.0 else 0.3, 2: 0.85}  # track 2 just scores high
        if 6.0 <= t < 7.5:
            del scores[1]  # track 1 leaves for 1.5 s (> track_timeout): its alert ends, its baseline goes
        events += p.step(t, scores)
    assert [(e.track_id, e.event) for e in events if e.event != "update"] == [(1, "start"), (1, "end")]
    assert 5.9 <= events[-1].t_end < 6.0  # ended when last seen
    # Back at 7.5 s, it warms up again: on its stepped-up level, so no new alert.
    assert p.baseline(1) == pytest.approx(0.8) and p.baseline(2) == pytest.approx(0.85)


def test_bad_settings_are_refused():
    for bad in (dict(step=0.0), dict(step=1.5), dict(release=1.5), dict(warmup=-1.0), dict(min_scores=0),
                dict(fast_halflife=0.0), dict(baseline_halflife=0.0), dict(min_dwell=-1.0), dict(update_every=0.0)):
        with pytest.raises(ValueError):
            ChangeConfig(**bad)


def test_server_metrics_count_change_alerts():
    """/metrics builds its labels from KINDS: change alerts are counted (and zero from the start)."""
    from swapwatch.stream.metrics import ServerStats, render_prometheus

    stats = ServerStats()
    text = render_prometheus(stats, sessions=0, max_sessions=1, queue_depth=0, uptime=1.0)
    assert 'swapwatch_alerts_total{kind="change",event="start"} 0' in text
    stats.alerts[("change", "start")] = 1
    text = render_prometheus(stats, sessions=0, max_sessions=1, queue_depth=0, uptime=1.0)
    assert 'swapwatch_alerts_total{kind="change",event="start"} 1' in text
    assert 'swapwatch_alerts_active{kind="change"} 1' in text
