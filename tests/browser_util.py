"""Helpers for driving the page in headless Chromium: a fake-camera .y4m, Chromium over raw CDP, and servers.

No browser is ever downloaded: Chromium is the system one (Debian's `chromium` package at /usr/bin/chromium,
or $SWAPWATCH_CHROMIUM). The DevTools protocol is spoken directly over a websocket with aiohttp, so the tests
need no extra Python package.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Background/occluded headless tabs must not throttle timers or rendering of the live video.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)


def find_chromium() -> str | None:
    env = os.environ.get("SWAPWATCH_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file():
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- fake camera


def make_y4m(src: Path, dst: Path, *, max_frames: int | None = None, pingpong: bool = True) -> tuple[int, int, int]:
    """Decode `src` with PyAV and write a raw 4:2:0 YUV4MPEG2 file Chromium's fake camera can play.

    The header says `C420` (Chromium's reader rejects some other 4:2:0 tags such as `C420mpeg2`). Chromium
    loops the file; with `pingpong` the clip is followed by its reverse so the loop has no jump cut.
    Returns (width, height, frames written).
    """
    planes: list[bytes] = []
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or 25
        width, height = stream.codec_context.width & ~1, stream.codec_context.height & ~1
        for frame in container.decode(stream):
            yuv = frame.reformat(width=width, height=height, format="yuv420p")
            planes.append(b"".join(_plane_bytes(yuv.planes[i], width >> (i > 0), height >> (i > 0))
                                   for i in range(3)))
            if max_frames and len(planes) >= max_frames:
                break
    if not planes:
        raise ValueError(f"no video frames decoded from {src}")
    if pingpong and len(planes) > 2:
        planes = planes + planes[-2:0:-1]
    num, den = (rate.numerator, rate.denominator) if hasattr(rate, "numerator") else (int(rate), 1)
    with open(dst, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{num}:{den} Ip A1:1 C420\n".encode())
        for data in planes:
            f.write(b"FRAME\n")
            f.write(data)
    return width, height, len(planes)


def _plane_bytes(plane, width: int, height: int) -> bytes:
    """A plane's pixels without the line padding PyAV/FFmpeg may add."""
    arr = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]
    return arr.tobytes()


# ------------------------------------------------------------------------------------------ Chromium + CDP


class CDPError(RuntimeError):
    pass


class Page:
    """One page target, attached over the browser's DevTools websocket (flattened session)."""

    def __init__(self, browser: Chromium, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.console: list[dict[str, Any]] = []  # {"level", "text", "source"}

    async def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return await self.browser.send(method, params, session_id=self.session_id, timeout=timeout)

    async def evaluate(self, expression: str, *, timeout: float = 30) -> Any:
        """Evaluate a JS expression (awaiting a returned promise) and return its JSON value."""
        reply = await self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                     "returnByValue": True, "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"JS exception in {expression[:80]!r}: {text}")
        return reply.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float = 15, interval: float = 0.1) -> Any:
        """Poll `expression` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {expression!r}")
            await asyncio.sleep(interval)

    async def goto(self, url: str, *, timeout: float = 15) -> None:
        loaded = self.browser.expect_event("Page.loadEventFired", self.session_id)
        reply = await self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {reply['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def set_input_files(self, selector: str, paths: list[Path]) -> None:
        """Attach files to an <input type=file>; Chromium then fires its input and change events."""
        ref = await self.send("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"})
        object_id = ref.get("result", {}).get("objectId")
        if not object_id:
            raise CDPError(f"no element matches {selector!r}")
        await self.send("DOM.setFileInputFiles", {"files": [str(Path(p).resolve()) for p in paths],
                                                   "objectId": object_id})

    async def click(self, selector: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def screenshot(self, path: Path) -> Path:
        reply = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(reply["data"]))
        return path

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.console if m["level"] == "error"]


class Chromium:
    """Headless Chromium with a fake camera, driven over raw CDP. Use as `async with Chromium(...) as b`."""

    def __init__(self, executable: str, *, y4m: Path | None = None, window: tuple[int, int] = (1280, 1000),
                 extra_flags: tuple[str, ...] = (), log_path: Path | None = None) -> None:
        self.executable = executable
        self.y4m = y4m
        self.window = window
        self.extra_flags = extra_flags
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.profile: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future]] = []
        self._pages: dict[str, Page] = {}

    async def __aenter__(self) -> Chromium:
        self.profile = tempfile.mkdtemp(prefix="swapwatch-chromium-")
        args = [self.executable, *CHROMIUM_FLAGS, *self.extra_flags, f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--window-size={self.window[0]},{self.window[1]}"]
        if self.y4m is not None:
            args.append(f"--use-file-for-fake-video-capture={self.y4m}")
        args.append("about:blank")
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            if self.log_path:
                log.close()
        try:
            ws_url = await self._devtools_url(timeout=20)
            self._http = aiohttp.ClientSession()
            self._ws = await self._http.ws_connect(ws_url, max_msg_size=0, heartbeat=None)
            self._reader = asyncio.create_task(self._read())
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _devtools_url(self, timeout: float) -> str:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with code {self.proc.returncode} at start-up"
                               + (f"; see {self.log_path}" if self.log_path else ""))
            if port_file.is_file():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            await asyncio.sleep(0.05)
        raise CDPError(f"chromium did not open its DevTools port within {timeout}s")

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut and not fut.done():
                    if "error" in data:
                        fut.set_exception(CDPError(f"{data['error'].get('message')} ({data['error']})"))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            self._on_event(data.get("method", ""), data.get("params", {}), data.get("sessionId"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CDPError("DevTools connection closed"))

    def _on_event(self, method: str, params: dict, session_id: str | None) -> None:
        for waiter in list(self._waiters):
            name, sid, fut = waiter
            if name == method and (sid is None or sid == session_id) and not fut.done():
                fut.set_result(params)
                self._waiters.remove(waiter)
        page = self._pages.get(session_id or "")
        if page is None:
            return
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            level = {"warning": "warning", "error": "error", "assert": "error"}.get(params.get("type"), "info")
            page.console.append({"level": level, "text": text, "source": "console"})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            page.console.append({"level": "error", "text": text, "source": "exception"})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            level = "error" if entry.get("level") == "error" else entry.get("level", "info")
            page.console.append({"level": level, "text": f"{entry.get('text')} {entry.get('url', '')}".strip(),
                                 "source": entry.get("source", "log")})

    def expect_event(self, method: str, session_id: str | None = None) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, fut))
        return fut

    async def send(self, method: str, params: dict | None = None, *, session_id: str | None = None,
                   timeout: float = 30) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = fut
        await self._ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, timeout)

    async def new_page(self) -> Page:
        """Attach to the start-up blank tab, with console, exception and log capture on."""
        targets = (await self.send("Target.getTargets"))["targetInfos"]
        page_targets = [t for t in targets if t["type"] == "page"]
        if page_targets:
            target_id = page_targets[0]["targetId"]
        else:
            target_id = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session_id = (await self.send("Target.attachToTarget", {"targetId": target_id, "flatten": True}))["sessionId"]
        page = Page(self, session_id)
        self._pages[session_id] = page
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride", {"width": self.window[0], "height": self.window[1],
                                                               "deviceScaleFactor": 1, "mobile": False})
        return page

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            try:
                await asyncio.wait_for(self.send("Browser.close"), 3)
            except Exception:  # noqa: BLE001 - best effort: the process is killed below anyway
                pass
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._http is not None:
            await self._http.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)


# -------------------------------------------------------------------------------------- swapwatch server


class ServerProcess:
    """`python -m swapwatch serve ...` on 127.0.0.1 in a subprocess; waits for /health. Context manager."""

    def __init__(self, *args: str, port: int | None = None, token: str | None = None, log_path: Path | None = None,
                 startup_timeout: float = 45, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.token = token
        self.args = (*args, "--token", token) if token else args
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "swapwatch", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               *self.args]
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(self.env or {})}, start_new_session=True)
        finally:
            if self.log_path:
                log.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"swapwatch serve exited with code {self.proc.returncode}: {self.log_tail()}")
            try:
                self.health(timeout=1)
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"swapwatch serve not healthy after {self.startup_timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def health(self, timeout: float = 5) -> dict:
        import urllib.request

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with urllib.request.urlopen(urllib.request.Request(self.url + "health", headers=headers), timeout=timeout) as r:
            return json.loads(r.read())

    def log_tail(self, n: int = 3000) -> str:
        if self.log_path and Path(self.log_path).is_file():
            return Path(self.log_path).read_text(errors="replace")[-n:]
        return "(no log)"

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ------------------------------------------------------------------------------ protocol stub (page-only)

STATIC = Path(__file__).resolve().parents[1] / "client" / "static"


class StubServer:
    """A stand-in that speaks stream/PROTOCOL.md with an aiortc echo, for exercising the page's own behaviour
    (alerts, control acks and refusals, a full server, a dropped websocket) without the real pipeline.

    It is not the swapwatch server: the acceptance test runs against `swapwatch serve`.
    """

    def __init__(self, *, max_sessions: int = 4, token: str | None = None,
                 alert_script: list[tuple[float, dict]] | None = None) -> None:
        self.max_sessions = max_sessions
        self.token = token
        self.alert_script = alert_script or []
        self.sources: set[str] = set()
        self.sessions: dict[str, Any] = {}
        self.sockets: dict[str, set] = {}
        self.controls: list[dict] = []
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.tickets: dict[str, str] = {}  # websocket ticket -> session id
        self._runner = None
        self.port = 0

    def _authorised(self, request) -> bool:
        if not self.token:
            return True
        ticket = request.query.get("ticket")
        if ticket is not None and request.path.startswith("/ws/"):  # single use, for that session (PROTOCOL.md)
            return self.tickets.pop(ticket, None) == request.match_info.get("id")
        return (request.headers.get("Authorization") == f"Bearer {self.token}"
                or request.query.get("token") == self.token)

    def app(self):
        from aiohttp import web

        @web.middleware
        async def record(request, handler):
            self.requests.append((request.method, request.path, request.headers.get("Authorization")))
            if request.path != "/" and not self._authorised(request):
                return web.json_response({"error": "bad token"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[record])
        async def page(request):
            return web.FileResponse(STATIC / "index.html")

        async def health(request):
            return web.json_response({"status": "ok", "sessions": len(self.sessions)})

        app.router.add_get("/", page)
        app.router.add_get("/health", health)
        app.router.add_post("/sources", self._sources)
        app.router.add_post("/offer", self._offer)
        app.router.add_delete("/sessions/{id}", self._delete)
        app.router.add_post("/sessions/{id}/ticket", self._ticket)
        app.router.add_get("/ws/{id}", self._ws)
        return app

    async def _ticket(self, request):
        import secrets

        from aiohttp import web

        if request.match_info["id"] not in self.sessions:
            return web.json_response({"error": "unknown session"}, status=404)
        ticket = secrets.token_urlsafe(16)
        self.tickets[ticket] = request.match_info["id"]
        return web.json_response({"ticket": ticket, "expires_in": 30})

    async def _sources(self, request):
        import secrets

        import cv2
        from aiohttp import web

        reader = await request.multipart()
        part = await reader.next()
        data = await part.read() if part is not None and part.name == "file" else b""
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            return web.json_response({"error": "not an image"}, status=400)
        h, w = image.shape[:2]
        sid = secrets.token_urlsafe(16)
        self.sources.add(sid)
        box = [w * 0.3, h * 0.25, w * 0.7, h * 0.75]
        lms = [[w * 0.42, h * 0.42], [w * 0.58, h * 0.42], [w * 0.5, h * 0.52], [w * 0.44, h * 0.62],
               [w * 0.56, h * 0.62]]
        return web.json_response({"id": sid, "faces": 1, "size": [w, h],
                                  "face": {"box": box, "score": 0.99, "landmarks": lms}})

    async def _offer(self, request):
        import secrets

        from aiohttp import web
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from aiortc.contrib.media import MediaRelay

        try:
            body = await request.json()
            offer = RTCSessionDescription(sdp=body["sdp"], type=body["type"])
            mode = body.get("mode", "swap")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "malformed offer"}, status=400)
        if mode not in ("swap", "monitor", "both"):
            return web.json_response({"error": f"unknown mode {mode!r}"}, status=400)
        if body.get("source") and body["source"] not in self.sources:
            return web.json_response({"error": "unknown source"}, status=404)
        if len(self.sessions) >= self.max_sessions:
            return web.json_response({"error": f"server full ({self.max_sessions} sessions)"}, status=503)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        relay = MediaRelay()
        sid = secrets.token_urlsafe(16)
        self.sessions[sid] = {"pc": pc, "mode": mode, "source": body.get("source"), "faces": body.get("faces")}

        @pc.on("track")
        def on_track(track):
            pc.addTrack(relay.subscribe(track, buffered=False))

        await pc.setRemoteDescription(offer)
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer", "session": sid})

    async def _delete(self, request):
        from aiohttp import web

        session = self.sessions.pop(request.match_info["id"], None)
        if session is None:
            return web.json_response({"error": "unknown session"}, status=404)
        await session["pc"].close()
        return web.json_response({"closed": True})

    async def _ws(self, request):
        from aiohttp import web

        sid = request.match_info["id"]
        session = self.sessions.get(sid)
        if session is None:
            return web.json_response({"error": "unknown session"}, status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.setdefault(sid, set()).add(ws)
        await ws.send_json({"type": "hello", "session": sid, "mode": session["mode"], "source": session["source"],
                            "faces": session["faces"]})

        async def ticker():
            start = time.monotonic()
            script = list(self.alert_script)
            n = 0
            while not ws.closed:
                await asyncio.sleep(0.25)
                t = time.monotonic() - start
                while script and script[0][0] <= t:
                    await ws.send_json({"type": "alert", **script.pop(0)[1]})
                n += 1
                if n % 4 == 0:
                    await ws.send_json({"type": "metrics", "t": time.time(), "frames_in": n * 6, "frames_out": n * 6,
                                        "dropped": 0, "fps_in": 25.0, "fps_out": 25.0,
                                        "latency_ms": {"p50": 12.0, "p95": 20.0}, "stages_ms": {"echo": 0.1}})
                if n % 8 == 0:
                    await ws.send_json({"type": "heartbeat", "t": time.time()})

        task = asyncio.create_task(ticker())
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    await ws.send_json({"type": "error", "error": "not JSON"})
                    continue
                if data.get("type") == "heartbeat":
                    continue
                if data.get("type") != "control" or not isinstance(data.get("set"), dict):
                    await ws.send_json({"type": "error", "error": "unknown message", "id": data.get("id")})
                    continue
                self.controls.append(data)
                s = data["set"]
                if "mode" in s and s["mode"] not in ("swap", "monitor", "both"):
                    await ws.send_json({"type": "error", "id": data.get("id"), "error": f"unknown mode {s['mode']!r}"})
                elif "source" in s and s["source"] not in self.sources:
                    await ws.send_json({"type": "error", "id": data.get("id"), "error": "unknown source"})
                elif s.get("mode") in ("swap", "both") and not (s.get("source") or session["source"]):
                    await ws.send_json({"type": "error", "id": data.get("id"), "error": "swap needs a source"})
                else:
                    session.update(s)
                    await ws.send_json({"type": "ack", "id": data.get("id"), "applied": s})
        finally:
            task.cancel()
            self.sockets.get(sid, set()).discard(ws)
        return ws

    async def drop_sockets(self) -> int:
        """Close every websocket from the server side, as a restart or a network cut would."""
        n = 0
        for sockets in self.sockets.values():
            for ws in list(sockets):
                await ws.close(code=1011, message=b"test drop")
                n += 1
        return n

    async def end_sessions(self, reason: str = "idle") -> None:
        """End every session from the server side, as the idle timeout does: websocket closed with 1000."""
        for sid in list(self.sessions):
            session = self.sessions.pop(sid)
            for ws in list(self.sockets.get(sid, ())):
                await ws.close(code=1000, message=f"session closed: {reason}".encode())
            await session["pc"].close()

    async def __aenter__(self) -> StubServer:
        from aiohttp import web

        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def __aexit__(self, *exc) -> None:
        for session in list(self.sessions.values()):
            await session["pc"].close()
        self.sessions.clear()
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def failure_report(page: Page, out_dir: Path, *, server: Any = None, state_js: str | None = None):
    """On any failure inside the block: print what the page saw (``state_js``, evaluated), its console, a
    screenshot (``out_dir/failure.png``) and the server's log tail; then let the failure through."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            if state_js is not None:
                print("page state:", json.dumps(await page.evaluate(state_js), indent=1))
            print("console:", json.dumps(page.console, indent=1))
            print("failure screenshot:", await page.screenshot(out_dir / "failure.png"))
            if server is not None:
                print("server log:", server.log_tail())
        raise
