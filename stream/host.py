"""A session host: one process's models, inference worker and live sessions, driven by a front end.

On one machine `swapwatch serve` is its own host. On a Ray cluster (stream/cluster.py) each host is a Ray actor
(one per GPU, one per node on CPU) and the front end calls these methods over Ray: the host builds the aiortc
peer connection itself, so a session's media flows between the client and the host's node directly, and only
signalling, websocket messages, control and metrics pass through the front.

Every method takes and returns plain data (dataclasses, dicts, NumPy arrays), never an aiohttp or aiortc
object. A session's messages are queued here from the moment it is created until the front end collects them
(:meth:`SessionHost.events`, a long poll), so none is lost before the front's first poll.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

from swapwatch.config import Config
from swapwatch.engines.deepfake import DeepfakeDetector
from swapwatch.engines.faces import FaceDetector
from swapwatch.engines.swap import Swapper
from swapwatch.stream.offer import OfferRequest, SessionSettings
from swapwatch.stream.server import Refusal, SwapwatchServer
from swapwatch.stream.session import Session
from swapwatch.stream.sources import SourceFace

__all__ = ["ServingModels", "SessionHost"]

log = logging.getLogger(__name__)

EVENT_QUEUE = 256  # messages a host keeps for a session between two polls (the oldest go first)


@dataclass
class ServingModels:
    """What a server or a session host loads once: the face detector, the swapper, the deepfake detector."""

    detector: FaceDetector
    swapper: Swapper
    deepfake: DeepfakeDetector | None

    @classmethod
    def load(cls, config: Config) -> ServingModels:
        from swapwatch.engines.deepfake import create_deepfake_detector
        from swapwatch.engines.faces import create_detector
        from swapwatch.engines.swap import create_swapper

        dc = config.detector
        detector = create_detector(dc)
        swapper = create_swapper(config.server.model, backend=dc.backend, device=dc.device).swapper
        return cls(detector, swapper, create_deepfake_detector(config.deepfake))


class _HostServer(SwapwatchServer):
    """The single-host server's session handling, without its HTTP routes: each new session's messages go to
    a queue that the front end drains."""

    def __init__(self, config: Config, models: ServingModels) -> None:
        super().__init__(config, models.detector, models.swapper, deepfake=models.deepfake)
        self.queues: dict[str, asyncio.Queue] = {}
        self.closed_reasons: dict[str, str] = {}  # why recent sessions ended, for the front's last poll

    def session_started(self, session: Session) -> None:
        self.queues[session.id] = session.subscribe(EVENT_QUEUE)

    def _closed(self, session: Session) -> None:
        super()._closed(session)
        self.closed_reasons[session.id] = session.close_reason or "closed"
        while len(self.closed_reasons) > 1024:
            self.closed_reasons.pop(next(iter(self.closed_reasons)))


class SessionHost:
    """The session host's methods (the Ray actor's class body; ``ray.remote`` is applied by the cluster).

    ``config.server.max_sessions`` is the host's capacity: the front end sets it to the resource units the
    actor claims."""

    def __init__(self, config: Config, host_id: str) -> None:
        self.host_id = host_id
        self.config = config
        self.node = _node_id()
        self.device = _device()
        self.started = time.time()
        self._server: _HostServer | None = None

    async def start(self) -> dict[str, Any]:
        """Load the models and start the worker (the front end waits for this before placing sessions)."""
        models = await asyncio.to_thread(ServingModels.load, self.config)
        server = _HostServer(self.config, models)
        await server._startup(None)
        self._server = server
        log.info("session host %s ready on node %s (%s): swapper %s, capacity %d", self.host_id, self.node[:8],
                 self.device, models.swapper.name, self.config.server.max_sessions)
        return await self.status()

    @property
    def server(self) -> _HostServer:
        if self._server is None:
            raise RuntimeError(f"session host {self.host_id} has not started")
        return self._server

    async def offer(self, offer: OfferRequest, client: str, source: SourceFace | None) -> dict[str, Any]:
        """``{"answer": {...}}`` or ``{"refusal": {...}}`` (:class:`Refusal` as data)."""
        try:
            answer = await self.server.start_session(offer, client, source)
        except Refusal as refusal:
            return {"refusal": refusal.to_json()}
        return {"answer": answer}

    async def events(self, session_id: str, timeout: float) -> dict[str, Any]:
        """The session's messages since the last call, waiting up to ``timeout`` s for the first one:
        ``{"messages": [...], "metrics": {...}, "closed": None or the close reason}``."""
        server = self.server
        q = server.queues.get(session_id)
        if q is None:
            return {"messages": [], "metrics": None, "closed": "unknown session"}
        messages: list[dict[str, Any]] = []
        closed = False
        try:
            first = await asyncio.wait_for(q.get(), timeout)
        except TimeoutError:
            first = {}
        items = [first]
        while not q.empty():
            items.append(q.get_nowait())
        for item in items:
            if item is None:
                closed = True
            elif item:
                messages.append(item)
        session = server.sessions.get(session_id)
        reason = None
        if closed or session is None:
            server.queues.pop(session_id, None)
            reason = ((session.close_reason if session is not None else None)
                      or server.closed_reasons.get(session_id, "closed"))
        return {"messages": messages, "metrics": session.stats.message() if session is not None else None,
                "closed": reason}

    async def control(self, session_id: str, settings: SessionSettings, source: SourceFace | None) -> str | None:
        """Apply new settings to a session: None, or why they could not be applied."""
        session = self.server.sessions.get(session_id)
        if session is None:
            return "session is closed"
        try:
            await session.reconfigure(settings, source)
        except Exception as exc:  # the reason goes back to the client's control reply
            return str(exc) or exc.__class__.__name__
        return None

    async def close_session(self, session_id: str, reason: str) -> bool:
        session = self.server.sessions.get(session_id)
        if session is None:
            return False
        await session.close(reason)
        return True

    async def status(self) -> dict[str, Any]:
        server = self._server
        return {"id": self.host_id, "node": self.node, "device": self.device, "pid": os.getpid(),
                "hostname": socket.gethostname(), "ready": server is not None,
                "sessions": len(server.sessions) if server else 0,
                "connected": len(server._connected) if server else 0,
                "pending": server.pending.total_pending if server else 0,
                "capacity": self.config.server.max_sessions,
                "swapper": server.swapper.name if server and server.swapper else None,
                "swapper_learned": bool(server and server.swapper and server.swapper.learned),
                "detector": server.detector.name if server else None,
                "uptime_s": round(time.time() - self.started, 1)}

    async def metrics(self) -> str:
        """The host's Prometheus text (the front end adds a ``host`` label to every sample)."""
        return await self.server.metrics_text()

    async def stop(self) -> None:
        server = self._server
        if server is not None:
            await server._shutdown(None)
            await server._cleanup(None)


def host_config(config: Config, capacity: int) -> Config:
    """The host's copy of the front end's config: its capacity as max_sessions."""
    return replace(config, server=replace(config.server, max_sessions=capacity))


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


def _device() -> str:
    try:
        import ray

        if ray.is_initialized():
            gpus = ray.get_gpu_ids()
            if gpus:
                return f"cuda:{gpus[0]}"
    except ImportError:
        pass
    return "cpu"
