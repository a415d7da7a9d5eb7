"""A live stream that drops: `swapwatch monitor` reopens it with backoff and reports each gap (issue 17).

The stream is real: an MPEG-TS encoding of a shared clip (with swapwatch's watermark, so that alerts come from
real detections) served over HTTP from a raw socket server on loopback, paced at its frame rate, which the test
can drop (a connection reset, a clean end, or a stall that trips the read timeout) and take down (connections
refused) and back up on the same port. Nothing on the decoding side is mocked.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from fractions import Fraction

import pytest
from cli_util import assert_one_line_error
from test_monitor import run_monitor

from swapwatch.engines.runtime import VideoFrame, iter_video
from swapwatch.stream.ingest import IngestConfig, ReconnectingSource, StreamEvent

FPS = 25
STREAM_S = 12.0  # each connection's stream; the tests drop it well before its end
BURST_S = 0.5  # sent at once on connecting, as a live server's buffer would be: the decoder opens at once
# Fast monitoring: the watermark on every frame and faces every 2nd; no deepfake model (the gaps are the point).
FAST = ["--json", "--deepfake-model", "off", "--every", "2"]
INGEST_THREADS = ("swapwatch-ingest", "swapwatch-reopen")


@pytest.fixture(scope="module")
def live_ts(clips, tmp_path_factory) -> bytes:
    """STREAM_S seconds of the clip, looped, watermarked, as MPEG-2 in MPEG-TS (what a live encoder sends)."""
    import av

    from swapwatch.engines.swap import Watermarker

    clip = next(p for p in clips if p.suffix == ".mpg")
    wm = Watermarker()
    images = [wm.embed(f.image) for f in iter_video(clip)]
    path = tmp_path_factory.mktemp("live") / "live.ts"
    with av.open(str(path), mode="w", format="mpegts") as out:
        s = out.add_stream("mpeg2video", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt, s.gop_size = images[0].shape[1], images[0].shape[0], "yuv420p", 12
        s.bit_rate = 3_000_000
        for i in range(int(STREAM_S * FPS)):
            frame = av.VideoFrame.from_ndarray(images[i % len(images)], format="bgr24")
            frame.pts = i
            for packet in s.encode(frame):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path.read_bytes()


class _Connection:
    def __init__(self) -> None:
        self.how: str | None = None  # set by drop()


class LiveTsServer:
    """``GET /anything`` -> the stream from its start, paced at its rate, no Content-Length (live: no duration).

    ``drop(how)`` ends the open connections: ``reset`` (an RST: the reader gets a read error), ``close`` (a clean
    close: the stream's end) or ``stall`` (open and silent: the reader's timeout fires). ``down()`` closes the
    port (new connections are refused), ``up()`` opens it again on the same port. With ``mute`` set, new
    connections are accepted and never answered (an open that hangs until its timeout).
    """

    def __init__(self, data: bytes, seconds: float = STREAM_S) -> None:
        self.data, self.rate = data, len(data) / seconds
        self.port = 0
        self.connections = 0
        self.mute = False
        self._lock = threading.Lock()
        self._open: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._accepting: threading.Event | None = None
        self._accepter: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def __enter__(self) -> LiveTsServer:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self.down()
        self.drop("reset")
        for t in self._threads:
            t.join(10)

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(8)
        ls.settimeout(0.05)
        self.port = ls.getsockname()[1]
        self._listener, self._accepting = ls, threading.Event()
        self._accepter = self._start(self._accept, ls, self._accepting)

    def down(self) -> None:
        if self._listener is not None and self._accepting is not None and self._accepter is not None:
            self._accepting.set()
            self._accepter.join(5)  # it polls every 0.05 s
            self._listener.close()
            self._listener = None

    def drop(self, how: str) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for c in conns:
            c.how = how

    def _start(self, target, *args) -> threading.Thread:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def _accept(self, ls: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = ls.accept()
            except (TimeoutError, OSError):
                continue
            state = _Connection()
            with self._lock:
                self._open.append(state)
                self.connections += 1
            self._start(self._serve, conn, state)

    def _serve(self, conn: socket.socket, state: _Connection) -> None:
        try:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            if self.mute:
                self._stopped.wait()
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
            t0, sent = time.monotonic(), 0
            while sent < len(self.data):
                if state.how == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if state.how == "close":
                    return
                if state.how == "stall":
                    self._stopped.wait()
                    return
                want = min(len(self.data), int((time.monotonic() - t0 + BURST_S) * self.rate) // 188 * 188)
                if want > sent:
                    conn.sendall(self.data[sent:want])
                    sent = want
                time.sleep(0.02)
        except OSError:  # the reader went away
            pass
        finally:
            conn.close()


def ingest_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in INGEST_THREADS and t.is_alive()]


def later(delay: float, fn, *args) -> threading.Timer:
    timer = threading.Timer(delay, fn, args)
    timer.daemon = True
    timer.start()
    return timer


def outage(server: LiveTsServer, how: str = "reset") -> None:
    """The source goes away: its connections end and its port refuses new ones."""
    server.down()
    server.drop(how)


# --------------------------------------------------------------------------------------------------------
# ReconnectingSource
# --------------------------------------------------------------------------------------------------------


def test_source_resumes_after_a_stall_and_an_end_with_time_going_on(live_ts):
    """A stall (no data for the 1 s timeout) and a clean end (the server closes): each is a gap, reopened at
    once (the port still answers); frame times and indexes go on across both, one reader thread at a time."""
    config = IngestConfig(timeout=1.0, reconnect_backoff=(0.2, 1.0))
    frames: list[VideoFrame] = []
    events: list[StreamEvent] = []
    threads_seen = set()
    t0 = time.monotonic()
    with LiveTsServer(live_ts) as server:
        with ReconnectingSource(server.url, config) as src:
            assert src.live and src.reconnecting and (src.width, src.height) == (360, 288)
            for item in src.items():
                if isinstance(item, StreamEvent):
                    events.append(item)
                    continue
                frames.append(item)
                threads_seen.add(sum(t.name == "swapwatch-ingest" for t in ingest_threads()))
                since = item.time - (events[-1].t if events else 0.0)
                if len(events) == 0 and since > 1.0:
                    server.drop("stall")
                elif len(events) == 2 and since > 1.0:
                    server.drop("close")
                elif len(events) == 4 and since > 1.0:
                    break
                assert time.monotonic() - t0 < 30, events
            assert src.reconnects == 2 and server.connections >= 3
        assert not ingest_threads()  # closed: no reader left behind
    assert [e.event for e in events] == ["lost", "reconnected", "lost", "reconnected"]
    assert "no data for 1 s" in events[0].error and "\n" not in events[0].error
    assert events[0].error.startswith("no data") and server.url not in events[0].error
    assert "after frame" in events[2].error  # a clean close: the stream's end (or an I/O error)
    times = [f.time for f in frames]
    assert all(b > a for a, b in zip(times, times[1:])), "stream time must keep increasing across the gaps"
    assert [f.index for f in frames] == list(range(len(frames)))
    for lost, back in (events[:2], events[2:]):
        before = max(f.time for f in frames if f.time <= lost.t)
        after = min(f.time for f in frames if f.time > lost.t)
        assert lost.t == before and back.t == after  # the last frame before the gap, the first after it
        # one reopen 0.2 s later (two if a busy machine makes the first open miss its 1 s timeout)
        assert back.t == pytest.approx(lost.t + back.gap_s) and 1 <= back.attempts <= 2
    assert 0.8 <= events[1].gap_s < 5.0  # the 1 s timeout, then the reopen
    assert 0.1 <= events[3].gap_s < 4.0
    assert src.gap_s == pytest.approx(events[1].gap_s + events[3].gap_s)
    # never two readers: the old one is gone before the next starts (0: the reader of a failing stream can end
    # before the consumer has its last frames)
    assert max(threads_seen) == 1


def test_a_file_never_reconnects(clips):
    clip = next(p for p in clips if p.suffix == ".mpg")
    with ReconnectingSource(clip) as src:
        items = list(src.items())
    assert not src.reconnecting and src.reconnects == 0 and src.gap_s == 0.0
    assert len(items) == 75 and all(isinstance(i, VideoFrame) for i in items)
    assert not ingest_threads()
    with pytest.raises(ValueError):
        IngestConfig(reconnect_max_gap=0)
    with pytest.raises(ValueError):
        IngestConfig(reconnect_backoff=(2.0, 1.0))


# --------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------


def test_monitor_reports_the_gap_and_resumes(live_ts, capsys):
    """The stream is reset at ~2.5 s and its port refuses connections for 2 s: one `lost`, then one
    `reconnected` after a few backoff attempts; the watermark alert ends at the last frame before the gap and
    a new one starts after it; the summary counts the reconnection and the gap."""
    with LiveTsServer(live_ts) as server:
        later(2.5, outage, server)
        later(4.5, server.up)
        t0 = time.monotonic()
        rc, lines = run_monitor(capsys, server.url, *FAST, "--duration", "8", "--timeout", "3")
        wall = time.monotonic() - t0
    assert rc == 0 and wall < 25
    assert not ingest_threads()
    stream = [m for m in lines if m["type"] == "stream"]
    assert [m["event"] for m in stream] == ["lost", "reconnected"]
    lost, back = stream
    assert set(lost) == {"type", "event", "t", "error"} and set(back) == {"type", "event", "t", "gap_s", "attempts"}
    assert "after frame" in lost["error"] and "\n" not in lost["error"]
    assert 1.0 < lost["t"] < 4.0
    # refused for ~2 s: attempts at ~0.5, ~1.5 (refused) and ~3.5 s (back)
    assert 2.0 <= back["gap_s"] < 8.0 and 2 <= back["attempts"] <= 4
    assert back["t"] == pytest.approx(lost["t"] + back["gap_s"], abs=0.002)
    # Alerts: the watermark alert ends with the stream, at its last frame; after the gap a new one starts.
    alerts = [(i, m) for i, m in enumerate(lines) if m["type"] == "alert" and m["event"] != "update"]
    assert [m["event"] for _, m in alerts] == ["start", "end", "start", "end"]
    assert all(m["kind"] == "watermark" for _, m in alerts)
    i_lost, i_back = lines.index(lost), lines.index(back)
    (_, s1), (i_end1, e1), (i_s2, s2), (_, e2) = alerts
    assert i_lost < i_end1 < i_back < i_s2
    assert e1["t_end"] == lost["t"] and s2["t_start"] >= back["t"]
    assert e2["t_end"] <= 8.0
    assert s1["t_start"] < lost["t"] < back["t"] <= s2["t_start"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["live"] is True and summary["alerts"] == 2
    assert summary["reconnects"] == 1 and summary["gap_s"] == pytest.approx(back["gap_s"], abs=0.002)
    assert back["t"] < summary["duration_s"] <= 8.0 and summary["frames"] > 20


def test_monitor_gives_up_after_reconnect_for(live_ts, capsys):
    """The source goes away for good: with --reconnect-for 2 the monitor tries for 2 s, then stops as a broken
    stream does (alerts ended, the summary, one error line, a non-zero exit). With --no-reconnect it stops at
    once, as before reconnection existed."""
    from swapwatch.cli import main

    with LiveTsServer(live_ts) as server:
        later(2.0, outage, server)
        t0 = time.monotonic()
        rc = main(["monitor", server.url, *FAST, "--reconnect-for", "2", "--timeout", "3"])
        wall = time.monotonic() - t0
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], rc, captured.out, captured.err), "gave up reconnecting")
    error = captured.err.strip()
    match = re.search(r"gave up reconnecting after (\d+) attempt\(s\) over ([\d.]+) s \(connection refused\)", error)
    assert match, error
    assert 2 <= int(match[1]) <= 4 and 2.0 <= float(match[2]) < 3.0 and wall < 20
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [m.get("event") for m in lines if m["type"] == "stream"] == ["lost"]
    assert lines[-1]["type"] == "summary" and lines[-1]["reconnects"] == 0 and lines[-1]["frames"] > 0
    lost = next(m for m in lines if m["type"] == "stream")
    ends = [m for m in lines if m["type"] == "alert" and m["event"] == "end"]
    assert len(ends) == 1 and ends[0]["t_end"] == lost["t"]  # ended when the stream was lost, not again later
    assert not ingest_threads()

    with LiveTsServer(live_ts) as server:
        later(1.5, outage, server)
        t0 = time.monotonic()
        rc = main(["monitor", server.url, *FAST, "--no-reconnect", "--timeout", "3"])
        wall = time.monotonic() - t0
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], rc, captured.out, captured.err), "after frame")
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert not [m for m in lines if m["type"] == "stream"] and lines[-1]["reconnects"] == 0
    assert wall < 10

    rc = main(["monitor", server.url, "--reconnect-for", "0"])
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], rc, captured.out, captured.err), "--reconnect-for")


def test_ctrl_c_during_the_backoff_stops_at_once(live_ts, capsys):
    """SIGINT while the monitor waits between reopen attempts: it stops within a moment (not at the next
    attempt), still ends its alerts and prints the summary."""
    main_thread = threading.main_thread().ident
    sent: list[float] = []
    running = threading.Event()
    running.set()

    def interrupt() -> None:
        if running.is_set():
            sent.append(time.monotonic())
            signal.pthread_kill(main_thread, signal.SIGINT)

    with LiveTsServer(live_ts) as server:
        later(1.5, outage, server)
        timer = later(4.2, interrupt)  # 2.7 s after the loss: in the wait from ~1.5 to ~3.5 s, or the next one
        try:
            rc, lines = run_monitor(capsys, server.url, *FAST, "--reconnect-for", "60", "--timeout", "3")
        finally:
            running.clear()
            timer.cancel()
        stopped = time.monotonic()
    assert sent and stopped - sent[0] < 1.0
    assert rc == 0  # interrupted is the usual way to stop watching: alerts ended, summary printed
    assert [m.get("event") for m in lines if m["type"] == "stream"] == ["lost"]
    assert lines[-1]["type"] == "summary" and lines[-1]["reconnects"] == 0
    assert not ingest_threads()


def test_ctrl_c_during_a_reopen_that_hangs(live_ts):
    """The reopen attempt is stuck in FFmpeg's open (the server accepts, never answers): Ctrl-C still stops
    at once (the open runs in a helper thread), and that thread ends at its timeout, leaving nothing open."""
    main_thread = threading.main_thread().ident
    sent: list[float] = []
    connections: list[int] = []
    with LiveTsServer(live_ts) as server:
        with ReconnectingSource(server.url, IngestConfig(timeout=2.0, reconnect_backoff=(0.2, 1.0))) as src:
            items = src.items()
            for item in items:
                if isinstance(item, VideoFrame) and item.time > 0.5:
                    break
            server.mute = True
            server.drop("reset")
            lost = next(i for i in items if isinstance(i, StreamEvent))  # (after the frames still on their way)
            assert lost.event == "lost"

            def interrupt() -> None:
                sent.append(time.monotonic())
                connections.append(server.connections)
                signal.pthread_kill(main_thread, signal.SIGINT)

            timer = later(0.8, interrupt)  # the attempt starts ~0.2 s after the loss and hangs for 2 s
            try:
                with pytest.raises(KeyboardInterrupt):
                    next(items)
            finally:
                timer.cancel()
            assert sent and time.monotonic() - sent[0] < 0.5
            assert connections == [2]  # it came during the reopen (the second connection, accepted, unanswered)
        deadline = time.monotonic() + 5
        while ingest_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ingest_threads()  # the abandoned open timed out; no reader was ever started


def test_ray_tasks_pass_the_stream_messages_through(live_ts, capsys, monkeypatch):
    """`--ray local`: the same per-stream loop in a Ray task; its stream messages reach the driver tagged with
    their stream, and the cluster summary counts the reconnection."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    pytest.importorskip("ray")
    from swapwatch.cli import main

    with LiveTsServer(live_ts) as server:
        # The task starts after the cluster does: drop once the server has a reader.
        def drop_when_read() -> None:
            deadline = time.monotonic() + 60
            while server.connections == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2.0)
            server.drop("reset")

        watcher = threading.Thread(target=drop_when_read, daemon=True)
        watcher.start()
        rc = main(["monitor", "--ray", "local", server.url, *FAST, "--duration", "5", "--timeout", "3"])
        watcher.join(1)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    stream = [m for m in lines if m["type"] == "stream"]
    assert [m["event"] for m in stream] == ["lost", "reconnected"] and all(m["stream"] == server.url for m in stream)
    assert math.isfinite(stream[1]["gap_s"]) and stream[1]["attempts"] >= 1
    total = lines[-1]
    assert total["type"] == "cluster_summary" and total["reconnects"] == 1 and total["failed"] == 0
