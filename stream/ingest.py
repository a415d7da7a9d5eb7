"""Ingest of non-WebRTC video (files, RTSP/HTTP/UDP/... URLs) for monitoring, and forwarding of its events.

- :class:`VideoSource` opens a file or a network URL with PyAV (with open and read timeouts) and yields
  decoded frames. Live sources are read by a thread into a :class:`LatestFrame` mailbox, so that a consumer
  slower than the stream always gets the newest frame and latency stays bounded (frames are dropped after
  decode, never before: dropping packets would lose keyframes).
- :class:`ReconnectingSource` wraps one :class:`VideoSource` after another: a live network stream that drops is
  reopened with exponential backoff, its frames' times going on across the gap, and each gap reported as a
  :class:`StreamEvent` (``lost``, then ``reconnected``).
- :class:`WebsocketForwarder` sends JSON messages to a websocket from a background thread, reconnecting
  with exponential backoff; its failures are logged and never stop the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from swapwatch.engines.runtime import VideoFrame, check_file
from swapwatch.errors import InputError

log = logging.getLogger(__name__)

# Schemes FFmpeg reads as network streams; anything else with "://" is refused up front with a clear error.
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "tcp", "srt")
# Protocols that are live by nature (an HTTP URL is live only if it has no duration, e.g. MJPEG or HLS live).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "tcp", "srt")
RETRY_HINT = "check the address and that the stream is up, then retry"


@dataclass(frozen=True)
class IngestConfig:
    timeout: float = 10.0  # seconds to open a network source, and to wait for data while reading it
    realtime: bool = False  # pace a file at its frame rate, dropping what the consumer cannot keep up with
    rtsp_transport: str = "tcp"  # RTSP over TCP: no UDP losses on lossy networks, passes NAT and firewalls
    # ReconnectingSource: a live network stream that drops is reopened (a file never: its end is its end) ...
    reconnect: bool = True
    reconnect_max_gap: float | None = 300.0  # ... until it has been down this many seconds (None: for ever)
    reconnect_backoff: tuple[float, float] = (0.5, 10.0)  # wait before the first reopen, doubling up to the cap

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        if self.reconnect_max_gap is not None and not self.reconnect_max_gap > 0:
            raise ValueError("reconnect_max_gap must be > 0 (or None: never give up)")
        first, cap = self.reconnect_backoff
        if not 0 < first <= cap < math.inf:
            raise ValueError("reconnect_backoff needs 0 < first <= cap")


def is_url(source: str) -> bool:
    return "://" in source


class LatestFrame:
    """A one-slot mailbox between a producer thread and a consumer: a new item replaces an unread one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: VideoFrame | None = None
        self._closed = False
        self._error: BaseException | None = None
        self.replaced = 0  # items overwritten before they were read (dropped frames)

    def put(self, item: VideoFrame) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def close(self, error: BaseException | None = None) -> None:
        """No more items; the consumer gets the last unread one, then ``error`` (if any) or the end."""
        with self._cond:
            self._closed = True
            self._error = error
            self._cond.notify_all()

    def get(self) -> VideoFrame | None:
        """The newest unread item, waiting for one; None at the end. Raises the producer's error."""
        with self._cond:
            while self._item is None and not self._closed:
                self._cond.wait()
            item, self._item = self._item, None
            if item is None and self._error is not None:
                raise self._error
            return item


class VideoSource:
    """Decoded BGR frames from a video file or a network stream; times in seconds from the first frame.

    Modes: files decode every frame as fast as the consumer takes them; live streams (RTSP, UDP, ..., and
    HTTP without a duration) and ``realtime`` files are read by a thread and the consumer gets the newest
    frame (``dropped`` counts the others). Every way of failing is an :class:`InputError` with one line.
    """

    def __init__(self, source: str | Path, config: IngestConfig | None = None) -> None:
        self.config = config or IngestConfig()
        self.source = str(source)
        self.url = is_url(self.source)
        self._container = self._open()
        try:
            if not self._container.streams.video:
                raise InputError(f"{self.source}: has no video stream")
            self._stream = self._container.streams.video[0]
        except BaseException:
            self._container.close()
            raise
        scheme = urlsplit(self.source).scheme.lower() if self.url else ""
        self.live = scheme in LIVE_SCHEMES or (self.url and self._container.duration is None)
        if not self.live:  # frame threading buys throughput with a few frames of delay: not for live video
            self._stream.thread_type = "AUTO"
        self.threaded = self.live or self.config.realtime
        self._mailbox: LatestFrame | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.decoded = 0

    # ---- opening -------------------------------------------------------------------------------------

    def _open(self):
        import av

        cfg = self.config
        if not self.url:
            path = check_file(self.source)
            try:
                return av.open(str(path))
            except (av.FFmpegError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: not a readable video ({exc.__class__.__name__})") from None
        scheme = urlsplit(self.source).scheme.lower()
        if scheme not in NETWORK_SCHEMES:
            raise InputError(f"{self.source}: unsupported URL scheme {scheme!r}; use one of "
                             f"{', '.join(NETWORK_SCHEMES)} or a file path")
        options = {"rtsp_transport": cfg.rtsp_transport} if scheme.startswith("rtsp") else {}
        try:
            # PyAV's timeouts interrupt FFmpeg's blocking I/O: (opening, each read).
            return av.open(self.source, options=options, timeout=(cfg.timeout, cfg.timeout))
        except av.ExitError:
            raise InputError(f"{self.source}: no answer within {cfg.timeout:g} s; {RETRY_HINT}") from None
        except ConnectionRefusedError:
            raise InputError(f"{self.source}: connection refused; {RETRY_HINT}") from None
        except av.FFmpegError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise InputError(f"{self.source}: cannot open stream ({reason}); {RETRY_HINT}") from None

    # ---- properties ----------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return int(self._stream.codec_context.width)

    @property
    def height(self) -> int:
        return int(self._stream.codec_context.height)

    @property
    def fps(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else 25.0

    @property
    def dropped(self) -> int:
        return self._mailbox.replaced if self._mailbox is not None else 0

    # ---- frames --------------------------------------------------------------------------------------

    def frames(self) -> Iterator[VideoFrame]:
        """Decoded frames in order (some skipped in the threaded modes). Call once."""
        if not self.threaded:
            yield from self._decode()
            return
        self._mailbox = LatestFrame()
        self._thread = threading.Thread(target=self._reader, name="swapwatch-ingest", daemon=True)
        self._thread.start()
        while (frame := self._mailbox.get()) is not None:
            yield frame

    def _reader(self) -> None:
        assert self._mailbox is not None
        start: float | None = None
        try:
            for frame in self._decode():
                if self._stop.is_set():
                    break
                if self.config.realtime and not self.live:  # a live source paces itself
                    start = time.monotonic() - frame.time if start is None else start
                    delay = start + frame.time - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                self._mailbox.put(frame)
        except BaseException as exc:  # handed to the consumer, which reports it
            self._mailbox.close(exc)
            return
        self._mailbox.close()

    def _decode(self) -> Iterator[VideoFrame]:
        import av

        stream = self._stream
        tb = stream.time_base
        first_pts: int | None = None
        rate = Fraction(self.fps).limit_denominator(1001)
        try:
            for frame in self._container.decode(stream):
                if self._stop.is_set():
                    return
                if frame.pts is not None and tb:
                    first_pts = frame.pts if first_pts is None else first_pts
                    t = float((frame.pts - first_pts) * tb)
                else:
                    t = float(self.decoded / rate)
                yield VideoFrame(self.decoded, t, frame.to_ndarray(format="bgr24"))
                self.decoded += 1
        except av.ExitError:
            raise InputError(f"{self.source}: no data for {self.config.timeout:g} s after frame "
                             f"{self.decoded}; {RETRY_HINT}") from None
        except av.FFmpegError as exc:
            what = "stream lost" if self.url else "video is corrupt"
            if self.decoded == 0:
                raise InputError(f"{self.source}: cannot decode video ({exc.strerror or exc})") from None
            raise InputError(f"{self.source}: {what} after frame {self.decoded} "
                             f"({exc.strerror or exc})" + (f"; {RETRY_HINT}" if self.url else "")) from None
        if self.decoded == 0:
            raise InputError(f"{self.source}: video has no frames")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout + 1.0)
            if self._thread.is_alive():  # still inside FFmpeg: closing under it would crash; leave it be
                log.warning("%s: reader thread did not stop; leaving the stream open", self.source)
                return
        self._container.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class StreamEvent:
    """A live source dropping (``lost``) or flowing again (``reconnected``): between the frames of
    :meth:`ReconnectingSource.items`. Times are the frames' (stream) times."""

    event: str  # lost | reconnected
    t: float  # lost: the last frame's time before the gap; reconnected: the first frame's after it
    error: str = ""  # lost: why, one line
    gap_s: float = 0.0  # reconnected: seconds from the last frame before the gap (when due) to the first after
    attempts: int = 0  # reconnected: reopen attempts it took

    def to_json(self) -> dict[str, Any]:
        """The monitor's ``stream`` message."""
        if self.event == "lost":
            return {"type": "stream", "event": "lost", "t": round(self.t, 3), "error": self.error}
        return {"type": "stream", "event": "reconnected", "t": round(self.t, 3), "gap_s": round(self.gap_s, 3),
                "attempts": self.attempts}


class ReconnectingSource:
    """A :class:`VideoSource` that is reopened, with exponential backoff, when its live network stream drops.

    :meth:`items` yields the frames of one connection after another, with a :class:`StreamEvent` when the
    stream drops (a read error, its end, or no data for ``timeout`` s) and another with the first frame after
    it. Frame times go on across a gap, by the wall clock: the first frame after it is at the last one's time
    plus the time from when that one was due (at the pace its connection kept) to now; frame indexes go on too.
    Each connection is its own VideoSource (its own reader thread and mailbox), closed before the next one is
    tried. Reopening waits ``reconnect_backoff`` (doubling, with 10% jitter) before each attempt and gives up
    after ``reconnect_max_gap`` seconds down with an :class:`InputError`; :meth:`close` ends a wait at once.

    Not retried, failing as a VideoSource does: files and HTTP sources with a duration (not live), a stream
    that fails before its first frame (the first open included), and any source with ``reconnect=False``.
    """

    def __init__(self, source: str | Path, config: IngestConfig | None = None) -> None:
        self.config = config or IngestConfig()
        self._current: VideoSource | None = VideoSource(source, self.config)
        self.source, self.url, self.live = self._current.source, self._current.url, self._current.live
        self._last = self._current  # for the properties while between connections
        self.reconnects = 0
        self.gap_s = 0.0  # seconds without video, over the gaps that ended in a reconnection
        self._dropped = 0  # of the connections already closed
        self._stop = threading.Event()

    @property
    def reconnecting(self) -> bool:
        """Whether a drop is retried: a live network source, with ``reconnect`` on."""
        return bool(self.config.reconnect and self.url and self.live)

    @property
    def width(self) -> int:
        return self._last.width

    @property
    def height(self) -> int:
        return self._last.height

    @property
    def fps(self) -> float:
        return self._last.fps

    @property
    def dropped(self) -> int:
        return self._dropped + (self._current.dropped if self._current is not None else 0)

    def frames(self) -> Iterator[VideoFrame]:
        """The frames of :meth:`items`, without the events."""
        return (item for item in self.items() if isinstance(item, VideoFrame))

    def items(self) -> Iterator[VideoFrame | StreamEvent]:
        """Frames in order, and the events of each gap. Call once."""
        assert self._current is not None
        if not self.reconnecting:
            yield from self._current.frames()
            return
        index, last_t = 0, 0.0  # frames so far, the last one's time
        last_due = 0.0  # when the last frame before the gap was due (time.monotonic())
        lost: float | None = None  # when the stream was lost, while it is down
        attempts = 0
        delay = self.config.reconnect_backoff[0]
        offset = 0.0  # this connection's times + offset = stream times
        while True:
            fresh = True
            error = ""
            # The wall clock at this connection's time 0, as early as its frames came: frames that came late (a
            # slow consumer; the last ones, which may leave the demuxer only as the stream fails) do not count.
            zero = math.inf
            try:
                for frame in self._current.frames():
                    now = time.monotonic()
                    if fresh and index:  # a connection's first frame: its times go on from the last frame's
                        offset = last_t + max(now - last_due, 1e-3) - frame.time
                    fresh = False
                    t = frame.time + offset
                    zero = min(zero, now - t)
                    if lost is not None:
                        gap = t - last_t
                        self.reconnects += 1
                        self.gap_s += gap
                        log.info("%s: reconnected after %.1f s (%d attempt(s))", self.source, gap, attempts)
                        yield StreamEvent("reconnected", t, gap_s=gap, attempts=attempts)
                        lost, attempts, delay = None, 0, self.config.reconnect_backoff[0]
                    yield VideoFrame(index, t, frame.image)
                    index, last_t = index + 1, t
                error = f"{self.source}: stream ended after frame {self._current.decoded}"
            except InputError as exc:
                if index == 0:  # never started: a bad source, not a dropped one
                    raise
                error = str(exc)
            self._retire()
            if lost is None:
                lost = time.monotonic()
                last_due = min(zero + last_t, lost)
                log.info("%s; reconnecting", error)  # the caller reports the event
                yield StreamEvent("lost", last_t, error=self._reason(error))
            deadline = lost + (self.config.reconnect_max_gap or math.inf)
            while self._current is None:  # a connection that gives no frame is one more failed attempt
                now = time.monotonic()
                if attempts and now >= deadline:
                    raise InputError(f"{self.source}: gave up reconnecting after {attempts} attempt(s) over "
                                     f"{now - lost:.1f} s ({self._reason(error)}); {RETRY_HINT}")
                wait = min(delay * random.uniform(0.9, 1.1), max(deadline - now, 0.0))
                delay = min(delay * 2, self.config.reconnect_backoff[1])
                if self._stop.wait(wait):  # closed
                    return
                attempts += 1
                try:
                    self._current = self._reopen()
                except InputError as exc:
                    error = str(exc)
            self._last = self._current

    def _retire(self) -> None:
        """Close the current connection (its reader thread has ended: the stream dropped)."""
        if self._current is not None:
            self._dropped += self._current.dropped
            self._current.close()
            self._current = None

    def _reopen(self) -> VideoSource:
        """A new VideoSource, opened by a helper thread so that Ctrl-C need not wait for FFmpeg's open timeout;
        a source that opens after its caller gave up on it is closed by that thread."""
        result: list[VideoSource | BaseException] = []
        lock = threading.Lock()
        done = threading.Event()
        abandoned = False

        def target() -> None:
            try:
                opened: VideoSource | BaseException = VideoSource(self.source, self.config)
            except BaseException as exc:
                opened = exc
            with lock:
                if abandoned and isinstance(opened, VideoSource):
                    opened.close()
                result.append(opened)
            done.set()

        threading.Thread(target=target, name="swapwatch-reopen", daemon=True).start()
        try:
            done.wait()
        except BaseException:  # Ctrl-C
            with lock:
                abandoned = True
                if result and isinstance(result[0], VideoSource):
                    result[0].close()
            raise
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _reason(self, error: str) -> str:
        """An InputError's line without the source and the retry hint (which the caller already has)."""
        first = (error.strip().splitlines() or ["stream lost"])[0]
        return first.removeprefix(f"{self.source}: ").removesuffix(f"; {RETRY_HINT}")

    def close(self) -> None:
        self._stop.set()
        if self._current is not None:
            self._current.close()

    def __enter__(self) -> ReconnectingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebsocketForwarder:
    """Sends JSON messages to a websocket URL from its own thread and event loop.

    :meth:`send` never blocks and never raises: messages wait in a bounded queue (the oldest are dropped
    when it is full) while the connection is down; the connection is retried with exponential backoff from
    ``min_backoff`` to ``max_backoff`` seconds. :meth:`close` waits up to ``timeout`` seconds for the queue
    to drain.
    """

    def __init__(self, url: str, *, token: str | None = None, queue_size: int = 1000, min_backoff: float = 0.25,
                 max_backoff: float = 10.0, connect_timeout: float = 5.0) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("ws", "wss", "http", "https"):
            raise InputError(f"--ws {url}: expected a ws:// or wss:// URL")
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.queue_size = queue_size
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.connect_timeout = connect_timeout
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self._loop = asyncio.new_event_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()  # bound enforced in _enqueue
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()  # wakes a retry wait early (bound to the loop on first use)
        self._thread = threading.Thread(target=self._run, name="swapwatch-ws", daemon=True)
        self._started = threading.Event()
        self._closed = False
        self._thread.start()
        self._started.wait()

    def send(self, message: dict[str, Any]) -> None:
        if not self._closed:
            self._call(self._enqueue, json.dumps(message))

    def close(self, timeout: float = 3.0) -> None:
        """Flush what is queued (for at most ``timeout`` seconds), then disconnect and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._call(self._begin_close)
        self._thread.join(timeout)
        if self._thread.is_alive():  # still trying to connect: give up on what is left
            if self._task is not None:
                self._call(self._task.cancel)
            self._thread.join(2.0)
        pending = max(self._queue.qsize() - 1, 0)
        if pending:
            log.warning("websocket %s: %d message(s) not delivered", self.url, pending)

    def _call(self, fn, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has already finished: nothing left to deliver to
            pass

    def _begin_close(self) -> None:
        self._queue.put_nowait(None)
        self._closing.set()

    def _enqueue(self, text: str) -> None:
        if self._queue.qsize() >= self.queue_size:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(text)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._main())
        self._started.set()
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must not take the monitor down with it
            log.exception("websocket %s: forwarder stopped", self.url)
        finally:
            self._loop.close()

    async def _main(self) -> None:
        import aiohttp

        backoff = self.min_backoff
        pending: str | None = None  # a message taken from the queue but not yet delivered
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    async with http.ws_connect(self.url, headers=self.headers, heartbeat=10.0) as ws:
                        if self.failures:
                            log.warning("websocket %s: reconnected", self.url)
                        backoff = self.min_backoff
                        drain = asyncio.ensure_future(self._discard_incoming(ws))
                        try:
                            while True:
                                if pending is None:
                                    pending = await self._queue.get()
                                if pending is None:
                                    return
                                if ws.closed:
                                    raise ConnectionResetError("closed by the server")
                                await ws.send_str(pending)
                                self.sent += 1
                                pending = None
                        finally:
                            drain.cancel()
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    self.failures += 1
                    # First failure and then every tenth: a down server does not flood the log.
                    if self.failures == 1 or self.failures % 10 == 0:
                        log.warning("websocket %s: %s (%s); retrying in %.1f s", self.url,
                                    exc.__class__.__name__, exc, backoff)
                    if self._closed:  # closing and the server is down: do not hold the caller up
                        return
                    try:  # wait for the next try; a close() ends the wait for one last try
                        await asyncio.wait_for(self._closing.wait(), backoff)
                    except asyncio.TimeoutError:
                        pass
                    backoff = min(backoff * 2, self.max_backoff)

    @staticmethod
    async def _discard_incoming(ws) -> None:
        # Reading keeps aiohttp answering pings and notices a server-side close.
        async for _ in ws:
            pass
