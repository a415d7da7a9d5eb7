"""Shared fixtures: where the shared assets and the real MTCNN wheel are, and an isolated model cache."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = Path(os.environ.get("SWAPWATCH_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
# The README's test command downloads the facenet-pytorch wheel here with pip (never installs it).
WHEEL_DIR = Path(os.environ.get("SWAPWATCH_TEST_WHEELS", REPO / ".cache" / "wheels"))
MTCNN_WHEEL = "facenet_pytorch-2.6.0-py3-none-any.whl"


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"shared assets folder not found at {SHARED_ASSETS}")
    return SHARED_ASSETS


@pytest.fixture(scope="session")
def face_photos(shared_assets) -> list[Path]:
    return sorted(p for p in (shared_assets / "faces").iterdir() if p.is_file())


@pytest.fixture(scope="session")
def clips(shared_assets) -> list[Path]:
    return sorted(p for p in (shared_assets / "videos").iterdir() if p.is_file())


@pytest.fixture(scope="module")
def clip(clips) -> list:
    """A GRID clip's frames (BGR, 75 frames, 360x288, 25 fps: a frontal talking head); modules that need another
    clip define their own ``clip``."""
    from test_webrtc import decode_clip

    return decode_clip(next(c for c in clips if c.name.startswith("grid_")))


@pytest.fixture(scope="session")
def source_photo(face_photos) -> Path:
    """The colour portrait with one clear frontal face, the usual swap source of the tests."""
    return next(p for p in face_photos if p.name == "max_Chris.jpeg")


@pytest.fixture(scope="session")
def yunet_onnx(shared_assets) -> Path:
    return shared_assets / "models" / "face_detection_yunet_2023mar.onnx"


@pytest.fixture(scope="module")
def detector(yunet_onnx):
    """YuNet with its defaults on ONNX Runtime's CPU provider, the detector the server and clients use here."""
    from swapwatch.engines.faces import YuNetDetector

    return YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="session")
def t1_jpg() -> Path:
    """InsightFace's bundled group photo with six faces."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    assert path.is_file(), f"insightface no longer ships {path}"
    return path


@pytest.fixture(scope="session")
def mtcnn_wheel() -> Path:
    path = WHEEL_DIR / MTCNN_WHEEL
    if not path.is_file():
        pytest.skip(f"{path} missing: run `pip download --no-deps -d {WHEEL_DIR} facenet-pytorch==2.6.0`")
    return path


@pytest.fixture(scope="session")
def mtcnn_weights_dir(mtcnn_wheel, tmp_path_factory) -> Path:
    """pnet.pt, rnet.pt, onet.pt extracted from the real wheel."""
    out = tmp_path_factory.mktemp("mtcnn")
    with zipfile.ZipFile(mtcnn_wheel) as zf:
        for name in ("pnet.pt", "rnet.pt", "onet.pt"):
            (out / name).write_bytes(zf.read(f"facenet_pytorch/data/{name}"))
    return out


@pytest.fixture(autouse=True)
def isolated_model_cache(tmp_path_factory, monkeypatch):
    """Every test gets a private SWAPWATCH_HOME so nothing touches the user's cache."""
    home = tmp_path_factory.mktemp("swapwatch_home")
    monkeypatch.setenv("SWAPWATCH_HOME", str(home))
    mirror = [str(SHARED_ASSETS / "models"), str(WHEEL_DIR)]
    monkeypatch.setenv("SWAPWATCH_MODEL_MIRROR", os.pathsep.join(mirror))
    yield home


class _SecretWatch(logging.Handler):
    """Every log record of the run from swapwatch's and aiohttp's loggers (INFO and up), and every token and
    session id the in-process servers were given or made: at the end of the run no record may contain one
    (issue 17: "grep of a full test run's server logs finds no token and no full session id"). Servers run as
    subprocesses are checked by their own tests (test_server.py's access-log test)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.secrets: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a record that cannot format is not a secret leak
            pass


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_logs():
    from swapwatch.stream import security, session

    watch = _SecretWatch()
    loggers = [logging.getLogger(name) for name in ("swapwatch", "aiohttp")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(watch)
        lg.setLevel(min(lg.level or logging.INFO, logging.INFO))
    policy_init, session_init = security.AccessPolicy.__init__, session.Session.__init__

    def record_policy(self, token=None, *args, **kwargs):
        if token:
            watch.secrets.add(token)
        policy_init(self, token, *args, **kwargs)

    def record_session(self, session_id, *args, **kwargs):
        watch.secrets.add(session_id)
        session_init(self, session_id, *args, **kwargs)

    security.AccessPolicy.__init__, session.Session.__init__ = record_policy, record_session
    try:
        yield watch
    finally:
        security.AccessPolicy.__init__, session.Session.__init__ = policy_init, session_init
        for lg, level in zip(loggers, levels):
            lg.removeHandler(watch)
            lg.setLevel(level)
    leaks = [(s[:6] + "…", m[:200]) for m in watch.messages for s in watch.secrets if s in m]
    assert not leaks, f"{len(leaks)} log record(s) hold a token or a full session id: {leaks[:5]}"
