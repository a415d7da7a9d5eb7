"""A fresh machine with no network: the default face detector ships inside the package, is verified by its
pinned sha256 on its way into an empty model cache, and every default command path runs without a download.

The commands run in a network namespace of their own (``unshare -rn``: no interface but a loopback that is
down) where this machine allows it, else with every proxy pointed at a closed loopback port; in both, any
attempt to fetch fails the command. No mirror is named and ``SWAPWATCH_HOME`` is empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from swapwatch.engines.runtime import ModelEntry, ModelFile, PackagedSource, REGISTRY, ensure_model, fetch, sha256_file
from swapwatch.errors import FetchError, ModelError

YUNET = REGISTRY["yunet-2023mar"]
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback here


class _NoNetwork(urllib.request.OpenerDirector):
    def open(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
        raise AssertionError("a default path tried the network")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty SWAPWATCH_HOME, no mirror, and an opener that fails the test on any network use."""
    monkeypatch.setenv("SWAPWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SWAPWATCH_MODEL_MIRROR", raising=False)
    monkeypatch.setattr(fetch, "default_opener", _NoNetwork)
    return tmp_path / "home"


def _entry(source: PackagedSource, sha256: str) -> ModelEntry:
    return ModelEntry(name="packaged-test", task="test", files=(ModelFile(YUNET.files[0].filename, source, sha256),),
                      licence="MIT", contract="bytes", homepage="https://example.invalid", description="test")


def test_yunet_ships_in_the_package_with_its_pinned_hash():
    (mf,) = YUNET.files
    assert isinstance(mf.source, PackagedSource) and mf.sha256
    shipped = mf.source.location()
    assert shipped.is_file() and shipped.stat().st_size < 300_000  # 232 KB: keep the package small
    assert sha256_file(shipped) == mf.sha256
    assert (shipped.parent / "LICENSE").is_file() and "MIT License" in (shipped.parent / "LICENSE").read_text()
    assert "upstream" in mf.source.describe() and "opencv_zoo" in mf.source.describe()


def test_empty_cache_gets_yunet_without_network(offline):
    paths = ensure_model("yunet-2023mar", progress=False)
    path = paths[YUNET.files[0].filename]
    assert path.is_file() and offline in path.parents and sha256_file(path) == YUNET.files[0].sha256


def test_a_packaged_file_is_still_checked_against_its_hash(offline):
    entry = _entry(YUNET.files[0].source, "0" * 64)  # the real file, a wrong pin
    with pytest.raises(FetchError, match="sha256 mismatch"):
        ensure_model(entry, progress=False)
    assert not any(p.is_file() for p in offline.rglob("*"))  # nothing unverified is left in the cache


def test_a_missing_packaged_file_says_to_reinstall(offline):
    entry = _entry(PackagedSource("yunet/not-there.onnx", "https://example.invalid"), "0" * 64)
    with pytest.raises(ModelError, match="reinstall swapwatch"):
        ensure_model(entry, progress=False)


def test_packaged_paths_stay_inside_the_weights_folder():
    for bad in ("", "/etc/passwd", "../registry.py", "yunet/../../x"):
        with pytest.raises(ValueError):
            PackagedSource(bad, "https://example.invalid")


# ---- the commands, as a new user runs them --------------------------------------------------------------


def _can_unshare() -> bool:
    exe = shutil.which("unshare")
    return bool(exe) and subprocess.run([exe, "-rn", "true"], capture_output=True).returncode == 0


def _offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("NO_PROXY", "SWAPWATCH_MODEL_MIRROR")}
    env.update(SWAPWATCH_HOME=str(home), HTTPS_PROXY=DEAD_PROXY, HTTP_PROXY=DEAD_PROXY, https_proxy=DEAD_PROXY,
               http_proxy=DEAD_PROXY, SWAPWATCH_PYPI_INDEX=f"{DEAD_PROXY}/simple")
    return env


def run_offline(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    prefix = ["unshare", "-rn"] if _can_unshare() else []
    return subprocess.run([*prefix, sys.executable, "-m", "swapwatch", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=_offline_env(home))


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fresh_home")


def test_faces_swap_and_detect_work_offline_from_an_empty_cache(fresh_home, face_photos, clips, tmp_path):
    frontal = next(p for p in face_photos if p.name == "max_Bryan.png")
    target = next(p for p in face_photos if p.name == "max_Chris.jpeg")
    faces = run_offline(fresh_home, "faces", str(frontal), "--json")
    assert faces.returncode == 0, faces.stderr
    assert len(json.loads(faces.stdout)["faces"]) == 1

    out = tmp_path / "swapped.png"
    swap = run_offline(fresh_home, "swap", "--source", str(frontal), "--target", str(target), "--output", str(out))
    assert swap.returncode == 0, swap.stderr
    assert out.is_file() and "classic" in swap.stderr  # no learned swapper in an empty cache: the weight-free one
    # A command's log lines read like its errors: no timestamps or logger names unless debugging.
    assert "swapwatch swap: warning: no learned swapper is installed" in swap.stderr, swap.stderr

    clip = next(p for p in clips if p.name.startswith("grid_"))
    detect = run_offline(fresh_home, "detect", str(clip), "--json", "--max-frames", "25")
    assert detect.returncode == 0, detect.stderr
    report = json.loads(detect.stdout)
    assert report["verdict"] in ("REAL", "FAKE") and report["settings"]["face_detector"] == "yunet"
    # The detector came from the package into the empty cache, verified.
    cached = fresh_home / "models" / "yunet-2023mar" / YUNET.files[0].filename
    assert sha256_file(cached) == YUNET.files[0].sha256


def test_serve_starts_offline_with_yunet(tmp_path):
    from browser_util import ServerProcess

    env = _offline_env(tmp_path / "home")
    env["SWAPWATCH_MODEL_MIRROR"] = ""  # ServerProcess adds to this process's environment
    log = tmp_path / "serve.log"
    with ServerProcess("--model", "classic", "--deepfake-model", "off", env=env, log_path=log) as server:
        health = server.health()
    assert health["status"] == "ok" and "yunet" in str(health["detector"]).lower()
    # The default log is about the server, not its requests: /health was polled, yet no access line; and the
    # server says when it stops.
    text = log.read_text()
    assert "GET /health" not in text and "aiohttp.access" not in text, text
    assert "swapwatch stopped" in text, text
