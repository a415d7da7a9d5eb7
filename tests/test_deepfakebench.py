"""DeepfakeBench's released Xception and EfficientNet-B4 as swapwatch frame scorers: the official key layout,
strict loading, agreement with an independent restatement of DeepfakeBench's networks and preprocessing, ONNX
export with parity, the mean-probability window head, loading the exported folder through DeepfakeDetector
and scoring a real clip, and clear errors for files that are not the official format.

Every checkpoint is a seeded random stand-in in the official format (tests/fixtures_deepfakebench.py): the
tests check machinery and numerics, never detection quality.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fixtures_deepfakebench import build_checkpoint, image_like, reference_probability, save_state
from swapwatch.engines.deepfake import DeepfakeDetector, DetectorInfo, WindowConfig, score_video, sigmoid
from swapwatch.engines.faces import Face, arcface_template
from swapwatch.errors import ModelError
from swapwatch.export import deepfakebench as dfb
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, check_parity, run_onnx

WINDOW = 4

# (key, shape) read off DeepfakeBench's training/networks/xception.py and efficientnetb4.py (+ efficientnet_pytorch).
XCEPTION_ANCHORS = {
    "backbone.conv1.weight": (32, 3, 3, 3),
    "backbone.conv2.weight": (64, 32, 3, 3),
    "backbone.block1.rep.0.conv1.weight": (64, 1, 3, 3),  # block1 starts without a ReLU
    "backbone.block1.rep.3.pointwise.weight": (128, 128, 1, 1),
    "backbone.block1.skip.weight": (128, 64, 1, 1),
    "backbone.block4.rep.7.pointwise.weight": (728, 728, 1, 1),  # middle flow: 3 units
    "backbone.block12.rep.1.pointwise.weight": (728, 728, 1, 1),  # exit flow: channels grow in the last unit
    "backbone.block12.rep.4.pointwise.weight": (1024, 728, 1, 1),
    "backbone.conv3.conv1.weight": (1024, 1, 3, 3),
    "backbone.conv4.pointwise.weight": (2048, 1536, 1, 1),
    "backbone.last_linear.weight": (2, 2048),
    "backbone.adjust_channel.0.weight": (512, 2048, 1, 1),  # built in every mode, unused by the detector
}
EFFNB4_ANCHORS = {
    "backbone.efficientnet._conv_stem.weight": (48, 3, 3, 3),  # DeepfakeBench's plain nn.Conv2d stem
    "backbone.efficientnet._blocks.0._depthwise_conv.weight": (48, 1, 3, 3),
    "backbone.efficientnet._blocks.0._se_reduce.weight": (12, 48, 1, 1),
    "backbone.efficientnet._blocks.31._project_conv.weight": (448, 2688, 1, 1),
    "backbone.efficientnet._conv_head.weight": (1792, 448, 1, 1),
    "backbone.last_layer.weight": (2, 1792),
}
ANCHORS = {"xception": XCEPTION_ANCHORS, "effnb4": EFFNB4_ANCHORS}
N_KEYS = {"xception": 283, "effnb4": 706}


def _needs(arch: str) -> None:
    if arch == "effnb4":
        pytest.importorskip("efficientnet_pytorch", reason="pip install 'swapwatch[detectors]' for EfficientNet-B4")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (path, reference detector), built lazily (each file is 70-90 MB, like the released ones)."""
    folder = tmp_path_factory.mktemp("deepfakebench")
    built: dict[str, tuple[Path, nn.Module]] = {}

    def get(arch: str) -> tuple[Path, nn.Module]:
        _needs(arch)
        if arch not in built:
            built[arch] = build_checkpoint(folder / dfb.ARCHS[arch].filename, arch, seed=len(built) + 3)
        return built[arch]

    return get


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """arch -> exported detector folder (Xception through the CLI, EfficientNet-B4 through the API)."""
    done: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in done:
            path, _ = checkpoints(arch)
            out = tmp_path_factory.mktemp(f"detector_{arch}")
            if arch == "xception":
                from swapwatch.cli import main

                assert main(["export", "deepfakebench", "--checkpoint", str(path), "--output-dir", str(out),
                             "--window", str(WINDOW)]) == 0
            else:
                dfb.export_deepfakebench(path, out, window=WINDOW)
            done[arch] = out
        return done[arch]

    return get


def _as_input(crops_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(crops_bgr.transpose(0, 3, 1, 2), dtype=np.float32)


# ---- the official format ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["xception", "effnb4"])
def test_fixture_checkpoints_have_the_released_layout(checkpoints, arch):
    path, _ = checkpoints(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == N_KEYS[arch] and all(k.startswith("backbone.") for k in state)
    for key, shape in ANCHORS[arch].items():
        assert tuple(state[key].shape) == shape, key
    assert not any("._fc." in k for k in state)  # DeepfakeBench replaced efficientnet's _fc with Identity


@pytest.mark.parametrize("arch", ["xception", "effnb4"])
def test_strict_load_matches_deepfakebench_forward(checkpoints, arch):
    """Our network + preprocessing on BGR crops == DeepfakeBench's network on its RGB, ToTensor + Normalize input."""
    path, ref = checkpoints(arch)
    scorer = dfb.load_deepfakebench(path)  # arch read from the keys
    assert scorer.arch == arch and scorer.resolution == 256
    crops = image_like(2, 256, seed=11)
    with torch.inference_mode():
        features, logits = scorer(torch.from_numpy(_as_input(crops)))
        head = dfb.mean_head(scorer, WINDOW)
        frame = head.frame_logits(features)
    expected = reference_probability(ref, crops)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), expected, atol=1e-5)
    assert features.shape == (2, scorer.feature_dim)
    np.testing.assert_allclose(frame.numpy(), logits.numpy(), atol=1e-4)  # the head scores frames as the scorer


# ---- export and the detector folder -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["xception", "effnb4"])
def test_exported_folder_contract_and_parity(checkpoints, exported, arch):
    path, ref = checkpoints(arch)
    folder = exported(arch)
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["format"] == dfb.FORMAT and meta["arch"] == arch and meta["graphs_only"] is True
    assert meta["crop_size"] == 256 and meta["window"] == WINDOW and meta["threshold"] == 0.5
    assert meta["feature_dim"] == dfb.ARCHS[arch].feature_dim
    assert meta["face_scale"] == pytest.approx(1 / 1.3) and meta["crop_centre"] == [56.0, 56.0]
    assert max(meta["parity_max_abs_error"].values()) <= 1e-4  # the figure folders have always carried
    assert set(meta["parity"]) == {"scorer", "head"}
    assert meta["parity"]["scorer"]["outputs"]["features"]["cosine"] >= 0.99999
    assert max(o["rel_error"] for p in meta["parity"].values() for o in p["outputs"].values()) <= 1e-4
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert meta["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "CC BY-NC 4.0" in meta["licence"]
    # The ONNX scorer against the independent reference (not only against our own PyTorch module).
    crops = image_like(2, 256, seed=12)
    _, logits = run_onnx(folder / "scorer.onnx", [(_as_input(crops),)])[0]
    np.testing.assert_allclose(sigmoid(logits), reference_probability(ref, crops), atol=1e-4)


@pytest.mark.parametrize("arch", ["xception", "effnb4"])
def test_detector_load_scores_a_real_clip(exported, clips, detector, arch):
    """The folder plugs into DeepfakeDetector.load and score_video; each window is the mean frame probability."""
    det = DeepfakeDetector.load(exported(arch))
    assert det.info.feature_dim == dfb.ARCHS[arch].feature_dim and det.window == WINDOW
    clip = next(c for c in clips if c.name.startswith("grid_"))
    n = 6 if arch == "xception" else 4
    scores = score_video(clip, det, detector, max_frames=n)
    assert len(scores.tracks) == 1
    track = next(iter(scores.tracks.values()))
    frames = np.array(track.frame_probs)
    assert len(frames) == n and np.all((frames > 0) & (frames < 1))
    running = [frames[max(0, i - WINDOW + 1):i + 1].mean() for i in range(n)]
    np.testing.assert_allclose(track.window_probs, running, atol=1e-5)
    assert scores.score == pytest.approx(np.mean(running), abs=1e-5)
    assert scores.verdict in ("REAL", "FAKE")


def test_live_windows_strides_and_torch_agreement(exported, checkpoints):
    """Live score_faces: the same ring buffer and strides; PyTorch (no export) agrees with the ONNX folder."""
    path, _ = checkpoints("xception")
    onnx_det = DeepfakeDetector.load(exported("xception"), config=WindowConfig(min_window=2, score_stride=2))
    torch_det = dfb.load_torch_detector(path, window=WINDOW, config=WindowConfig(min_window=2, score_stride=2))
    assert torch_det.template.points[0].tolist() == onnx_det.template.points[0].tolist()
    rng = np.random.default_rng(5)
    lmk = arcface_template(112).points[0] * 1.6 + np.array([60.0, 40.0])
    out_onnx, out_torch, frame_probs = [], [], []
    for t in range(5):
        frame = rng.integers(0, 256, (300, 320, 3), dtype=np.uint8)
        face = Face(np.array([40.0, 20.0, 260.0, 280.0]), 0.9, lmk + rng.normal(0, 0.3, (5, 2)), track_id=7)
        out_onnx.append(onnx_det.score_faces(frame, [face], float(t))[7])
        out_torch.append(torch_det.score_faces(frame, [face], float(t))[7])
        frame_probs.append(onnx_det.frame_probability(7))
    # min_window 2, then every 2nd new feature: windows end at frames 1 and 3.
    assert [p is None for p in out_onnx] == [True, False, True, False, True]
    assert [p is None for p in out_torch] == [p is None for p in out_onnx]
    assert out_onnx[1] == pytest.approx(np.mean(frame_probs[:2]), abs=1e-5)
    assert out_onnx[3] == pytest.approx(np.mean(frame_probs[:4]), abs=1e-5)
    for a, b in zip(out_onnx, out_torch):
        if a is not None:
            assert a == pytest.approx(b, abs=1e-4)


def test_torch_backend_is_refused_for_a_graphs_only_folder(exported):
    with pytest.raises(ModelError, match="ONNX graphs only.*load_torch_detector"):
        DeepfakeDetector.load(exported("xception"), backend="torch")


def test_crop_is_deepfakebenchs_template(exported):
    """preprocess.py's img_align_crop(res=256, scale=1.3): ArcFace points (x+8) scaled to 256, margin added,
    shrunk back by 1/1.3."""
    template = DetectorInfo.read(exported("xception") / "detector.json").template
    dst = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                    [62.7299, 92.2041]])
    dst[:, 0] += 8.0
    dst *= 256 / 112
    margin = 256 * (1.3 - 1) / 2
    dst = (dst + margin) * 256 / (256 + 2 * margin)
    assert template.size == 256
    np.testing.assert_allclose(template.points[0], dst, atol=1e-6)


# ---- the window head ----------------------------------------------------------------------------------------


def test_mean_head_is_the_mean_frame_probability(tmp_path):
    g = torch.Generator().manual_seed(0)
    head = dfb.MeanProbabilityHead(torch.randn(6, generator=g), 0.3, window=5)
    feats = torch.randn(4, 5, 6, generator=g)
    feats[3] *= 200.0  # saturated frame logits (hundreds) must stay exact and finite
    mask = torch.tensor([[1.0] * 5, [0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1.0] * 5])
    with torch.inference_mode():
        out = head(feats, mask).double()
        z = head.frame_logits(feats).double()
    assert torch.isfinite(out).all()
    for i in range(4):
        valid = mask[i] > 0
        expected = torch.sigmoid(z[i][valid]).mean()
        assert torch.sigmoid(out[i]).item() == pytest.approx(expected.item(), abs=1e-6)
    path = dfb.export_head(head, tmp_path / "head.onnx")
    check_parity(head, path, dfb.head_parity_inputs(6, 5) + [(feats.numpy(), mask.numpy())],
                 tolerance=DETECTOR_TOLERANCE)


# ---- what is accepted and what is refused -------------------------------------------------------------------


@pytest.fixture(scope="module")
def xception_state(checkpoints) -> dict[str, torch.Tensor]:
    path, _ = checkpoints("xception")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("variant", ["ddp-prefix", "no-adjust-channel", "dropout-classifier", "nested"])
def test_documented_variants_load(xception_state, tmp_path, variant):
    state = dict(xception_state)
    if variant == "ddp-prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif variant == "no-adjust-channel":
        state = {k: v for k, v in state.items() if ".adjust_channel." not in k}
    elif variant == "dropout-classifier":  # backbone_config.dropout: last_linear = Sequential(Dropout, Linear)
        state = {k.replace("last_linear.", "last_linear.1."): v for k, v in state.items()}
    else:
        state = {"state_dict": state}
    scorer = dfb.load_deepfakebench(save_state(tmp_path / "x.pth", state))
    assert torch.equal(scorer.net.last_linear.weight, xception_state["backbone.last_linear.weight"])
    assert torch.equal(scorer.net.block12.rep[4].pointwise.weight,
                       xception_state["backbone.block12.rep.4.pointwise.weight"])


def _drop(state, key):
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"1 missing keys \(block5\.rep\.4\.pointwise\.weight\)"),
    ("shape", r"shape mismatches \(last_linear\.weight: checkpoint \(3, 2048\) vs model \(2, 2048\)\)"),
    ("unexpected", r"unexpected keys \(head\.extra\.weight\)"),
    ("partial-adjust", r"adjust_channel tensors are not the Xception network's.*adjust_channel\.1\.running_var"),
    ("unknown", r"not a DeepfakeBench Xception or EfficientNet-B4 state_dict.*pass --arch"),
])
def test_bad_state_dicts_are_named(xception_state, tmp_path, case, pattern):
    state = dict(xception_state)
    if case == "missing":
        state = _drop(state, "backbone.block5.rep.4.pointwise.weight")
    elif case == "shape":
        state["backbone.last_linear.weight"] = torch.zeros(3, 2048)
    elif case == "unexpected":
        state["backbone.head.extra.weight"] = torch.zeros(1)
    elif case == "partial-adjust":
        state = _drop(state, "backbone.adjust_channel.1.running_var")
    else:
        state = {"encoder.layer.weight": torch.zeros(2, 2)}
    with pytest.raises(ModelError, match=pattern):
        dfb.load_deepfakebench(save_state(tmp_path / "bad.pth", state))


def test_pickled_objects_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)  # a pickled module, not a state_dict
    with pytest.raises(ModelError, match=r"cannot read DeepfakeBench checkpoint whole_model\.pth \(it is not a "
                                         r"plain state_dict\)"):
        dfb.load_deepfakebench(path)
    with pytest.raises(ModelError, match="not found"):
        dfb.load_deepfakebench(tmp_path / "absent.pth")
    with pytest.raises(ModelError, match="unknown DeepfakeBench detector 'resnet34'"):
        dfb.load_deepfakebench(path, "resnet34")


def test_wrong_arch_is_explained(checkpoints):
    path, _ = checkpoints("effnb4")
    with pytest.raises(ModelError, match=r"does not match DeepfakeBench's xception .*look like DeepfakeBench's "
                                         r"effnb4, not xception"):
        dfb.load_deepfakebench(path, "xception")


def test_missing_efficientnet_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_pytorch", None)  # makes the import fail
    with pytest.raises(ModelError, match=r"efficientnet-pytorch package.*pip install 'swapwatch\[detectors\]'"):
        dfb.build_network("effnb4")


# ---- registry and command line ------------------------------------------------------------------------------


def test_registry_entries_and_cli_defaults(capsys):
    from swapwatch.cli import main
    from swapwatch.commands.export import DeepfakeBenchTarget
    from swapwatch.engines.runtime import UrlSource, get_entry

    for arch in dfb.ARCHS.values():
        entry = get_entry(arch.registry)
        assert entry.user_provided and entry.licence.startswith("CC BY-NC 4.0") and entry.task == "deepfake-detection"
        (f,) = entry.files
        assert f.filename == arch.filename and f.sha256 is None  # DeepfakeBench publishes no hashes
        assert isinstance(f.source, UrlSource)
        assert f.source.url == f"https://github.com/SCLBD/DeepfakeBench/releases/download/v1.0.1/{arch.filename}"
    assert set(DeepfakeBenchTarget.archs) == set(dfb.ARCHS)
    assert DeepfakeBenchTarget.defaults == {"window": dfb.DEFAULT_WINDOW, "threshold": dfb.DEFAULT_THRESHOLD,
                                            "resolution": dfb.RESOLUTION, "face_scale": dfb.FACE_SCALE}
    assert main(["export", "deepfakebench", "--output-dir", "unused"]) == 2
    assert "give --checkpoint FILE or --arch" in capsys.readouterr().err
