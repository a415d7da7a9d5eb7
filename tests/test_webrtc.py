"""WebRTC end to end, in process: real aiortc peers on one event loop, loopback only, real VP8 both ways.

A probe client (swapwatch.stream.probe) streams a shared GRID clip to the server and receives the processed
track; the server runs YuNet and the weight-free classic swapper on its inference worker.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from swapwatch.config import Config, ServerConfig
from swapwatch.engines.swap import ClassicSwapper, Watermarker
from swapwatch.stream.probe import Probe, ProbeReport
from swapwatch.stream.server import SwapwatchServer

# ---- helpers shared with test_stream_robustness.py ---------------------------------------------------------

def decode_clip(path: Path, limit: int | None = None) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    return frames[:limit]


def run_server(detector, scenario, *, swapper=None, monitor_factory=None, **server_options):
    """Run ``scenario(http, server)`` against a live server on 127.0.0.1 (own event loop)."""

    async def main():
        config = Config(server=ServerConfig(**server_options))
        server = SwapwatchServer(config, detector, swapper or ClassicSwapper(), monitor_factory=monitor_factory)
        async with TestServer(server.app(), host="127.0.0.1") as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                return await scenario(http, server)

    return asyncio.run(main())


async def upload(http: aiohttp.ClientSession, photo: Path, headers: dict | None = None) -> str:
    fd = aiohttp.FormData()
    fd.add_field("file", photo.read_bytes(), filename=photo.name, content_type="image/jpeg")
    async with http.post("/sources", data=fd, headers=headers or {}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["id"]


async def wait_for(predicate, timeout: float, step: float = 0.05) -> float:
    """Seconds until ``predicate()`` holds (fails the test after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - start


def check_swapped(probe: Probe, clip: list[np.ndarray], face_boxes: list) -> tuple[int, list, int]:
    """(frames back, the raw ones, the watermarked ones) among the returned frames matched to a sent frame.
    A frame is raw when it is the input frame with the same timestamp: its face did not change and it has no
    watermark (a stand-in repeats a swapped frame; the starting card is black)."""
    marker = Watermarker()
    mapping = probe.mapping()
    back = [r for r in probe.received if r.pts in mapping and mapping[r.pts] < probe.track.count]  # flush aside
    raw, watermarked = [], 0
    for r in back:
        index = mapping[r.pts] % len(clip)  # the probe loops over the clip
        sent = clip[index]
        x1, y1, x2, y2 = face_boxes[index]
        w, h = x2 - x1, y2 - y1
        inner = (slice(y1 + h // 4, y2 - h // 6), slice(x1 + w // 5, x2 - w // 5))
        face_diff = np.abs(r.image[inner].astype(np.int16) - sent[inner].astype(np.int16)).mean()
        found = marker.detect(r.image).found
        watermarked += found
        if not (face_diff > 6.0 or found):
            raw.append((index, round(float(face_diff), 2)))
    return len(back), raw, watermarked


def describe(report: ProbeReport) -> str:
    return (f"{report.received}/{report.sent} frames back at {report.fps_back:.1f} fps, added latency (same pts) "
            f"p50 {report.latency_ms['p50']} ms p95 {report.latency_ms['p95']} ms, content age p50 "
            f"{report.content_age_ms['p50']} ms p95 {report.content_age_ms['p95']} ms")


# ---- fixtures ----------------------------------------------------------------------------------------------

# ---- tests -------------------------------------------------------------------------------------------------

def test_swap_session_returns_swapped_frames_in_order(detector, clip, source_photo):
    face_boxes = [detector.detect(f)[0].box.astype(int) for f in clip]

    async def scenario(http, server):
        source = await upload(http, source_photo)
        probe = Probe(http, clip, mode="swap", source=source, keep_images=True, websocket=True)
        await probe.start()
        report = await probe.run(tail=1.0)
        session = server.sessions[probe.session]
        print(f"\nserver side: {session.stats.counters}, evicted {session.out.evicted}")
        await probe.close()
        await wait_for(lambda: not server.sessions, 5.0)
        return probe, report, server

    probe, report, server = run_server(detector, scenario)
    print(f"swap, 1 session, 360x288 @ 25 fps: {describe(report)}")
    print("missing:", sorted(set(range(report.sent)) - set(report.indices)))
    assert report.fraction_back >= 0.95, describe(report)
    assert report.in_order and report.pts_increasing and report.unmatched == 0

    back, raw, watermarked = check_swapped(probe, clip, face_boxes)
    assert not raw, raw
    assert watermarked >= 0.9 * back

    types = [m["type"] for m in probe.messages]
    assert types[0] == "hello" and probe.messages[0]["mode"] == "swap" and "metrics" in types
    metrics = [m for m in probe.messages if m["type"] == "metrics"][-1]
    assert metrics["frames_in"] > 0 and metrics["frames_out"] > 0 and "detect" in metrics["stages_ms"]
    assert server.stats.counters.frames_out >= report.received
    assert server.worker.queue_depth == 0


def test_monitor_session_returns_frames_and_talks_on_the_websocket(detector, clip):
    async def scenario(http, server):
        probe = Probe(http, clip[:50], mode="monitor", websocket=True)
        await probe.start()
        report = await probe.run(tail=1.0)
        await probe.close()
        return probe, report

    probe, report = run_server(detector, scenario, metrics_interval=0.5)
    print(f"\nmonitor, 1 session: {describe(report)}")
    assert report.fraction_back >= 0.8 and report.in_order
    hello = probe.messages[0]
    assert hello == {"type": "hello", "session": probe.session, "mode": "monitor", "source": None, "faces": "all"}
    metrics = [m for m in probe.messages if m["type"] == "metrics"]
    assert len(metrics) >= 2 and metrics[-1]["frames_in"] > 0
    assert set(metrics[-1]) >= {"t", "frames_in", "frames_out", "dropped", "fps_in", "fps_out", "latency_ms",
                                "stages_ms"}
    assert not [m for m in probe.messages if m["type"] == "alert"]  # the camera is not synthetic


def test_both_mode_alerts_on_its_own_watermark(detector, clip, source_photo):
    pytest.importorskip("swapwatch.engines.deepfake.monitor", reason="engines/deepfake/monitor.py (FrameMonitor) not present")

    async def scenario(http, server):
        source = await upload(http, source_photo)
        probe = Probe(http, clip[:50], mode="both", source=source, websocket=True)
        await probe.start()
        report = await probe.run(tail=1.0)
        await probe.close()  # the session's end closes the alert: "end" comes before the socket closes
        async with http.get("/metrics") as r:
            metrics = await r.text()
        return probe, report, metrics

    probe, report, metrics = run_server(detector, scenario)
    alerts = [m for m in probe.messages if m["type"] == "alert"]
    assert report.fraction_back >= 0.8
    assert alerts and alerts[0]["event"] == "start" and alerts[0]["kind"] == "watermark" and alerts[0]["verified"]
    assert alerts[-1]["event"] == "end" and alerts[-1]["t_end"] >= alerts[0]["t_start"]
    # /metrics counts the same alert messages the websocket carried, and none is left active.
    counts = dict(re.findall(r'^(swapwatch_alerts_\w+\{[^}]*\}) (\S+)$', metrics, re.M))
    for event in ("start", "update", "end"):
        sent = sum(1 for a in alerts if a["kind"] == "watermark" and a["event"] == event)
        assert float(counts[f'swapwatch_alerts_total{{kind="watermark",event="{event}"}}']) == sent, event
    assert float(counts['swapwatch_alerts_total{kind="model",event="start"}']) == 0  # --deepfake-model off here
    assert float(counts['swapwatch_alerts_active{kind="watermark"}']) == 0


class BandedScorer:
    """A deepfake scorer whose model has a REAL/FAKE band (0.3/0.7): every face scores 0.5 (UNCERTAIN) for the
    first 0.6 s of the session, then 0.95."""

    def __init__(self) -> None:
        from swapwatch.engines.deepfake import DetectorInfo

        self.info = DetectorInfo(threshold=0.7, real_threshold=0.3)

    def score_faces(self, frame_bgr, faces, t):
        return {f.track_id: 0.5 if t < 0.6 else 0.95 for f in faces if f.track_id is not None}


def test_monitor_session_sends_live_verdicts_on_the_websocket(detector, clip):
    """A real session whose model has a band: the websocket carries a `verdict` message when the face's live
    verdict changes (UNCERTAIN, then FAKE), not one per frame; verdicts are not alerts, so /metrics counts
    exactly the alert messages."""
    from swapwatch.engines.deepfake import FrameMonitor, MonitorConfig

    def monitor():
        return FrameMonitor(MonitorConfig(watermark_enabled=False), detector=BandedScorer())

    async def scenario(http, server):
        probe = Probe(http, clip[:50], mode="monitor", websocket=True)
        await probe.start()
        report = await probe.run(tail=1.0)
        await probe.close()
        async with http.get("/metrics") as r:
            metrics = await r.text()
        return probe, report, metrics

    probe, report, metrics = run_server(detector, scenario, monitor_factory=monitor)
    assert report.fraction_back >= 0.8
    verdicts = [m for m in probe.messages if m["type"] == "verdict"]
    print(f"\nverdict messages: {verdicts}")
    assert verdicts and all(set(m) == {"type", "track_id", "t", "verdict", "score"} for m in verdicts)
    first = verdicts[0]["track_id"]
    mine = [m for m in verdicts if m["track_id"] == first]
    assert [m["verdict"] for m in mine] == ["UNCERTAIN", "FAKE"]
    assert mine[0]["score"] == 0.5 and mine[0]["t"] < 0.6 and mine[1]["t"] >= 0.6 and mine[1]["score"] >= 0.7
    alerts = [m for m in probe.messages if m["type"] == "alert"]
    counts = dict(re.findall(r'^(swapwatch_alerts_total\{[^}]*\}) (\S+)$', metrics, re.MULTILINE))
    assert counts and sum(float(v) for v in counts.values()) == len(alerts)


def test_four_concurrent_sessions_all_receive_frames(detector, clip, source_photo):
    async def scenario(http, server):
        source = await upload(http, source_photo)
        probes = [Probe(http, clip[:50], mode="swap", source=source) for _ in range(4)]
        await asyncio.gather(*(p.start() for p in probes))
        assert len(server.sessions) == 4
        reports = await asyncio.gather(*(p.run(tail=1.5) for p in probes))
        await asyncio.gather(*(p.close() for p in probes))
        await wait_for(lambda: not server.sessions, 5.0)
        return reports, server

    reports, server = run_server(detector, scenario)
    batch_p50 = server.stats.batch_sizes.percentile(0.5)
    print(f"\n4 sessions (2 cores, clients and server in one process), faces per generate p50 {batch_p50}:")
    for report in reports:
        print("  " + describe(report))
    for report in reports:
        assert len(report.indices) >= 10 and report.pts_increasing
    assert server.stats.batch_sizes.count > 0


def test_recording_only_when_asked(detector, clip, source_photo, tmp_path):
    async def scenario(http, server):
        source = await upload(http, source_photo)
        for record in (False, True):
            probe = Probe(http, clip[:25], mode="swap", source=source, extra={"record": record})
            await probe.start()
            await probe.run(tail=0.5)
            await probe.close()
        await wait_for(lambda: not server.sessions, 5.0)

    run_server(detector, scenario, record_dir=str(tmp_path))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".mp4"  # the session that asked, and only that one
    frames = decode_clip(files[0])
    assert len(frames) >= 15
    assert sum(Watermarker().detect(f).found for f in frames) >= 0.8 * len(frames)  # what was sent: labelled
