"""`serve --ray` on a real local Ray cluster: two nodes on this machine, each offering two session slots.

The front end (stream/cluster.py) runs in the test's event loop; the session hosts are Ray actors, one per
node, that load YuNet and the weight-free classic swapper and own their sessions' aiortc peer connections.
Real aiortc probe clients join through the front end over loopback.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from aiohttp.test_utils import TestServer  # noqa: E402

from swapwatch.config import ClusterConfig, Config, DeepfakeConfig, ServerConfig  # noqa: E402
from swapwatch.stream.cluster import ClusterServer  # noqa: E402
from swapwatch.stream.metrics import merge_prometheus  # noqa: E402
from swapwatch.stream.probe import Probe  # noqa: E402
from swapwatch.stream.ray_connect import connect  # noqa: E402
from tests.test_webrtc import check_swapped, decode_clip, upload, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(300)

PER_NODE = 2


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "resources": {"swapwatch_sessions": PER_NODE}})
    cluster.add_node(num_cpus=1, resources={"swapwatch_sessions": PER_NODE})
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def clip(clips) -> list[np.ndarray]:
    return decode_clip(next(c for c in clips if c.name.startswith("grid_")), limit=50)


def run_front(ray_cluster, detector, scenario, **cluster_options):
    """``scenario(http, server)`` against a front end placing sessions on ``ray_cluster``'s hosts."""

    async def main():
        cluster = ClusterConfig(address=ray_cluster.address, sessions_per_host=PER_NODE, reconcile_interval=0.5,
                                **cluster_options)
        config = Config(server=ServerConfig(model="classic"), deepfake=DeepfakeConfig(model=None), cluster=cluster)
        connect(cluster, log_to_driver=False)
        server = ClusterServer(config, detector)
        async with TestServer(server.app(), host="127.0.0.1") as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                return await scenario(http, server)

    return asyncio.run(main())


async def health(http) -> dict:
    async with http.get("/health") as r:
        assert r.status == 200
        return await r.json()


def test_sessions_spread_over_two_hosts_and_a_lost_host_ends_only_its_sessions(ray_cluster, detector, clip,
                                                                               source_photo, face_photos):
    other_photo = next(p for p in face_photos if p.name != source_photo.name and p.suffix in (".jpg", ".jpeg"))
    face_boxes = [detector.detect(f)[0].box.astype(int) for f in clip]

    async def scenario(http, server):
        doc = await health(http)
        hosts = doc["cluster"]["hosts"]
        assert doc["cluster"]["engine"] == "ray" and len(hosts) == 2, doc
        assert len({h["node"] for h in hosts}) == 2 and all(h["alive"] and h["capacity"] == PER_NODE for h in hosts)
        assert doc["max_sessions"] == 2 * PER_NODE

        source = await upload(http, source_photo)
        # Each sends the clip once (its frames can be matched to what came back), then its last frame again.
        probes = [Probe(http, clip, mode="both", source=source, keep_images=True, websocket=True, count=400)
                  for _ in range(2)]
        for p in probes:
            await p.start()
        await wait_for(lambda: all(len(p.received) >= 20 for p in probes), 60)
        placed = {p.session: server.sessions[p.session].host.id for p in probes}
        assert len(set(placed.values())) == 2, placed  # one session on each host
        for p in probes:
            hello = p.messages[0]
            assert hello["type"] == "hello" and hello["host"] == placed[p.session]
        # Events relayed from the hosts: both-mode sessions alert on their own watermark.
        await wait_for(lambda: all(any(m.get("type") == "alert" for m in p.messages) for p in probes), 30)
        await wait_for(lambda: all(any(m.get("type") == "metrics" and m.get("frames_out", 0) > 0
                                       for m in p.messages) for p in probes), 10)
        # Control goes through the front end to the session's host and is acknowledged; a new source photo,
        # uploaded to the front end, travels to the host with the control message.
        other = await upload(http, other_photo)
        await probes[1].send({"type": "control", "id": 7, "set": {"faces": "all", "source": other}})
        await wait_for(lambda: any(m.get("type") == "ack" and m.get("id") == 7 for m in probes[1].messages), 15)
        settings = server.sessions[probes[1].session].settings
        assert settings.faces == "all" and settings.source == other
        for p in probes:  # swapped, labelled frames came back; never a raw input frame
            back, raw, watermarked = check_swapped(p, clip, face_boxes)
            assert back >= 10 and not raw and watermarked >= 0.8 * back, (back, raw, watermarked)
        doc = await health(http)
        assert sorted(h["sessions"] for h in doc["cluster"]["hosts"]) == [1, 1]

        async with http.get("/metrics") as r:
            metrics = await r.text()
        for host in placed.values():
            assert f'swapwatch_sessions{{host="{host}"}} 1' in metrics, metrics[:2000]
        assert "swapwatch_cluster_capacity 4" in metrics

        # Kill the first session's host: exactly its session ends with host-lost, the other goes on.
        lost, kept = probes
        lost_host = server.hosts.hosts[placed[lost.session]]
        ray.kill(lost_host.actor, no_restart=True)
        await wait_for(lambda: any(m.get("code") == "host-lost" for m in lost.messages), 20)
        error = next(m for m in lost.messages if m.get("code") == "host-lost")
        assert error["type"] == "error" and error["host"] == lost_host.id
        assert lost.session not in server.sessions
        before = len(kept.received)
        await asyncio.sleep(2.0)
        assert len(kept.received) > before + 10, "the other host's session stopped"
        assert not any(m.get("code") == "host-lost" for m in kept.messages)

        # Capacity comes back: a new host starts on the node (its resource share is free again).
        await wait_for(lambda: len([h for h in server.hosts.hosts.values() if h.ready]) == 2, 60)
        doc = await health(http)
        states = {(h["id"], h["alive"]) for h in doc["cluster"]["hosts"]}
        assert (lost_host.id, False) in states and doc["max_sessions"] == 2 * PER_NODE, doc
        again = Probe(http, clip, mode="swap", source=source, keep_images=True, websocket=True, count=100)
        await again.start()
        await wait_for(lambda: len(again.received) >= 10, 60)
        for p in (kept, again):
            await p.close()
        await lost.close(abrupt=True)
        await wait_for(lambda: not server.sessions, 10)

    run_front(ray_cluster, detector, scenario)


def test_a_full_cluster_refuses_with_503_and_frees_capacity_when_sessions_end(ray_cluster, detector, clip):
    async def scenario(http, server):
        await wait_for(lambda: len([h for h in server.hosts.hosts.values() if h.ready]) == 2, 60)
        probes = [Probe(http, clip, mode="monitor", websocket=True, count=400) for _ in range(2 * PER_NODE)]
        for p in probes:
            await p.start()
        hosts = {server.sessions[p.session].host.id for p in probes}
        assert len(hosts) == 2
        extra = Probe(http, clip, mode="monitor", count=10)
        with pytest.raises(RuntimeError, match="503"):
            await extra.start()
        await extra.close(abrupt=True)
        assert server.hosts._requested == 3  # the autoscaler was asked for room for one more host
        await probes[0].close()
        await wait_for(lambda: len(server.sessions) == 2 * PER_NODE - 1, 10)
        late = Probe(http, clip, mode="monitor", count=60)
        await late.start()
        await wait_for(lambda: len(late.received) >= 5, 60)
        for p in probes[1:] + [late]:
            await p.close()
        await wait_for(lambda: not server.sessions, 10)
        await wait_for(lambda: server.hosts._requested == 0, 10)  # withdrawn: whole hosts are free again

    run_front(ray_cluster, detector, scenario)


def test_a_removed_node_ends_its_sessions_and_the_cluster_goes_on_without_it(ray_cluster, detector, clip):
    async def scenario(http, server):
        await wait_for(lambda: len([h for h in server.hosts.hosts.values() if h.ready]) == 2, 60)
        node = ray_cluster.add_node(num_cpus=1, resources={"swapwatch_sessions": PER_NODE})
        await wait_for(lambda: len([h for h in server.hosts.hosts.values() if h.ready]) == 3, 90)
        doomed = next(h for h in server.hosts.hosts.values() if h.node == node.node_id)
        # Three sessions, one per host (each goes to the host with the most free places).
        probes = [Probe(http, clip, mode="monitor", websocket=True, count=600) for _ in range(3)]
        for p in probes:
            await p.start()
        on = {p.session: server.sessions[p.session].host.id for p in probes}
        assert len(set(on.values())) == 3, on
        await wait_for(lambda: all(len(p.received) >= 5 for p in probes), 60)
        ray_cluster.remove_node(node)
        lost = [p for p in probes if on[p.session] == doomed.id]
        kept = [p for p in probes if on[p.session] != doomed.id]
        await wait_for(lambda: any(m.get("code") == "host-lost" for m in lost[0].messages), 60)
        counts = [len(p.received) for p in kept]
        await asyncio.sleep(2.0)
        assert all(len(p.received) > c + 10 for p, c in zip(kept, counts)), "a session on a live node stopped"
        assert not any(m.get("code") == "host-lost" for p in kept for m in p.messages)
        await asyncio.sleep(1.5)  # a reconcile or two: no host comes back for a node that is gone
        doc = await health(http)
        alive = [h for h in doc["cluster"]["hosts"] if h["alive"]]
        assert len(alive) == 2 and doc["max_sessions"] == 2 * PER_NODE, doc
        assert all(h["node"] != node.node_id for h in alive)
        for p in kept:
            await p.close()
        await lost[0].close(abrupt=True)
        await wait_for(lambda: not server.sessions, 10)

    run_front(ray_cluster, detector, scenario)


def test_merge_prometheus_labels_every_sample_with_its_host():
    a = "# HELP m Things.\n# TYPE m counter\nm 1\n# HELP s Lat.\n# TYPE s summary\ns{quantile=\"0.5\"} 2\ns_sum 3\n"
    b = "# HELP m Things.\n# TYPE m counter\nm 4\n"
    merged = merge_prometheus({"h1": a, "h2": b})
    assert merged.count("# TYPE m counter") == 1
    assert 'm{host="h1"} 1' in merged and 'm{host="h2"} 4' in merged
    assert 's{host="h1",quantile="0.5"} 2' in merged and 's_sum{host="h1"} 3' in merged
    assert merged.index('m{host="h2"}') < merged.index("# HELP s")  # a family's samples stay together


def test_serve_refuses_a_bad_ray_address_in_one_line(tmp_path):
    import subprocess
    import sys

    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "swapwatch", "serve", "--ray", "127.0.0.1:1", "--port", "0"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert result.returncode != 0
    assert "Ray cluster at 127.0.0.1:1" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    print(f"refused in {time.monotonic() - start:.1f} s")


def test_the_page_starts_a_new_session_when_its_host_is_lost(ray_cluster, clips, tmp_path):
    """Real Chromium on `swapwatch serve --ray ADDRESS` (a subprocess, a second driver of the test's cluster):
    killing the host of the page's session makes the page start a new session on a live host by itself."""
    from browser_util import ServerProcess, find_chromium, make_y4m
    from test_browser import SW, js_errors, open_page

    if find_chromium() is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    if not ray.is_initialized():  # this test kills the host through its own driver
        connect(ClusterConfig(address=ray_cluster.address), log_to_driver=False)
    camera = tmp_path / "camera.y4m"
    make_y4m(next(c for c in clips if c.name.startswith("grid_")), camera)
    with ServerProcess("--ray", ray_cluster.address, "--model", "classic", "--deepfake-model", "off",
                       "--sessions-per-host", str(PER_NODE), log_path=tmp_path / "server.log",
                       startup_timeout=90, env={"RAY_USAGE_STATS_ENABLED": "0"}) as server:

        def ready_hosts() -> int:
            return sum(h["ready"] and h["alive"] for h in server.health()["cluster"]["hosts"])

        deadline = time.monotonic() + 90
        while ready_hosts() < 2:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)

        async def scenario():
            async with open_page(server.url, camera, tmp_path) as page:
                await page.evaluate("document.querySelector('input[name=mode][value=monitor]').click()")
                await page.click("#start")
                await page.wait_for(f"{SW}.state === 'live' && {SW}.hello", timeout=30)
                first = await page.evaluate(f"{SW}.hello")
                name = f"swapwatch-{first['host']}"
                ray.kill(ray.get_actor(name, namespace="swapwatch"), no_restart=True)
                await page.wait_for(f"{SW}.serverErrors.some(e => e.code === 'host-lost')", timeout=30)
                await page.wait_for(f"{SW}.rejoins === 1 && {SW}.state === 'live' && {SW}.hello && "
                                    f"{SW}.hello.session !== {first['session']!r}", timeout=60)
                second = await page.evaluate(f"{SW}.hello")
                assert second["host"] != first["host"]
                await page.wait_for(f"{SW}.lastStats && {SW}.lastStats.framesDecoded > 0", timeout=20)
                log = await page.evaluate("document.getElementById('log').textContent")
                assert "session host lost" in log
                assert js_errors(page) == [], js_errors(page)
                await page.click("#stop")
                await page.wait_for(f"{SW}.state === 'idle'", timeout=10)

        try:
            asyncio.run(asyncio.wait_for(scenario(), 150))
        except BaseException:
            print("server log tail:\n" + server.log_tail())
            raise


def test_serve_ray_local_starts_its_own_cluster_and_serves(tmp_path):
    """`swapwatch serve --ray local` as a user runs it: a one-node cluster inside the process, its host ready,
    /health says so; the process stops cleanly."""
    from browser_util import ServerProcess

    with ServerProcess("--ray", "local", "--local-hosts", "1", "--sessions-per-host", "2", "--model", "classic",
                       "--deepfake-model", "off", log_path=tmp_path / "server.log", startup_timeout=90,
                       env={"RAY_USAGE_STATS_ENABLED": "0"}) as server:
        deadline = time.monotonic() + 90
        while True:
            doc = server.health()
            hosts = doc["cluster"]["hosts"]
            if hosts and all(h["ready"] for h in hosts):
                break
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        assert len(hosts) == 1 and hosts[0]["capacity"] == 2 and doc["max_sessions"] == 2
        assert doc["swapper"] == "classic"
    log = (tmp_path / "server.log").read_text()
    assert "started a local cluster" in log and "Traceback" not in log, log[-3000:]
