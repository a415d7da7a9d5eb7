"""`swapwatch serve`: run the HTTP/WebRTC server."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("swapwatch.serve")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from swapwatch.config import DetectorConfig, ServerConfig

    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--host", default=ServerConfig.host, help=f"address to bind (default: {ServerConfig.host})")
    p.add_argument("--port", type=int, default=ServerConfig.port, help=f"port (default: {ServerConfig.port})")
    p.add_argument("--max-sessions", type=int, default=ServerConfig.max_sessions)
    p.add_argument("--detector", choices=("mtcnn", "yunet", "scrfd"), default=None,
                   help=f"face detector (default: {DetectorConfig.name}, falling back to mtcnn when its "
                        "model cannot be fetched)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    return p


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from swapwatch.config import Config, DetectorConfig, ServerConfig
    from swapwatch.engines.detectors import create_detector
    from swapwatch.errors import ModelError
    from swapwatch.stream.server import SwapwatchServer

    detector_config = DetectorConfig(name=args.detector or DetectorConfig.name, backend=args.backend)
    config = Config(detector=detector_config,
                    server=ServerConfig(host=args.host, port=args.port, max_sessions=args.max_sessions))
    try:
        detector = create_detector(config.detector)
    except ModelError as exc:
        if args.detector:  # the user asked for this one: do not silently substitute
            raise
        log.warning("default detector %s unavailable (%s); falling back to mtcnn", detector_config.name, exc)
        detector = create_detector(DetectorConfig(name="mtcnn", backend=args.backend))
    log.info("detector: %s", detector.name)
    server = SwapwatchServer(config, detector)
    print(f"swapwatch serving on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    web.run_app(server.app(), host=args.host, port=args.port, print=None)
    return 0
