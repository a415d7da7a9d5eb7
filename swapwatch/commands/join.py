"""`swapwatch join`: join a live session on a swapwatch server from a video file or a camera, headlessly."""

from __future__ import annotations

import argparse
import asyncio
import json


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from swapwatch.stream.offer import DEFAULT_FACES, DEFAULT_MODE, FACES, MODES

    p = subparsers.add_parser(name, help=help_text, description=help_text + " Websocket messages (metrics, "
                              "alerts) are printed as JSON lines, then a summary line.")
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--input", required=True, metavar="FILE|camera",
                   help="a video file to send, or 'camera' for /dev/video0 (Linux, v4l2)")
    p.add_argument("--camera-device", default="/dev/video0", metavar="PATH",
                   help="the v4l2 device for --input camera (default: /dev/video0)")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help="swap: your face replaced by --source; monitor: deepfake alerts only; both (default: "
                        "%(default)s)")
    p.add_argument("--source", metavar="FACE.jpg", help="the face photo to swap in (needed by swap and both)")
    p.add_argument("--faces", choices=FACES, default=DEFAULT_FACES,
                   help="which faces to swap, as the page's default (default: %(default)s)")
    p.add_argument("--record", metavar="OUT.mp4", help="record the processed video to this file")
    p.add_argument("--token", metavar="T", help="the server's access token")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: end of input)")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="a STUN/TURN server (stun:host:port); default none, enough for loopback and LAN")
    p.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="seconds to wait for each request and for the connection (default: 15)")
    return p


def run(args: argparse.Namespace) -> int:
    from swapwatch.client.join import JoinClient, JoinConfig
    from swapwatch.errors import InputError

    if args.mode in ("swap", "both") and not args.source:
        raise InputError(f"--mode {args.mode} needs --source FACE.jpg")
    config = JoinConfig(url=args.url, input=args.input, mode=args.mode, source=args.source, faces=args.faces,
                        record=args.record, token=args.token, duration=args.duration,
                        ice_servers=tuple(args.ice_server), timeout=args.timeout,
                        camera_device=args.camera_device)
    summary = asyncio.run(JoinClient(config).run())
    print(json.dumps(summary.to_json()), flush=True)
    return 0
