"""`swapwatch serve`: run the HTTP/WebRTC server."""

from __future__ import annotations

import argparse
import asyncio
import logging

from swapwatch.commands.options import add_deepfake_options, deepfake_config

log = logging.getLogger("swapwatch.serve")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from swapwatch.config import ClusterConfig, DetectorConfig, ServerConfig

    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--host", default=ServerConfig.host, help=f"address to bind (default: {ServerConfig.host})")
    p.add_argument("--port", type=int, default=ServerConfig.port, help=f"port (default: {ServerConfig.port})")
    p.add_argument("--max-sessions", type=int, default=ServerConfig.max_sessions,
                   help=f"concurrent sessions; more get 503 (default: {ServerConfig.max_sessions})")
    p.add_argument("--max-pending-per-client", type=int, default=ServerConfig.max_pending_per_client, metavar="N",
                   help="offers still connecting (ICE) from one client address; more get 503 + Retry-After "
                        f"(default: {ServerConfig.max_pending_per_client}; a connected session no longer counts)")
    p.add_argument("--pending-timeout", type=float, default=ServerConfig.pending_timeout, metavar="S",
                   help="an offer whose peer has not connected within S seconds is closed (default: "
                        f"{ServerConfig.pending_timeout:g})")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (the websocket also takes ?token=TOKEN)")
    p.add_argument("--allowed-origin", dest="allowed_origins", action="append", default=[], metavar="ORIGIN",
                   help="also accept websockets, offers, uploads and deletes from pages of this origin (repeatable; "
                        "the server's own origin is always accepted, other sites' pages never), e.g. "
                        "https://swap.example.org")
    p.add_argument("--ice-server", dest="ice_servers", action="append", default=[], metavar="URL",
                   help="STUN/TURN server (repeatable; aiortc uses the first STUN and the first TURN), e.g. "
                        "stun:stun.example.org:3478 or turn:turn.example.org:3478?transport=udp; "
                        "none by default (host candidates only, works on a LAN and offline)")
    p.add_argument("--ice-username", default=None, help="username for the turn: servers")
    p.add_argument("--ice-credential", default=None, help="credential for the turn: servers")
    p.add_argument("--model", default=ServerConfig.model,
                   choices=("auto", "simswap-224", "simswap-512", "inswapper-128", "classic"),
                   help="swap model (default: the best installed learned model, else the weight-free classic)")
    p.add_argument("--detector", choices=("mtcnn", "yunet", "scrfd"), default=DetectorConfig.name,
                   help="face detector (default: %(default)s, shipped inside swapwatch)")
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="run the detector every K frames, optical-flow tracking in between (default: 1)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--device-path", default=ServerConfig.device_path, choices=("auto", "on", "off"),
                   help="swap frames on the device path (upload once; align, swap, paste, badge and watermark on "
                        "the device; every session's frames in one batch): auto (default) turns it on when the "
                        "swapper runs on CUDA")
    p.add_argument("--record-dir", default=None, metavar="DIR",
                   help="allow sessions that ask for it (record: true in the offer) to be recorded here; "
                        "without it nothing a user streams is written to disk")
    p.add_argument("--header-timeout", type=float, default=ServerConfig.header_timeout, metavar="S",
                   help="close a connection with no request in progress for S seconds: one still sending its "
                        f"request head, or an idle kept-alive one (default: {ServerConfig.header_timeout:g})")
    p.add_argument("--idle-timeout", type=float, default=ServerConfig.idle_timeout, metavar="S",
                   help=f"close a session after S seconds without frames (default: {ServerConfig.idle_timeout:g})")
    add_deepfake_options(p)
    g = p.add_argument_group("cluster (sessions placed on a Ray cluster; needs the cluster extra)")
    g.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="place sessions on the session hosts of a Ray cluster: HOST:PORT of its head (or 'auto', "
                        "or ray://HOST:10001); 'local' starts a one-node cluster in this process. This process "
                        "stays the front end (page, signalling, websockets, /detect); media flows between each "
                        "client and its host's node directly. Nodes offer session capacity with "
                        "ray start --resources='{\"swapwatch_sessions\": 4}'")
    g.add_argument("--sessions-per-host", type=int, default=ClusterConfig.sessions_per_host, metavar="N",
                   help="sessions one host takes: the units of the swapwatch_sessions resource each host actor "
                        f"claims, one host per GPU (default: {ClusterConfig.sessions_per_host})")
    g.add_argument("--local-hosts", type=int, default=ClusterConfig.local_hosts, metavar="N",
                   help=f"with --ray local: session hosts to run (default: {ClusterConfig.local_hosts})")
    return p


def run(args: argparse.Namespace) -> int:
    from swapwatch.config import ClusterConfig, Config, DetectorConfig, ServerConfig, TrackingConfig
    from swapwatch.errors import InputError

    try:
        server_config = ServerConfig(
            host=args.host, port=args.port, max_sessions=args.max_sessions, token=args.token,
            max_pending_per_client=args.max_pending_per_client, pending_timeout=args.pending_timeout,
            allowed_origins=tuple(args.allowed_origins), ice_servers=tuple(args.ice_servers),
            ice_username=args.ice_username, ice_credential=args.ice_credential, model=args.model,
            record_dir=args.record_dir, idle_timeout=args.idle_timeout, device_path=args.device_path,
            header_timeout=args.header_timeout)
        tracking = TrackingConfig(detect_every=args.detect_every)
        cluster = ClusterConfig(address=args.ray, sessions_per_host=args.sessions_per_host,
                                local_hosts=args.local_hosts)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    detector_config = DetectorConfig(name=args.detector, backend=args.backend, device=args.device)
    config = Config(detector=detector_config, tracking=tracking, server=server_config, cluster=cluster,
                    deepfake=deepfake_config(args, backend=args.backend, device=args.device))
    if args.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without --token: anyone who can reach it can start sessions", args.host)
    connection = None
    if cluster.address is not None:
        server, connection = _cluster_server(config)
    else:
        server = _single_host_server(config)
    try:
        asyncio.run(_serve(server, args.host, args.port))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    finally:
        if connection is not None and connection.started_local:
            connection.shutdown()
    log.info("swapwatch stopped")
    return 0


async def _serve(server, host: str, port: int) -> None:
    """aiohttp's run_app, plus what it lacks: the header deadline's sweep over the live connections."""
    import signal

    from aiohttp import web

    from swapwatch.stream.security import RedactedAccessLogger

    runner = web.AppRunner(server.app(), access_log_class=RedactedAccessLogger,
                           keepalive_timeout=server.config.server.header_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sweep = None
    try:
        await web.TCPSite(runner, host, port).start()
        sweep = server.header_deadline.watch(runner.server)
        print(f"swapwatch serving on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        await stop.wait()
    finally:
        if sweep is not None:
            sweep.cancel()
        await runner.cleanup()


def _single_host_server(config):
    from swapwatch.stream.host import ServingModels
    from swapwatch.stream.server import SwapwatchServer

    models = ServingModels.load(config)
    log.info("detector: %s; swap model: %s%s", models.detector.name, models.swapper.name,
             "" if models.swapper.learned else " (weight-free: no learned swapper installed)")
    dc = config.deepfake
    log.info("deepfake detector: %s", "off (watermark alerts only)" if models.deepfake is None else
             f"{dc.model} (scorer every {dc.feature_stride} frame(s) of a track, head every {dc.score_stride} "
             "score(s))")
    return SwapwatchServer(config, models.detector, models.swapper, deepfake=models.deepfake)


def _cluster_server(config):
    """The front end of a Ray cluster: the face detector here (checking uploaded photos), the rest on hosts."""
    from swapwatch.engines.faces import create_detector
    from swapwatch.stream.cluster import ClusterServer
    from swapwatch.stream.ray_connect import connect

    connection = connect(config.cluster)
    log.info("sessions go to session hosts on the Ray cluster at %s, %d per host", connection.address,
             config.cluster.sessions_per_host)
    return ClusterServer(config, create_detector(config.detector)), connection
