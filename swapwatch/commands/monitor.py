"""`swapwatch monitor`: watch a video file or a live stream for swapwatch watermarks and deepfake alerts.

With ``--ray`` it watches many streams at once, one Ray task per stream spread over a cluster's nodes; each task
runs the same per-stream loop (:func:`monitor_stream`) as the single-host command and streams its messages back.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapwatch.commands.options import add_deepfake_options, deepfake_config
from swapwatch.errors import InputError, SwapwatchError

if TYPE_CHECKING:
    from swapwatch.engines.deepfake import AlertEvent, DeepfakeScorer, VerdictEvent
    from swapwatch.stream.ingest import StreamEvent

log = logging.getLogger("swapwatch.monitor")

Message = dict[str, Any]  # a JSON line: alert, verdict, stream, summary (and with --ray: error, cluster_summary)
Line = tuple[Message, str]  # a message and its text line (formatted from the unrounded values)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text + " Alert events (start, update, "
                              "end) are printed as they happen, then a summary; with a deepfake model that has "
                              "a REAL/FAKE band, so is each face track's live verdict (REAL, UNCERTAIN, FAKE) "
                              "when it changes. A live stream that drops is reopened with backoff (see "
                              "--reconnect-for), each gap reported as it starts and ends.")
    p.add_argument("source", nargs="*", metavar="SOURCE",
                   help="a video file, or a stream URL (rtsp://, http(s)://, udp://, rtmp://, srt://); several "
                        "need --ray")
    p.add_argument("--sources", metavar="FILE", help="read more sources from FILE, one a line (blank lines and "
                   "lines starting with # are ignored)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="monitor every source at once on a Ray cluster, one task (1 CPU) per stream spread over "
                        "its nodes: 'local' (a cluster started in this process), 'auto', HOST:PORT or "
                        "ray://HOST:10001. Each source is opened on the node that runs its task, so file paths "
                        "must exist there (a shared filesystem) or be URLs. Every message carries its "
                        "\"stream\" (text lines start with [SOURCE]); a stream that fails gives one error "
                        "message while the others go on; a cluster_summary line comes last, and the exit is "
                        "non-zero if any stream failed. Not with --draw or --ws")
    p.add_argument("--json", action="store_true", help="print events and the summary as JSON lines")
    p.add_argument("--ws", metavar="URL", help="also send every event (JSON) to this websocket; it is retried "
                   "with backoff and never stops monitoring")
    p.add_argument("--ws-token", metavar="T", help="bearer token for --ws")
    p.add_argument("--detector", choices=("mtcnn", "yunet", "scrfd"), default="yunet",
                   help="face detector for face tracks (default: yunet)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="run the face detector every K frames, tracking in between (default: 1)")
    p.add_argument("--watermark-every", type=int, default=1, metavar="N",
                   help="check the watermark every N frames (default: 1)")
    p.add_argument("--realtime", action="store_true",
                   help="read a file at its frame rate, dropping frames when monitoring falls behind "
                        "(live streams always work this way)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for a stream to open or send data (default: 10)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds of video (of stream time: "
                   "gaps while a live stream reconnects count)")
    p.add_argument("--reconnect-for", type=float, default=300.0, metavar="S",
                   help="when a live stream drops (read error, end, or no data for --timeout s), reopen it with "
                        "exponential backoff (0.5 s doubling to 10 s) for up to S seconds, then stop with an error "
                        "(default: 300; 'inf': never give up). Alerts open when it drops end at its last frame; a "
                        "'stream' message reports the loss and the reconnection. Files are never reopened")
    p.add_argument("--no-reconnect", action="store_true",
                   help="stop when a live stream drops, as at the end of a file")
    p.add_argument("--draw", metavar="OUT", help="write the video with the monitor's status overlay "
                   "(.mp4, .mkv, .mov or .webm)")
    add_deepfake_options(p)
    return p




def run(args: argparse.Namespace, *, deepfake: DeepfakeScorer | None = None) -> int:
    """Run the command; ``deepfake`` replaces the scorer that ``--deepfake-model`` names (tests)."""
    if args.every < 1 or args.watermark_every < 1:
        raise InputError("--every and --watermark-every must be at least 1")
    if args.timeout <= 0 or (args.duration is not None and args.duration <= 0):
        raise InputError("--timeout and --duration must be positive")
    if not args.reconnect_for > 0:
        raise InputError("--reconnect-for must be positive ('inf': never give up; --no-reconnect: never reconnect)")
    if args.draw and Path(args.draw).suffix.lower() not in (".mp4", ".mkv", ".mov", ".webm"):
        raise InputError("--draw needs a .mp4, .mkv, .mov or .webm file name")
    deepfake_config(args, backend=args.backend)  # bad deepfake options fail here, before any stream is opened
    sources = _sources(args)
    if args.ray is not None:
        if args.draw or args.ws:
            raise InputError("--draw and --ws do not work with --ray (the streams run on the cluster's nodes)")
        return _run_ray(args, sources, deepfake)
    if len(sources) != 1:
        raise InputError(f"several sources ({len(sources)}) need --ray ADDRESS (one monitor per stream on a "
                         "Ray cluster); without it, give one")
    forwarder = None
    if args.ws:
        from swapwatch.stream.ingest import WebsocketForwarder

        forwarder = WebsocketForwarder(args.ws, token=args.ws_token)
    stream = monitor_stream(sources[0], args, deepfake)
    try:
        try:
            for msg, text in stream:
                _show(msg, text, args.json, forwarder)
        except KeyboardInterrupt:  # Ctrl-C while printing: the stream still ends its alerts and summarises
            for msg, text in _resumed(stream, stream.throw(KeyboardInterrupt())):
                _show(msg, text, args.json, forwarder)
        return 0
    finally:
        stream.close()
        if forwarder is not None:
            forwarder.close()


def _resumed(stream: Iterator[Line], first: Line) -> Iterator[Line]:
    yield first
    yield from stream


def _show(msg: Message, text: str, as_json: bool, forwarder=None) -> None:
    # Only alert and verdict events go to the websocket (the protocol's messages); the summary is for stdout.
    if forwarder is not None and msg["type"] in ("alert", "verdict"):
        forwarder.send(msg)
    print(json.dumps(msg) if as_json else text, flush=True)


def _sources(args: argparse.Namespace) -> list[str]:
    """The positional sources, then those of ``--sources FILE``."""
    sources = list(args.source)
    if args.sources:
        try:
            lines = Path(args.sources).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--sources {args.sources}: cannot read it ({exc.__class__.__name__})") from None
        sources += [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    if not sources:
        raise InputError("no source: give a SOURCE or --sources FILE")
    # Messages are told apart by their source: the same one twice would make them ambiguous.
    if len(set(sources)) != len(sources):
        raise InputError(f"{next(s for s in sources if sources.count(s) > 1)}: given twice")
    return sources


def monitor_stream(source: str, args: argparse.Namespace, deepfake: DeepfakeScorer | None = None) -> Iterator[Line]:
    """Monitor one stream: yield its alert events and verdict changes as they happen, then its summary.

    The one per-stream loop, for the single-host command and for each ``--ray`` task alike. A live stream that
    drops is reopened (:class:`ReconnectingSource`): a ``stream`` message when it is lost (its open alerts then
    end at its last frame) and another when it is back. The stream ending badly midway (InputError, giving up
    reconnecting included) still ends its alerts and yields the summary, then raises.
    """
    from swapwatch.config import DetectorConfig
    from swapwatch.engines.deepfake import FrameMonitor, MonitorConfig, MonitorOverlay
    from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker, create_detector
    from swapwatch.stream.ingest import IngestConfig, ReconnectingSource, StreamEvent

    deepfake_settings = deepfake_config(args, backend=args.backend)
    # Open the input before loading models, so a bad source fails fast.
    video = ReconnectingSource(source, IngestConfig(
        timeout=args.timeout, realtime=args.realtime, reconnect=not args.no_reconnect,
        reconnect_max_gap=None if math.isinf(args.reconnect_for) else args.reconnect_for))
    writer = None
    try:
        detector = create_detector(DetectorConfig(name=args.detector, backend=args.backend))
        tracker = KeyframeTracker(detector, FaceTracker(smoothing=FACE_SMOOTHING), k=args.every)
        if deepfake is None and deepfake_settings.model is not None:
            from swapwatch.engines.deepfake import create_deepfake_detector

            deepfake = create_deepfake_detector(deepfake_settings)
        monitor = FrameMonitor(MonitorConfig(watermark_every=args.watermark_every), detector=deepfake)
        overlay = MonitorOverlay()
        stopped = ""
        tracks: set[int] = set()
        alert_events = verdict_changes = 0
        started = time.monotonic()
        last_t = 0.0
        try:
            for frame in video.items():
                if isinstance(frame, StreamEvent):  # a live stream dropped, or is back (it reconnects itself)
                    yield _stream_event(frame)
                    if frame.event == "lost":
                        # No video for a while: the alerts end at the last frame, and faces seen after the gap
                        # are new tracks (the tracker's would outlive any gap: it ages tracks by frames).
                        for e in monitor.close(last_t):
                            alert_events += 1
                            yield _alert(e)
                        tracker.reset()
                    continue
                if args.duration is not None and frame.time > args.duration:
                    break
                last_t = frame.time
                faces = tracker.process(frame.image, frame.time)
                tracks.update(f.track_id for f in faces if f.track_id is not None)
                for e in monitor.process(frame.image, frame.time, faces):
                    alert_events += 1
                    yield _alert(e)
                for v in monitor.state.verdict_changes:
                    verdict_changes += 1
                    yield _verdict(v)
                if args.draw:
                    writer = writer or _writer(args.draw, video)
                    writer.write(overlay.draw(frame.image, monitor.state, faces))
        except KeyboardInterrupt:  # the usual way to stop watching a live stream: still end alerts
            stopped = "interrupted"
        except InputError as exc:  # the stream broke: end the alerts and summarise, then report it
            stopped = str(exc)
        if stopped and monitor.state.frames == 0:  # nothing was monitored: a plain input error
            raise InputError(stopped)
        for e in monitor.close(last_t):
            alert_events += 1
            yield _alert(e)
        st = monitor.state
        wall = time.monotonic() - started
        summary = {
            "type": "summary", "source": source, "frames": st.frames, "dropped": video.dropped,
            "alerts": st.alerts_started, "alert_events": alert_events, "verdict_changes": verdict_changes,
            "watermark_checks": st.watermark_checks, "watermarked_frames": st.watermarked_frames,
            "tracks": len(tracks), "duration_s": round(last_t, 3), "wall_s": round(wall, 3),
            "fps": round(st.frames / wall, 2) if wall > 0 else 0.0, "live": bool(video.live),
            "reconnects": video.reconnects, "gap_s": round(video.gap_s, 3),
            "deepfake_model": None if deepfake is None else (deepfake_settings.model or "custom"),
        }
        yield summary, (f"{source}: {st.frames} frames ({video.dropped} dropped), {st.alerts_started} alert(s), "
                        f"watermark on {st.watermarked_frames}/{st.watermark_checks} checked frames, "
                        f"{len(tracks)} face track(s), {summary['fps']} fps"
                        + (f", {video.reconnects} reconnection(s) ({video.gap_s:.1f} s without video)"
                           if video.reconnects else ""))
        if stopped and stopped != "interrupted":
            raise InputError(stopped)
    finally:
        if writer is not None:
            writer.close()
        video.close()


def _writer(path: str, source):
    from swapwatch.engines.faces import VideoWriter

    return VideoWriter(Path(path), source.fps, source.width, source.height)


def _alert(e: AlertEvent) -> Line:
    what = {"watermark": "swapwatch watermark (verified)",
            "change": f"face track {e.track_id} (score stepped up)"}.get(e.kind, f"face track {e.track_id}")
    return e.to_json(), (f"alert {e.event:<6} {what}: {e.t_start:.2f}-{e.t_end:.2f} s, peak {e.peak:.2f}, "
                         f"mean {e.mean:.2f}")


def _stream_event(e: StreamEvent) -> Line:
    if e.event == "lost":
        return e.to_json(), f"stream dropped at {e.t:.2f} s ({e.error}); reconnecting"
    return e.to_json(), f"stream back at {e.t:.2f} s after {e.gap_s:.1f} s without video ({e.attempts} attempt(s))"


def _verdict(v: VerdictEvent) -> Line:
    why = " (between the real and fake thresholds: the detector cannot tell)" if v.verdict == "UNCERTAIN" else ""
    return v.to_json(), f"verdict face track {v.track_id}: {v.verdict} at {v.t:.2f} s, score {v.score:.2f}{why}"


# --------------------------------------------------------------------------------------------------------
# --ray: one task per stream
# --------------------------------------------------------------------------------------------------------


def _stream_task(source: str, args: argparse.Namespace, deepfake: DeepfakeScorer | None) -> Iterator[Line]:
    """A Ray task's body: :func:`monitor_stream`, its messages tagged with the stream; a failure becomes one
    error message (never an exception), so that the driver reports it and the other streams go on."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        for msg, text in monitor_stream(source, args, deepfake):
            if msg["type"] == "summary":
                msg["node"] = node  # where it ran: shows the spread, finds a node's log
            yield {**msg, "stream": source}, text
    except SwapwatchError as exc:
        yield _error(source, str(exc), node)
    except Exception as exc:  # a bug or a library's error in one stream must not take the others down
        log.exception("monitor %s failed", source)
        yield _error(source, f"{exc.__class__.__name__}: {exc}", node)


def _error(source: str, error: str, node: str | None = None) -> Line:
    line = (error.strip().splitlines() or ["failed"])[0]
    msg: Message = {"type": "error", "stream": source, "error": line}
    if node is not None:
        msg["node"] = node
    return msg, f"error: {line}"


def _run_ray(args: argparse.Namespace, sources: list[str], deepfake: DeepfakeScorer | None) -> int:
    import asyncio

    from swapwatch.config import ClusterConfig
    from swapwatch.stream.ray_connect import connect, import_ray

    ray = import_ray()
    try:
        config = ClusterConfig(address=args.ray)
    except ValueError as exc:
        raise InputError(f"--ray: {exc}") from None
    owned = not ray.is_initialized()  # a connection made here is closed here (a caller's, e.g. a test's, stays)
    connect(config)
    # SPREAD: one stream per node first, so that the load (decoding, detection) is shared across the cluster.
    task = ray.remote(num_returns="streaming", num_cpus=1, scheduling_strategy="SPREAD")(_stream_task)
    started = time.monotonic()
    totals: dict[str, Any] = {"alerts": 0, "alert_events": 0, "verdict_changes": 0, "frames": 0, "reconnects": 0}
    failed: list[str] = []
    nodes: set[str] = set()

    def emit(source: str, msg: Message, text: str) -> None:
        if msg["type"] == "summary":
            for key in totals:
                totals[key] += msg[key]
        elif msg["type"] == "error" and source not in failed:
            failed.append(source)
        if "node" in msg:
            nodes.add(msg["node"])
        print(json.dumps(msg) if args.json else f"[{source}] {text}", flush=True)

    generators = [(s, task.remote(s, args, deepfake)) for s in sources]
    try:
        asyncio.run(_merge(generators, emit))
    except KeyboardInterrupt:
        # Ctrl-C: stop every stream's task on the cluster, then stop as the command does (exit 130). force: a
        # task waiting on a live stream stops now, not after its read times out; it holds nothing to flush.
        for _, gen in generators:
            ray.cancel(gen, force=True)
        raise
    finally:
        if owned:
            ray.shutdown()
    summary = {"type": "cluster_summary", "streams": len(sources), "failed": len(failed), **totals,
               "nodes": len(nodes), "wall_s": round(time.monotonic() - started, 3)}
    print(json.dumps(summary) if args.json else
          f"{len(sources)} stream(s) on {len(nodes)} node(s), {len(failed)} failed, {totals['alerts']} alert(s), "
          f"{totals['frames']} frames in {summary['wall_s']} s", flush=True)
    if failed:
        raise InputError(f"{len(failed)} of {len(sources)} stream(s) failed: {', '.join(failed)}")
    return 0


async def _merge(generators: list[tuple[str, Any]], emit: Callable[[str, Message, str], None]) -> None:
    """Print every stream's messages as they arrive: one coroutine per task's ObjectRefGenerator."""
    import asyncio

    from ray.exceptions import RayError

    async def drain(source: str, gen) -> None:
        try:
            async for ref in gen:
                msg, text = await ref
                emit(source, msg, text)
        except RayError as exc:  # the task itself died (its worker or node was lost): that stream failed
            emit(source, *_error(source, f"task failed: {exc.__class__.__name__}: {exc}"))

    await asyncio.gather(*(drain(s, g) for s, g in generators))
