"""`swapwatch monitor`: watch a video file or a live stream for swapwatch watermarks and deepfake alerts."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapwatch.commands.options import add_deepfake_options, deepfake_config
from swapwatch.errors import InputError

if TYPE_CHECKING:
    from swapwatch.engines.deepfake import AlertEvent, DeepfakeScorer, VerdictEvent

log = logging.getLogger("swapwatch.monitor")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text + " Alert events (start, update, "
                              "end) are printed as they happen, then a summary; with a deepfake model that has "
                              "a REAL/FAKE band, so is each face track's live verdict (REAL, UNCERTAIN, FAKE) "
                              "when it changes.")
    p.add_argument("source", help="a video file, or a stream URL (rtsp://, http(s)://, udp://, rtmp://, srt://)")
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
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds of video")
    p.add_argument("--draw", metavar="OUT", help="write the video with the monitor's status overlay "
                   "(.mp4, .mkv, .mov or .webm)")
    add_deepfake_options(p)
    return p


def run(args: argparse.Namespace, *, deepfake: DeepfakeScorer | None = None) -> int:
    """Run the command; ``deepfake`` replaces the scorer that ``--deepfake-model`` names (tests)."""
    from swapwatch.config import DetectorConfig
    from swapwatch.engines.deepfake import FrameMonitor, MonitorConfig, MonitorOverlay
    from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker, create_detector
    from swapwatch.stream.ingest import IngestConfig, VideoSource, WebsocketForwarder

    if args.every < 1 or args.watermark_every < 1:
        raise InputError("--every and --watermark-every must be at least 1")
    if args.timeout <= 0 or (args.duration is not None and args.duration <= 0):
        raise InputError("--timeout and --duration must be positive")
    if args.draw and Path(args.draw).suffix.lower() not in (".mp4", ".mkv", ".mov", ".webm"):
        raise InputError("--draw needs a .mp4, .mkv, .mov or .webm file name")
    deepfake_settings = deepfake_config(args, backend=args.backend)
    # Open the input before loading models, so a bad source fails fast.
    source = VideoSource(args.source, IngestConfig(timeout=args.timeout, realtime=args.realtime))
    forwarder = None
    writer = None
    try:
        detector = create_detector(DetectorConfig(name=args.detector, backend=args.backend))
        tracker = KeyframeTracker(detector, FaceTracker(smoothing=FACE_SMOOTHING), k=args.every)
        if deepfake is None and deepfake_settings.model is not None:
            from swapwatch.engines.deepfake import create_deepfake_detector

            deepfake = create_deepfake_detector(deepfake_settings)
        monitor = FrameMonitor(MonitorConfig(watermark_every=args.watermark_every), detector=deepfake)
        if args.ws:
            forwarder = WebsocketForwarder(args.ws, token=args.ws_token)
        report = _Reporter(args.json, forwarder)
        overlay = MonitorOverlay()
        stopped = ""
        tracks: set[int] = set()
        started = time.monotonic()
        last_t = 0.0
        try:
            for frame in source.frames():
                if args.duration is not None and frame.time > args.duration:
                    break
                last_t = frame.time
                faces = tracker.process(frame.image, frame.time)
                tracks.update(f.track_id for f in faces if f.track_id is not None)
                report.events(monitor.process(frame.image, frame.time, faces))
                report.verdicts(monitor.state.verdict_changes)
                if args.draw:
                    writer = writer or _writer(args.draw, source)
                    writer.write(overlay.draw(frame.image, monitor.state, faces))
        except KeyboardInterrupt:  # the usual way to stop watching a live stream: still end alerts
            stopped = "interrupted"
        except InputError as exc:  # the stream broke: end the alerts and summarise, then report it
            stopped = str(exc)
        if stopped and monitor.state.frames == 0:  # nothing was monitored: a plain input error
            raise InputError(stopped)
        report.events(monitor.close(last_t))
        st = monitor.state
        wall = time.monotonic() - started
        report.summary({
            "type": "summary", "source": args.source, "frames": st.frames, "dropped": source.dropped,
            "alerts": st.alerts_started, "alert_events": report.count, "verdict_changes": report.verdict_count,
            "watermark_checks": st.watermark_checks, "watermarked_frames": st.watermarked_frames,
            "tracks": len(tracks), "duration_s": round(last_t, 3), "wall_s": round(wall, 3),
            "fps": round(st.frames / wall, 2) if wall > 0 else 0.0, "live": bool(source.live),
            "deepfake_model": None if deepfake is None else (deepfake_settings.model or "custom"),
        })
        if stopped and stopped != "interrupted":
            raise InputError(stopped)
        return 0
    finally:
        if writer is not None:
            writer.close()
        if forwarder is not None:
            forwarder.close()
        source.close()


def _writer(path: str, source):
    from swapwatch.engines.faces import VideoWriter

    return VideoWriter(Path(path), source.fps, source.width, source.height)


class _Reporter:
    """Prints events (JSON lines or text) on stdout as they happen, and forwards them to the websocket: alert
    events and live verdict changes, the server's websocket messages of the same names."""

    def __init__(self, as_json: bool, forwarder) -> None:
        self.as_json = as_json
        self.forwarder = forwarder
        self.count = 0  # alert events
        self.verdict_count = 0  # verdict changes (not alerts)

    def verdicts(self, changes: tuple[VerdictEvent, ...]) -> None:
        for v in changes:
            msg = v.to_json()
            self.verdict_count += 1
            if self.forwarder is not None:
                self.forwarder.send(msg)
            if self.as_json:
                print(json.dumps(msg), flush=True)
            else:
                why = " (between the real and fake thresholds: the detector cannot tell)" \
                    if v.verdict == "UNCERTAIN" else ""
                print(f"verdict face track {v.track_id}: {v.verdict} at {v.t:.2f} s, score {v.score:.2f}{why}",
                      flush=True)

    def events(self, events: list[AlertEvent]) -> None:
        for e in events:
            msg = e.to_json()
            self.count += 1
            if self.forwarder is not None:
                self.forwarder.send(msg)
            if self.as_json:
                print(json.dumps(msg), flush=True)
            else:
                what = {"watermark": "swapwatch watermark (verified)",
                        "change": f"face track {e.track_id} (score stepped up)"}.get(e.kind, f"face track {e.track_id}")
                print(f"alert {e.event:<6} {what}: {e.t_start:.2f}-{e.t_end:.2f} s, peak {e.peak:.2f}, "
                      f"mean {e.mean:.2f}", flush=True)

    def summary(self, msg: dict[str, Any]) -> None:
        # Only alert and verdict events go to the websocket (the protocol's messages); the summary is for stdout.
        if self.as_json:
            print(json.dumps(msg), flush=True)
        else:
            print(f"{msg['source']}: {msg['frames']} frames ({msg['dropped']} dropped), {msg['alerts']} alert(s), "
                  f"watermark on {msg['watermarked_frames']}/{msg['watermark_checks']} checked frames, "
                  f"{msg['tracks']} face track(s), {msg['fps']} fps", flush=True)
