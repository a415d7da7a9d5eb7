"""The websocket channel of one session (``/ws/{session}``, PROTOCOL.md).

Server -> client: ``hello`` once, ``metrics`` every ``metrics_interval`` s, ``alert`` events as the monitor
raises them, ``heartbeat`` every ``heartbeat_interval`` s, ``ack``/``error`` replies to control messages.
Client -> server: ``control`` (validated in full before anything changes) and ``heartbeat``; anything else
gets an ``error`` reply and changes nothing. Sends are serialised by a lock (one writer on the socket).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from swapwatch.config import ServerConfig
from swapwatch.stream.offer import OfferError, SessionSettings
from swapwatch.stream.session import Session
from swapwatch.stream.sources import SourceStore

log = logging.getLogger(__name__)

CONTROL_KEYS = frozenset({"source", "mode", "faces"})


class ControlError(ValueError):
    def __init__(self, reason: str, message_id: int | None = None) -> None:
        super().__init__(reason)
        self.message_id = message_id


class SessionChannel:
    def __init__(self, session: Session, ws: web.WebSocketResponse, *, config: ServerConfig,
                 sources: SourceStore) -> None:
        self.session = session
        self.ws = ws
        self.config = config
        self.sources = sources
        self.last_seen = time.monotonic()  # any client message is a sign of life
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        session, ws = self.session, self.ws
        events = session.subscribe()  # before hello: no alert falls between the two
        writer: asyncio.Future | None = None
        try:
            await self.send(session.hello())  # always the first message
            writer = asyncio.ensure_future(self._write(events))
            async for msg in ws:
                self.last_seen = time.monotonic()
                if msg.type == WSMsgType.TEXT:
                    reply = await self._handle(msg.data)
                    if reply is not None:
                        await self.send(reply)
                elif msg.type == WSMsgType.BINARY:
                    await self.send({"type": "error", "error": "binary messages are not accepted; send JSON text"})
                elif msg.type == WSMsgType.ERROR:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if writer is not None:
                writer.cancel()
            session.unsubscribe(events)
            if not ws.closed:
                await ws.close()
        if self.config.close_on_websocket_close:
            await session.close("websocket closed")

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        async with self._lock:
            await self.ws.send_json(message)

    async def _write(self, events: asyncio.Queue) -> None:
        """Alerts as they come; metrics and heartbeats on their clocks; close when the session ends."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        next_metrics = loop.time() + cfg.metrics_interval
        next_heartbeat = loop.time() + cfg.heartbeat_interval
        try:
            while not self.ws.closed:
                timeout = max(0.0, min(next_metrics, next_heartbeat) - loop.time())
                try:
                    message = await asyncio.wait_for(events.get(), timeout)
                except TimeoutError:
                    message = {}
                if message is None:  # the session ended
                    reason = self.session.close_reason or "closed"
                    await self.ws.close(code=1000, message=f"session closed: {reason}"[:120].encode())
                    return
                if message:
                    await self.send(message)
                now = loop.time()
                if now >= next_metrics:
                    await self.send(self.session.stats.message())
                    next_metrics = max(next_metrics + cfg.metrics_interval, now)
                if now >= next_heartbeat:
                    await self.send({"type": "heartbeat", "t": round(time.time(), 3)})
                    next_heartbeat = max(next_heartbeat + cfg.heartbeat_interval, now)
        except (ConnectionResetError, RuntimeError):  # the socket went away under us
            return

    async def _handle(self, text: str) -> dict[str, Any] | None:
        try:
            return await self._control(text)
        except ControlError as exc:
            reply: dict[str, Any] = {"type": "error", "error": str(exc)}
            if exc.message_id is not None:
                reply["id"] = exc.message_id
            return reply

    async def _control(self, text: str) -> dict[str, Any] | None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ControlError("message is not JSON") from None
        except RecursionError:  # the decoder's own depth limit: an error reply, and the channel stays open
            raise ControlError("message is JSON nested too deeply") from None
        if not isinstance(data, dict):
            raise ControlError("message must be a JSON object")
        kind = data.get("type")
        if kind == "heartbeat":
            return None
        if kind != "control":
            raise ControlError(f"unknown message type {kind!r}; expected 'control' or 'heartbeat'")
        message_id = data.get("id")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            raise ControlError("a control message needs an integer 'id'")
        changes = data.get("set")
        if not isinstance(changes, dict) or not changes:
            raise ControlError("'set' must be a non-empty object", message_id)
        unknown = set(changes) - CONTROL_KEYS
        if unknown:
            raise ControlError(f"cannot set {', '.join(sorted(unknown))}; settable: "
                               f"{', '.join(sorted(CONTROL_KEYS))}", message_id)
        session = self.session
        wanted = {**session.settings.to_json(), **changes}
        source_id = wanted["source"]
        if source_id is not None and not isinstance(source_id, str):
            raise ControlError("'source' must be a source id (a string) or null", message_id)
        if source_id == session.settings.source:
            source = session.source  # the session holds its own reference (the store may have evicted it)
        else:
            source = self.sources.get(source_id) if source_id else None
            if source_id and source is None:
                raise ControlError(f"unknown source {source_id!r}", message_id)
        try:
            settings = SessionSettings(mode=wanted["mode"], source=source_id or None, faces=wanted["faces"])
        except (OfferError, TypeError) as exc:
            raise ControlError(str(exc), message_id) from None
        try:
            await session.reconfigure(settings, source)
        except Exception as exc:
            log.warning("session %s…: control %s failed: %s", session.id[:6], changes, exc)
            raise ControlError(f"could not apply: {exc}", message_id) from None
        return {"type": "ack", "id": message_id, "applied": changes}
