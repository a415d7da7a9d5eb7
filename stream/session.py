"""One live session: its peer connection, its frame loop, its settings and its stats.

    remote track -> reader task (drains aiortc's unbounded decoded-frame queue as frames arrive)
      -> a slot on the outgoing track for every frame; one frame in flight to the worker and the newest one
         waiting: a newer frame replaces it, so frames are dropped after decode and never queued
      -> worker: processed frame -> the slot -> ProcessedTrack.recv() -> aiortc's encoder

The reader does no work per frame beyond bookkeeping, so it keeps aiortc's receive queue empty: it is the
keep-latest consumer (MediaRelay(buffered=False) would do the same with one more task, and would hide the
frames it overwrites from the dropped counter).

A session is self-contained: it holds its peer connection, its processor (per-session tracker, swap
pipeline, monitor) and a handle on the inference worker, so that it could live in any process. It ends
when the client deletes it, when the peer connection fails or closes, when its video ends, or when no
frame has arrived for ``idle_timeout`` seconds; the websocket closing ends it only when configured.

Until its peer connection reaches "connected" a session is *pending*: it must connect within
``pending_timeout`` seconds (else it closes with "ice-timeout"), and when it connects ``on_connected`` decides
whether it gets a session slot (else it closes with "server full").
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from swapwatch.config import ServerConfig
from swapwatch.stream.metrics import SessionStats
from swapwatch.stream.offer import OfferError, SessionSettings
from swapwatch.stream.processing import FrameProcessor, Processed
from swapwatch.stream.recorder import Recorder
from swapwatch.stream.sources import SourceFace
from swapwatch.stream.tracks import AdaptiveDeadline, ProcessedTrack, Slot
from swapwatch.stream.worker import InferenceWorker, WorkerBusy

log = logging.getLogger(__name__)


class Session:
    def __init__(self, session_id: str, settings: SessionSettings, source: SourceFace | None, *,
                 processor: FrameProcessor, worker: InferenceWorker, config: ServerConfig, stats: SessionStats,
                 rtc_config: RTCConfiguration, recorder: Recorder | None = None,
                 on_closed: Callable[[Session], None] | None = None,
                 on_connected: Callable[[Session], bool] | None = None) -> None:
        """``on_connected(session)``: called once when the peer connection connects; False closes the session
        ("server full"). ``on_closed(session)``: called once when it has closed."""
        self.id = session_id
        self.settings = settings
        self.source = source
        self.config = config
        self.stats = stats
        self.recorder = recorder
        if recorder is not None:  # a recording that ends at a limit says so on the websocket (from its thread)
            recorder.on_stopped = self._recording_stopped
        self.created = time.time()
        self.close_reason: str | None = None
        self._processor: FrameProcessor | None = processor
        self._worker = worker
        self._on_closed = on_closed
        self._on_connected = on_connected
        self.connected = False  # the peer connection reached "connected" (ICE and DTLS)
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self.last_frame_at = self._started
        self._frames_seen = False
        self.pc = RTCPeerConnection(configuration=rtc_config)
        deadline = AdaptiveDeadline(config.frame_deadline, min(config.frame_deadline_min, config.frame_deadline),
                                    adaptive=config.adaptive_deadline)
        self.out = ProcessedTrack(stats, deadline=deadline, capacity=config.out_queue,
                                  raw_allowed=lambda: self.settings.mode == "monitor",
                                  on_sent=recorder.write if recorder is not None else None)
        self._inputs: list[MediaStreamTrack] = []
        self._video: MediaStreamTrack | None = None
        self._tasks: set[asyncio.Task] = set()
        self._in_flight: cf.Future | None = None
        self._pending: Slot | None = None
        self._fanout = MessageFanout(lambda: self._closing)
        self._closing = False
        self.closed = asyncio.Event()
        self._error_logged = False
        self._attached = False  # counted by the worker as a stream that batches

    # ---- signaling ------------------------------------------------------------------------------------

    async def accept(self, offer_sdp: str) -> RTCSessionDescription:
        """Answer the client's (non-trickle) offer: the answer carries the server's ICE candidates."""
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        if self._video is None:
            raise OfferError("the offer has no video track")
        pc.addTrack(self.out)
        await pc.setLocalDescription(await pc.createAnswer())
        self._worker.attach()
        self._attached = True
        self._spawn(self._read(self._video))
        self._spawn(self._watch())
        return pc.localDescription

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._inputs.append(track)
        if track.kind == "video" and self._video is None:
            self._video = track
        else:  # audio is not used: drain it so that aiortc's unbounded queue cannot pile up
            self._spawn(_drain(track))

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self._spawn(self.close(f"connection {state}"))
        elif state == "connected" and not self.connected and not self._closing:
            self.connected = True
            if self._on_connected is not None and not self._on_connected(self):
                self._spawn(self.close("server full"))

    # ---- the frame loop -------------------------------------------------------------------------------

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            now = self._loop.time()
            self.last_frame_at, self._frames_seen = now, True
            self.stats.frame_in(now)
            self._offer(self.out.push(frame, now))
        self._spawn(self.close("video ended"))

    def _offer(self, slot: Slot) -> None:
        if self._in_flight is not None:  # busy: the newest frame waits, the one it replaces is dropped
            if self._pending is not None:
                self.out.drop(self._pending)
            self._pending = slot
            return
        processor = self._processor
        if processor is None:
            return
        try:
            future = self._worker.submit(processor, slot.frame, slot.arrival - self._started)
        except (WorkerBusy, RuntimeError):
            self.out.drop(slot)
            return
        self._in_flight = future
        asyncio.wrap_future(future).add_done_callback(lambda f: self._done(slot, f))

    def _done(self, slot: Slot, future: asyncio.Future) -> None:
        self._in_flight = None
        if future.cancelled() or self._closing:
            slot.resolve(None)
            return
        exc = future.exception()
        if exc is not None:
            self.stats.error()
            if not self._error_logged:  # once per session: a broken model would flood the log
                log.error("session %s…: frame processing failed: %r", self.id[:6], exc, exc_info=exc)
                self._error_logged = True
            slot.resolve(None)
        else:
            result: Processed = future.result()
            self.stats.processed()
            self.out.processed(result, self._loop.time() - slot.arrival)  # the deadline follows this latency
            self.stats.stage_times(result.timings)
            for event in result.events:
                self.publish_alert(event)
            for message in result.verdicts + result.notices:  # news, not alerts: sent, never counted in /metrics
                self.publish(message)
            slot.resolve(result)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._offer(pending)

    async def _watch(self) -> None:
        """Pending deadline: not connected within pending_timeout s. Idle timeout: no decoded frame for
        idle_timeout s (the first within connect_timeout)."""
        step = min(0.5, self.config.idle_timeout / 4, self.config.pending_timeout / 4)
        while not self._closing:
            await asyncio.sleep(step)
            if not self.connected:
                if self._loop.time() - self._started > self.config.pending_timeout:
                    self._spawn(self.close("ice-timeout"))
                    return
                continue
            limit = self.config.idle_timeout if self._frames_seen else self.config.connect_timeout
            if self._loop.time() - self.last_frame_at > limit:
                self._spawn(self.close("idle"))
                return

    # ---- settings -------------------------------------------------------------------------------------

    async def reconfigure(self, settings: SessionSettings, source: SourceFace | None) -> None:
        """Apply new settings between two frames (on the worker thread); on failure nothing changes."""
        processor = self._processor
        if processor is None:
            raise RuntimeError("session is closed")
        events = await self._worker.run(processor.configure, settings, source)
        self.settings, self.source = settings, source
        for event in events:
            self.publish_alert(event)

    # ---- websocket fan-out ----------------------------------------------------------------------------

    def subscribe(self, size: int = 64) -> asyncio.Queue:
        """A bounded queue of messages for one websocket (alerts, verdicts; None when the session ends)."""
        return self._fanout.subscribe(size)

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._fanout.unsubscribe(q)

    def publish(self, message: dict[str, Any] | None) -> None:
        self._fanout.publish(message)

    def publish_alert(self, event: dict[str, Any]) -> None:
        """An alert message: counted for /metrics, then sent like any message."""
        self.stats.alert(str(event.get("kind")), str(event.get("event")))
        self.publish(event)

    def _recording_stopped(self, reason: str) -> None:
        frames = self.recorder.frames if self.recorder is not None else 0
        self._loop.call_soon_threadsafe(self.publish, {"type": "recording", "event": "stopped", "reason": reason,
                                                       "frames": frames})

    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "session": self.id, **self.settings.to_json()}

    # ---- the end --------------------------------------------------------------------------------------

    async def close(self, reason: str = "closed") -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        log.info("session %s… closing: %s (%d frames in, %d out, %d dropped)", self.id[:6], reason,
                 self.stats.counters.frames_in, self.stats.counters.frames_out, self.stats.counters.dropped)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._in_flight is not None:
            self._in_flight.cancel()  # not started yet: it never runs
        if self._pending is not None:
            self._pending.resolve(None)
            self._pending = None
        self.out.stop()
        for track in self._inputs:
            track.stop()
        try:
            await self.pc.close()
        except Exception:  # a half-negotiated connection can fail to close; it is dropped either way
            log.debug("session %s…: pc.close failed", self.id[:6], exc_info=True)
        processor, self._processor = self._processor, None
        if self._attached:
            self._worker.detach()
            self._attached = False
        if processor is not None and self._worker.running:
            try:
                for event in await self._worker.run(processor.close):
                    self.publish_alert(event)
            except Exception:
                log.debug("session %s…: processor close failed", self.id[:6], exc_info=True)
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        self.publish(None)
        self._inputs.clear()
        self._video = None
        self.closed.set()
        if self._on_closed is not None:
            self._on_closed(self)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class MessageFanout:
    """A session's messages to each of its websockets: one bounded queue per subscriber, None at the end. A
    subscriber that does not read loses the oldest message; the queue never grows. ``ended()``: the session
    has ended already (a late subscriber gets the end at once)."""

    def __init__(self, ended: Callable[[], bool]) -> None:
        self._ended = ended
        self._queues: set[asyncio.Queue] = set()

    def subscribe(self, size: int = 64) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=size)
        if self._ended():
            q.put_nowait(None)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._queues.discard(q)

    def publish(self, message: dict[str, Any] | None) -> None:
        for q in self._queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(message)


async def _drain(track: MediaStreamTrack) -> None:
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
