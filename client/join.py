"""A headless Python client that joins a swapwatch session over WebRTC (stream/PROTOCOL.md, client side).

:class:`JoinClient` uploads the source face (``POST /sources``), sends one video track from a file or a
camera, posts a non-trickle offer (``POST /offer``), receives the processed track (recorded to a file or
discarded), prints every websocket message (``/ws/{session}``) as a JSON line, and closes the session
(``DELETE /sessions/{id}``) when the input ends, after ``duration`` seconds, or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from swapwatch.errors import InputError, SwapwatchError
from swapwatch.stream.offer import DEFAULT_FACES, DEFAULT_MODE, FACES, MODES

log = logging.getLogger(__name__)

CAMERA = "camera"


class JoinError(SwapwatchError):
    """The server is unreachable, refused a request, or the WebRTC session failed."""


@dataclass(frozen=True)
class JoinConfig:
    url: str  # the server's base URL, e.g. http://127.0.0.1:8080
    input: str  # a video file, or "camera"
    mode: str = DEFAULT_MODE
    source: str | None = None  # a face photo to upload (needed by swap and both)
    faces: str = DEFAULT_FACES
    record: str | None = None  # write the processed video here (.mp4, .mkv, .webm)
    token: str | None = None
    duration: float | None = None  # stop after this many seconds (default: when the input ends)
    ice_servers: tuple[str, ...] = ()  # none by default: loopback and LAN need no STUN
    timeout: float = 15.0  # for each HTTP request and for the WebRTC connection to come up
    camera_device: str = "/dev/video0"
    camera_size: str = "640x480"
    drain: float = 3.0  # after the input ends, wait at most this long for the last processed frames

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}")
        if self.faces not in FACES:
            raise InputError(f"faces must be one of {', '.join(FACES)}")
        if urlsplit(self.url).scheme not in ("http", "https") or not urlsplit(self.url).netloc:
            raise InputError(f"{self.url}: expected the server's http:// or https:// URL")
        if self.duration is not None and self.duration <= 0:
            raise InputError("duration must be positive")
        if self.timeout <= 0:
            raise InputError("timeout must be positive")


@dataclass
class JoinSummary:
    session: str | None = None
    frames_sent: int = 0
    frames_received: int = 0
    duration_s: float = 0.0
    fps_sent: float = 0.0
    fps_received: float = 0.0
    messages: dict[str, int] = field(default_factory=dict)  # websocket messages by type
    record: str | None = None
    ended_by: str = ""  # input | duration | server | interrupted

    def to_json(self) -> dict[str, Any]:
        return {"type": "summary", "session": self.session, "frames_sent": self.frames_sent,
                "frames_received": self.frames_received, "duration_s": round(self.duration_s, 3),
                "fps_sent": round(self.fps_sent, 2), "fps_received": round(self.fps_received, 2),
                "messages": dict(self.messages), "record": self.record, "ended_by": self.ended_by}


def _counting_track_class():
    # aiortc is imported lazily (the CLI stays fast); the class is built on first use.
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError

    class CountingTrack(MediaStreamTrack):
        """Passes frames through from another track, counting them and noting when it ends."""

        def __init__(self, inner: MediaStreamTrack) -> None:
            super().__init__()
            self.kind = inner.kind
            self.inner = inner
            self.frames = 0
            self.first: float | None = None
            self.last: float | None = None
            self.ended = asyncio.Event()

        async def recv(self):
            try:
                frame = await self.inner.recv()
            except MediaStreamError:
                self.ended.set()
                self.stop()
                raise
            now = time.monotonic()
            self.first = now if self.first is None else self.first
            self.last = now
            self.frames += 1
            return frame

        def fps(self) -> float:
            if self.frames < 2 or self.first is None or self.last is None or self.last <= self.first:
                return 0.0
            return (self.frames - 1) / (self.last - self.first)

    return CountingTrack


def _print_json(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


class JoinClient:
    """One session with a swapwatch server; :meth:`run` returns its summary or raises :class:`JoinError`."""

    def __init__(self, config: JoinConfig, *, emit: Callable[[dict[str, Any]], None] = _print_json) -> None:
        self.config = config
        self.emit = emit
        self.summary = JoinSummary(record=config.record)
        base = urlsplit(config.url)
        self._base = urlunsplit((base.scheme, base.netloc, base.path.rstrip("/"), "", ""))
        self._headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}

    # ---- the session ---------------------------------------------------------------------------------

    async def run(self) -> JoinSummary:
        import aiohttp
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
        from aiortc.contrib.media import MediaBlackhole, MediaRecorder

        cfg = self.config
        counting = _counting_track_class()
        player = self._open_input()  # before any request: a bad input fails without touching the server
        pc = None
        sink = None
        ws_task = None
        session: str | None = None
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as http:
            try:
                sink = self._open_sink(MediaRecorder, MediaBlackhole)
                source_id = await self._upload_source(http) if cfg.source else None
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(u) for u in cfg.ice_servers]))
                sent = counting(player.video)
                pc.addTrack(sent)
                received: list[Any] = []
                state_changed = asyncio.Event()

                @pc.on("track")
                def on_track(track) -> None:
                    if track.kind == "video" and not received:
                        received.append(counting(track))
                        sink.addTrack(received[0])

                @pc.on("connectionstatechange")
                def on_state() -> None:
                    state_changed.set()

                await pc.setLocalDescription(await pc.createOffer())  # gathers candidates (non-trickle)
                answer = await self._request(http, "POST", "/offer", "the offer", json={
                    "sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "mode": cfg.mode,
                    "source": source_id, "faces": cfg.faces})
                if not isinstance(answer, dict) or "sdp" not in answer or "session" not in answer:
                    raise JoinError("the server's answer to the offer lacks 'sdp' or 'session'")
                session = self.summary.session = str(answer["session"])
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"],
                                                                    type=answer.get("type", "answer")))
                if not received:
                    raise JoinError("the server's answer carries no video track")
                await sink.start()
                ws_task = asyncio.ensure_future(self._websocket(http, session))
                await self._wait_connected(pc, state_changed)
                started = time.monotonic()
                self.summary.ended_by = await self._wait_end(pc, sent, received[0], state_changed)
                self.summary.duration_s = time.monotonic() - started
                self.summary.frames_sent, self.summary.fps_sent = sent.frames, sent.fps()
                self.summary.frames_received, self.summary.fps_received = received[0].frames, received[0].fps()
            except asyncio.CancelledError:
                self.summary.ended_by = "interrupted"
                raise
            finally:
                await self._close(http, session, pc, sink, ws_task, player)
                if cfg.record and sink is not None and self.summary.frames_received == 0:
                    Path(cfg.record).unlink(missing_ok=True)  # no frame recorded: leave no broken file
        if self.summary.frames_received == 0:
            raise JoinError("no processed frame came back from the server")
        return self.summary

    async def _wait_connected(self, pc, state_changed: asyncio.Event) -> None:
        deadline = time.monotonic() + self.config.timeout
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise JoinError(f"WebRTC connection {pc.connectionState} (ICE could not connect; behind NAT? "
                                "try --ice-server stun:... or a TURN server)")
            left = deadline - time.monotonic()
            if left <= 0:
                raise JoinError(f"WebRTC connection not up after {self.config.timeout:g} s")
            state_changed.clear()
            try:
                await asyncio.wait_for(state_changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _wait_end(self, pc, sent, received, state_changed: asyncio.Event) -> str:
        """Why the session ends: the input ended, the duration passed, or the server went away."""
        cfg = self.config
        deadline = time.monotonic() + cfg.duration if cfg.duration is not None else None
        while True:
            if pc.connectionState in ("failed", "closed") or received.ended.is_set():
                return "server"
            if sent.ended.is_set():
                await self._drain(received)
                return "input"
            if deadline is not None and time.monotonic() >= deadline:
                return "duration"
            await asyncio.sleep(0.05)

    async def _drain(self, received) -> None:
        # The last frames sent are still in flight: wait until nothing new arrives for a moment.
        end = time.monotonic() + self.config.drain
        count, quiet_since = received.frames, time.monotonic()
        while time.monotonic() < end and time.monotonic() - quiet_since < 0.5 and not received.ended.is_set():
            await asyncio.sleep(0.05)
            if received.frames != count:
                count, quiet_since = received.frames, time.monotonic()

    async def _close(self, http, session, pc, sink, ws_task, player) -> None:
        """Close in an order that finishes the recording and frees the server's session at once."""
        if session is not None:
            try:
                async with http.delete(f"{self._base}/sessions/{session}") as r:
                    if r.status not in (200, 204, 404):  # 404: the server closed it already
                        log.warning("DELETE /sessions: HTTP %d", r.status)
            except Exception as exc:  # closing is best effort: the server also times idle sessions out
                log.warning("DELETE /sessions failed: %s", exc)
        if ws_task is not None:
            # The server sends its last messages (the end of open alerts) as the session closes, then
            # closes the websocket: give that a moment before cutting it.
            try:
                await asyncio.wait_for(asyncio.shield(ws_task), 1.0 if session is not None else 0.0)
            except Exception:  # timed out (or the reader failed): it is cancelled below either way
                pass
            ws_task.cancel()
            await asyncio.gather(ws_task, return_exceptions=True)
        if pc is not None:
            await pc.close()
        if sink is not None:
            try:
                await sink.stop()
            except Exception as exc:  # e.g. a recorder that never got a frame
                log.warning("closing the recording failed: %s", exc)
        if player is not None and player.video is not None:
            player.video.stop()

    # ---- pieces --------------------------------------------------------------------------------------

    def _open_input(self):
        import av
        from aiortc.contrib.media import MediaPlayer

        cfg = self.config
        if cfg.input == CAMERA:
            if sys.platform != "linux":
                raise InputError("--input camera is supported on Linux (v4l2) only; pass a video file")
            if not Path(cfg.camera_device).exists():
                raise InputError(f"no camera at {cfg.camera_device}; pass --input FILE instead")
            try:
                player = MediaPlayer(cfg.camera_device, format="v4l2",
                                     options={"video_size": cfg.camera_size, "framerate": "30"})
            except av.FFmpegError as exc:
                raise InputError(f"cannot open the camera {cfg.camera_device}: {exc.strerror or exc}") from None
        else:
            from swapwatch.engines.runtime import check_file

            path = check_file(cfg.input)
            try:
                player = MediaPlayer(str(path))
            except (av.FFmpegError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: not a readable video ({exc.__class__.__name__})") from None
        if player.video is None:
            if player.audio is not None:
                player.audio.stop()
            raise InputError(f"{cfg.input}: has no video stream")
        return player

    def _open_sink(self, recorder_cls, blackhole_cls):
        import av

        if not self.config.record:
            return blackhole_cls()
        path = Path(self.config.record)
        if path.suffix.lower() not in (".mp4", ".mkv", ".mov", ".webm"):
            raise InputError("--record needs a .mp4, .mkv, .mov or .webm file name")
        try:
            return recorder_cls(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise InputError(f"cannot write {path}: {exc}") from None

    async def _upload_source(self, http) -> str:
        import aiohttp

        path = Path(self.config.source)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        form = aiohttp.FormData()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        form.add_field("file", path.read_bytes(), filename=path.name, content_type=ctype)
        body = await self._request(http, "POST", "/sources", f"the source photo {path.name}", data=form)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise JoinError("the server's answer to POST /sources lacks an 'id'")
        return body["id"]

    async def _request(self, http, method: str, path: str, what: str, **kwargs) -> Any:
        """One HTTP request; any failure becomes a one-line JoinError with the server's reason."""
        import aiohttp

        url = f"{self._base}{path}"
        try:
            async with http.request(method, url, **kwargs) as r:
                text = await r.text()
                if r.status >= 400:
                    raise JoinError(f"server refused {what} (HTTP {r.status}): {_reason(text, r.reason)}")
                try:
                    return json.loads(text) if text else None
                except json.JSONDecodeError:
                    raise JoinError(f"{method} {path}: the server's answer is not JSON") from None
        except aiohttp.ClientConnectorError as exc:
            raise JoinError(f"cannot reach {self._base}: {exc.os_error.strerror or exc}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise JoinError(f"{method} {path} failed: {exc.__class__.__name__} {exc}".rstrip()) from None

    async def _websocket(self, http, session: str) -> None:
        """Print every server message as a JSON line; heartbeat every 2 s. Failures are logged, not fatal."""
        import aiohttp

        base = urlsplit(self._base)
        scheme = "wss" if base.scheme == "https" else "ws"
        url = urlunsplit((scheme, base.netloc, f"{base.path}/ws/{session}", "", ""))
        try:  # the token in the Authorization header, as on every request: never in the URL
            async with http.ws_connect(url, headers=self._headers,
                                       timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
                beat = asyncio.ensure_future(self._heartbeat(ws))
                try:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        try:
                            data = json.loads(msg.data)
                        except json.JSONDecodeError:
                            log.warning("websocket: non-JSON message ignored")
                            continue
                        kind = str(data.get("type")) if isinstance(data, dict) else "?"
                        self.summary.messages[kind] = self.summary.messages.get(kind, 0) + 1
                        self.emit(data)
                finally:
                    beat.cancel()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            log.warning("websocket %s: %s %s", url.split("?")[0], exc.__class__.__name__, exc)

    @staticmethod
    async def _heartbeat(ws) -> None:
        try:
            while not ws.closed:
                await ws.send_str('{"type": "heartbeat"}')
                await asyncio.sleep(2.0)
        except (ConnectionError, RuntimeError):  # the socket closed under us: the reader notices too
            pass


def _reason(text: str, fallback: str | None) -> str:
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return (text.strip().splitlines() or [fallback or "no reason given"])[0][:200]
