"""Counters, rates and latency windows for sessions and the server, and their Prometheus text rendering.

Frame counts are touched on the event loop only; stage times come from the worker thread, so the windows
that hold them take a lock. Windows keep the last N samples (bounded memory) for percentiles, and a
running sum and count for Prometheus summaries.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from swapwatch.engines.deepfake import EVENTS, KINDS

# The stages a frame goes through, in order (see worker.py / processing.py). "queue" is the wait for the
# worker; "total" is the worker's whole time on the frame; "generate" is shared by a batch's frames. With the
# device path on, upload .. download (and device_overhead, the call's untimed rest) are the batch's.
STAGES = ("queue", "convert", "detect", "upload", "align", "generate", "paste", "label", "download",
          "device_overhead", "monitor", "output", "total")


class LatencyWindow:
    """The last ``size`` samples of a duration in seconds, with the all-time sum and count."""

    def __init__(self, size: int = 512) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.sum = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self.sum += seconds
            self.count += 1

    def samples(self) -> list[float]:
        """The kept samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def percentiles(self, *qs: float) -> list[float | None]:
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return [None for _ in qs]
        return [data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))] for q in qs]

    def percentile(self, q: float) -> float | None:
        return self.percentiles(q)[0]


class RateMeter:
    """Events per second over the last ``window`` seconds (timestamps from one monotonic clock)."""

    def __init__(self, window: float = 2.0, max_events: int = 1024) -> None:
        self.window = window
        self._times: deque[float] = deque(maxlen=max_events)

    def tick(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float) -> float:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()
        if not self._times:
            return 0.0
        span = max(now - self._times[0], self.window if len(self._times) > 1 else 1.0)
        return len(self._times) / span


class StageTimes:
    """A latency window per named stage."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._stages: dict[str, LatencyWindow] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        window = self._stages.get(stage)
        if window is None:
            with self._lock:
                window = self._stages.setdefault(stage, LatencyWindow(self._size))
        window.add(seconds)

    def add_all(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.add(stage, seconds)

    def items(self) -> list[tuple[str, LatencyWindow]]:
        with self._lock:
            order = {s: i for i, s in enumerate(STAGES)}
            return sorted(self._stages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))

    def p50_ms(self) -> dict[str, float]:
        out = {}
        for stage, window in self.items():
            p50 = window.percentile(0.5)
            if p50 is not None:
                out[stage] = round(p50 * 1000.0, 2)
        return out


@dataclass
class FrameCounters:
    frames_in: int = 0  # decoded frames that reached the session
    frames_out: int = 0  # frames handed to the sender
    processed: int = 0  # frames the worker finished, in time or late (a late one still refreshes the stand-in)
    dropped: int = 0  # input frames whose own processed result was never sent (superseded, late, evicted)
    repeated: int = 0  # frames sent as a stand-in: the last processed frame again, or the placeholder
    errors: int = 0  # frames the worker failed on


@dataclass
class ServerStats:
    """Totals over every session since the server started, and the worker's stage times."""

    counters: FrameCounters = field(default_factory=FrameCounters)
    stages: StageTimes = field(default_factory=StageTimes)
    latency: LatencyWindow = field(default_factory=LatencyWindow)  # added latency of every frame sent
    deadlines: LatencyWindow = field(default_factory=LatencyWindow)  # the frame deadline each frame sent had
    batch_sizes: LatencyWindow = field(default_factory=LatencyWindow)  # faces per generate call
    sessions_created: int = 0
    sessions_rejected: dict[str, int] = field(default_factory=dict)  # by reason: full, auth, bad_offer, ...
    sessions_closed: dict[str, int] = field(default_factory=dict)  # by reason: idle, peer, client, ...
    alerts: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, event) -> alert messages sent

    def reject(self, reason: str) -> None:
        self.sessions_rejected[reason] = self.sessions_rejected.get(reason, 0) + 1

    def closed(self, reason: str) -> None:
        self.sessions_closed[reason] = self.sessions_closed.get(reason, 0) + 1


class SessionStats:
    """One session's counts, rates and latencies; every count also goes to the server's totals."""

    def __init__(self, server: ServerStats | None = None, *, clock=time.monotonic) -> None:
        self.server = server
        self.counters = FrameCounters()
        self.fps_in = RateMeter()
        self.fps_out = RateMeter()
        self.latency = LatencyWindow(256)  # arrival of the decoded frame -> handed to the sender
        self.stages = StageTimes(256)
        self.deadline: float | None = None  # the frame deadline now in force (the outgoing track sets it)
        self._clock = clock

    def _bump(self, name: str, n: int = 1) -> None:
        setattr(self.counters, name, getattr(self.counters, name) + n)
        if self.server is not None:
            totals = self.server.counters
            setattr(totals, name, getattr(totals, name) + n)

    def frame_in(self, now: float) -> None:
        self._bump("frames_in")
        self.fps_in.tick(now)

    def frame_out(self, now: float, latency: float, *, stand_in: bool, deadline: float | None = None) -> None:
        """One frame handed to the sender; ``deadline``: the frame deadline it was held to."""
        self._bump("frames_out")
        if stand_in:
            self._bump("repeated")
        self.fps_out.tick(now)
        self.latency.add(latency)
        if self.server is not None:
            self.server.latency.add(latency)
            if deadline is not None:
                self.server.deadlines.add(deadline)

    def dropped(self, n: int = 1) -> None:
        self._bump("dropped", n)

    def processed(self) -> None:
        self._bump("processed")

    def error(self) -> None:
        self._bump("errors")

    def alert(self, kind: str, event: str) -> None:
        """One alert message (kind model|watermark|change, event start|update|end), counted in the server's totals."""
        if self.server is not None:
            key = (kind, event)
            self.server.alerts[key] = self.server.alerts.get(key, 0) + 1

    def stage_times(self, timings: Mapping[str, float]) -> None:
        self.stages.add_all(timings)

    def message(self, now: float | None = None) -> dict:
        """The websocket ``metrics`` message (PROTOCOL.md)."""
        now = self._clock() if now is None else now
        c = self.counters
        p50, p95 = self.latency.percentiles(0.5, 0.95)
        return {
            "type": "metrics", "t": round(time.time(), 3),
            "frames_in": c.frames_in, "frames_out": c.frames_out, "dropped": c.dropped,
            "processed": c.processed, "repeated": c.repeated, "errors": c.errors,
            "fps_in": round(self.fps_in.rate(now), 2), "fps_out": round(self.fps_out.rate(now), 2),
            "latency_ms": {"p50": _ms(p50), "p95": _ms(p95)},
            "stages_ms": self.stages.p50_ms(),
            "deadline_ms": _ms(self.deadline),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


# --------------------------------------------------------------------------------------------------------
# Prometheus text exposition format 0.0.4, written by hand (prometheus_client is not a dependency)
# --------------------------------------------------------------------------------------------------------

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (0.5, 0.9, 0.95, 0.99)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    if isinstance(x, bool):
        return str(int(x))
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


class PrometheusText:
    """Accumulates metric families; :meth:`render` gives the exposition text."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def _family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    def gauge(self, name: str, help_text: str, value: float | Iterable[tuple[Mapping[str, str], float]]) -> None:
        self._simple(name, "gauge", help_text, value)

    def counter(self, name: str, help_text: str, value: float | Iterable[tuple[Mapping[str, str], float]]) -> None:
        self._simple(name, "counter", help_text, value)

    def _simple(self, name: str, kind: str, help_text: str, value) -> None:
        self._family(name, kind, help_text)
        samples = value if isinstance(value, Iterable) else [({}, value)]
        for labels, v in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(v)}")

    def summary(self, name: str, help_text: str, windows: Iterable[tuple[Mapping[str, str], LatencyWindow]]) -> None:
        self._family(name, "summary", help_text)
        for labels, window in windows:
            for q, v in zip(QUANTILES, window.percentiles(*QUANTILES)):
                if v is not None:
                    self._lines.append(f"{name}{_labels({**labels, 'quantile': str(q)})} {_number(v)}")
            self._lines.append(f"{name}_sum{_labels(labels)} {_number(window.sum)}")
            self._lines.append(f"{name}_count{_labels(labels)} {_number(window.count)}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


def render_prometheus(stats: ServerStats, *, sessions: int, max_sessions: int, queue_depth: int,
                      uptime: float) -> str:
    c = stats.counters
    out = PrometheusText()
    out.gauge("swapwatch_sessions", "Live sessions.", sessions)
    out.gauge("swapwatch_max_sessions", "Session capacity (--max-sessions).", max_sessions)
    out.counter("swapwatch_sessions_created_total", "Sessions created.", stats.sessions_created)
    out.counter("swapwatch_sessions_rejected_total", "Offers refused, by reason.",
                [({"reason": r}, n) for r, n in sorted(stats.sessions_rejected.items())] or [({"reason": "full"}, 0)])
    out.counter("swapwatch_sessions_closed_total", "Sessions closed, by reason.",
                [({"reason": r}, n) for r, n in sorted(stats.sessions_closed.items())] or [({"reason": "idle"}, 0)])
    out.counter("swapwatch_frames_in_total", "Decoded frames received from clients.", c.frames_in)
    out.counter("swapwatch_frames_out_total", "Frames handed to the WebRTC senders.", c.frames_out)
    out.counter("swapwatch_frames_processed_total", "Frames the inference worker finished (in time or late).",
                c.processed)
    out.counter("swapwatch_frames_dropped_total",
                "Input frames whose own processed result was not sent (superseded by a newer frame, "
                "late, or evicted).", c.dropped)
    out.counter("swapwatch_frames_repeated_total",
                "Frames sent as a stand-in (the last processed frame again, or the placeholder).", c.repeated)
    out.counter("swapwatch_frame_errors_total", "Frames the worker failed on.", c.errors)
    # Every (kind, event) pair is written from the start, so that rate() and alerting rules see zeros.
    kinds = sorted(set(KINDS) | {k for k, _ in stats.alerts})
    out.counter("swapwatch_alerts_total", "Alert messages sent, by kind (model, watermark, change) and event "
                "(start, update, end).",
                [({"kind": k, "event": e}, stats.alerts.get((k, e), 0)) for k in kinds for e in EVENTS])
    out.gauge("swapwatch_alerts_active", "Alerts started and not yet ended, by kind.",
              [({"kind": k}, stats.alerts.get((k, "start"), 0) - stats.alerts.get((k, "end"), 0)) for k in kinds])
    out.gauge("swapwatch_worker_queue_depth", "Jobs waiting for the inference worker.", queue_depth)
    out.summary("swapwatch_added_latency_seconds",
                "Server-side added latency: decoded frame in -> frame handed to the encoder.", [({}, stats.latency)])
    out.summary("swapwatch_frame_deadline_seconds",
                "The frame deadline each frame sent was held to (adaptive: it follows each session's "
                "processing latency, up to frame_deadline).", [({}, stats.deadlines)])
    out.summary("swapwatch_stage_seconds", "Per-stage time in the inference worker.",
                [({"stage": s}, w) for s, w in stats.stages.items()])
    out.summary("swapwatch_batch_faces", "Faces per swapper generate call (cross-session batching).",
                [({}, stats.batch_sizes)])
    out.gauge("swapwatch_uptime_seconds", "Seconds since the server started.", round(uptime, 3))
    return out.render()


def merge_prometheus(texts: dict[str, str]) -> str:
    """Prometheus texts by host id -> one text: each family once (its HELP and TYPE from the first host that
    has it), its samples from every host with ``host="<id>"`` added to their labels."""
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for host, text in texts.items():
        family = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                if family not in meta:
                    order.append(family)
                    meta[family], samples[family] = [], []
                if len(meta[family]) < 2 and not any(m.startswith(line[:6]) for m in meta[family]):
                    meta[family].append(line)
            elif line and not line.startswith("#") and family is not None:
                samples[family].append(_with_label(line, "host", host))
    out = []
    for family in order:
        out += meta[family] + samples[family]
    return "\n".join(out) + ("\n" if out else "")


def _with_label(sample: str, key: str, value: str) -> str:
    name_end = min(i for i in (sample.find("{"), sample.find(" ")) if i >= 0)
    label = f'{key}="{value}"'
    if sample[name_end] == "{":
        inner_end = sample.index("}", name_end)
        inner = sample[name_end + 1:inner_end]
        return f"{sample[:name_end]}{{{label}{',' + inner if inner else ''}}}{sample[inner_end + 1:]}"
    return f"{sample[:name_end]}{{{label}}}{sample[name_end:]}"
