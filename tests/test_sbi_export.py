"""Self-Blended Images' released EfficientNet-B4 as a swapwatch detector: the official checkpoint layout, strict
loading, agreement with an independent restatement of SBI's Detector and preprocessing (crop region resized to
380x380, RGB, x/255, softmax[:, 1]), the crop geometry, `swapwatch export sbi` through the real command line with
parity, the folder running in `swapwatch detect`, a wrong export failing parity, and one-line errors for files
that are not SBI's format.

The checkpoint is a seeded random stand-in in the official format (tests/fixtures_sbi.py), exported once per
module: the tests check machinery and numerics, never detection quality.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cli_util import assert_one_line_error, swapwatch_cmd
from fixtures_deepfakebench import image_like
from fixtures_sbi import build_checkpoint, reference_probability
from swapwatch.engines.deepfake import DetectorInfo
from swapwatch.engines.faces import estimate_alignment
from swapwatch.engines.runtime import read_image
from swapwatch.errors import ModelError
from swapwatch.export import sbi
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, check_parity, run_onnx

WINDOW = 4

# (key, shape) read off efficientnet_pytorch 0.7.1's B4 under SBI's Detector.net.
ANCHORS = {
    "net._conv_stem.weight": (48, 3, 3, 3),  # the package's own "same"-padded stem (DeepfakeBench replaces it)
    "net._bn0.running_var": (48,),
    "net._blocks.0._depthwise_conv.weight": (48, 1, 3, 3),
    "net._blocks.0._se_reduce.weight": (12, 48, 1, 1),
    "net._blocks.31._project_conv.weight": (448, 2688, 1, 1),
    "net._conv_head.weight": (1792, 448, 1, 1),
    "net._fc.weight": (2, 1792),
    "net._fc.bias": (2,),
}
N_KEYS = 706


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, nn.Module]:
    """FFraw.tar in the released format (70 MB, like the real one) and its reference Detector."""
    pytest.importorskip("efficientnet_pytorch", reason="pip install 'swapwatch[detectors]' for EfficientNet-B4")
    return build_checkpoint(tmp_path_factory.mktemp("sbi") / "FFraw.tar", seed=7)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    """The one export of the module, through the real command line."""
    path, _ = checkpoint
    out = tmp_path_factory.mktemp("detector_sbi")
    result = swapwatch_cmd("export", "sbi", "--checkpoint", str(path), "--output-dir", str(out),
                           "--window", str(WINDOW))
    assert result.returncode == 0, result.stderr
    assert "sbi vs PyTorch: scorer: features max abs" in result.stdout and "NONCOMMERCIAL" in result.stdout
    return out


@pytest.fixture(scope="module")
def scorer(checkpoint) -> sbi.SBIScorer:
    return sbi.load_sbi(checkpoint[0])


def sbi_faces(crops_bgr: np.ndarray, columns: int = sbi.CROP.columns) -> np.ndarray:
    """What SBI feeds its network for the region our crop holds: the middle ``columns`` columns cv2.resize'd
    to 380x380 (bilinear), RGB. Float, where SBI resizes uint8: the comparison is about the graph's arithmetic."""
    left = (crops_bgr.shape[2] - columns) // 2
    region = crops_bgr[:, :, left:left + columns].astype(np.float32)
    size = (crops_bgr.shape[1], crops_bgr.shape[1])
    return np.stack([cv2.resize(c, size, interpolation=cv2.INTER_LINEAR)[..., ::-1] for c in region])


def as_input(crops_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(crops_bgr.transpose(0, 3, 1, 2), dtype=np.float32)


def reference_logits(ref: nn.Module, faces_rgb: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        two = ref.eval()(torch.from_numpy(np.ascontiguousarray(faces_rgb.transpose(0, 3, 1, 2))) / 255.0)
    return (two[:, 1] - two[:, 0]).numpy()


# ---- the official format and strict loading -----------------------------------------------------------------


def test_fixture_has_the_released_layout(checkpoint):
    path, ref = checkpoint
    obj = torch.load(path, map_location="cpu", weights_only=True)  # what SBI's scripts torch.load
    assert set(obj) == {"model", "optimizer", "epoch"} and obj["epoch"] == 99
    state = obj["model"]
    assert len(state) == N_KEYS and all(k.startswith("net.") for k in state)
    for key, shape in ANCHORS.items():
        assert tuple(state[key].shape) == shape, key
    assert set(obj["optimizer"]) == {"state", "param_groups"} and obj["optimizer"]["param_groups"][0]["rho"] == 0.05


def test_strict_load_matches_sbis_detector(checkpoint, scorer):
    """Key for key into SBI's Detector; on SBI's own input the logits and probability are SBI's."""
    path, ref = checkpoint
    assert scorer.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(scorer.state_dict()[key], value), key
    crops = image_like(2, sbi.RESOLUTION, seed=11)
    with torch.inference_mode():
        features, logits = scorer(torch.from_numpy(as_input(crops)))
    faces = sbi_faces(crops)
    np.testing.assert_allclose(logits.numpy(), reference_logits(ref, faces), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), reference_probability(ref, faces), atol=1e-5)
    assert features.shape == (2, sbi.FEATURE_DIM)


def test_stretch_is_cv2_resize_of_the_region(scorer):
    crops = image_like(2, sbi.RESOLUTION, seed=4)
    with torch.inference_mode():
        got = scorer.preprocess(torch.from_numpy(as_input(crops))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got * 255.0, sbi_faces(crops), atol=1e-3)


def test_crop_geometry_arithmetic():
    """The region (box x 1.25) is 97.9 x 140.5 in the 112-px layout: the crop covers its height, and its width
    is 264 of the crop's 380 columns; a square box needs no stretch."""
    assert sbi.CROP.region == pytest.approx((97.875, 140.5))
    assert sbi.CROP.face_scale == pytest.approx(112 / 140.5) and sbi.CROP.box_centre == (55.5, 65.4)
    assert sbi.CROP.columns == 264
    assert sbi.CropGeometry(box_size=(100.0, 100.0)).columns == sbi.RESOLUTION
    with pytest.raises(ValueError, match="at least as tall"):
        sbi.CropGeometry(box_size=(120.0, 100.0))


def test_crop_geometry_is_sbis_region_on_our_landmarks(exported, detector, face_photos, clips):
    """Re-measured: on YuNet's faces in the shared assets, SBI's region (the box grown by 1/8 per side) lands
    where the geometry says in the exported folder's crop: centred, as tall as the crop, ``columns`` wide
    (medians)."""
    from swapwatch.engines.runtime import iter_video

    geometry = sbi.CROP
    template = DetectorInfo.read(exported / "detector.json").template  # the crop the runtime makes
    images = [read_image(p) for p in face_photos]
    for clip in (c for c in clips if c.name.startswith("grid_")):
        images += [frame.image for i, frame in zip(range(31), iter_video(clip)) if i % 15 == 0]
    rows = []
    for image in images:
        for face in detector.detect(image):
            m = estimate_alignment(np.asarray(face.landmarks, np.float64), template)
            x0, y0, x1, y1 = (float(v) for v in face.box)
            scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
            centre = m[:, :2] @ np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + m[:, 2]
            grow = 1 + 2 * sbi.MARGIN
            rows.append([*centre, grow * (x1 - x0) * scale, grow * (y1 - y0) * scale])
    assert len(rows) >= 20
    cx, cy, width, height = np.median(np.array(rows), axis=0)
    size = geometry.resolution
    assert abs(cx - size / 2) < 0.02 * size and abs(cy - size / 2) < 0.02 * size
    assert abs(height - size) < 0.02 * size and abs(width - geometry.columns) < 0.02 * size


# ---- the exported folder ------------------------------------------------------------------------------------


def test_exported_folder_contract_and_parity(checkpoint, exported):
    path, ref = checkpoint
    meta = json.loads((exported / "detector.json").read_text())
    assert meta["format"] == sbi.FORMAT and meta["graphs_only"] is True
    assert meta["crop_size"] == 380 and meta["window"] == WINDOW and meta["threshold"] == 0.5
    assert meta["feature_dim"] == 1792 and meta["crop"]["stretched_columns"] == sbi.CROP.columns
    assert meta["face_scale"] == pytest.approx(112 / (1.25 * sbi.BOX_SIZE[1]))
    assert meta["crop_centre"] == list(sbi.BOX_CENTRE)
    assert meta["input"]["scale"] == "x/255" and meta["input"]["resolution"] == 380
    assert set(meta["parity"]) == {"scorer", "head"}
    assert meta["parity"]["scorer"]["outputs"]["features"]["cosine"] >= 0.99999
    assert max(o["rel_error"] for p in meta["parity"].values() for o in p["outputs"].values()) <= 1e-4
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256((exported / name).read_bytes()).hexdigest() == digest
    source = meta["source"]
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and source["epoch"] == 99
    assert source["checkpoint"] == "FFraw.tar" and "mapooon/SelfBlendedImages" in source["release"]
    assert "NONCOMMERCIAL RESEARCH USE ONLY" in meta["licence"] and "derivative" in meta["licence"]
    # The ONNX scorer against the independent reference (not only against our own PyTorch module).
    crops = image_like(3, 380, seed=12)
    _, logits = run_onnx(exported / "scorer.onnx", [(as_input(crops),)])[0]
    faces = sbi_faces(crops)
    np.testing.assert_allclose(logits, reference_logits(ref, faces), rtol=1e-4, atol=2e-3)


def test_detect_runs_the_folder_on_a_grid_clip(exported, clips):
    """`swapwatch detect --model DIR` loads the folder and scores a real clip (numbers: random weights)."""
    clip = next(c for c in clips if c.name.startswith("grid_"))
    result = swapwatch_cmd("detect", str(clip), "--model", str(exported), "--max-frames", "10", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] in ("REAL", "FAKE") and doc["model"]["window"] == WINDOW
    assert len(doc["tracks"]) == 1 and doc["tracks"][0]["frames"] == 10 and len(doc["windows"]) == 10
    assert "Self-Blended Images" in doc["model"]["note"] and doc["model"]["demonstration"] is False


def test_a_wrong_export_fails_parity(scorer, exported, tmp_path):
    """A graph whose stem weights are 5% off, or a scorer whose BatchNorm statistics drifted, is refused."""
    import onnx
    from onnx import numpy_helper

    inputs = [(as_input(image_like(1, 380, seed=2)),)]
    model = onnx.load(str(exported / "scorer.onnx"))
    (stem,) = [t for t in model.graph.initializer if tuple(t.dims) == (48, 3, 3, 3)]
    stem.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(stem) * np.float32(1.05), stem.name))
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    with pytest.raises(ModelError, match=r"parity check failed: wrong\.onnx vs PyTorch: FAIL.*features: "):
        check_parity(scorer, tmp_path / "wrong.onnx", inputs, tolerance=DETECTOR_TOLERANCE)
    bn = scorer.net._blocks[10]._bn1
    with torch.no_grad():
        bn.running_var.mul_(1.2)
    try:
        with pytest.raises(ModelError, match="parity check failed: scorer.onnx vs PyTorch: FAIL"):
            check_parity(scorer, exported / "scorer.onnx", inputs, tolerance=DETECTOR_TOLERANCE)
    finally:
        with torch.no_grad():
            bn.running_var.div_(1.2)


# ---- what is refused ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released(checkpoint) -> dict:
    return torch.load(checkpoint[0], map_location="cpu", weights_only=True)


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"does not match SBI's Detector \(EfficientNet-B4, 2 classes; 706 tensors under 'net\.'\): "
                r"1 missing keys \(net\._blocks\.5\._bn1\.running_var\)"),
    ("unexpected", r"1 unexpected keys \(net\.head\.extra\.weight\)"),
    ("shape", r"shape mismatches \(net\._fc\.weight: checkpoint \(3, 1792\) vs model \(2, 1792\)\)"),
    ("no-prefix", r"706 missing keys \(net\._conv_stem\.weight, .*706 unexpected keys \(_conv_stem\.weight"),
    ("bare-state-dict", r"not an SBI checkpoint: no 'model' entry \(keys: 'net\._conv_stem\.weight'.*src/train_sbi"),
    ("deepfakebench", r"no 'model' entry .*looks like a DeepfakeBench state_dict"),
    ("list", r"not an SBI checkpoint: it holds a list"),
    ("model-not-a-state-dict", r"its 'model' entry is a str, not named tensors"),
])
def test_wrong_key_sets_are_named(released, tmp_path, case, pattern):
    model = dict(released["model"])
    obj: object = {**released, "model": model}
    if case == "missing":
        del model["net._blocks.5._bn1.running_var"]
    elif case == "unexpected":
        model["net.head.extra.weight"] = torch.zeros(1)
    elif case == "shape":
        model["net._fc.weight"] = torch.zeros(3, 1792)
    elif case == "no-prefix":
        obj = {"model": {k[len("net."):]: v for k, v in model.items()}}
    elif case == "bare-state-dict":
        obj = model
    elif case == "deepfakebench":
        obj = {"backbone.efficientnet._conv_stem.weight": torch.zeros(48, 3, 3, 3)}
    elif case == "list":
        obj = [1, 2]
    else:
        obj = {"model": "weights"}
    with pytest.raises(ModelError, match=pattern):
        sbi.load_sbi(_save(tmp_path / "bad.tar", obj))


def test_wrong_files_are_refused(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "module.tar")  # a pickled module: never unpickled
    with pytest.raises(ModelError, match=r"cannot read SBI checkpoint module\.tar"):
        sbi.load_sbi(tmp_path / "module.tar")
    (tmp_path / "notes.tar").write_text("not a checkpoint")
    with pytest.raises(ModelError, match=r"cannot read SBI checkpoint notes\.tar"):
        sbi.load_sbi(tmp_path / "notes.tar")
    with pytest.raises(ModelError, match="SBI checkpoint not found"):
        sbi.load_sbi(tmp_path / "absent.tar")


def test_command_line_errors_are_one_line(released, tmp_path):
    model = {k: v for k, v in released["model"].items() if k != "net._fc.bias"}
    bad = _save(tmp_path / "FFc23.tar", {"model": model, "epoch": 3})
    result = swapwatch_cmd("export", "sbi", "--checkpoint", str(bad), "--output-dir", str(tmp_path / "out"))
    assert_one_line_error(result, "FFc23.tar does not match SBI's Detector")
    assert "1 missing keys (net._fc.bias)" in result.stderr and not (tmp_path / "out" / "detector.json").exists()


def test_missing_efficientnet_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_pytorch", None)  # makes the import fail
    with pytest.raises(ModelError, match=r"SBI's EfficientNet-B4 .*efficientnet-pytorch package.*pip install"):
        sbi.build_network()


# ---- registry and command line ------------------------------------------------------------------------------


def test_registry_entries_install_and_cli_defaults(checkpoint, capsys):
    from swapwatch.cli import main
    from swapwatch.commands.export import SBITarget
    from swapwatch.engines.runtime import LocalSource, ensure_model, get_entry

    for name, filename, drive in (("sbi-effnb4", "FFraw.tar", "12sLyqBp0VFwdpA-oZLdIOkOTkz_ZnIhV"),
                                  ("sbi-effnb4-c23", "FFc23.tar", "1X0-NYT8KPursLZZdxduRQju6E52hauV0")):
        entry = get_entry(name)
        assert entry.user_provided and entry.task == "deepfake-detection"
        assert "NONCOMMERCIAL RESEARCH USE ONLY" in entry.licence and entry.homepage == sbi.HOMEPAGE
        (f,) = entry.files
        assert f.filename == filename and f.sha256 is None  # SBI publishes no hashes
        assert isinstance(f.source, LocalSource) and drive in f.source.hint
        assert f"swapwatch models install {name} FILE" in f.source.hint
    assert SBITarget.registry == (sbi.REGISTRY_NAME, sbi.REGISTRY_FILE)
    assert SBITarget.defaults == {"window": sbi.DEFAULT_WINDOW, "threshold": sbi.DEFAULT_THRESHOLD}
    # Without --checkpoint, the registry's file: absent, the error says where it comes from.
    assert main(["export", "sbi", "--output-dir", "unused"]) != 0
    err = capsys.readouterr().err
    assert "FFraw.tar must be provided by you" in err and "swapwatch models install sbi-effnb4 FILE" in err
    assert main(["models", "install", "sbi-effnb4", str(checkpoint[0])]) == 0
    installed = ensure_model("sbi-effnb4")["FFraw.tar"]
    assert installed.read_bytes() == checkpoint[0].read_bytes()
    assert main(["export", "sbi", "--output-dir", "unused", "--window", "0"]) != 0  # found, then refused
    assert "window must be >= 1" in capsys.readouterr().err
