#!/usr/bin/env python3
"""What the Ray path costs and gives: signalling latency, and frames back per session with 1 and 2 hosts.

Usage: python bench/cluster_bench.py [--offers 10] [--sessions 4] [--seconds 10] [--size WxH] [--json OUT.json]

All in one run on this machine, the same clip (a shared GRID clip, 360x288 at 25 fps, or resized to
``--size``; swap mode, the weight-free classic swapper, no deepfake model). The probe clients run in this
process: on the single-host server they share its process (and its GIL) with the server, on Ray they do not.

1. Signalling: ``--offers`` sequential offers (POST /offer round trip seen by the client, then the time to
   the first processed frame), each session closed before the next, against (a) the single-host server and
   (b) the Ray front end with one host. The difference is what the Ray path adds (two Ray calls: the offer to
   the host, and the host's answer back).
2. Frames back: ``--sessions`` concurrent swap sessions for ``--seconds`` s, frames received per session per
   second, on (a) the single-host server, (b) Ray with one host, (c) Ray with two hosts (two nodes of one CPU
   each on this machine). A host is a process with its own inference worker, so two hosts can use two cores
   where one host's worker is one thread; on a 2-core machine that runs the clients too, expect CPU limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SWAPWATCH_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from machine import describe as describe_machine  # noqa: E402

from swapwatch.config import ClusterConfig, Config, DeepfakeConfig, ServerConfig  # noqa: E402
from swapwatch.engines.faces import create_detector  # noqa: E402
from swapwatch.engines.runtime import iter_video  # noqa: E402
from swapwatch.engines.swap import ClassicSwapper  # noqa: E402
from swapwatch.stream.probe import Probe  # noqa: E402

CLIP = "grid_lbbc2a.mpg"
SOURCE_PHOTO = "max_Chris.jpeg"


def config(cluster: ClusterConfig | None = None, sessions: int = 4) -> Config:
    # Every session comes from this one address: its pending-offer budget must hold them all.
    server = ServerConfig(model="classic", max_sessions=sessions, max_pending_per_client=sessions)
    return Config(server=server, deepfake=DeepfakeConfig(model=None), cluster=cluster or ClusterConfig())


async def serve(server, scenario):
    from aiohttp.test_utils import TestServer

    async with TestServer(server.app(), host="127.0.0.1") as ts:
        async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
            return await scenario(http, server)


async def upload(http) -> str:
    photo = ASSETS / "faces" / SOURCE_PHOTO
    fd = aiohttp.FormData()
    fd.add_field("file", photo.read_bytes(), filename=photo.name, content_type="image/jpeg")
    async with http.post("/sources", data=fd) as r:
        return (await r.json())["id"]


async def until(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def signalling(http, frames, count: int) -> dict:
    """Offer round trips and times to the first frame, one session at a time."""
    source = await upload(http)
    offer_ms, first_ms = [], []
    for _ in range(count):
        probe = Probe(http, frames, mode="swap", source=source, count=100)
        t0 = time.monotonic()
        # Probe.start: create the offer (local, gathered), POST it, apply the answer. The POST dominates; the
        # local SDP work is the same on both paths.
        await probe.start()
        offer_ms.append((time.monotonic() - t0) * 1000)
        await until(lambda: probe.received, 30)
        first_ms.append((time.monotonic() - t0) * 1000)
        await probe.close()
        await asyncio.sleep(0.3)
    return {"offers": count, "offer_ms": _pct(offer_ms), "first_frame_ms": _pct(first_ms)}


async def throughput(http, frames, sessions: int, seconds: float) -> dict:
    source = await upload(http)
    fps = 25.0  # the probe's default rate (the clip's own)
    probes = [Probe(http, frames, mode="swap", source=source, count=int(fps * (seconds + 6))) for _ in range(sessions)]
    for p in probes:
        await p.start()
    await until(lambda: all(p.received for p in probes), 60)
    await asyncio.sleep(2.0)  # warm: every session is streaming
    counts = [len(p.received) for p in probes]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    span = time.monotonic() - t0
    per_session = [(len(p.received) - c) / span for p, c in zip(probes, counts)]
    for p in probes:
        await p.close()
    return {"sessions": sessions, "seconds": round(span, 2), "fps_sent": fps,
            "fps_back_per_session": [round(x, 2) for x in per_session],
            "fps_back_mean": round(statistics.mean(per_session), 2), "fps_back_total": round(sum(per_session), 2)}


def _pct(values: list[float]) -> dict:
    values = sorted(values)
    return {"p50": round(statistics.median(values), 1), "p95": round(values[int(0.95 * (len(values) - 1))], 1),
            "min": round(values[0], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offers", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", metavar="WxH", help="resize the clip's frames (default: as they are, 360x288)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from swapwatch.stream.cluster import ClusterServer
    from swapwatch.stream.ray_connect import connect
    from swapwatch.stream.server import SwapwatchServer

    frames = [f.image for f in iter_video(ASSETS / "videos" / CLIP)]
    if args.size:
        import cv2

        w, h = (int(v) for v in args.size.lower().split("x"))
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames]
    detector = create_detector(config().detector)
    out: dict = {"machine": describe_machine(), "clip": CLIP, "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
                 "sessions": args.sessions, "load_before": os.getloadavg()[0]}

    async def single_host():
        server = SwapwatchServer(config(sessions=args.sessions), detector, ClassicSwapper())

        async def scenario(http, server):
            return {"signalling": await signalling(http, frames, args.offers),
                    "throughput": await throughput(http, frames, args.sessions, args.seconds)}
        return await serve(server, scenario)

    print("single host ...", flush=True)
    out["single_host"] = asyncio.run(single_host())
    print(json.dumps(out["single_host"]), flush=True)

    per_host = args.sessions
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "resources": {"swapwatch_sessions": per_host}})
    try:
        cc = ClusterConfig(address=cluster.address, sessions_per_host=per_host, reconcile_interval=0.5)
        connect(cc, log_to_driver=False)

        async def on_ray(hosts: int, with_signalling: bool):
            server = ClusterServer(config(cc), detector)

            async def scenario(http, server):
                await until(lambda: sum(h.ready for h in server.hosts.hosts.values()) == hosts, 120)
                doc = {"hosts": hosts}
                if with_signalling:
                    doc["signalling"] = await signalling(http, frames, args.offers)
                doc["throughput"] = await throughput(http, frames, args.sessions, args.seconds)
                return doc
            return await serve(server, scenario)

        print("ray, 1 host ...", flush=True)
        out["ray_1_host"] = asyncio.run(on_ray(1, True))
        print(json.dumps(out["ray_1_host"]), flush=True)
        cluster.add_node(num_cpus=1, resources={"swapwatch_sessions": per_host})
        cluster.wait_for_nodes()
        print("ray, 2 hosts ...", flush=True)
        out["ray_2_hosts"] = asyncio.run(on_ray(2, False))
        print(json.dumps(out["ray_2_hosts"]), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    s, r = out["single_host"]["signalling"], out["ray_1_host"]["signalling"]
    out["ray_added_offer_ms_p50"] = round(r["offer_ms"]["p50"] - s["offer_ms"]["p50"], 1)
    out["ray_added_first_frame_ms_p50"] = round(r["first_frame_ms"]["p50"] - s["first_frame_ms"]["p50"], 1)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps({k: out[k] for k in ("ray_added_offer_ms_p50", "ray_added_first_frame_ms_p50")}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
