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
    "detect": ("Decide whether a video's faces are deepfakes (REAL, UNCERTAIN, FAKE or NO_FACES), with the score "
               "over time."),
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
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                        help="what goes to the log on stderr (default: info for serve, warning for the others; "
                             "debug also shows every HTTP request and aiortc/aioice's connectivity checks)")
    parser.add_argument("-v", "--verbose", action="store_true", help="the same as --log-level debug")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"swapwatch.commands.{name.replace('-', '_')}")
        sp = module.add_parser(sub, name, help_text)
        # Also after the subcommand (`swapwatch serve --log-level debug`); SUPPRESS keeps the top level's value
        # when it is not given here.
        sp.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="log level on stderr (see swapwatch --help)")
        sp.set_defaults(_run=module.run)
    return parser


LOG_LEVELS = ("debug", "info", "warning", "error")
# Libraries that log a line per ICE connectivity check or per HTTP request at INFO: below debug they say
# only what went wrong, so that a server's log is about sessions, not packets.
CHATTY_LOGGERS = ("aioice", "aiortc", "aiohttp.access")


class _CommandFormatter(logging.Formatter):
    """``swapwatch swap: warning: ...``: a command's log lines read like its errors."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}: {record.levelname.lower()}: {record.getMessage()}"


def configure_logging(command: str | None, level_name: str | None, verbose: bool) -> int:
    """Log to stderr at the chosen level (commands print their results; logs are for the server and -v)."""
    name = "debug" if verbose else level_name or ("info" if command == "serve" else "warning")
    level = getattr(logging, name.upper())
    # A server's log is read later: time and source on each line. A command's warnings are read now, beside its
    # output and errors ("swapwatch swap: error: ..."), so they are spelled the same way unless debugging.
    handler = logging.StreamHandler(sys.stderr)
    if command != "serve" and level > logging.DEBUG:
        handler.setFormatter(_CommandFormatter(f"swapwatch {command}"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    return level


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.command, args.log_level, args.verbose)
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
