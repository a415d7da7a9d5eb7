"""The HTTP server on loopback: health, the page, and source-face upload validation."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from swapwatch.config import Config, ServerConfig
from swapwatch.stream.server import SwapwatchServer


def with_server(detector, scenario, *, server=None, **options):
    """``scenario(http, server)`` against a live server; ``options`` are ServerConfig fields (uploads up to
    2 MiB unless they say)."""
    async def main():
        config = Config(server=ServerConfig(**{"max_upload_bytes": 2 * 1024 * 1024, **options}))
        nonlocal server
        server = server or SwapwatchServer(config, detector)
        async with TestServer(server.app(), host="127.0.0.1") as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                return await scenario(http, server)

    return asyncio.run(main())


def form(data: bytes, *, filename: str = "face.jpg", content_type: str = "image/jpeg", field: str = "file"):
    fd = aiohttp.FormData()
    fd.add_field(field, data, filename=filename, content_type=content_type)
    return fd


def test_health_and_page(detector):
    async def scenario(http, server):
        async with http.get("/health") as r:
            assert r.status == 200
            body = await r.json()
            assert body["status"] == "ok" and body["detector"] == "yunet"
        async with http.get("/") as r:
            assert r.status == 200 and "swapwatch" in await r.text()

    with_server(detector, scenario)


def test_upload_real_face(detector, face_photos):
    photo = face_photos[0]

    async def scenario(http, server):
        async with http.post("/sources", data=form(photo.read_bytes(), content_type="image/png"
                                                   if photo.suffix == ".png" else "image/jpeg")) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert len(body["id"]) >= 20 and server.sources.get(body["id"]) is not None
        assert body["faces"] == 1 and len(body["face"]["landmarks"]) == 5

    with_server(detector, scenario)


def test_upload_answers_with_the_source_quality(detector, face_photos, caplog):
    """A turned head is accepted (200) but judged poor, with why and what to use instead; a frontal photo is ok."""
    by_name = {p.name: p for p in face_photos}
    turned, frontal = by_name["intel_headpose_female_frame0.png"], by_name["max_Chris.jpeg"]

    async def scenario(http, server):
        replies = {}
        for photo, ctype in ((turned, "image/png"), (frontal, "image/jpeg")):
            async with http.post("/sources", data=form(photo.read_bytes(), content_type=ctype)) as r:
                assert r.status == 200, await r.text()
                replies[photo.name] = await r.json()
        assert len(server.sources) == 2  # both kept: the judgement advises, it does not refuse
        return replies

    with caplog.at_level("INFO", logger="swapwatch.stream.server"):
        replies = with_server(detector, scenario)
    poor = replies[turned.name]["quality"]
    assert poor["ok"] is False
    problem = next(p for p in poor["problems"] if p["code"] == "turned-head")
    assert problem["severity"] == "poor" and "frontal photo" in problem["message"]
    assert poor["measures"]["faces"] == 1 and abs(poor["measures"]["yaw_deg"]) > 30
    good = replies[frontal.name]["quality"]
    assert good == {"ok": True, "problems": [], "measures": good["measures"]}
    assert good["measures"]["eye_distance_px"] > 50
    logged = [r.getMessage() for r in caplog.records if "judged poor" in r.getMessage()]
    assert len(logged) == 1 and "turned-head" in logged[0]


@pytest.mark.parametrize("case,status", [("text", 400), ("no_face", 422), ("too_big", 413),
                                         ("wrong_type", 415), ("wrong_field", 400), ("not_multipart", 400)])
def test_upload_rejections(detector, case, status):
    blank = cv2.imencode(".jpg", np.full((240, 320, 3), 127, np.uint8))[1].tobytes()

    async def scenario(http, server):
        kwargs = {
            "text": {"data": form(b"hello, not an image")},
            "no_face": {"data": form(blank)},
            "too_big": {"data": form(b"\xff" * (300 * 1024))},
            "wrong_type": {"data": form(blank, content_type="application/pdf")},
            "wrong_field": {"data": form(blank, field="photo")},
            "not_multipart": {"json": {"file": "x"}},
        }[case]
        async with http.post("/sources", **kwargs) as r:
            assert r.status == status, await r.text()
            assert "error" in await r.json()
        assert len(server.sources) == 0
        async with http.get("/health") as r:  # the server carries on
            assert r.status == 200

    with_server(detector, scenario, max_upload_bytes=256 * 1024)


# ---- the frame path without WebRTC: parity, batching, stand-ins, metrics ---------------------------------------

@pytest.fixture(scope="module")
def grid_frames(clips):
    import av

    with av.open(str(next(c for c in clips if c.name.startswith("grid_")))) as c:
        return [f for _, f in zip(range(6), c.decode(video=0))]


@pytest.fixture(scope="module")
def chris(face_photos, detector):
    from swapwatch.stream.sources import SourceStore

    image = cv2.imread(str(next(p for p in face_photos if p.name == "max_Chris.jpeg")))
    return SourceStore().add(image, max(detector.detect(image), key=lambda f: f.area))


def test_batched_frame_path_matches_swap_pipeline(detector, grid_frames, chris):
    """prepare + generate + finish (the worker's seam) gives SwapPipeline.process's frame, labelled."""
    from swapwatch.engines.swap import ClassicSwapper, SwapOptions, SwapPipeline, SyntheticLabeller
    from swapwatch.stream.offer import SessionSettings
    from swapwatch.stream.processing import FrameProcessor, to_yuv420p

    swapper = ClassicSwapper()
    processor = FrameProcessor(detector, swapper, SessionSettings(mode="swap", source=chris.id), chris)
    pipeline = SwapPipeline(detector, swapper, options=SwapOptions(), labeller=SyntheticLabeller())
    pipeline.add_source(chris.image)
    for i, frame in enumerate(grid_frames):
        plan = processor.prepare(frame, i / 25)
        assert plan.crops is not None and len(plan.crops) == 1
        plan.generated = swapper.generate(plan.crops, plan.sources)
        result = processor.finish(plan)
        expected = pipeline.process(frame.to_ndarray(format="bgr24"), i / 25)
        assert result.swapped == 1 and not result.held
        assert np.array_equal(result.yuv, to_yuv420p(expected.frame)), i


def test_worker_batches_faces_across_sessions(detector, grid_frames, chris):
    from swapwatch.engines.swap import ClassicSwapper
    from swapwatch.stream.metrics import ServerStats
    from swapwatch.stream.offer import SessionSettings
    from swapwatch.stream.processing import FrameProcessor
    from swapwatch.stream.worker import InferenceWorker

    class CountingSwapper(ClassicSwapper):
        def __init__(self):
            super().__init__()
            self.batches = []

        def generate(self, target_crops, sources):
            self.batches.append(len(target_crops))
            return super().generate(target_crops, sources)

    swapper = CountingSwapper()
    worker = InferenceWorker(ServerStats(), batch_window=0.5)  # long window: both sessions' frames meet
    worker.start()
    try:
        settings = SessionSettings(mode="swap", source=chris.id)
        processors = [worker.call(FrameProcessor, detector, swapper, settings, chris).result() for _ in range(3)]
        for _ in processors:
            worker.attach()
        futures = [worker.submit(p, grid_frames[0], 0.0) for p in processors]
        results = [f.result(timeout=30) for f in futures]
    finally:
        worker.stop()
    assert swapper.batches == [3]  # one generate call for the three sessions' faces
    assert all(r.swapped == 1 and "generate" in r.timings and "detect" in r.timings for r in results)
    assert worker.stats.batch_sizes.count == 1


def test_stand_ins_never_show_the_raw_frame_in_swap_mode(grid_frames):
    import av

    from swapwatch.stream.metrics import SessionStats
    from swapwatch.stream.processing import Processed, to_yuv420p
    from swapwatch.stream.tracks import ProcessedTrack

    raw = grid_frames[0].reformat(format="yuv420p")
    raw.pts, raw.time_base = 1234, grid_frames[0].time_base

    async def main(mode: str):
        stats = SessionStats()
        track = ProcessedTrack(stats, deadline=0.05, capacity=4, raw_allowed=lambda: mode == "monitor")
        loop = asyncio.get_running_loop()
        track.push(raw, loop.time())  # never processed: a stand-in goes out after the deadline
        first = await track.recv()
        swapped = to_yuv420p(np.full((288, 360, 3), 90, np.uint8))
        slot = track.push(raw, loop.time())
        slot.resolve(Processed(swapped, 1, 1, False, [], {}))
        track.processed(slot.result.result())
        second = await track.recv()
        track.push(raw, loop.time())  # late again: now the last processed frame is repeated
        third = await track.recv()
        track.stop()
        return first, second, third, stats.counters

    first, second, third, counters = asyncio.run(main("swap"))
    raw_planes = raw.to_ndarray()
    assert isinstance(first, av.VideoFrame) and first.pts == 1234 and first.time_base == raw.time_base
    assert not np.array_equal(first.to_ndarray(), raw_planes) and first.to_ndarray()[:288].mean() < 40  # black card
    assert (second.to_ndarray()[:288] == third.to_ndarray()[:288]).all()  # the swapped frame, repeated
    assert counters.frames_out == 3 and counters.repeated == 2 and counters.dropped == 2
    first, *_ = asyncio.run(main("monitor"))
    assert first is raw  # in monitor mode the user's own frame may pass


def test_metrics_endpoint_is_prometheus_text(detector):
    import re

    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})?'
                        r' (-?[0-9.e+-]+|NaN|[+-]Inf)$')

    async def scenario(http, server):
        server.stats.stages.add("detect", 0.012)
        async with http.get("/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return await r.text()

    text = with_server(detector, scenario)
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
    for name in ("swapwatch_sessions", "swapwatch_frames_in_total", "swapwatch_frames_out_total",
                 "swapwatch_frames_dropped_total", "swapwatch_stage_seconds", "swapwatch_added_latency_seconds"):
        assert f"# TYPE {name} " in text
    assert 'swapwatch_stage_seconds{stage="detect",quantile="0.5"} 0.012' in text


def test_session_settings_validation():
    from swapwatch.stream.offer import OfferError, OfferRequest, SessionSettings

    # "largest" is the page's default and join's.
    assert SessionSettings(mode="monitor").to_json() == {"mode": "monitor", "source": None, "faces": "largest"}
    for kwargs in ({"mode": "swap"}, {"mode": "x"}, {"mode": "monitor", "faces": "two"}):
        with pytest.raises(OfferError):
            SessionSettings(**kwargs)
    with pytest.raises(OfferError, match="larger"):
        OfferRequest.parse(b"x" * 100, max_bytes=10)


def test_monitor_sessions_get_their_own_deepfake_windows(detector, clips):
    """With a deepfake detector, each monitor session's FrameMonitor scores faces with a fork of it: the
    same loaded models, separate per-track windows; /health names the model."""
    import av

    from swapwatch.config import DeepfakeConfig
    from swapwatch.engines.deepfake import create_deepfake_detector
    from swapwatch.stream.offer import SessionSettings

    config = Config(deepfake=DeepfakeConfig(feature_stride=1, score_stride=2))
    deepfake = create_deepfake_detector(config.deepfake)
    server = SwapwatchServer(config, detector, deepfake=deepfake)
    first = server._new_processor(SessionSettings(mode="monitor"), None)
    second = server._new_processor(SessionSettings(mode="monitor"), None)
    a, b = first.monitor.detector, second.monitor.detector
    assert a is not b and a is not deepfake and a.scorer is deepfake.scorer and a.head is deepfake.head
    with av.open(str(next(c for c in clips if c.name.startswith("grid_")))) as c:
        frames = [f for _, f in zip(range(deepfake.window + 4), c.decode(video=0))]
    scores = []
    for i, frame in enumerate(frames):
        first.finish(first.prepare(frame, i / 25))
        scores.append(dict(first.monitor.state.model_scores))
    assert not any(scores[:deepfake.window - 1])  # a track is scored once its window is full
    assert any(scores[deepfake.window - 1:]) and all(0 <= p <= 1 for s in scores for p in s.values())
    assert b.latest(next(iter(scores[-1] or {0: 0}))) is None  # the other session's windows are untouched

    async def scenario(http, server):
        async with http.get("/health") as r:
            assert (await r.json())["deepfake_model"] == "default"

    with_server(detector, scenario, server=server)


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels (the data stops after a few rows): a
    decompression bomb as far as the header says, a few kilobytes on the wire."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 8)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(30000, 30000), (9000, 9000)])
def test_decompression_bombs_are_refused_from_the_header(detector, width, height):
    """A photo declaring more pixels than max_image_pixels gets 413 before anything is decoded (issue 17: a
    2.8 MB PNG declaring 30000x30000 was decoded to 2.6 GB); 9000x9000 is under Pillow's own bomb limit but
    over swapwatch's 50 MP."""
    async def scenario(http, server):
        async with http.post("/sources", data=form(png_declaring(width, height), filename="bomb.png",
                                                   content_type="image/png")) as r:
            body = await r.json()
            assert r.status == 413 and "pixels" in body["error"] and "bomb.png" in body["error"], body
        assert len(server.sources) == 0

    with_server(detector, scenario)


def test_large_photos_are_kept_shrunk(detector, face_photos):
    """A photo larger than max_source_side is kept at that size (no full-size copy); the answer's size and face
    box are in the kept pixels, which the page scales back onto its preview."""
    photo = cv2.imread(str(next(p for p in face_photos if p.name == "max_Chris.jpeg")))
    big = cv2.resize(photo, (photo.shape[1] * 4, photo.shape[0] * 4), interpolation=cv2.INTER_CUBIC)

    async def scenario(http, server):
        data = cv2.imencode(".jpg", big)[1].tobytes()
        async with http.post("/sources", data=form(data)) as r:
            body = await r.json()
            assert r.status == 200, body
        kept = server.sources.get(body["id"]).image
        assert max(kept.shape[:2]) == 1024 and body["size"] == [kept.shape[1], kept.shape[0]]
        x1, y1, x2, y2 = body["face"]["box"]
        assert 0 <= x1 < x2 <= kept.shape[1] and 0 <= y1 < y2 <= kept.shape[0]

    with_server(detector, scenario, max_source_side=1024, max_upload_bytes=8 * 1024 * 1024)


def test_the_access_log_keeps_no_secrets(tmp_path):
    """At --log-level debug the access log is on: a token in the query never reaches it, nor a whole session
    id (issue 17: `?token=SECRET` and full session ids were logged on every /ws and DELETE line)."""
    import urllib.error
    import urllib.request

    from browser_util import ServerProcess

    from swapwatch.stream.security import redact_line

    assert redact_line("/ws/AbCdEf0123456789xyz?token=s3cret&x=1") == "/ws/AbCdEf…?token=***&x=1"
    assert redact_line("/sessions/AbCdEf0123456789xyz") == "/sessions/AbCdEf…"
    log = tmp_path / "serve.log"
    secret, session = "t0p-s3cret-token", "Zq9xWv8uTs7rQp6oNm5lKj4i"
    with ServerProcess("--model", "classic", "--deepfake-model", "off", "--log-level", "debug", token=secret,
                       log_path=log) as server:
        for path in (f"ws/{session}?token={secret}", f"sessions/{session}?token={secret}"):
            request = urllib.request.Request(server.url + path, method="DELETE" if "sessions" in path else "GET")
            try:
                urllib.request.urlopen(request, timeout=5).close()
            except urllib.error.HTTPError as exc:
                assert 400 <= exc.code < 500, exc  # no such session, or the token not taken from a query here
    text = log.read_text()
    assert secret not in text and session not in text, text[-2000:]
    assert f"/ws/{session[:6]}…?token=***" in text and f"/sessions/{session[:6]}…" in text, text[-2000:]


def test_health_names_a_model_folder_without_its_path(detector):
    """/health is public: a --deepfake-model given as an absolute path shows as its folder's name only."""
    from swapwatch.config import DeepfakeConfig
    from swapwatch.engines.deepfake import DEFAULT_MODEL_DIR, create_deepfake_detector

    config = Config(deepfake=DeepfakeConfig(model=str(DEFAULT_MODEL_DIR.resolve())))
    server = SwapwatchServer(config, detector, deepfake=create_deepfake_detector(config.deepfake))

    async def scenario(http, server):
        async with http.get("/health") as r:
            body = await r.json()
        assert body["deepfake_model"] == DEFAULT_MODEL_DIR.name and "/" not in json.dumps(body["deepfake_model"])

    with_server(detector, scenario, server=server)
