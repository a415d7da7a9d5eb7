"""Shared fixtures: where the shared assets and the real MTCNN wheel are, and an isolated model cache."""

from __future__ import annotations

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
