#!/usr/bin/env python3
"""Sustained frame rate and added latency of live sessions over WebRTC on loopback, for 1, 2 and 4 sessions.

Usage: python bench/stream_bench.py [--seconds 6] [--fps 30] [--sizes 640x480,1280x720] [--sessions 1,2,4]
                                    [--models classic,inswapper-fixture] [--json OUT.json]

The server (SwapwatchServer: YuNet, the swap model, one inference worker) runs in its own process, as
`swapwatch serve` would; the clients are probes (swapwatch.stream.probe: real aiortc peers sending a GRID
clip upscaled to the size, at ``--fps``) in this process. Both share the machine, so on a small CPU the
clients' own VP8 encoding and decoding compete with the server.

Columns:
- fps back: frames per second each client receives (stand-ins included: the server keeps the frame rate);
- swapped fps: distinct swapped frames per second per session (the worker's output for it, in time or late:
  a late frame is not sent in its own slot but refreshes the repeated stand-in, so the viewer sees it);
- in time: the share of frames sent in their own slot (the rest are stand-ins: the last swapped frame again);
- added latency: client hand-off of a frame to its encoder -> the frame with the same timestamp decoded back
  (two VP8 encodes and decodes, aiortc's jitter buffer holding each frame until the next one starts on both
  legs, i.e. 2 frame intervals, and the server);
- server latency: decoded frame in at the server -> handed to its encoder (the server's own share);
- stages: the worker's per-frame p50 for detect and generate, and its whole time per frame.

Models: `classic` (weight-free); `inswapper-fixture` is the seeded stand-in with inswapper_128's interface
(tests/fixtures_insightface.py, fixed batch 1 like the release) installed into a temporary SWAPWATCH_HOME:
a small network, so its row measures the serving overhead of a learned ONNX swapper, not inswapper's speed
(the real graph is ~175 GMACs per face). SimSwap fixtures have the real architecture (~48 GMACs per face at
224) and run at a few faces per second on this CPU: skipped here; run them on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SWAPWATCH_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
sys.path.insert(0, str(REPO / "tests"))  # fixture builders
sys.path.insert(0, str(REPO / "bench"))

from machine import describe as describe_machine  # noqa: E402

# ---- the server process ------------------------------------------------------------------------------------

def serve(model: str, home: str, ready: mp.Queue) -> None:
    os.environ["SWAPWATCH_HOME"] = home
    from aiohttp import web

    from swapwatch.config import Config, ServerConfig
    from swapwatch.engines.faces import YuNetDetector
    from swapwatch.engines.swap import create_swapper
    from swapwatch.stream.server import SwapwatchServer

    detector = YuNetDetector(ASSETS / "models" / "face_detection_yunet_2023mar.onnx")
    swapper = create_swapper(model).swapper
    server = SwapwatchServer(Config(server=ServerConfig(max_sessions=8, model=model)), detector, swapper)

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        runner = web.AppRunner(server.app())
        await runner.setup()
        await web.SockSite(runner, sock).start()
        ready.put((sock.getsockname()[1], swapper.name))
        await asyncio.Event().wait()

    asyncio.run(main())


def install_inswapper_fixture(home: Path) -> None:
    os.environ["SWAPWATCH_HOME"] = str(home)
    from fixtures_insightface import build_insightface_fixtures

    from swapwatch.engines.runtime import install_file

    files = build_insightface_fixtures(home / "fixtures")
    install_file("inswapper-128", files["inswapper_fixed"])
    install_file("w600k-r50", files["arcface"])


# ---- the clients -------------------------------------------------------------------------------------------

def load_clip(size: tuple[int, int]):
    import av
    import cv2

    from swapwatch.stream.probe import Clip

    path = sorted((ASSETS / "videos").glob("grid_*.mpg"))[0]
    with av.open(str(path)) as c:
        frames = [cv2.resize(f.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_CUBIC)
                  for f in c.decode(video=0)]
    return Clip(frames)


async def run_case(port: int, clip, sessions: int, seconds: float, fps: float) -> dict:
    import aiohttp

    from swapwatch.stream.probe import Probe

    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
        fd = aiohttp.FormData()
        fd.add_field("file", (ASSETS / "faces" / "max_Chris.jpeg").read_bytes(), filename="source.jpg",
                     content_type="image/jpeg")
        async with http.post("/sources", data=fd) as r:
            source = (await r.json())["id"]
        probes = [Probe(http, clip, fps=fps, count=int(seconds * fps), mode="swap", source=source, websocket=True)
                  for _ in range(sessions)]
        await asyncio.gather(*(p.start() for p in probes))
        reports = await asyncio.gather(*(p.run(tail=1.0, timeout=seconds * 4 + 30) for p in probes))
        server_side = [[m for m in p.messages if m["type"] == "metrics"][-1] for p in probes]
        await asyncio.gather(*(p.close() for p in probes))
    return summarise(reports, server_side, seconds)


def summarise(reports, server_side, seconds: float) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 1) if values else None

    return {
        "back": round(statistics.fmean(r.fraction_back for r in reports), 3),
        "fps_back": mean(r.fps_back for r in reports),
        "processed_fps": mean(m["processed"] / seconds for m in server_side),
        "in_time": round(statistics.fmean(1 - m["repeated"] / max(1, m["frames_out"]) for m in server_side), 3),
        "latency_p50_ms": mean(r.latency_ms["p50"] for r in reports),
        "latency_p95_ms": mean(r.latency_ms["p95"] for r in reports),
        "server_p50_ms": mean(m["latency_ms"]["p50"] for m in server_side),
        "server_p95_ms": mean(m["latency_ms"]["p95"] for m in server_side),
        "detect_ms": mean(m["stages_ms"].get("detect") for m in server_side),
        "generate_ms": mean(m["stages_ms"].get("generate") for m in server_side),
        "worker_ms": mean(m["stages_ms"].get("total") for m in server_side),
        "in_order": all(r.in_order for r in reports),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--sessions", default="1,2,4")
    parser.add_argument("--models", default="classic,inswapper-fixture")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    counts = [int(n) for n in args.sessions.split(",")]

    rows = []
    load_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # other work on the machine skews everything
    ctx = mp.get_context("spawn")
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="swapwatch-bench-") as home:
            name = "classic"
            if model == "inswapper-fixture":
                install_inswapper_fixture(Path(home))
                name = "inswapper-128"
            ready: mp.Queue = ctx.Queue()
            proc = ctx.Process(target=serve, args=(name, home, ready), daemon=True)
            proc.start()
            try:
                port, loaded = ready.get(timeout=120)
                for size in sizes:
                    clip = load_clip(size)
                    for n in counts:
                        t0 = time.time()
                        row = asyncio.run(run_case(port, clip, n, args.seconds, args.fps))
                        row.update(model=model if loaded == name else f"{model} (got {loaded})",
                                   size=f"{size[0]}x{size[1]}", sessions=n)
                        rows.append(row)
                        print(f"  {row['model']} {row['size']} x{n}: {row} ({time.time() - t0:.0f} s)",
                              file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                proc.join(10)

    machine = describe_machine()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nMachine: {machine}; load average at the start {load_start}, at the end {load}\nInput: GRID clip upscaled, {args.fps:g} fps per session, {args.seconds:g} s; "
          f"server and clients on one machine; added latency = client encoder hand-off -> same frame decoded "
          f"back (two VP8 legs).\n")
    print("| model | size | sessions | frames back | fps back / session | swapped fps / session | in time | "
          "added latency p50 / p95 ms | server latency p50 / p95 ms | detect / generate / worker ms (p50) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['sessions']} | {r['back'] * 100:.0f}% | {r['fps_back']} | "
              f"{r['processed_fps']} | {r['in_time'] * 100:.0f}% | {r['latency_p50_ms']} / {r['latency_p95_ms']} | "
              f"{r['server_p50_ms']} / {r['server_p95_ms']} | "
              f"{r['detect_ms']} / {r['generate_ms']} / {r['worker_ms']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
