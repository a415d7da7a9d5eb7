#!/usr/bin/env python3
"""Hostile clients (issue 17): what each probe costs a real `swapwatch serve`, before and after the fixes.

Usage: python bench/hostile_clients.py [--json OUT.json] [--probe-timeout 40]

One `python -m swapwatch serve --host 127.0.0.1 --model classic --deepfake-model off --header-timeout 2
--token SECRET --log-level debug` subprocess serves every probe (the token goes in a bearer header; the log,
access log included, goes to a temporary file that probe 10 greps). Clients run in this process on loopback,
several of them from other addresses of 127.0.0.0/8 (Linux routes all of it to lo), each probe under a time
limit. Around each probe the server process's memory is read from /proc/PID/status: VmRSS before and after,
and the peak during it (VmHWM, reset before the probe by writing 5 to /proc/PID/clear_refs; where the kernel
refuses, the peak is the process's peak so far, and the JSON says so).

Probes (numbered as in the issue's list):
 1. PNG decompression bombs on POST /sources: IHDR 30000x30000 RGB with a few rows of data (a few KB), the
    same size in full gray (every row present, ~0.9 MB of deflate, 900 MB decoded) and 9000x9000 RGB (under
    Pillow's own bomb limit, over swapwatch's 50 MP);
 2. 64 honest sources: the shared face photos, cycled, uploaded from 127.0.0.2..9 (8 each, the per-address
    quota) -> RSS growth in all and per source;
 3. an idle POST /detect (Content-Length of a GRID clip, 10 bytes, silence) while another client posts the clip
    with ?max_frames=10 -> the second one's status and time, and what the idle one gets in the end;
 4. a client dribbling its request head one byte per 0.2 s -> seconds until the server closes it;
 5. a chunked multipart POST /sources whose first field never ends -> status and bytes sent before it;
 6. an aiortc offer rewritten to list 100 ICE candidates (and one aimed at port 22) -> status and error;
 7. 20 half-open offers from 127.0.0.1, then a real session (swapwatch.stream.probe.Probe) from 127.0.0.2;
 8. a victim (127.0.0.10) uploads a source, 127.0.0.1 uploads 64, the victim offers a swap with its source;
 9. POST /detect of a 4000x3000 video (2 frames, mpeg4) -> status, RSS change;
10. the log: requests with ?token=SECRET on /ws/{id} and DELETE /sessions/{id} (a made-up id and the real ids
    of the sessions above) -> how often the token and the full ids appear in it.

Server and clients share the machine; RSS is the server process's alone (the script checks it has no child
processes and says so if it has).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import glob
import json
import os
import re
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SWAPWATCH_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
sys.path.insert(0, str(REPO / "tests"))  # browser_util.ServerProcess
sys.path.insert(0, str(REPO / "bench"))

import aiohttp  # noqa: E402
import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from browser_util import ServerProcess  # noqa: E402
from machine import describe as describe_machine  # noqa: E402

from swapwatch.stream.probe import Probe, dribble_request_head, half_open_offer  # noqa: E402

HOST = "127.0.0.1"
TOKEN = "SECRET-t0k3n-for-bench"
HEADER_TIMEOUT = 2.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}

BEFORE = {
    1: "accepted (200) and keeps ~2.6 GB per source (peak 8.3 GB while decoding); a 109 KB blank one peaks at "
       "5.7 GB before its 422",
    2: "not measured before",
    3: "every other /detect 503",
    4: "slow request headers are never timed out",
    5: "read whole (300 MB, then 200)",
    6: "any client can make the server send STUN checks to 100 ports of its choosing",
    7: "179 of 191 offers refused / 4 offers every 15 s keep a 4-session server full",
    8: "the victim's next offer gets 404",
    9: "an 8192x8192 video sent to /detect costs +1 GB",
    10: "?token=SECRET and full session ids on every /ws/{id} and DELETE line",
}
TITLES = {
    1: "PNG decompression bomb on POST /sources",
    2: "64 honest sources (normal photos)",
    3: "idle /detect upload, another client's /detect",
    4: "request head dribbled 1 byte / 0.2 s",
    5: "endless multipart field on POST /sources",
    6: "offer listing 100 ICE candidates",
    7: "20 half-open offers, then an honest client",
    8: "64 uploads from one address, then a victim's swap",
    9: "POST /detect of a 4000x3000 video",
    10: "access log: token and session ids",
}


# ---- the server's memory -----------------------------------------------------------------------------------

class Memory:
    """VmRSS / VmHWM of one process, from /proc (psutil not needed)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.hwm_resettable = self.reset_peak()

    def status(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])  # kB
        return out

    def rss_mb(self) -> float:
        return round(self.status()["VmRSS"] / 1024, 1)

    def hwm_mb(self) -> float:
        return round(self.status()["VmHWM"] / 1024, 1)

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def children(self) -> list[int]:
        kids = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                kids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return kids


# ---- inputs ------------------------------------------------------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, *, channels: int = 3, rows: int = 8) -> bytes:
    """A PNG whose IHDR declares width x height, 8-bit gray (1) or RGB (3), with ``rows`` rows of zero data
    (all of them: a complete bomb); the rows are deflated in a stream, never held decoded here."""
    color = {1: 0, 3: 2}[channels]
    row = b"\x00" * (1 + channels * width)
    z = zlib.compressobj(9)
    parts = [z.compress(row * min(64, rows - i)) for i in range(0, rows, 64)]
    idat = b"".join(parts) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def huge_video(path: Path, width: int = 4000, height: int = 3000, frames: int = 2) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def small_clip(path: Path, limit: int = 10) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        frames = []
        for f in c.decode(video=0):
            frames.append(cv2.resize(f.to_ndarray(format="bgr24"), (192, 144), interpolation=cv2.INTER_AREA))
            if len(frames) >= limit:
                break
    return frames


def client(base: str, addr: str | None = None) -> aiohttp.ClientSession:
    """A client session from ``addr`` (a loopback address), bearer token set; no kept-alive connections (the
    server closes idle ones after --header-timeout)."""
    connector = aiohttp.TCPConnector(force_close=True, local_addr=(addr, 0) if addr else None)
    return aiohttp.ClientSession(base_url=base, connector=connector, headers=AUTH)


def photo_form(data: bytes, filename: str, content_type: str) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field("file", data, filename=filename, content_type=content_type)
    return fd


async def upload(http: aiohttp.ClientSession, data: bytes, filename: str, content_type: str = "image/jpeg"):
    async with http.post("/sources", data=photo_form(data, filename, content_type)) as r:
        try:
            body = await r.json()
        except (aiohttp.ContentTypeError, json.JSONDecodeError):
            body = {"text": (await r.text())[:200]}
        return r.status, body


def content_type_of(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower(),
                                                                                  "application/octet-stream")


# ---- probes ------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, server: ServerProcess, mem: Memory, clip: list[np.ndarray], workdir: Path) -> None:
        self.server = server
        self.base = server.url
        self.port = server.port
        self.mem = mem
        self.clip = clip
        self.workdir = workdir
        self.session_ids: list[str] = []  # real session ids, for probe 10

    async def health(self) -> dict:
        async with client(self.base) as http, http.get("/health") as r:
            return await r.json()

    async def wait_idle(self, timeout: float = 12.0) -> dict:
        """Until no session is pending or connected (half-open offers expire after pending_timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            h = await self.health()
            if (h.get("pending", 0) == 0 and h.get("connected", 0) == 0) or time.monotonic() > deadline:
                return h
            await asyncio.sleep(0.5)

    # 1
    async def bomb(self) -> dict:
        out = {}
        cases = (("30000x30000 RGB, 8 rows of data", 30000, 30000, 3, 8),
                 ("30000x30000 gray, every row (complete bomb)", 30000, 30000, 1, 30000),
                 ("9000x9000 RGB, 8 rows of data", 9000, 9000, 3, 8))
        async with client(self.base) as http:
            for name, w, h, ch, rows in cases:
                data = png_declaring(w, h, channels=ch, rows=rows)
                rss0 = self.mem.rss_mb()
                self.mem.reset_peak()
                started = time.monotonic()
                status, body = await upload(http, data, "bomb.png", "image/png")
                out[name] = {"file_bytes": len(data), "decoded_bytes_if_decoded": w * h * ch, "status": status,
                             "error": body.get("error", body), "seconds": round(time.monotonic() - started, 3),
                             "rss_before_mb": rss0, "rss_after_mb": self.mem.rss_mb(),
                             "peak_during_mb": self.mem.hwm_mb()}
                out[name]["rss_change_mb"] = round(out[name]["rss_after_mb"] - rss0, 1)
                out[name]["peak_over_before_mb"] = round(out[name]["peak_during_mb"] - rss0, 1)
            async with http.get("/health") as r:
                out["health_after"] = await r.json()
        return out

    # 2
    async def honest_sources(self) -> dict:
        photos = sorted(Path(p) for p in glob.glob(str(ASSETS / "faces" / "*")))
        photos = [p for p in photos if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
        payload = [(p.name, p.read_bytes(), content_type_of(p)) for p in photos]
        addrs = [f"127.0.0.{i}" for i in range(2, 10)]
        rss0 = self.mem.rss_mb()
        self.mem.reset_peak()
        started = time.monotonic()

        async def one_address(k: int, addr: str) -> list[tuple[str, int, dict]]:
            res = []
            async with client(self.base, addr) as http:
                for j in range(8):
                    name, data, ctype = payload[(k * 8 + j) % len(payload)]
                    status, body = await upload(http, data, name, ctype)
                    res.append((name, status, body))
            return res

        results = [r for rs in await asyncio.gather(*(one_address(k, a) for k, a in enumerate(addrs))) for r in rs]
        seconds = time.monotonic() - started
        rss1, peak = self.mem.rss_mb(), self.mem.hwm_mb()
        statuses: dict[str, int] = {}
        per_photo: dict[str, dict[str, int]] = {}
        for name, status, _ in results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            per_photo.setdefault(name, {}).setdefault(str(status), 0)
            per_photo[name][str(status)] += 1
        kept_sizes = sorted({tuple(b.get("size", ())) for n, s, b in results if s == 200})
        errors = sorted({f"{n}: {b.get('error')}" for n, s, b in results if s != 200})
        accepted = statuses.get("200", 0)
        health = await self.health()
        from swapwatch.config import ServerConfig

        sc = ServerConfig()
        side = getattr(sc, "max_source_side", None)
        bound = {"max_sources": sc.max_sources, "max_sources_per_client": sc.max_sources_per_client,
                 "max_source_side": side,
                 "kept_pixels_cap_mb": round(sc.max_sources * side * side * 3 / 2**20, 1) if side else None,
                 "note": "max_sources photos kept at most max_source_side on their long side, BGR uint8: the "
                         "pixel data the store can hold (other per-source state aside)"}
        return {"limits": bound, "photos": [p.name for p in photos], "photo_bytes": {n: len(d) for n, d, _ in payload},
                "addresses": addrs, "uploads": len(results), "statuses": statuses, "per_photo": per_photo,
                "kept_sizes": [list(s) for s in kept_sizes], "errors": errors, "seconds": round(seconds, 1),
                "rss_before_mb": rss0, "rss_after_mb": rss1, "peak_during_mb": peak,
                "rss_growth_mb": round(rss1 - rss0, 1), "peak_over_before_mb": round(peak - rss0, 1),
                "rss_growth_per_accepted_source_mb": round((rss1 - rss0) / accepted, 2) if accepted else None,
                "health_after": health}

    async def _join(self, probe: Probe, out: dict, key: str, during=None) -> None:
        """Start ``probe``, stream its clip and close it, into ``out``: ``KEY_offer_status``, ``KEY_frames_back``
        and ``KEY_got_frames`` (and ``during()``'s fields, taken before the close), or the refusal."""
        try:
            await probe.start()
            out[f"{key}_offer_status"] = 200
            self.session_ids.append(probe.session)
            report = await probe.run(tail=0.5, timeout=20)
            out[f"{key}_frames_back"] = f"{report.received}/{report.sent}"
            out[f"{key}_got_frames"] = report.received > 0
            if during is not None:
                out.update(await during())
        except RuntimeError as exc:  # "offer refused: STATUS {...}"
            m = re.search(r"refused: (\d+)", str(exc))
            out[f"{key}_offer_status"] = int(m.group(1)) if m else None
            out[f"{key}_offer_error"] = str(exc)
            out[f"{key}_got_frames"] = False
        finally:
            await probe.close()

    # 8
    async def victim(self) -> dict:
        chris = (ASSETS / "faces" / "max_Chris.jpeg").read_bytes()
        rss0 = self.mem.rss_mb()
        self.mem.reset_peak()
        async with client(self.base, "127.0.0.10") as honest, client(self.base, HOST) as hostile:
            status, body = await upload(honest, chris, "mine.jpg")
            out: dict = {"victim_upload": status}
            if status != 200:
                out["error"] = body
                return out
            mine = body["id"]
            flood = [(await upload(hostile, chris, "flood.jpg"))[0] for _ in range(64)]
            out["flood_statuses"] = {str(s): flood.count(s) for s in sorted(set(flood))}
            await self._join(Probe(honest, self.clip * 3, mode="swap", source=mine, token=TOKEN, websocket=True),
                             out, "victim")
        out.update(rss_before_mb=rss0, rss_after_mb=self.mem.rss_mb(), peak_during_mb=self.mem.hwm_mb())
        out["rss_change_mb"] = round(out["rss_after_mb"] - rss0, 1)
        return out

    # 9
    async def huge_detect(self) -> dict:
        path = self.workdir / "huge.mp4"
        t0 = time.monotonic()
        huge_video(path)
        built = time.monotonic() - t0
        data = path.read_bytes()
        rss0 = self.mem.rss_mb()
        self.mem.reset_peak()
        started = time.monotonic()
        async with client(self.base) as http:
            async with http.post("/detect?name=huge.mp4", data=data) as r:
                status, body = r.status, await r.json()
        rss1, peak = self.mem.rss_mb(), self.mem.hwm_mb()
        return {"video": "4000x3000, 2 frames, mpeg4", "file_bytes": len(data), "build_s": round(built, 1),
                "status": status, "error": body.get("error", body), "seconds": round(time.monotonic() - started, 2),
                "rss_before_mb": rss0, "rss_after_mb": rss1, "peak_during_mb": peak,
                "rss_change_mb": round(rss1 - rss0, 1), "peak_over_before_mb": round(peak - rss0, 1)}

    # 3
    async def idle_detect(self) -> dict:
        clip_path = sorted(glob.glob(str(ASSETS / "videos" / "grid_*.mpg")))[0]
        data = Path(clip_path).read_bytes()
        rss0 = self.mem.rss_mb()
        self.mem.reset_peak()
        reader, writer = await asyncio.open_connection(HOST, self.port)
        idle_started = time.monotonic()
        writer.write(f"POST /detect?name=slow.mpg HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                     f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:10])
        await writer.drain()
        await asyncio.sleep(0.3)
        out: dict = {"clip": Path(clip_path).name, "clip_bytes": len(data)}
        started = time.monotonic()
        async with client(self.base) as http:
            fd = photo_form(data, "quick.mpg", "video/mpeg")
            async with http.post("/detect?max_frames=10", data=fd) as r:
                body = await r.json()
                out["other_status"] = r.status
                out["other_seconds"] = round(time.monotonic() - started, 2)
                out["other_result"] = ({"verdict": body.get("verdict"), "frames": body.get("video", {}).get("frames")}
                                       if r.status == 200 else body)
        try:
            reply = await asyncio.wait_for(reader.read(4096), timeout=20)
            out["idle_reply"] = reply.split(b"\r\n")[0].decode(errors="replace")
            m = re.search(rb'"error":\s*"([^"]*)"', reply)
            out["idle_error"] = m.group(1).decode(errors="replace") if m else None
            out["idle_answered_after_s"] = round(time.monotonic() - idle_started, 1)
        except asyncio.TimeoutError:
            out["idle_reply"] = "no answer within 20 s"
        writer.close()
        out.update(rss_before_mb=rss0, rss_after_mb=self.mem.rss_mb(), peak_during_mb=self.mem.hwm_mb())
        out["rss_change_mb"] = round(out["rss_after_mb"] - rss0, 1)
        out["note"] = "the first /detect loads the default deepfake model (live detection is off): RSS change"
        return out

    # 4
    async def dribble(self, seconds: float = 20.0) -> dict:
        task = asyncio.ensure_future(dribble_request_head(HOST, self.port, seconds=seconds))
        await asyncio.sleep(0.6)  # another client is served while this one dribbles
        async with client(self.base) as http, http.get("/health") as r:
            served_meanwhile = r.status
        report = await task
        how = "closed by the server" if report.closed_by_server else f"still open after {seconds:g} s"
        return {"header_timeout_s": HEADER_TIMEOUT, "closed_after_s": round(report.closed_after_s, 2),
                "bytes_sent": report.bytes_sent, "how": how,
                "server_sent": report.server_sent.decode(errors="replace")[:200],
                "other_client_served": served_meanwhile}

    # 5
    async def endless_field(self, cap: int = 64 * 2**20) -> dict:
        rss0 = self.mem.rss_mb()
        self.mem.reset_peak()
        reader, writer = await asyncio.open_connection(HOST, self.port)
        boundary = "xXx"
        writer.write((f"POST /sources HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Transfer-Encoding: chunked\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
                      ).encode())
        head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"junk\"\r\n\r\n".encode()
        writer.write(b"%x\r\n%s\r\n" % (len(head), head))
        block = b"j" * 65536
        sent = 0
        started = time.monotonic()
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        stopped = f"cap of {cap} bytes"
        while not answer.done() and sent < cap:
            try:
                writer.write(b"%x\r\n%s\r\n" % (len(block), block))
                await asyncio.wait_for(writer.drain(), 5)
            except (ConnectionError, asyncio.TimeoutError) as exc:
                stopped = exc.__class__.__name__
                break
            sent += len(block)
            await asyncio.sleep(0)
        if answer.done():
            stopped = "the server answered"
        try:
            status_line = (await asyncio.wait_for(answer, 10)).split(b"\r\n")[0].decode(errors="replace")
            body = await asyncio.wait_for(reader.read(2048), 2)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            status_line, body = f"no answer ({exc.__class__.__name__})", b""
        writer.close()
        m = re.search(rb'"error":\s*"([^"]*)"', body)
        return {"field_limit_bytes": 64 * 1024, "status_line": status_line,
                "error": m.group(1).decode(errors="replace") if m else None,
                "bytes_sent_before_answer": sent, "sending_stopped": stopped,
                "seconds": round(time.monotonic() - started, 2), "rss_before_mb": rss0,
                "rss_after_mb": self.mem.rss_mb(), "peak_during_mb": self.mem.hwm_mb()}

    # 6
    async def ice_candidates(self) -> dict:
        sdp = await half_open_offer()
        lines = sdp.split("\r\n")
        first = next(i for i, line in enumerate(lines) if line.startswith("a=candidate") and " udp " in line.lower())
        fields = lines[first].split(" ")

        def with_candidates(ports) -> str:
            cands = [" ".join(fields[:5] + [str(p)] + fields[6:]) for p in ports]
            return "\r\n".join(lines[:first] + cands + lines[first + 1:])

        out = {}
        async with client(self.base) as http:
            for name, body in (("100 candidates (ports 40000-40099)", with_candidates(range(40000, 40100))),
                               ("1 candidate at port 22", with_candidates([22])),
                               ("1 candidate (control)", with_candidates([40000]))):
                async with http.post("/offer", json={"sdp": body, "type": "offer", "mode": "monitor"}) as r:
                    answer = await r.json()
                    out[name] = {"status": r.status, "error": answer.get("error")}
                    if r.status == 200:  # free the control's pending slot at once
                        self.session_ids.append(answer["session"])
                        async with http.delete(f"/sessions/{answer['session']}") as d:
                            out[name]["deleted"] = d.status
        return out

    # 7
    async def half_open(self) -> dict:
        offers = await asyncio.gather(*(half_open_offer() for _ in range(20)))
        rss0 = self.mem.rss_mb()
        self.mem.reset_peak()
        out: dict = {}
        async with client(self.base, HOST) as hostile, client(self.base, "127.0.0.2") as honest:
            statuses, reasons = [], {}
            started = time.monotonic()
            for sdp in offers:
                async with hostile.post("/offer", json={"sdp": sdp, "type": "offer", "mode": "monitor"}) as r:
                    statuses.append(r.status)
                    body = await r.json()
                    if r.status == 200:
                        self.session_ids.append(body["session"])
                    else:
                        key = f"{r.status} {body.get('reason')} (Retry-After {r.headers.get('Retry-After')})"
                        reasons[key] = reasons.get(key, 0) + 1
            out["barrage_s"] = round(time.monotonic() - started, 2)
            out["hostile_statuses"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
            out["hostile_refusals"] = reasons
            out["health_after_barrage"] = await self.health()
            async def during() -> dict:
                return {"health_during_honest": await self.health()}

            await self._join(Probe(honest, self.clip * 6, mode="monitor", token=TOKEN), out, "honest", during)
        t0 = time.monotonic()
        out["health_after_expiry"] = await self.wait_idle()
        out["half_open_gone_after_s"] = round(time.monotonic() - started, 1)
        out.update(rss_before_mb=rss0, rss_after_mb=self.mem.rss_mb(), peak_during_mb=self.mem.hwm_mb(),
                   waited_for_expiry_s=round(time.monotonic() - t0, 1))
        return out

    # 10
    async def access_log(self, log_path: Path) -> dict:
        fake = "Zq9xWv8uTs7rQp6oNm5lKj4iBench"
        ids = [fake, *self.session_ids[-3:]]
        statuses = {}
        async with aiohttp.ClientSession(base_url=self.base, connector=aiohttp.TCPConnector(force_close=True)) as http:
            for sid in ids:
                for method, path in (("GET", f"/ws/{sid}?token={TOKEN}"), ("DELETE", f"/sessions/{sid}?token={TOKEN}")):
                    async with http.request(method, path) as r:
                        statuses[f"{method} {path.split('?')[0][:12]}…"] = r.status
            async with http.get(f"/health?token={TOKEN}") as r:
                statuses["GET /health?token=…"] = r.status
        await asyncio.sleep(0.5)  # the server's log lines reach the file
        return {"ids_requested": len(ids), "statuses": statuses, **scan_log(log_path, self.session_ids, fake)}


def scan_log(log_path: Path, session_ids: list[str], fake: str) -> dict:
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    access = [line for line in lines if re.search(r'"(GET|POST|DELETE|HEAD|OPTIONS|PUT) /', line)]
    ids = [fake, *session_ids]
    return {"log_lines": len(lines), "access_log_lines": len(access),
            "token_in_log": text.count(TOKEN), "token_in_access_lines": sum(line.count(TOKEN) for line in access),
            "full_session_ids_checked": len(ids),
            "full_session_ids_in_log": sum(text.count(s) for s in ids),
            "full_session_ids_in_access_lines": sum(line.count(s) for line in access for s in ids),
            "access_lines_with_token_masked": sum("token=***" in line for line in access),
            "redacted_examples": ([line[-120:] for line in access if "token=***" in line][:3]
                                  + [line[-120:] for line in access if "/ws/" in line and "token=" not in line][:1])}


# ---- the run -----------------------------------------------------------------------------------------------

ORDER = (1, 2, 8, 9, 3, 5, 4, 6, 7)  # 2 on a fresh store; 9 (refused from the header) before the first
# /detect loads the default deepfake model; 7 near the end (it waits for the half-open offers to expire)


def summarize(n: int, m: dict) -> str:
    if "failed" in m:
        return f"FAILED: {m['failed']}"
    if n == 1:
        parts = []
        for name, c in m.items():
            if isinstance(c, dict) and "file_bytes" in c:
                parts.append(f"{name} ({c['file_bytes'] / 1024:.0f} KB): {c['status']} \"{c['error']}\", "
                             f"RSS {c['rss_change_mb']:+.1f} MB, peak {c['peak_over_before_mb']:+.1f} MB over before")
        return "; ".join(parts) + (f"; server RSS after the three {m['server_rss_after_minus_baseline_mb']:+.1f} MB "
                                   f"over its baseline" if "server_rss_after_minus_baseline_mb" in m else "")
    if n == 2:
        return (f"statuses {m['statuses']} in {m['seconds']} s; RSS {m['rss_before_mb']} -> {m['rss_after_mb']} MB "
                f"({m['rss_growth_mb']:+.1f} MB, {m['rss_growth_per_accepted_source_mb']} MB per source), peak "
                f"{m['peak_over_before_mb']:+.1f} MB over before; kept sizes {m['kept_sizes']}; by the limits at most "
                f"{m['limits']['max_sources']} sources of <= {m['limits']['max_source_side']} px a side "
                f"({m['limits']['kept_pixels_cap_mb']} MB of pixels)")
    if n == 3:
        return (f"other client's /detect: {m.get('other_status')} in {m.get('other_seconds')} s; the idle upload: "
                f"{m.get('idle_reply')} \"{m.get('idle_error')}\" after {m.get('idle_answered_after_s')} s; RSS "
                f"{m['rss_change_mb']:+.1f} MB (the first /detect loads the default deepfake model)")
    if n == 4:
        return (f"{m['how']} after {m['closed_after_s']} s ({m['bytes_sent']} bytes sent, --header-timeout "
                f"{m['header_timeout_s']:g}); another client served meanwhile: {m['other_client_served']}")
    if n == 5:
        return (f"{m['status_line']} \"{m['error']}\" after {m['bytes_sent_before_answer'] / 2**20:.2f} MB sent "
                f"(field limit 64 KiB); RSS {m['rss_before_mb']} -> {m['rss_after_mb']} MB")
    if n == 6:
        return "; ".join(f"{k}: {v['status']}" + (f" \"{v['error']}\"" if v.get("error") else "")
                         for k, v in m.items() if isinstance(v, dict) and "status" in v)
    if n == 7:
        return (f"hostile: {m['hostile_statuses']} ({m['hostile_refusals']}); honest from 127.0.0.2: "
                f"{m.get('honest_offer_status')}, frames back {m.get('honest_frames_back', 'none')}; half-open "
                f"offers gone {m['half_open_gone_after_s']} s after the barrage")
    if n == 8:
        return (f"flood {m.get('flood_statuses')}; victim's swap offer: {m.get('victim_offer_status')}"
                + (f", frames back {m['victim_frames_back']}" if "victim_frames_back" in m else
                   f" {m.get('victim_offer_error', m.get('error'))}"))
    if n == 9:
        return (f"{m['status']} \"{m['error']}\" ({m['file_bytes'] / 2**20:.1f} MB upload); RSS "
                f"{m['rss_change_mb']:+.1f} MB, peak {m['peak_over_before_mb']:+.1f} MB over before")
    if n == 10:
        return (f"token in the log: {m['token_in_log']}; full session ids ({m['full_session_ids_checked']}) in the "
                f"log: {m['full_session_ids_in_log']}, in its {m['access_log_lines']} access lines: "
                f"{m['full_session_ids_in_access_lines']}; access lines with the token shown as ***: "
                f"{m['access_lines_with_token_masked']}")
    return json.dumps(m)


def safe_summary(n: int, m: dict) -> str:
    try:
        return summarize(n, m)
    except Exception as exc:  # a summary bug must not end the run: the JSON has the numbers
        return f"(no summary: {exc!r})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--probe-timeout", type=float, default=40.0, help="seconds per probe (default 40)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    load_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    clip = small_clip(sorted(ASSETS.glob("videos/grid_*.mpg"))[0])
    results: dict[int, dict] = {}
    serve_args = ("--model", "classic", "--deepfake-model", "off", "--header-timeout", f"{HEADER_TIMEOUT:g}",
                  "--log-level", "debug")
    memory: dict = {}
    with tempfile.TemporaryDirectory(prefix="swapwatch-hostile-") as tmp:
        workdir = Path(tmp)
        log_path = workdir / "serve.log"
        server = ServerProcess(*serve_args, token=TOKEN, log_path=log_path, startup_timeout=90)
        command = " ".join(["python -m swapwatch serve --host 127.0.0.1 --port", str(server.port), *server.args])
        command = command.replace(TOKEN, "SECRET")
        try:
            server.__enter__()
            mem = Memory(server.proc.pid)
            time.sleep(1.0)
            memory["baseline_rss_mb"] = mem.rss_mb()
            memory["baseline_hwm_mb"] = mem.hwm_mb()
            memory["hwm_resettable"] = mem.hwm_resettable
            memory["children_at_start"] = mem.children()
            print(f"server pid {server.proc.pid}, baseline RSS {memory['baseline_rss_mb']} MB "
                  f"(peak so far {memory['baseline_hwm_mb']} MB)", file=sys.stderr, flush=True)
            bench = Bench(server, mem, clip, workdir)
            probes = {1: bench.bomb, 2: bench.honest_sources, 3: bench.idle_detect, 4: bench.dribble,
                      5: bench.endless_field, 6: bench.ice_candidates, 7: bench.half_open, 8: bench.victim,
                      9: bench.huge_detect}

            async def run_all() -> None:
                for n in ORDER:
                    t0 = time.monotonic()
                    try:
                        results[n] = await asyncio.wait_for(probes[n](), args.probe_timeout)
                    except Exception as exc:  # recorded, and the run goes on
                        results[n] = {"failed": f"{exc.__class__.__name__}: {exc}"[:300]}
                    results[n]["probe_s"] = round(time.monotonic() - t0, 1)
                    if server.proc.poll() is not None:
                        results[n]["server_exited"] = server.proc.returncode
                        raise RuntimeError(f"the server exited during probe {n}: {server.log_tail()}")
                    results[n]["server_rss_after_mb"] = mem.rss_mb()
                    results[n]["server_rss_after_minus_baseline_mb"] = round(results[n]["server_rss_after_mb"]
                                                                             - memory["baseline_rss_mb"], 1)
                    print(f"  probe {n} ({results[n]['probe_s']} s): {safe_summary(n, results[n])}",
                          file=sys.stderr, flush=True)
                    await bench.wait_idle(timeout=8)
                try:
                    results[10] = await asyncio.wait_for(bench.access_log(log_path), args.probe_timeout)
                except Exception as exc:
                    results[10] = {"failed": f"{exc.__class__.__name__}: {exc}"[:300]}

            asyncio.run(run_all())
            memory["final_rss_mb"] = mem.rss_mb()
            memory["children_at_end"] = mem.children()
            memory["health_at_end"] = asyncio.run(bench.health())
        finally:
            server.__exit__()
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(5)
        if log_path.is_file() and "failed" not in results.get(10, {"failed": ""}):
            final = scan_log(log_path, bench.session_ids, "Zq9xWv8uTs7rQp6oNm5lKj4iBench")  # after shutdown too
            results[10].update({f"after_shutdown_{k}": v for k, v in final.items()
                                if k in ("token_in_log", "full_session_ids_in_log", "log_lines")})

    machine = describe_machine()
    load_end = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    date = dt.date.today().isoformat()
    print(f"\nMachine: {machine}; load average at the start {load_start}, at the end {load_end}; {date}")
    print(f"Server: `{command}` (one process for all probes; clients on loopback in the bench process); "
          f"baseline RSS {memory.get('baseline_rss_mb')} MB, {memory.get('final_rss_mb')} MB at the end.\n")
    print("| probe | before (issue 17) | after (measured) |")
    print("|---|---|---|")
    for n in range(1, 11):
        m = results.get(n, {"failed": "not run"})
        print(f"| {n}. {TITLES[n]} | {BEFORE[n]} | {safe_summary(n, m).replace('|', '/')} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": machine, "date": date, "load_average": {"start": load_start, "end": load_end},
            "command": f"python bench/hostile_clients.py --json {args.json}", "server": command,
            "memory": memory, "seconds": round(time.monotonic() - started, 1),
            "probes": [{"probe": n, "title": TITLES[n], "before": BEFORE[n],
                        "after": safe_summary(n, results.get(n, {"failed": "not run"})),
                        "measured": results.get(n)} for n in range(1, 11)]}, indent=2, default=str))
    failed = [n for n in range(1, 11) if "failed" in results.get(n, {"failed": ""})]
    if failed:
        print(f"\nprobes that failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
