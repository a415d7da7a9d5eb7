"""Ingest of non-WebRTC video (files, RTSP/HTTP/UDP/... URLs) for monitoring, and forwarding of its events.

- :class:`VideoSource` opens a file or a network URL with PyAV (with open and read timeouts) and yields
  decoded frames. Live sources are read by a thread into a :class:`LatestFrame` mailbox, so that a consumer
  slower than the stream always gets the newest frame and latency stays bounded (frames are dropped after
  decode, never before: dropping packets would lose keyframes).
- :class:`WebsocketForwarder` sends JSON messages to a websocket from a background thread, reconnecting
  with exponential backoff; its failures are logged and never stop the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
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

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")


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
