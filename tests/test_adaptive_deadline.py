"""The adaptive frame deadline (issue 17): each session's deadline follows its own processing latency, between
a floor and ``frame_deadline``. Unit tests of the rule on synthetic latencies, then one real server on
loopback whose worker is fast, then suddenly slow, then fast again."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from test_stream_robustness import SlowDetector
from test_webrtc import run_server, upload, wait_for

from swapwatch.config import ServerConfig
from swapwatch.stream.metrics import ServerStats, SessionStats, render_prometheus
from swapwatch.stream.tracks import AdaptiveDeadline, ProcessedTrack

MS = 0.001


def feed(deadline: AdaptiveDeadline, latencies) -> AdaptiveDeadline:
    for latency in latencies:
        deadline.observe(latency)
    return deadline


# ---- the rule ----------------------------------------------------------------------------------------------

def test_the_maximum_holds_until_the_warm_up_is_done():
    d = AdaptiveDeadline(0.25, 0.05)  # warm-up 10
    assert d.current() == 0.25
    feed(d, [40 * MS] * 9)
    assert d.current() == 0.25  # 9 samples: not enough yet
    d.observe(40 * MS)
    assert d.current() == pytest.approx(1.5 * 0.040 + 0.010)  # 70 ms


def test_it_tracks_up_and_down_with_the_margin():
    d = feed(AdaptiveDeadline(0.25, 0.05), [60 * MS] * 50)
    assert d.current() == pytest.approx(1.5 * 0.060 + 0.010)  # 100 ms: p90 x 1.5 + 10 ms
    feed(d, [120 * MS] * 50)  # a lasting slowdown
    assert d.current() == pytest.approx(1.5 * 0.120 + 0.010)  # 190 ms
    feed(d, [40 * MS] * 50)  # recovered
    assert d.current() == pytest.approx(1.5 * 0.040 + 0.010)  # 70 ms


def test_it_is_clamped_between_the_floor_and_the_maximum():
    d = feed(AdaptiveDeadline(0.25, 0.05), [5 * MS] * 50)
    assert d.current() == 0.05  # 17.5 ms by the rule: the floor
    feed(d, [400 * MS] * 50)
    assert d.current() == 0.25  # 610 ms by the rule: never above frame_deadline
    feed(d, [-1.0] * 50)  # a clock oddity cannot push it below the floor
    assert d.current() == 0.05


def test_jitter_spikes_do_not_move_it_but_a_lasting_slowdown_does():
    """Up to 5 slow frames in the window of 50 (p90) leave the deadline where it is: those frames alone go out as
    stand-ins. The 6th raises it; as the slow frames leave the window it comes back down."""
    d = feed(AdaptiveDeadline(0.25, 0.05), [50 * MS] * 50)
    base = d.current()
    assert base == pytest.approx(0.085)
    rng = np.random.default_rng(0)
    feed(d, 50 * MS + rng.uniform(-10 * MS, 10 * MS, 50))  # ordinary jitter: +-10 ms
    assert abs(d.current() - base) <= 1.5 * 10 * MS + 1e-9
    feed(d, [50 * MS] * 50)
    for _ in range(5):  # 5 spikes in the window: ignored
        feed(d, [200 * MS] + [50 * MS] * 4)
    assert d.current() == pytest.approx(base)
    d.observe(200 * MS)  # the 6th slow frame in the window: it is a slowdown now
    assert d.current() == 0.25
    feed(d, [50 * MS] * 50)  # ...that has passed
    assert d.current() == pytest.approx(base)


def test_fixed_when_not_adaptive_and_checked_arguments():
    d = feed(AdaptiveDeadline(0.25, 0.05, adaptive=False), [10 * MS] * 100)
    assert d.current() == 0.25
    for kwargs in ({"maximum": 0.1, "minimum": 0.2}, {"maximum": 0.1, "minimum": 0.0},
                   {"maximum": 0.1, "warmup": 0}, {"maximum": 0.1, "window": 5, "warmup": 6},
                   {"maximum": 0.1, "quantile": 0.0}, {"maximum": 0.1, "factor": 0.5},
                   {"maximum": 0.1, "margin": -0.01}):
        with pytest.raises(ValueError):
            AdaptiveDeadline(**kwargs)


def test_config_fields_and_their_validation():
    c = ServerConfig()
    assert c.frame_deadline == 0.25 and c.frame_deadline_min == 0.05 and c.adaptive_deadline is True
    ServerConfig(frame_deadline=0.03)  # a floor above the maximum is the maximum: old configs stay valid
    for kwargs in ({"frame_deadline_min": 0.0}, {"frame_deadline_min": -0.1}, {"adaptive_deadline": "yes"}):
        with pytest.raises(ValueError):
            ServerConfig(**kwargs)


# ---- the outgoing track and the metrics --------------------------------------------------------------------

def test_the_track_sends_a_stand_in_at_the_adaptive_deadline(grid_frame):
    """A session whose frames take 10 ms: a frame that never comes is replaced after the floor (50 ms), not
    after frame_deadline (250 ms); the metrics message and /metrics show the deadline."""
    from swapwatch.stream.processing import Processed, to_yuv420p

    async def main():
        server = ServerStats()
        stats = SessionStats(server)
        track = ProcessedTrack(stats, deadline=AdaptiveDeadline(0.25, 0.05), capacity=4, raw_allowed=lambda: False)
        assert stats.message()["deadline_ms"] == 250.0
        loop = asyncio.get_running_loop()
        swapped = to_yuv420p(np.full((288, 360, 3), 90, np.uint8))
        for _ in range(12):
            slot = track.push(grid_frame, loop.time())
            slot.resolve(Processed(swapped, 1, 1, False, [], {}))
            track.processed(slot.result.result(), 0.010)
            await track.recv()
        track.push(grid_frame, loop.time())  # never processed
        t0 = time.perf_counter()
        await track.recv()
        waited = time.perf_counter() - t0
        track.stop()
        return waited, stats, server

    waited, stats, server = asyncio.run(main())
    print(f"\nstand-in after {waited * 1000:.0f} ms (deadline 50 ms, frame_deadline 250 ms)")
    assert 0.04 <= waited < 0.2
    assert stats.message()["deadline_ms"] == 50.0
    assert stats.counters.frames_out == 13 and stats.counters.repeated == 1 and stats.counters.dropped == 1
    text = render_prometheus(server, sessions=1, max_sessions=4, queue_depth=0, uptime=1.0)
    assert "# TYPE swapwatch_frame_deadline_seconds summary" in text
    assert "swapwatch_frame_deadline_seconds_count 13" in text


@pytest.fixture(scope="module")
def grid_frame(clips):
    import av

    with av.open(str(next(c for c in clips if c.name.startswith("grid_")))) as c:
        return next(c.decode(video=0)).reformat(format="yuv420p")


# ---- a real server: fast, suddenly slow, fast again --------------------------------------------------------

SLOW = 0.2  # the slowdown: 200 ms a frame (5 fps of processing for a 25 fps camera)


def test_the_deadline_follows_a_real_session_through_a_slowdown(detector, clip, source_photo):
    from swapwatch.stream.probe import Probe

    throttled = SlowDetector(detector, 0.0)  # its delay is changed mid-stream

    async def scenario(http, server):
        source = await upload(http, source_photo)
        probe = Probe(http, clip, mode="swap", source=source, count=25 * 60, websocket=True)
        await probe.start()
        await wait_for(lambda: probe.session in server.sessions, 5.0)
        session = server.sessions[probe.session]
        stats = session.stats
        phases = {}

        def mark(name):
            c = stats.counters
            phases[name] = {"t": time.monotonic(), "in": c.frames_in, "out": c.frames_out, "dropped": c.dropped,
                            "repeated": c.repeated, "latency_n": stats.latency.count, "deadline": stats.deadline}

        # (a) fast: the deadline drops well below frame_deadline.
        await wait_for(lambda: stats.counters.processed >= 20, 15.0)
        fast_wait = await wait_for(lambda: stats.deadline < 0.15, 10.0)
        await asyncio.sleep(1.0)
        mark("fast")
        # (b) a sudden slowdown: the deadline rises to frame_deadline, no further, and frames are shed.
        throttled.delay = SLOW
        rise_wait = await wait_for(lambda: stats.deadline >= 0.2, 10.0)
        mark("rise")
        fast_n, rise_n = phases["fast"]["latency_n"], phases["rise"]["latency_n"]
        highest = stats.deadline
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            highest = max(highest, stats.deadline)
            await asyncio.sleep(0.02)
        mark("slow")
        samples = stats.latency.samples()
        n = stats.latency.count
        slow_latency = samples[len(samples) - (n - rise_n):len(samples) - (n - phases["slow"]["latency_n"])]
        onset_latency = samples[len(samples) - (n - fast_n):len(samples) - (n - rise_n)]
        # (c) fast again: the deadline comes back down.
        throttled.delay = 0.0
        fall_wait = await wait_for(lambda: stats.deadline < 0.15, 10.0)
        mark("recovered")
        messages = [m for m in probe.messages if m["type"] == "metrics"]
        report = probe.report()
        await probe.close()
        return phases, highest, slow_latency, onset_latency, messages, report, (fast_wait, rise_wait, fall_wait)

    phases, highest, slow_latency, onset_latency, messages, report, waits = run_server(
        throttled, scenario, metrics_interval=0.5, adaptive_deadline=True)
    fast, rise, slow = phases["fast"], phases["rise"], phases["slow"]
    slow_in = slow["in"] - rise["in"]
    slow_out = slow["out"] - rise["out"]
    slow_dropped = slow["dropped"] - rise["dropped"]
    p50, p95 = np.percentile(slow_latency, [50, 95])
    half = len(slow_latency) // 2
    first, last = np.median(slow_latency[:half]), np.median(slow_latency[half:])
    shown = [m["deadline_ms"] for m in messages]
    onset = np.percentile(onset_latency, 95) if onset_latency else float("nan")
    print(f"\nfast: deadline {fast['deadline'] * 1000:.0f} ms (reached in {waits[0]:.1f} s); slowdown +{SLOW * 1000:.0f} ms:"
          f" deadline up to {highest * 1000:.0f} ms within {waits[1]:.1f} s; during 3 s of it {slow_in} frames in, "
          f"{slow_out} out, {slow_dropped} dropped, server-side added latency p50 {p50 * 1000:.0f} ms p95 "
          f"{p95 * 1000:.0f} ms (first half {first * 1000:.0f} ms, second {last * 1000:.0f} ms); recovered to "
          f"{phases['recovered']['deadline'] * 1000:.0f} ms in {waits[2]:.1f} s; deadline_ms on the websocket: {shown}; "
          f"onset ({len(onset_latency)} frames before the deadline rose) added latency p95 {onset * 1000:.0f} ms")
    # (a) fast processing: well below frame_deadline
    assert fast["deadline"] < 0.15
    # (b) the slowdown: the deadline rises, bounded by frame_deadline...
    assert rise["deadline"] > 1.3 * fast["deadline"] and highest <= 0.25 + 1e-9
    # ...frames are shed, not queued: most are dropped, yet the stream keeps its rate with stand-ins...
    assert slow_dropped >= 0.5 * slow_in and slow_out >= 0.8 * slow_in
    # ...and the added latency stays bounded by the deadline plus the sender's own time, without growing.
    assert p95 < 0.6 and last < first + 0.15
    # Until the deadline rose, the slow frames were shed at the low deadline: a fixed 250 ms deadline holds
    # each of them (and the frames behind it) for 250 ms.
    assert len(onset_latency) >= 5 and onset < 0.2
    # The websocket's metrics messages carried the deadline, low and high.
    assert shown and all(isinstance(v, float) for v in shown)
    assert min(shown) < 150 and max(shown) >= 200 and max(shown) <= 250
    assert report.in_order and report.pts_increasing
