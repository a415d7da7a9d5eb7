"""The alert policy on deterministic score sequences: exact events for every rule."""

from __future__ import annotations

import pytest

from swapwatch.engines.deepfake import KINDS, AlertEvent, AlertPolicy, AlertPolicyConfig

# No smoothing, no dwell, no refractory, no updates: each test switches on the rule it checks.
BARE = dict(high=0.7, low=0.4, ema_alpha=1.0, min_dwell=0.0, refractory=0.0, update_every=None, track_timeout=10.0)


def policy(**overrides) -> AlertPolicy:
    return AlertPolicy(AlertPolicyConfig(**{**BARE, **overrides}))


def feed(p: AlertPolicy, scores, *, track_id: int = 1, dt: float = 0.1) -> list[dict]:
    events = []
    for i, s in enumerate(scores):
        events += p.observe(track_id, round(i * dt, 6), s)
    return [e.to_json() for e in events]


def ev(event, t_start, t_end, peak, mean, track_id=1, kind="model", verified=False) -> dict:
    return AlertEvent(event, track_id, t_start, t_end, peak, mean, kind, verified).to_json()


def test_event_json_is_exactly_the_protocol_message():
    e = AlertEvent("start", 3, 1.23456, 2.5, 0.912345, 0.8, kind="watermark", verified=True)
    assert e.to_json() == {"type": "alert", "event": "start", "track_id": 3, "t_start": 1.235, "t_end": 2.5,
                           "peak": 0.9123, "mean": 0.8, "kind": "watermark", "verified": True}
    with pytest.raises(ValueError):
        AlertEvent("begin", 1, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        AlertEvent("start", 1, 0, 0, 0, 0, kind="other")
    assert AlertEvent("start", 1, 0, 0, 0.4, 0.3, kind="change").to_json()["kind"] == "change"


def test_hysteresis_starts_at_high_and_ends_below_low():
    events = feed(policy(), [0.2, 0.8, 0.6, 0.5, 0.3, 0.6, 0.9])
    assert events == [
        ev("start", 0.1, 0.1, 0.8, 0.8),
        # 0.6 and 0.5 are below high but not below low: the alert holds; 0.3 ends it.
        ev("end", 0.1, 0.4, 0.8, (0.8 + 0.6 + 0.5) / 3),
        # 0.6 after the end is not enough to restart; 0.9 is.
        ev("start", 0.6, 0.6, 0.9, 0.9),
    ]


def test_score_exactly_at_thresholds():
    # >= high starts, == low holds (off is strictly below low).
    assert feed(policy(), [0.7, 0.4, 0.39]) == [ev("start", 0.0, 0.0, 0.7, 0.7), ev("end", 0.0, 0.2, 0.7, 0.55)]


def test_ema_smoothing():
    # EMA with alpha 0.5: 0, 0.5, 0.75 (start), 0.875, 0.4375 (holds), 0.21875 (ends). Peak/mean are raw.
    p = policy(ema_alpha=0.5)
    assert feed(p, [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]) == [
        ev("start", 0.2, 0.2, 1.0, 1.0),
        ev("end", 0.2, 0.5, 1.0, 2 / 3),
    ]


def test_k_of_n_smoothing():
    # 2 of the last 3 >= high starts; fewer than 2 of the last 3 >= low ends.
    p = policy(k_of_n=(2, 3))
    assert feed(p, [0.9, 0.1, 0.9, 0.1, 0.1]) == [ev("start", 0.2, 0.2, 0.9, 0.9), ev("end", 0.2, 0.3, 0.9, 0.9)]


def test_min_dwell_needs_sustained_scores_and_reports_when_the_dwell_began():
    p = policy(min_dwell=0.3)
    # The dwell that starts at 0.0 breaks at 0.2; the one from 0.3 lasts 0.3 s at 0.6.
    events = feed(p, [0.8, 0.8, 0.5, 0.8, 0.9, 0.8, 0.8, 0.8])
    assert events == [ev("start", 0.3, 0.6, 0.9, (0.8 + 0.9 + 0.8 + 0.8) / 4)]


def test_a_dip_shorter_than_the_dwell_never_alerts():
    assert feed(policy(min_dwell=0.25), [0.9, 0.9, 0.1] * 5) == []


def test_refractory_blocks_a_new_start_until_it_has_passed():
    p = policy(refractory=0.5)
    events = feed(p, [0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    # End at 0.1 disarms until 0.6; the scores from 0.2 to 0.5 are ignored, the new alert begins at 0.6.
    assert events == [
        ev("start", 0.0, 0.0, 0.9, 0.9),
        ev("end", 0.0, 0.1, 0.9, 0.9),
        ev("start", 0.6, 0.6, 0.9, 0.9),
    ]


def test_refractory_then_dwell():
    p = policy(refractory=0.3, min_dwell=0.2)
    events = feed(p, [0.9, 0.9, 0.9, 0.1] + [0.9] * 8)
    # Ends at 0.3, armed again at 0.6; the new dwell runs from 0.6 to 0.8.
    assert events == [ev("start", 0.0, 0.2, 0.9, 0.9), ev("end", 0.0, 0.3, 0.9, 0.9), ev("start", 0.6, 0.8, 0.9, 0.9)]


def test_updates_at_most_every_update_every_seconds():
    p = policy(update_every=0.25)
    events = feed(p, [0.9, 0.8, 0.9, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    events += [e.to_json() for e in p.flush(1.05)]
    assert events == [
        ev("start", 0.0, 0.0, 0.9, 0.9),
        ev("update", 0.0, 0.3, 1.0, 0.9),
        ev("update", 0.0, 0.6, 1.0, (0.9 + 0.8 + 0.9 + 1.0 + 0.9 * 3) / 7),
        ev("update", 0.0, 0.9, 1.0, (0.9 + 0.8 + 0.9 + 1.0 + 0.9 * 6) / 10),
        ev("end", 0.0, 1.05, 1.0, (0.9 + 0.8 + 0.9 + 1.0 + 0.9 * 7) / 11),
    ]


def test_no_updates_when_disabled():
    p = policy(update_every=None)
    assert [e["event"] for e in feed(p, [0.9] * 30)] == ["start"]


def test_a_track_that_disappears_ends_its_alert_and_a_new_track_starts_clean():
    p = policy(track_timeout=0.15, ema_alpha=0.5)
    out = []
    out += p.step(0.0, {1: 0.9})
    out += p.step(0.1, {1: 0.9, 2: 0.2})
    out += p.step(0.2, {2: 0.2})  # track 1 unseen for 0.1 s: still within the timeout
    assert [e.to_json() for e in out] == [ev("start", 0.0, 0.0, 0.9, 0.9)]
    # Unseen for 0.2 s > 0.15: its alert ends at the last time it was seen; track 2 goes on.
    assert [e.to_json() for e in p.step(0.3, {2: 1.0})] == [ev("end", 0.0, 0.1, 0.9, 0.9)]
    assert p.smoothed(2) == pytest.approx(0.5 * 1.0 + 0.5 * 0.2)
    # Track id 1 seen again: no memory of its old average, refractory or alert.
    assert p.step(0.4, {1: 0.2, 2: 1.0}) == [AlertEvent("start", 2, 0.4, 0.4, 1.0, 1.0)]
    assert p.smoothed(1) == pytest.approx(0.2)


def test_a_track_present_without_a_score_stays_alive():
    p = policy(track_timeout=0.15)
    assert [e.event for e in p.step(0.0, {7: 0.9})] == ["start"]
    for i in range(1, 10):
        assert p.step(i * 0.1, {7: None}) == []
    assert p.active == {7: 0.9}
    ended = p.step(1.2, {})
    assert [(e.event, e.track_id, e.t_end) for e in ended] == [("end", 7, 0.9)]
    assert p.active == {}


def test_end_track_explicitly():
    p = policy()
    p.observe(4, 0.0, 0.9)
    p.observe(4, 0.1, 0.8)
    assert [e.to_json() for e in p.end_track(4, 0.15)] == [ev("end", 0.0, 0.15, 0.9, 0.85, track_id=4)]
    assert p.end_track(4) == []


def test_flush_ends_active_alerts_only_and_clears_state():
    p = policy(min_dwell=0.5)
    p.step(0.0, {1: 0.9, 2: 0.9})
    p.step(0.5, {1: 0.9, 2: 0.1})  # track 1 confirmed; track 2's dwell broke
    p.step(0.6, {1: 0.9, 3: 0.9})  # track 3 in dwell: never started, so no end either
    assert [e.to_json() for e in p.flush(0.7)] == [ev("end", 0.0, 0.7, 0.9, 0.9)]
    assert p.flush(0.8) == [] and p.active == {}


def test_kind_and_verified_are_carried_on_every_event():
    p = AlertPolicy(AlertPolicyConfig(**BARE), kind="watermark", verified=True)
    events = p.observe(-1, 0.0, 1.0) + p.flush(0.5)
    assert [(e.event, e.track_id, e.kind, e.verified) for e in events] == [
        ("start", -1, "watermark", True), ("end", -1, "watermark", True)]


def test_every_kind_is_a_valid_event_and_policy_kind():
    assert KINDS == ("model", "watermark", "change")
    for kind in KINDS:
        p = AlertPolicy(AlertPolicyConfig(**BARE), kind=kind)
        assert [e.to_json()["kind"] for e in p.observe(2, 0.0, 0.9)] == [kind]
    with pytest.raises(ValueError):
        AlertPolicy(kind="other")


def test_tracks_lists_the_tracks_followed():
    p = policy(track_timeout=0.15)
    p.step(0.0, {1: 0.2, 2: None})
    assert p.tracks == {1, 2}
    p.step(0.3, {2: None})  # track 1 timed out
    assert p.tracks == {2}
    p.flush(0.4)
    assert p.tracks == set()


def test_scores_are_clamped_and_nan_ignored():
    p = policy()
    assert [e.to_json() for e in p.observe(1, 0.0, 1.7)] == [ev("start", 0.0, 0.0, 1.0, 1.0)]
    assert p.observe(1, 0.1, float("nan")) == []
    assert [e.event for e in p.observe(1, 0.2, -3.0)] == ["end"]


@pytest.mark.parametrize("bad", [dict(high=0.3, low=0.5), dict(ema_alpha=0.0), dict(k_of_n=(3, 2)),
                                 dict(min_dwell=-1.0), dict(update_every=0.0), dict(high=1.5)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        AlertPolicyConfig(**{**BARE, **bad})
