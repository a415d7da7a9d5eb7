"""`swapwatch serve --ray`: the front end of sessions placed on a Ray cluster (DESIGN.md, "Beyond one machine").

    client --HTTP/websocket--> front end (this module: the page, /sources, /offer, /ws, /health, /metrics,
                               /detect)  --Ray calls-->  session hosts (stream/host.py, one Ray actor per GPU,
                                                         per node on CPU)
    client <------------------- WebRTC media, directly ------------------>  the session's host

- Placement and capacity are Ray's: a host actor claims ``sessions_per_host`` units of the custom resource
  ``swapwatch_sessions`` (and a GPU where its node has one), so the scheduler and an autoscaler see the demand;
  when every host is full the front end asks the autoscaler for one more host's units (``request_resources``)
  and withdraws the request once a whole host is free again.
  :class:`RayHosts` starts one host for every free share of that resource it finds on a live node, and again
  when a host dies and its node is still there (capacity comes back), every ``reconcile_interval`` s.
- An offer goes to the ready host with the most free capacity (ties: fewest sessions); a host that refuses
  for capacity (another front end filled it first) passes the offer on to the next.
- A session's websocket messages are relayed by :class:`RemoteSession`, which long-polls its host; a host
  that dies ends exactly its sessions with ``{"type": "error", "code": "host-lost"}`` and frees their
  capacity; the next offer goes to a live host.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from swapwatch.config import ClusterConfig, Config
from swapwatch.engines.faces import FaceDetector
from swapwatch.stream.metrics import PrometheusText, merge_prometheus
from swapwatch.stream.offer import OfferRequest, SessionSettings
from swapwatch.stream.ray_connect import import_ray
from swapwatch.stream.server import Refusal, SwapwatchServer
from swapwatch.stream.session import MessageFanout
from swapwatch.stream.sources import SourceFace

__all__ = ["ClusterServer", "HostHandle", "RayHosts", "RemoteSession"]

log = logging.getLogger(__name__)

HOST_LOST = "host-lost"


@dataclass
class HostHandle:
    """The front end's view of one session host."""

    id: str
    node: str
    actor: Any  # ray.actor.ActorHandle
    capacity: int
    ready: bool = False
    alive: bool = True
    status: dict[str, Any] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)  # placed from this front end
    placing: int = 0  # offers being negotiated with it now

    @property
    def load(self) -> int:
        # This front end's own count, never a status a poll old; with several front ends a host that is full
        # after all refuses the offer itself ("full"), and the offer moves on to the next host.
        return len(self.sessions) + self.placing

    @property
    def free(self) -> int:
        return self.capacity - self.load if self.ready and self.alive else 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "device": self.status.get("device"), "sessions": self.load,
                "capacity": self.capacity, "alive": self.alive, "ready": self.ready}


class RayHosts:
    """The session hosts of a Ray cluster: started where the ``swapwatch_sessions`` resource is free, watched,
    replaced when they die. Lives on the front end's event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.cluster: ClusterConfig = config.cluster
        self.hosts: dict[str, HostHandle] = {}
        self.lost: list[HostHandle] = []  # hosts that died, for /health (the newest 16)
        self._ray = import_ray()
        self._actor_class = None
        self._task: asyncio.Task | None = None
        self._counter = 0
        self._requested = 0  # hosts asked of the autoscaler (request_resources), 0: no request standing
        self.on_host_lost: list = []  # callbacks(host) when a host is found dead

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reconcile()
        if not self.hosts:
            log.warning("no node of the Ray cluster offers %d free unit(s) of the %r resource: no session host "
                        "yet (start workers with: ray start --address=... --resources='{\"%s\": %d}')",
                        self.cluster.sessions_per_host, self.cluster.resource, self.cluster.resource,
                        self.cluster.sessions_per_host)
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        ray = self._ray
        for host in self.hosts.values():
            try:
                await asyncio.wait_for(host.actor.stop.remote(), 10)
            except Exception:  # dead already, or slow: killed below either way
                pass
            ray.kill(host.actor, no_restart=True)
        self.hosts.clear()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cluster.reconcile_interval)
            try:
                await self.reconcile()
            except Exception:  # a transient GCS error must not end the watch
                log.warning("ray: reconcile failed", exc_info=True)

    async def reconcile(self) -> None:
        """Refresh every host's status (finding the dead), then start hosts on nodes with free units."""
        await asyncio.gather(*(self._refresh(h) for h in list(self.hosts.values())))
        starts = []
        for node_id, (count, gpus) in (await asyncio.to_thread(self._free_shares)).items():
            for _ in range(count):
                starts.append(self._start_host(node_id, gpus))
        await asyncio.gather(*starts)
        if self._requested and sum(h.free for h in self.hosts.values()) >= self.cluster.sessions_per_host:
            await self._request_hosts(0)  # a whole host is free again: withdraw the request, let idle nodes go

    async def want_more(self) -> None:
        """Every host is full: ask Ray's autoscaler for room for one more host than there are (a no-op on a
        cluster without one). The request stands until a whole host's capacity is free again."""
        await self._request_hosts(len(self.hosts) + 1)

    async def _request_hosts(self, count: int) -> None:
        if count == self._requested:
            return
        from ray.autoscaler.sdk import request_resources

        bundles = [{self.cluster.resource: self.cluster.sessions_per_host}] * count
        try:
            await asyncio.to_thread(request_resources, bundles=bundles)
        except Exception as exc:  # the request is advice: placement goes on without it
            log.warning("ray: could not ask the autoscaler for %d host(s): %s", count, _one_line(exc))
            return
        self._requested = count
        log.info("ray: %s", f"asked the autoscaler for room for {count} session host(s)" if count
                 else "withdrew the autoscaler request")

    def _free_shares(self) -> dict[str, tuple[int, int]]:
        """Node id -> (how many more hosts fit there: its resource total over sessions_per_host, less the hosts
        this front end keeps there, alive or starting; the GPUs each claims: 1 on a GPU node, else 0)."""
        ray, c = self._ray, self.cluster
        placed: dict[str, int] = {}
        for h in self.hosts.values():
            placed[h.node] = placed.get(h.node, 0) + 1
        out = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            units = float(node.get("Resources", {}).get(c.resource, 0))
            gpus = float(node.get("Resources", {}).get("GPU", 0))
            fits = math.floor(units / c.sessions_per_host + 1e-9)
            if gpus >= 1:
                fits = min(fits, math.floor(gpus))
            more = fits - placed.get(node["NodeID"], 0)
            if more > 0:
                out[node["NodeID"]] = (more, 1 if gpus >= 1 else 0)
        return out

    async def _start_host(self, node_id: str, gpus: int) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        from swapwatch.stream.host import SessionHost, host_config

        ray, c = self._ray, self.cluster
        if self._actor_class is None:
            # Async actor: its methods share one event loop, where aiortc's peer connections live.
            self._actor_class = ray.remote(SessionHost)
        self._counter += 1
        host_id = f"host-{node_id[:6]}-{self._counter}"
        actor = self._actor_class.options(
            name=f"swapwatch-{host_id}", resources={c.resource: c.sessions_per_host}, num_gpus=gpus, num_cpus=0,
            max_concurrency=1000, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(host_config(self.config, c.sessions_per_host), host_id)
        host = HostHandle(host_id, node_id, actor, c.sessions_per_host)
        self.hosts[host_id] = host
        log.info("ray: starting session host %s on node %s (%d sessions%s)", host_id, node_id[:8],
                 c.sessions_per_host, ", 1 GPU" if gpus else "")
        try:
            host.status = await asyncio.wait_for(actor.start.remote(), c.host_start_timeout)
        except Exception as exc:
            log.error("ray: session host %s did not start: %s", host_id, _one_line(exc))
            self._mark_lost(host)
            return
        host.ready = True
        log.info("ray: session host %s ready (%s, swapper %s)", host_id, host.status.get("device"),
                 host.status.get("swapper"))

    async def _refresh(self, host: HostHandle) -> None:
        if not host.ready or not host.alive:
            return
        try:
            host.status = await asyncio.wait_for(host.actor.status.remote(), self.cluster.call_timeout)
        except Exception as exc:
            if _actor_gone(self._ray, exc):
                self._mark_lost(host)
            else:
                log.warning("ray: session host %s did not answer: %s", host.id, _one_line(exc))

    def _mark_lost(self, host: HostHandle) -> None:
        """A host is gone: forget it (its resource share is free again, so the next reconcile can start another
        on the node if the node lives) and tell whoever holds its sessions."""
        if self.hosts.pop(host.id, None) is None:
            return
        host.alive = False
        self.lost = (self.lost + [host])[-16:]
        log.warning("ray: session host %s on node %s lost (%d session(s))", host.id, host.node[:8],
                    len(host.sessions))
        for callback in self.on_host_lost:
            callback(host)

    # ---- placement ------------------------------------------------------------------------------------

    def ranked(self) -> list[HostHandle]:
        """Ready hosts with free capacity, the most free first (then the fewest sessions)."""
        free = [h for h in self.hosts.values() if h.free > 0]
        return sorted(free, key=lambda h: (-h.free, h.load, h.id))

    async def call(self, host: HostHandle, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``host.method(*args)`` over Ray; a dead host is marked lost and :class:`HostLost` raised."""
        try:
            return await asyncio.wait_for(getattr(host.actor, method).remote(*args),
                                          timeout or self.cluster.call_timeout)
        except Exception as exc:
            if _actor_gone(self._ray, exc):
                self._mark_lost(host)
                raise HostLost(host.id) from None
            raise

    @property
    def capacity(self) -> int:
        return sum(h.capacity for h in self.hosts.values() if h.ready)


class HostLost(Exception):
    """The session host died (its actor or its node)."""


class RemoteSession:
    """A session that lives on a host: what the websocket channel and ``DELETE /sessions/{id}`` need of a
    :class:`~swapwatch.stream.session.Session`, relayed over Ray. Its messages are long-polled from the host
    and fanned out to the session's websockets here."""

    def __init__(self, session_id: str, host: HostHandle, hosts: RayHosts, settings: SessionSettings,
                 source: SourceFace | None, on_closed) -> None:
        self.id = session_id
        self.host = host
        self.settings = settings
        self.source = source
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.stats = _RelayedStats()
        self._hosts = hosts
        self._on_closed = on_closed
        self._fanout = MessageFanout(self.closed.is_set)
        self._relay = asyncio.ensure_future(self._poll())

    # The session interface used by SessionChannel and the server.
    def subscribe(self, size: int = 64) -> asyncio.Queue:
        return self._fanout.subscribe(size)

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._fanout.unsubscribe(q)

    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "session": self.id, **self.settings.to_json(), "host": self.host.id}

    async def reconfigure(self, settings: SessionSettings, source: SourceFace | None) -> None:
        try:
            error = await self._hosts.call(self.host, "control", self.id, settings, _portable(source))
        except HostLost:
            raise RuntimeError("the session's host was lost") from None
        if error is not None:
            raise RuntimeError(error)
        self.settings, self.source = settings, source

    async def close(self, reason: str = "closed") -> None:
        if not self.closed.is_set():
            try:
                await self._hosts.call(self.host, "close_session", self.id, reason)
            except Exception:  # lost or slow: the relay ends the session either way
                log.debug("session %s…: close on host %s failed", self.id[:6], self.host.id, exc_info=True)
        try:
            await asyncio.wait_for(self.closed.wait(), self._hosts.cluster.poll_timeout + 5)
        except TimeoutError:
            self._end(reason)

    def host_lost(self) -> None:
        """The host died: say so on the websocket and end here (the relay's poll may still be waiting)."""
        if self.closed.is_set():
            return
        self._fanout.publish({"type": "error", "code": HOST_LOST, "host": self.host.id,
                              "error": f"the session host {self.host.id} was lost; the session ended, "
                                       "reconnect to get a new one"})
        self._end(HOST_LOST)

    async def _poll(self) -> None:
        timeout = self._hosts.cluster.poll_timeout
        while not self.closed.is_set():
            try:
                batch = await self._hosts.call(self.host, "events", self.id, timeout, timeout=timeout + 10)
            except HostLost:
                self.host_lost()
                return
            except Exception as exc:  # a slow host: try again (a dead one raises HostLost)
                log.warning("session %s…: polling host %s failed: %s", self.id[:6], self.host.id, _one_line(exc))
                await asyncio.sleep(timeout)
                continue
            for message in batch["messages"]:
                self._fanout.publish(message)
            if batch.get("metrics"):
                self.stats.latest = batch["metrics"]
            if batch.get("closed"):
                self._end(batch["closed"])
                return

    def _end(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self._fanout.publish(None)
        self.closed.set()
        if self._relay is not asyncio.current_task():
            self._relay.cancel()
        self._on_closed(self)


class _RelayedStats:
    """The host's latest metrics message for the session (what the websocket sends every second)."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {"type": "metrics"}

    def message(self) -> dict[str, Any]:
        return dict(self.latest)


class ClusterServer(SwapwatchServer):
    """The single-host server's HTTP surface with sessions placed on Ray session hosts. The front end keeps a
    face detector (checking uploaded source photos) on its own worker, and runs ``POST /detect`` itself."""

    def __init__(self, config: Config, detector: FaceDetector) -> None:
        super().__init__(config, detector, swapper=None)
        self.hosts = RayHosts(config)
        self.hosts.on_host_lost.append(self._host_lost)

    async def _startup(self, app: web.Application | None) -> None:
        self.worker.start()
        await self.worker.run(self.detector.detect, _blank())
        await self.hosts.start()

    async def _shutdown(self, app: web.Application | None) -> None:
        await super()._shutdown(app)
        await self.hosts.stop()

    async def start_session(self, offer: OfferRequest, client: str, source: SourceFace | None) -> dict[str, Any]:
        last: Refusal | None = None
        for host in self.hosts.ranked():
            host.placing += 1
            try:
                result = await self.hosts.call(host, "offer", offer, client, _portable(source))
            except HostLost:
                continue
            finally:
                host.placing -= 1
            if "refusal" in result:
                last = Refusal.from_json(result["refusal"])
                if last.status == 503 and last.reason == "full":
                    continue  # filled since its last status: try the next host
                self.stats.reject(last.reason or "bad_offer")
                raise last
            answer = result["answer"]
            session = RemoteSession(answer["session"], host, self.hosts, offer.settings, source, self._closed)
            host.sessions.add(session.id)
            self.sessions[session.id] = session
            self.stats.sessions_created += 1
            log.info("session %s…: %s on %s (%d live in the cluster)", session.id[:6], offer.settings.mode,
                     host.id, len(self.sessions))
            return {**answer, "host": host.id}
        if last is not None and last.reason != "full":
            raise last
        self.stats.reject("full")
        await self.hosts.want_more()
        hosts = len(self.hosts.hosts)
        message = (f"cluster full ({self.hosts.capacity} sessions on {hosts} host(s)); try again later" if hosts
                   else "no session host is running yet; try again later")
        raise Refusal(503, message, reason="full", headers={"Retry-After": "5"})

    def _closed(self, session) -> None:
        if isinstance(session, RemoteSession):
            session.host.sessions.discard(session.id)
        super()._closed(session)

    def _host_lost(self, host: HostHandle) -> None:
        for session_id in list(host.sessions):
            session = self.sessions.get(session_id)
            if isinstance(session, RemoteSession):
                session.host_lost()

    async def health_json(self) -> dict[str, Any]:
        doc = await super().health_json()
        hosts = list(self.hosts.hosts.values())
        ready = [h for h in hosts if h.ready]
        doc.update({
            "sessions": len(self.sessions), "max_sessions": self.hosts.capacity,
            "connected": sum(int(h.status.get("connected", 0)) for h in ready),
            "pending": sum(int(h.status.get("pending", 0)) for h in ready),
            "swapper": next((h.status.get("swapper") for h in ready), None),
            "swapper_learned": any(h.status.get("swapper_learned") for h in ready),
            "deepfake_model": Path(self.config.deepfake.model).name if self.config.deepfake.model else None,
            "cluster": {"engine": "ray", "hosts": [h.to_json() for h in hosts + self.hosts.lost],
                        "sessions_per_host": self.hosts.cluster.sessions_per_host,
                        "resource": self.hosts.cluster.resource},
        })
        return doc

    async def metrics_text(self) -> str:
        """Every host's families with a ``host`` label, then the front end's own cluster gauges."""
        ready = [h for h in self.hosts.hosts.values() if h.ready]
        texts = await asyncio.gather(*(self.hosts.call(h, "metrics") for h in ready), return_exceptions=True)
        merged = merge_prometheus({h.id: t for h, t in zip(ready, texts) if isinstance(t, str)})
        extra = PrometheusText()
        extra.gauge("swapwatch_cluster_hosts", "Session hosts the front end knows, by state.",
                    [({"state": "ready"}, len(ready)),
                     ({"state": "starting"}, len(self.hosts.hosts) - len(ready)),
                     ({"state": "lost"}, len(self.hosts.lost))])
        extra.gauge("swapwatch_cluster_capacity", "Session capacity of the ready hosts.", self.hosts.capacity)
        extra.gauge("swapwatch_cluster_sessions", "Sessions placed from this front end.", len(self.sessions))
        extra.counter("swapwatch_cluster_offers_rejected_total", "Offers the front end refused, by reason.",
                      [({"reason": r}, n) for r, n in sorted(self.stats.sessions_rejected.items())]
                      or [({"reason": "full"}, 0)])
        return merged + extra.render()


def _portable(source: SourceFace | None) -> SourceFace | None:
    """The source photo for a host: the image and its face, without the front end's caches."""
    return None if source is None else replace(source, identities={})


def _actor_gone(ray, exc: BaseException) -> bool:
    # Hosts never restart (max_restarts=0): an actor error means its process or its node is gone.
    return isinstance(exc, ray.exceptions.RayActorError)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


def _blank():
    import numpy as np

    return np.zeros((240, 320, 3), np.uint8)

