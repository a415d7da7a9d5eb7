"""Hostile clients (issue 17): half-open offers from one address must not lock other clients out (item 3);
uploads from one address must not evict another client's source (item 6).

A session slot counts only sessions whose peer connection connected; offers still connecting have a budget of
their own (per client address and in all) and a short ICE deadline. Real aiortc offers on loopback: the
hostile client posts them from 127.0.0.1 and never lets ICE complete, the honest one comes from 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from types import SimpleNamespace

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from test_webrtc import decode_clip, wait_for

from swapwatch.config import Config, ServerConfig
from swapwatch.engines.swap import ClassicSwapper
from swapwatch.stream.probe import Probe, dribble_request_head, half_open_offer
from swapwatch.stream.server import PendingOffers, SwapwatchServer

HOSTILE, HONEST = "127.0.0.1", "127.0.0.2"  # both loopback: Linux routes all of 127.0.0.0/8 to lo


@pytest.fixture(scope="module")
def small_clip(clips) -> list[np.ndarray]:
    clip = decode_clip(next(c for c in clips if c.name.startswith("grid_")), limit=10)
    return [cv2.resize(f, (192, 144), interpolation=cv2.INTER_AREA) for f in clip]


# ---- the budget, unit level --------------------------------------------------------------------------------

def test_pending_budget_per_client_and_in_all():
    budget = PendingOffers(per_client=2, total=3)
    assert budget.refusal("a") is None
    budget.take("a")
    budget.take("a")
    assert budget.refusal("a") == "pending_client" and budget.refusal("b") is None
    budget.take("b")
    assert budget.total_pending == 3 and budget.refusal("c") == "pending"
    budget.release("a")
    assert budget.of("a") == 1 and budget.refusal("a") is None and budget.refusal("c") is None
    for client in ("a", "b"):
        budget.release(client)
    assert budget.total_pending == 0 and budget.of("a") == 0 and not budget._by_client


def test_pending_budget_configuration():
    assert ServerConfig().pending_limit == 2 * ServerConfig().max_sessions
    assert ServerConfig(max_sessions=3, max_pending=5).pending_limit == 5
    assert ServerConfig().pending_timeout < ServerConfig().connect_timeout
    for bad in ({"max_pending_per_client": 0}, {"max_pending": 0}, {"pending_timeout": 0}):
        with pytest.raises(ValueError):
            ServerConfig(**bad)


def test_a_session_connecting_to_a_full_server_is_refused_its_slot():
    """Slots are taken when a peer connects: the one that connects while every slot is taken gets none."""
    async def main():
        server = SwapwatchServer(Config(server=ServerConfig(max_sessions=1)), detector=None, swapper=ClassicSwapper())
        first, second = SimpleNamespace(id="first-session"), SimpleNamespace(id="second-session")
        for session in (first, second):
            server.pending.take("10.0.0.1")
            server._pending_client[session.id] = "10.0.0.1"
        assert server._on_connected(first) is True
        assert server._on_connected(second) is False  # the session closes itself ("server full")
        assert server.pending.total_pending == 0 and server._connected == {"first-session"}
        server._closed(first)
        assert not server._connected

    asyncio.run(main())


# ---- on loopback -------------------------------------------------------------------------------------------

def test_half_open_offers_do_not_lock_out_another_client(detector, small_clip):
    pending_timeout = 5.0  # the default; long enough that none expires during the barrage on a loaded machine

    async def main():
        config = Config(server=ServerConfig(pending_timeout=pending_timeout))  # 4 slots, 4 pending per client
        server = SwapwatchServer(config, detector, ClassicSwapper())
        async with TestServer(server.app(), host=HOSTILE) as ts:
            base = str(ts.make_url("/"))
            hostile = aiohttp.ClientSession(base_url=base, connector=aiohttp.TCPConnector(local_addr=(HOSTILE, 0)))
            honest = aiohttp.ClientSession(base_url=base, connector=aiohttp.TCPConnector(local_addr=(HONEST, 0)))
            async with hostile, honest:
                offers = await asyncio.gather(*(half_open_offer() for _ in range(20)))
                started = time.monotonic()
                statuses, refusals = [], []
                for sdp in offers:  # 20 half-open offers, as fast as the server answers
                    async with hostile.post("/offer", json={"sdp": sdp, "type": "offer", "mode": "monitor"}) as r:
                        statuses.append(r.status)
                        if r.status == 503:
                            refusals.append((r.headers.get("Retry-After"), await r.json()))
                barrage_s = time.monotonic() - started
                assert barrage_s < pending_timeout, barrage_s  # none expired during the barrage
                assert statuses.count(200) == 4 and statuses.count(503) == 16, statuses
                assert statuses[:4] == [200] * 4  # the budget fills, then everything is refused
                for retry_after, body in refusals:
                    assert retry_after == "5" and body["reason"] == "pending_client"
                    assert "connecting from your address" in body["error"]
                assert server.pending.of(HOSTILE) == 4 and not server._connected

                # Another client gets a session and frames flow, while the half-open offers are still pending.
                probe = Probe(honest, small_clip * 6, mode="monitor")
                await probe.start()
                assert server.pending.of(HOSTILE) == 4
                report = await probe.run(tail=0.5)
                assert probe.session in server._connected
                assert report.received >= 10, report
                async with honest.get("/health") as r:
                    health = await r.json()
                assert health["connected"] == 1
                await probe.close()

                # After the deadline the half-open sessions are gone and the client's budget is free again.
                await wait_for(lambda: server.pending.total_pending == 0, pending_timeout + 3.0)
                await wait_for(lambda: not server.sessions, 5.0)
                expired = time.monotonic() - started
                async with hostile.post("/offer", json={"sdp": offers[0], "type": "offer", "mode": "monitor"}) as r:
                    assert r.status == 200, await r.text()
                async with hostile.get("/metrics") as r:
                    metrics = await r.text()
                for session in list(server.sessions.values()):
                    await session.close("test over")
                return expired, dict(server.stats.sessions_closed), dict(server.stats.sessions_rejected), metrics

    expired, closed, rejected, metrics = asyncio.run(main())
    print(f"\nhalf-open offers expired after {expired:.1f} s; closed {closed}; rejected {rejected}")
    assert closed.get("ice-timeout") == 4 and expired < pending_timeout + 3.0
    assert rejected == {"pending_client": 16}
    assert 'swapwatch_sessions_rejected_total{reason="pending_client"} 16' in metrics
    assert "swapwatch_sessions_pending 1" in metrics  # the last offer, still connecting


# ---- sources: quotas and ownership (item 6) ----------------------------------------------------------------

def test_source_store_evicts_the_uploaders_own_and_never_a_source_in_use():
    from swapwatch.stream.sources import SourceQuotaExceeded, SourceStore

    used: set[str] = set()
    store = SourceStore(capacity=4, per_client=2, in_use=lambda: used)
    image, face = np.zeros((8, 8, 3), np.uint8), SimpleNamespace()
    a = store.add(image, face, owner="a")
    used.add(a.id)  # a's session uses it
    b1 = store.add(image, face, owner="b")
    b2 = store.add(image, face, owner="b")
    for _ in range(10):  # b over its quota: b's own oldest unused source goes each time
        store.add(image, face, owner="b")
    assert store.get(a.id) is a and store.of("b") == 2 and store.get(b1.id) is None and store.get(b2.id) is None
    c = store.add(image, face, owner="c")  # 4 in all: full from here on
    store.add(image, face, owner="d")  # evicts from the client holding the most (b), not a's source in use
    assert store.get(a.id) is a and store.get(c.id) is c and store.of("b") == 1
    used.update(s for s in store._items)  # everything in use
    with pytest.raises(SourceQuotaExceeded) as full:
        store.add(image, face, owner="e")
    assert full.value.status == 503
    solo = SourceStore(capacity=4, per_client=1, in_use=lambda: used)
    used.add(solo.add(image, face, owner="a").id)
    with pytest.raises(SourceQuotaExceeded) as mine:  # a's one source is in use: a must end a session first
        solo.add(image, face, owner="a")
    assert mine.value.status == 429 and "in use" in str(mine.value)


def test_sixty_four_uploads_from_one_client_do_not_evict_another_clients_source(detector, face_photos, small_clip):
    photo = next(p for p in face_photos if p.name == "max_Chris.jpeg").read_bytes()

    async def upload(http) -> tuple[int, dict]:
        fd = aiohttp.FormData()
        fd.add_field("file", photo, filename="face.jpg", content_type="image/jpeg")
        async with http.post("/sources", data=fd) as r:
            return r.status, await r.json()

    async def main():
        server = SwapwatchServer(Config(), detector, ClassicSwapper())  # 64 sources, 8 per client
        async with TestServer(server.app(), host=HOSTILE) as ts:
            base = str(ts.make_url("/"))
            hostile = aiohttp.ClientSession(base_url=base, connector=aiohttp.TCPConnector(local_addr=(HOSTILE, 0)))
            honest = aiohttp.ClientSession(base_url=base, connector=aiohttp.TCPConnector(local_addr=(HONEST, 0)))
            async with hostile, honest:
                status, body = await upload(honest)
                assert status == 200
                mine = body["id"]
                statuses = [(await upload(hostile))[0] for _ in range(64)]
                assert statuses == [200] * 64  # the flood is served, from the flooder's own quota
                assert server.sources.of(HOSTILE) == 8 and server.sources.get(mine) is not None
                # The victim's offer still finds its source (before issue 17: 404 unknown source).
                probe = Probe(honest, small_clip * 3, mode="swap", source=mine)
                await probe.start()
                report = await probe.run(tail=0.5)
                assert report.received >= 5, report
                await probe.close()

    asyncio.run(main())


# ---- multipart fields other than the file (item 9) ---------------------------------------------------------

@pytest.mark.parametrize("path", ["/sources", "/detect"])
def test_a_huge_form_field_is_refused_at_its_limit_not_read_whole(detector, path):
    """A chunked multipart body whose first field never ends: the server answers 413 once the field passes
    max_form_field_bytes (64 KiB), while the client has sent only a few MB of an endless body."""

    async def main():
        server = SwapwatchServer(Config(), detector, ClassicSwapper())
        async with TestServer(server.app(), host=HOSTILE) as ts:
            reader, writer = await asyncio.open_connection(HOSTILE, ts.port)
            boundary = "xXx"
            writer.write((f"POST {path} HTTP/1.1\r\nHost: {HOSTILE}\r\nTransfer-Encoding: chunked\r\n"
                          f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
            head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"junk\"\r\n\r\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(head), head))
            block = b"j" * 65536
            sent = 0
            answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
            while not answer.done() and sent < 64 * 2**20:  # at most 64 MB of a field that never ends
                try:
                    writer.write(b"%x\r\n%s\r\n" % (len(block), block))
                    await asyncio.wait_for(writer.drain(), 5)
                except (ConnectionError, asyncio.TimeoutError):
                    break
                sent += len(block)
                await asyncio.sleep(0)
            status_line = (await asyncio.wait_for(answer, 10)).split(b"\r\n")[0]
            writer.close()
            return status_line, sent

    status_line, sent = asyncio.run(main())
    assert b" 413 " in status_line, status_line
    assert sent < 16 * 2**20, f"the server read {sent} bytes of one form field before refusing"


# ---- ICE candidates an offer may aim the server's checks at (item 9) ----------------------------------------

def test_offers_cannot_aim_the_servers_ice_checks_at_many_ports(detector):
    async def main():
        sdp = await half_open_offer()
        lines = sdp.split("\r\n")
        first = next(i for i, line in enumerate(lines) if line.startswith("a=candidate") and " udp " in line.lower())
        fields = lines[first].split(" ")

        def with_candidates(ports):
            cands = [" ".join(fields[:5] + [str(p)] + fields[6:]) for p in ports]
            return "\r\n".join(lines[:first] + cands + lines[first + 1:])

        server = SwapwatchServer(Config(), detector, ClassicSwapper())
        async with TestServer(server.app(), host=HOSTILE) as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                out = {}
                for name, body in (("100 ports", with_candidates(range(40000, 40100))),
                                   ("port 22", with_candidates([22])), ("one port", with_candidates([40000]))):
                    async with http.post("/offer", json={"sdp": body, "type": "offer", "mode": "monitor"}) as r:
                        out[name] = (r.status, await r.json())
                for session in list(server.sessions.values()):
                    await session.close("test over")
                return out, len(server.sessions)

    out, left = asyncio.run(main())
    assert out["100 ports"][0] == 400 and "at most 16" in out["100 ports"][1]["error"]
    assert out["port 22"][0] == 400 and "port 22 refused" in out["port 22"][1]["error"]
    assert out["one port"][0] == 200  # an ordinary offer still works


# ---- recordings have a length and a disk limit (item 9) ----------------------------------------------------

def test_a_recording_stops_at_its_length_limit_and_a_full_disk_refuses_recording(detector, face_photos, small_clip,
                                                                                 tmp_path):
    from test_webrtc import run_server, upload

    photo = next(p for p in face_photos if p.name == "max_Chris.jpeg")

    async def scenario(http, server):
        source = await upload(http, photo)
        probe = Probe(http, small_clip * 8, mode="swap", source=source, websocket=True, extra={"record": True})
        await probe.start()
        await wait_for(lambda: any(m.get("type") == "recording" for m in probe.messages), 30)
        stopped = next(m for m in probe.messages if m.get("type") == "recording")
        before = len(probe.received)
        await asyncio.sleep(1.0)
        assert len(probe.received) > before, "the session stopped with its recording"
        await probe.close()
        # A disk with less free space than record_min_free_bytes: an offer to record is refused up front.
        server.config = Config(server=replace(server.config.server, record_min_free_bytes=1 << 62))
        refused = Probe(http, small_clip, mode="swap", source=source, extra={"record": True})
        with pytest.raises(RuntimeError, match="503"):
            await refused.start()
        await refused.close(abrupt=True)
        await wait_for(lambda: not server.sessions, 5.0)
        return stopped

    stopped = run_server(detector, scenario, record_dir=str(tmp_path), record_max_seconds=1.0)
    assert stopped["event"] == "stopped" and "length limit (1 s)" in stopped["reason"], stopped
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    frames = decode_clip(files[0])
    assert 10 <= len(frames) <= 40, len(frames)  # about 1 s at 25 fps, and the file is playable


# ---- frame sizes: huge live frames, tiny live frames, huge /detect videos (items 1 and 8) ------------------

def _frame(width: int, height: int):
    import av

    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(image, format="bgr24")


@pytest.mark.parametrize("mode", ["monitor", "swap"])
def test_huge_live_frames_are_scaled_down_once_and_said_so(detector, face_photos, mode):
    from swapwatch.stream.offer import SessionSettings
    from swapwatch.stream.processing import FrameProcessor
    from swapwatch.stream.sources import SourceStore

    photo = cv2.imread(str(next(p for p in face_photos if p.name == "max_Chris.jpeg")))
    source = SourceStore().add(photo, max(detector.detect(photo), key=lambda f: f.area)) if mode == "swap" else None
    processor = FrameProcessor(detector, ClassicSwapper(), SessionSettings(mode=mode, source=source and source.id),
                               source, max_frame_pixels=ServerConfig.max_frame_pixels)
    results = [processor.finish(processor.prepare(_frame(4000, 3000), t / 25)) for t in range(3)]
    height, width = results[0].yuv.shape[0] * 2 // 3, results[0].yuv.shape[1]
    assert width * height <= ServerConfig.max_frame_pixels and abs(width / height - 4 / 3) < 0.01, (width, height)
    notices = [n for r in results for n in r.notices]
    assert [n["code"] for n in notices] == ["frame-downscaled"] and notices[0]["to"] == [width, height]


@pytest.mark.parametrize("size", [(2, 2), (64, 48), (95, 72)])
def test_tiny_frames_get_a_blank_frame_and_one_notice_instead_of_an_unlabelled_swap(detector, face_photos, size):
    from swapwatch.stream.offer import SessionSettings
    from swapwatch.stream.processing import BLANK_GREY, FrameProcessor
    from swapwatch.stream.sources import SourceStore

    photo = cv2.imread(str(next(p for p in face_photos if p.name == "max_Chris.jpeg")))
    source = SourceStore().add(photo, max(detector.detect(photo), key=lambda f: f.area))
    processor = FrameProcessor(detector, ClassicSwapper(), SessionSettings(mode="both", source=source.id), source)
    results = [processor.finish(processor.prepare(_frame(*size), t / 25)) for t in range(5)]
    notices = [n for r in results for n in r.notices]
    assert [n["code"] for n in notices] == ["frame-too-small"] and "below the 96x72" in notices[0]["message"]
    w, h = max(2, size[0] - size[0] % 2), max(2, size[1] - size[1] % 2)
    for r in results:
        assert r.yuv.shape == (h * 3 // 2, w) and r.swapped == 0
        luma = r.yuv[:h].astype(int)
        assert luma.min() == luma.max() and abs(luma[0, 0] - (16 + BLANK_GREY * 219 / 255)) <= 1  # flat grey


def test_tiny_frames_over_webrtc_come_back_blank_with_a_notice(detector, face_photos, small_clip):
    from test_webrtc import run_server, upload

    tiny = [cv2.resize(f, (64, 48), interpolation=cv2.INTER_AREA) for f in small_clip] * 3
    photo = next(p for p in face_photos if p.name == "max_Chris.jpeg")

    async def scenario(http, server):
        source = await upload(http, photo)
        probe = Probe(http, tiny, mode="swap", source=source, websocket=True, keep_images=True)
        await probe.start()
        report = await probe.run(tail=0.5)
        await wait_for(lambda: any(m.get("type") == "notice" for m in probe.messages), 5)
        await probe.close()
        return probe, report, server.stats.counters.errors

    probe, report, errors = run_server(detector, scenario)
    notice = next(m for m in probe.messages if m.get("type") == "notice")
    assert notice["code"] == "frame-too-small" and notice["size"] == [64, 48]
    assert report.received >= 5 and errors == 0
    assert all(r.image.std() < 12 for r in probe.received)  # blank (grey, the codec's noise aside), never a swap


def test_detect_refuses_a_video_above_its_pixel_limit_from_the_header(detector, tmp_path):
    import av

    path = tmp_path / "huge.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 4000, 3000, "yuv420p"
        for _ in range(2):
            out.mux(stream.encode(_frame(4000, 3000).reformat(format="yuv420p")))
        out.mux(stream.encode())

    async def main():
        server = SwapwatchServer(Config(), detector, ClassicSwapper())
        async with TestServer(server.app(), host=HOSTILE) as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                async with http.post("/detect?name=huge.mp4", data=path.read_bytes()) as r:
                    return r.status, await r.json(), server._offline

    status, body, offline = asyncio.run(main())
    assert status == 413 and "4000x3000" in body["error"], body
    assert offline is None  # refused before any model was loaded


# ---- slow request heads (item 9) ---------------------------------------------------------------------------

def test_a_client_dribbling_its_request_head_is_cut_off_and_others_are_served(detector):
    async def main():
        config = Config(server=ServerConfig(header_timeout=2.0))
        server = SwapwatchServer(config, detector, ClassicSwapper())
        async with TestServer(server.app(), host=HOSTILE) as ts:
            sweep = server.header_deadline.watch(ts.runner.server)
            dribbler = asyncio.ensure_future(dribble_request_head(HOSTILE, ts.port, seconds=30.0))
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                await asyncio.sleep(0.5)
                async with http.get("/health") as r:  # served while the dribbler dribbles
                    assert r.status == 200
            report = await dribbler
            sweep.cancel()
            return report, server.header_deadline.closed

    report, count = asyncio.run(main())
    assert report.closed_by_server and report.closed_after_s < 6.0, report
    assert report.server_sent == b"" and count >= 1


def test_serve_cuts_off_slow_request_heads(tmp_path):
    from browser_util import ServerProcess

    with ServerProcess("--model", "classic", "--deepfake-model", "off", "--header-timeout", "2",
                       log_path=tmp_path / "server.log") as server:
        report = asyncio.run(dribble_request_head("127.0.0.1", server.port, seconds=30.0))
        assert server.health()["status"] == "ok"
    assert report.closed_by_server and report.closed_after_s < 6.0, report


# ---- websocket tickets: the token never in a URL (item 4) --------------------------------------------------

def test_websocket_tickets_are_single_use_bound_to_their_session_and_short_lived(detector, small_clip, monkeypatch):
    from swapwatch.stream import security

    token = "t0ken-for-tickets"

    async def main():
        server = SwapwatchServer(Config(server=ServerConfig(token=token)), detector, ClassicSwapper())
        bearer = {"Authorization": f"Bearer {token}"}
        async with TestServer(server.app(), host=HOSTILE) as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                probes = [Probe(http, small_clip * 20, mode="monitor", token=token) for _ in range(2)]
                for p in probes:
                    await p.start()
                a, b = (p.session for p in probes)

                async def ticket(session: str, headers=bearer) -> tuple[int, dict]:
                    async with http.post(f"/sessions/{session}/ticket", headers=headers) as r:
                        return r.status, await r.json()

                async def ws_status(path: str) -> int:
                    try:
                        async with http.ws_connect(path) as ws:
                            hello = await ws.receive_json(timeout=5)
                            return 101 if hello["type"] == "hello" else 0
                    except aiohttp.WSServerHandshakeError as exc:
                        return exc.status

                out = {"no token": (await ticket(a, headers={}))[0], "unknown session": (await ticket("nope"))[0]}
                _, t1 = await ticket(a)
                assert t1["expires_in"] == security.TICKET_SECONDS
                out["ticket"] = await ws_status(f"/ws/{a}?ticket={t1['ticket']}")
                out["ticket again"] = await ws_status(f"/ws/{a}?ticket={t1['ticket']}")
                _, t2 = await ticket(a)
                out["another session's ticket"] = await ws_status(f"/ws/{b}?ticket={t2['ticket']}")
                out["no ticket"] = await ws_status(f"/ws/{a}")
                monkeypatch.setattr(security, "TICKET_SECONDS", 0.2)
                _, t3 = await ticket(a)
                await asyncio.sleep(0.4)
                out["expired"] = await ws_status(f"/ws/{a}?ticket={t3['ticket']}")
                for p in probes:
                    await p.close()
                return out

    out = asyncio.run(main())
    assert out == {"no token": 401, "unknown session": 404, "ticket": 101, "ticket again": 401,
                   "another session's ticket": 401, "no ticket": 401, "expired": 401}, out


# ---- an aborted upload is one log line (item 7) ------------------------------------------------------------

def test_an_aborted_upload_is_one_log_line_not_a_traceback(detector, caplog):
    async def main():
        server = SwapwatchServer(Config(), detector, ClassicSwapper())
        async with TestServer(server.app(), host=HOSTILE) as ts:
            for path, ctype, head in (
                    ("/sources", "multipart/form-data; boundary=b",
                     b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
                     b"Content-Type: image/jpeg\r\n\r\n"),
                    ("/detect?name=a.mp4", "application/octet-stream", b"")):
                reader, writer = await asyncio.open_connection(HOSTILE, ts.port)
                writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOSTILE}\r\nContent-Type: {ctype}\r\n"
                             f"Content-Length: 1000000\r\n\r\n".encode() + head + b"x" * 5000)
                await writer.drain()
                await asyncio.sleep(0.3)
                writer.close()
                await asyncio.sleep(0.5)
            return list(server.sessions)

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [(r.name, r.getMessage()) for r in errors]
    aborted = [r.getMessage() for r in caplog.records if "upload aborted" in r.getMessage()]
    assert len(aborted) == 2 and all(m.count("\n") == 0 for m in aborted), aborted
