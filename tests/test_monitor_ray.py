"""`swapwatch monitor --ray`: many streams at once, one Ray task per stream, on a real two-node Ray cluster.

The cluster runs on this machine (``ray.cluster_utils.Cluster``: a head and one more node, 1 CPU each), so
tasks really are placed on two raylets; the commands run in-process through the CLI entry and connect to it by
its address, as a user would with ``--ray HOST:PORT``. Streams are the shared talking-head clips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_util import assert_one_line_error

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before Ray is imported: nothing leaves the machine
ray = pytest.importorskip("ray")

FAST = ["--duration", "2"]  # 2 s of video: the default model's first verdict comes at 1.52 s


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def node_ids(cluster) -> set[str]:
    return {n.node_id for n in cluster.list_all_nodes()}


@pytest.fixture(scope="module")
def three(clips) -> list[str]:
    return [str(p) for p in clips if p.suffix == ".mpg"][:3]


def monitor(capsys, *argv: str) -> tuple[int, list[dict], str]:
    """``swapwatch monitor ARGV`` in-process through the CLI entry: exit code, stdout JSON lines, stderr."""
    from swapwatch.cli import main

    rc = main(["monitor", *argv])
    captured = capsys.readouterr()
    # Ray may relay a worker's own output to the driver's stdout; the command's lines are the JSON objects.
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return rc, lines, captured.err


def test_three_streams_on_two_nodes(cluster, node_ids, three, capsys):
    rc, lines, err = monitor(capsys, "--ray", cluster.address, "--json", *three, *FAST)
    assert rc == 0, err
    *messages, total = lines
    assert all(m["stream"] in three for m in messages)
    summaries = {m["stream"]: m for m in messages if m["type"] == "summary"}
    assert set(summaries) == set(three)
    for stream, s in summaries.items():
        assert s["source"] == stream and s["frames"] == 51 and s["tracks"] == 1 and s["node"] in node_ids
        # each stream's events come before its own summary, and are counted in it
        own = [m for m in messages if m["stream"] == stream]
        assert own[-1] is s and s["verdict_changes"] == sum(m["type"] == "verdict" for m in own) >= 1
    assert {s["node"] for s in summaries.values()} == node_ids  # SPREAD: the tasks ran on both nodes
    assert all(set(m) == {"type", "track_id", "t", "verdict", "score", "stream"}
               for m in messages if m["type"] == "verdict")
    assert total["type"] == "cluster_summary" and total["streams"] == 3 and total["failed"] == 0
    assert total["nodes"] == 2 and total["frames"] == 153
    assert total["verdict_changes"] == sum(s["verdict_changes"] for s in summaries.values())


def test_a_missing_file_fails_its_stream_only(cluster, three, tmp_path, capsys):
    missing = str(tmp_path / "nope.mp4")
    rc, lines, err = monitor(capsys, "--ray", cluster.address, "--json", three[0], missing, three[1], *FAST,
                             "--deepfake-model", "off")
    assert_one_line_error(subprocess.CompletedProcess([], rc, "", err), "1 of 3 stream(s) failed")
    errors = [m for m in lines if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["stream"] == missing and "no such file" in errors[0]["error"]
    assert "\n" not in errors[0]["error"]
    assert {m["stream"] for m in lines if m["type"] == "summary"} == {three[0], three[1]}
    assert lines[-1]["type"] == "cluster_summary" and lines[-1]["failed"] == 1 and lines[-1]["streams"] == 3


def test_sources_file_and_text_output(cluster, three, tmp_path, capsys):
    listing = tmp_path / "streams.txt"
    listing.write_text(f"# cameras\n{three[0]}\n\n   \n  # {three[2]} is off today\n{three[1]}\n")
    from swapwatch.cli import main

    assert main(["monitor", "--ray", cluster.address, "--sources", str(listing), *FAST,
                 "--deepfake-model", "off"]) == 0
    out = capsys.readouterr().out.splitlines()
    for s in three[:2]:  # Ray may relay lines from a worker too: count the command's own
        assert sum(line.startswith(f"[{s}] {s}: 51 frames (0 dropped), 0 alert(s)") for line in out) == 1
    assert not any(three[2] in line for line in out)  # commented out
    assert out[-1].startswith("2 stream(s) on ") and "0 failed" in out[-1]


def test_several_sources_need_ray_and_the_local_path_never_imports_it(three, capsys):
    from swapwatch.cli import main

    rc = main(["monitor", three[0], three[1], "--json"])
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], rc, captured.out, captured.err), "need --ray")
    assert captured.out == ""
    # --help, and a real one-stream run, in a fresh interpreter: Ray is never loaded.
    code = ("import contextlib, io, sys; from swapwatch.cli import main\n"
            "h = io.StringIO()\n"
            "with contextlib.redirect_stdout(h), contextlib.suppress(SystemExit): main(['monitor', '--help'])\n"
            f"rc = main(['monitor', {three[0]!r}, '--json', '--duration', '0.5', '--deepfake-model', 'off'])\n"
            "text = ' '.join(h.getvalue().split())\n"
            "print(rc, 'ray' in sys.modules, '--ray ADDRESS' in text and 'shared filesystem' in text)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 False True"
