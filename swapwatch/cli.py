"""The ``swapwatch`` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from swapwatch import __version__
from swapwatch.errors import SwapwatchError

# Subcommand name -> module in swapwatch.commands. Modules are imported lazily so that `swapwatch --help`
# and light commands stay fast and do not import torch.
COMMANDS = {
    "serve": "Run the WebRTC server (live swap and monitoring sessions).",
    "faces": "Detect (and for video, track) faces in an image or a video.",
    "swap": "Swap faces in an image or a video to the identity in a source photo.",
    "models": "List, fetch, verify and locate model files.",
    "export": "Export a model to ONNX with a parity check against PyTorch.",
    "train-detector": "Train the deepfake detector (frame scorer + temporal head) on real faces and pseudo-fakes.",
    "detect": "Decide whether a video's faces are deepfakes (REAL, FAKE or NO_FACES), with the score over time.",
    "eval-detector": "Evaluate the deepfake detector on a labelled video dataset: AUC, EER, calibration, time to alert.",
    "monitor": "Watch a video file or a live stream (RTSP, HTTP, UDP) for watermarks and deepfake alerts.",
    "join": "Join a swapwatch server's live session from a video file or a camera (headless WebRTC client).",
    "bench": "Per-stage latency and frame rate of the live frame path, optionally against the plain loop.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapwatch",
        description="Real-time face swap and deepfake monitoring for live video streams.",
    )
    parser.add_argument("--version", action="version", version=f"swapwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"swapwatch.commands.{name.replace('-', '_')}")
        sp = module.add_parser(sub, name, help_text)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        # Commands print their results; logs are for the server and for -v.
        level=logging.DEBUG if args.verbose else logging.INFO if args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SwapwatchError as exc:
        print(f"swapwatch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"swapwatch {args.command}: interrupted", file=sys.stderr)
        return 130
