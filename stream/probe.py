"""A measuring WebRTC peer for tests and benchmarks: it streams frames to a swapwatch server and collects
what comes back.

:class:`Probe` is a real aiortc client (no mocks): it posts a non-trickle offer to ``/offer``, sends the
given frames in real time with timestamps ``i * 90000 / fps``, records when each one was handed to its
encoder, and receives the processed track. Each sent frame carries its index as a block barcode in the
bottom-right corner (away from faces, the SYNTHETIC badge and the monitor's box), which survives VP8 and
lets the probe tell which input a returned frame shows. The RTP timestamps of the two legs each start at a
random origin, so the returned pts equal the sent ones plus a constant (mod 2^32): the probe finds that
constant from the barcodes and then maps every returned pts to its input frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

CLOCK = 90000
TIME_BASE = Fraction(1, CLOCK)
BITS = 12  # up to 4096 frames


def _block(width: int) -> int:
    return max(8, (width // 40) & ~1)  # even: the block covers whole chroma samples


class Clip:
    """Frames to send, converted once to yuv420p planes; one Clip can feed many probes."""

    def __init__(self, frames_bgr: list[np.ndarray]) -> None:
        if not frames_bgr:
            raise ValueError("a clip needs at least one frame")
        self.planes = [av.VideoFrame.from_ndarray(f, format="bgr24").reformat(format="yuv420p").to_ndarray()
                       for f in frames_bgr]
        self.height, self.width = frames_bgr[0].shape[:2]

    def __len__(self) -> int:
        return len(self.planes)

    def stamped(self, index: int) -> av.VideoFrame:
        """Frame ``index`` (looping over the clip) with ``index`` as BITS black/white blocks along the
        bottom-right edge: white luma 235 or black 16, neutral chroma."""
        planes = self.planes[index % len(self.planes)].copy()
        w, h = self.width, self.height
        b = _block(w)
        x0, y0 = w - BITS * b, h - b
        for bit in range(BITS):
            x = x0 + bit * b
            planes[y0:h, x:x + b] = 235 if (index >> bit) & 1 else 16
        # The U and V planes, (h/2) x (w/2) each, follow the luma in the same buffer.
        chroma = planes[h:].reshape(2, h // 2, w // 2)
        chroma[:, y0 // 2:, x0 // 2:] = 128
        return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def read_index(image_bgr: np.ndarray) -> int:
    h, w = image_bgr.shape[:2]
    b = _block(w)
    x0, y0 = w - BITS * b, h - b
    m = b // 4  # read the block centres: codecs smear the edges
    index = 0
    for bit in range(BITS):
        cell = image_bgr[y0 + m:h - m, x0 + bit * b + m:x0 + (bit + 1) * b - m]
        index |= int(cell.mean() > 127) << bit
    return index


class ClipTrack(MediaStreamTrack):
    """Sends ``count`` frames of a clip (looping over it) at ``fps`` in real time, from the first ``recv`` on
    (when the connection is up)."""

    kind = "video"

    def __init__(self, clip: Clip, fps: float = 25.0, *, count: int | None = None, flush: int = 3) -> None:
        """``flush`` extra frames (not counted) follow: aiortc's jitter buffer releases a frame only when the
        next one starts, so without them each leg would keep its last frame."""
        super().__init__()
        self.clip = clip
        self.fps = fps
        self.step = round(CLOCK / fps)
        self.count = len(clip) if count is None else count
        if self.count + flush >= 1 << BITS:
            raise ValueError(f"at most {(1 << BITS) - flush - 1} frames per probe")
        self.flush = flush
        self.sent: dict[int, float] = {}  # index -> loop time handed to the encoder
        self._start: float | None = None
        self.finished = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        i = len(self.sent)
        if i >= self.count + self.flush or self.readyState != "live":
            self.finished.set()
            self.stop()
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + i / self.fps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = self.clip.stamped(i)
        frame.pts, frame.time_base = i * self.step, TIME_BASE
        self.sent[i] = loop.time()
        return frame


@dataclass
class Received:
    pts: int
    at: float  # loop time
    barcode: int  # the input index the pixels show (a stand-in shows an older frame, or garbage)
    image: np.ndarray | None = None  # BGR, when kept


@dataclass
class ProbeReport:
    sent: int
    received: int  # returned frames whose pts maps to a sent frame
    unmatched: int  # returned frames whose pts maps to no sent frame
    in_order: bool  # mapped input indices strictly increase
    pts_increasing: bool  # returned timestamps strictly increase (mod 2^32), whatever the mapping
    latency_ms: dict[str, float | None]  # arrival back - hand-off, same pts
    content_age_ms: dict[str, float | None]  # arrival back - hand-off of the frame the pixels show
    fps_back: float
    indices: list[int] = field(default_factory=list)  # input index of each returned frame, in arrival order

    @property
    def fraction_back(self) -> float:
        return self.received / max(1, self.sent)


class Probe:
    def __init__(self, http: aiohttp.ClientSession, clip: Clip | list[np.ndarray], *, fps: float = 25.0,
                 count: int | None = None, mode: str = "swap", source: str | None = None, faces: str = "all",
                 token: str | None = None, keep_images: bool = False, websocket: bool = False,
                 extra: dict[str, Any] | None = None, flush: int = 3) -> None:
        """``clip``: BGR frames or a shared :class:`Clip`; ``count`` frames are sent (default: the clip once)."""
        self.http = http
        self.clip = clip if isinstance(clip, Clip) else Clip(clip)
        self.track = ClipTrack(self.clip, fps, count=count, flush=flush)
        self.body = {"type": "offer", "mode": mode, "source": source, "faces": faces, **(extra or {})}
        self.token = token
        self.keep_images = keep_images
        self.want_websocket = websocket
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.received: list[Received] = []
        self.messages: list[dict[str, Any]] = []
        self.session: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._listener: asyncio.Task | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def start(self) -> None:
        pc = self.pc
        pc.addTrack(self.track)  # a sendrecv video transceiver: the processed video comes back on it

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await pc.setLocalDescription(await pc.createOffer())  # gathers candidates: non-trickle
        body = {**self.body, "sdp": pc.localDescription.sdp}
        async with self.http.post("/offer", json=body, headers=self.headers) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"offer refused: {r.status} {answer}")
        self.session = answer["session"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        if self.want_websocket:
            self._ws = await self.http.ws_connect(f"/ws/{self.session}", headers=self.headers)
            self._listener = asyncio.ensure_future(self._listen(self._ws))
            self._tasks.append(self._listener)

    async def _consume(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            at = loop.time()
            image = frame.to_ndarray(format="bgr24")
            self.received.append(Received(frame.pts, at, read_index(image), image if self.keep_images else None))

    async def _listen(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))

    async def send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_json(message)

    async def run(self, tail: float = 1.0, timeout: float = 60.0) -> ProbeReport:
        """Stream the whole clip, wait ``tail`` seconds for the last frames, and report."""
        await asyncio.wait_for(self.track.finished.wait(), timeout)
        await asyncio.sleep(tail)
        return self.report()

    def mapping(self) -> dict[int, int]:
        """Returned pts -> input index, for the pts offset that the most barcodes agree with.

        A decoder may move a timestamp by a few ticks (rounding through its own time base), so a pts maps to
        the nearest multiple of the frame step, within a quarter step."""
        step = self.track.step
        counts = Counter(((r.pts - r.barcode * step) % (1 << 32)) // 16 for r in self.received)
        candidates = [b * 16 + 8 for b, _ in counts.most_common(8)]
        if not candidates:
            return {}

        def index(pts: int, offset: int) -> int | None:
            delta = (pts - offset + (1 << 31)) % (1 << 32) - (1 << 31)  # signed: frame 0 may sit just below
            i = (delta + step // 2) // step
            return i if abs(delta - i * step) <= step // 4 and i in self.track.sent else None

        offset = max(candidates, key=lambda c: sum(index(r.pts, c) == r.barcode for r in self.received))
        out = {}
        for r in self.received:
            i = index(r.pts, offset)
            if i is not None:
                out[r.pts] = i
        return out

    def report(self) -> ProbeReport:
        full = self.mapping()
        mapping = {pts: i for pts, i in full.items() if i < self.track.count}  # the flush frames aside
        sent = {i: t for i, t in self.track.sent.items() if i < self.track.count}
        back = [r for r in self.received if r.pts in mapping]
        indices = [mapping[r.pts] for r in back]
        latency = [r.at - sent[mapping[r.pts]] for r in back]
        age = [r.at - sent[r.barcode] for r in back if r.barcode in sent and r.barcode <= mapping[r.pts]]
        span = (self.received[-1].at - self.received[0].at) if len(self.received) > 1 else 0.0
        return ProbeReport(
            sent=len(sent), received=len(set(indices)),
            unmatched=sum(r.pts not in full for r in self.received),
            in_order=all(a < b for a, b in zip(indices, indices[1:])),
            pts_increasing=all(0 < (b.pts - a.pts) % (1 << 32) < (1 << 31)
                               for a, b in zip(self.received, self.received[1:])),
            latency_ms=_percentiles_ms(latency), content_age_ms=_percentiles_ms(age),
            fps_back=(len(self.received) - 1) / span if span > 0 else 0.0, indices=indices)

    async def close(self, *, abrupt: bool = False) -> None:
        """Hang up: DELETE the session (unless ``abrupt``: the server must notice by itself) and close."""
        if not abrupt and self.session is not None:
            async with self.http.delete(f"/sessions/{self.session}", headers=self.headers):
                pass
            if self._listener is not None:  # the server sends its last messages (alert ends), then closes
                await asyncio.wait([self._listener], timeout=2.0)
        if self._ws is not None:
            await self._ws.close()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def half_open_offer() -> str:
    """The SDP of a genuine aiortc offer whose peer is closed at once: a server that accepts it sends ICE checks
    that never get an answer (a half-open offer, as a careless or hostile client leaves them)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@dataclass
class DribbleReport:
    closed_after_s: float  # when the server closed the connection (or the probe gave up)
    closed_by_server: bool
    bytes_sent: int
    server_sent: bytes


async def dribble_request_head(host: str, port: int, *, seconds: float, step: float = 0.2) -> DribbleReport:
    """Open a connection and send a request head one byte every ``step`` s, as a slow-header (slowloris)
    client does, until the server closes the connection or ``seconds`` pass."""
    reader, writer = await asyncio.open_connection(host, port)
    head = f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Padding: " + "a" * 400
    loop = asyncio.get_running_loop()
    started, got, sent, by_server = loop.time(), b"", 0, False
    try:
        for ch in head:
            writer.write(ch.encode())
            await writer.drain()
            sent += 1
            try:
                got += await asyncio.wait_for(reader.read(1024), step)
            except asyncio.TimeoutError:
                pass
            if reader.at_eof():
                by_server = True
                break
            if loop.time() - started > seconds:
                break
    except ConnectionError:
        by_server = True
    closed = loop.time() - started
    writer.close()
    return DribbleReport(closed, by_server, sent, got)


def _percentiles_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    a = np.asarray(values) * 1000.0
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "max": round(float(a.max()), 1)}
