"""Detector training: dataset layouts, identity split, window sampling, AUC, and a tiny end-to-end run whose
interrupted-and-resumed twin ends with exactly the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from swapwatch.engines.deepfake import (
    FAKE, REAL, DataSpec, collect_items, dfdc_items, ffpp_items, folder_items, pack_windows, roc_auc,
    rotate_pairs, sample_window, split_identities, train,
)
from swapwatch.errors import InputError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")
    return path


# ---- layouts -------------------------------------------------------------------------------------------------


def test_ffpp_layout(tmp_path):
    root = tmp_path / "ffpp"
    for n in ("000", "001", "002"):
        _touch(root / "original_sequences/youtube/c23/videos" / f"{n}.mp4")
    _touch(root / "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4")
    _touch(root / "manipulated_sequences/FaceSwap/c23/videos/002_001.mp4")
    _touch(root / "manipulated_sequences/FaceSwap/c40/videos/001_000.mp4")  # other compression: ignored
    items = ffpp_items(root)
    assert [(i.path.name, i.label, i.identity) for i in items] == [
        ("000.mp4", REAL, "000"), ("001.mp4", REAL, "001"), ("002.mp4", REAL, "002"),
        ("000_003.mp4", FAKE, "000"), ("002_001.mp4", FAKE, "002")]
    with pytest.raises(InputError, match="not a FaceForensics"):
        ffpp_items(root, "c40")
    spec = DataSpec(layout="ffpp", real=(root,))
    assert len(collect_items(spec)) == 5


def test_dfdc_layout(tmp_path):
    part = tmp_path / "dfdc" / "dfdc_train_part_0"
    for name in ("aaa.mp4", "bbb.mp4", "ccc.mp4"):
        _touch(part / name)
    (part / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "REAL", "split": "train"},
        "bbb.mp4": {"label": "FAKE", "split": "train", "original": "aaa.mp4"},
        "ccc.mp4": {"label": "FAKE", "split": "train", "original": "zzz.mp4"},
        "missing.mp4": {"label": "REAL", "split": "train"},
    }))
    items = dfdc_items(tmp_path / "dfdc")
    assert [(i.path.name, i.label, i.identity) for i in items] == [
        ("aaa.mp4", REAL, "aaa"), ("bbb.mp4", FAKE, "aaa"), ("ccc.mp4", FAKE, "zzz")]
    (part / "metadata.json").write_text(json.dumps({"aaa.mp4": {"label": "MAYBE"}}))
    with pytest.raises(InputError, match="MAYBE"):
        dfdc_items(tmp_path / "dfdc")
    with pytest.raises(InputError, match="no DFDC"):
        dfdc_items(tmp_path / "nothing-here")


def test_folder_layout_identities(tmp_path):
    real = tmp_path / "real"
    _touch(real / "alice" / "a1.mp4")
    _touch(real / "alice" / "a2.png")
    _touch(real / "bob.mp4")
    _touch(real / "notes.txt")
    items = folder_items([real], REAL)
    assert [(i.path.name, i.identity) for i in items] == [("a1.mp4", "alice"), ("a2.png", "alice"), ("bob.mp4", "bob")]
    assert folder_items([real / "bob.mp4"], FAKE)[0].label == FAKE
    with pytest.raises(InputError):
        collect_items(DataSpec())


def test_identity_split_is_seeded_and_named_ids_win():
    ids = [f"id{i}" for i in range(8)]
    train1, val1 = split_identities(ids, val_fraction=0.25, seed=1)
    assert split_identities(ids, val_fraction=0.25, seed=1) == (train1, val1)
    assert len(val1) == 2 and not set(val1) & set(train1) and sorted(train1 + val1) == sorted(ids)
    assert split_identities(ids, val_identities=["id3"])[1] == ["id3"]
    with pytest.raises(InputError, match="unknown"):
        split_identities(ids, val_identities=["nobody"])


# ---- windows and metrics ------------------------------------------------------------------------------------


def test_sample_window_models_rate_changes_drops_and_short_windows():
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(300):
        idx = sample_window(75, 20, rng, min_window=6, max_rate=3.0)
        assert 6 <= len(idx) <= 20
        assert idx.min() >= 0 and idx.max() <= 74
        assert np.all(np.diff(idx) >= 0), "windows keep time order"
        lengths.add(len(idx))
    assert 20 in lengths and min(lengths) < 20
    a = sample_window(30, 20, np.random.default_rng(5))
    np.testing.assert_array_equal(a, sample_window(30, 20, np.random.default_rng(5)))
    feats, masks = pack_windows([np.ones((3, 2)), np.full((25, 2), 2.0)], 20)
    assert feats.shape == (2, 20, 2) and masks[0].sum() == 3 and masks[0, -3:].all() and masks[1].all()


def test_rotate_pairs_turns_each_pair_and_its_mask_together():
    """--rotate-pairs: a pair's real and fake crops and the fake's blend mask take the same quarter turn, so
    the map target still lies where the fake differs; over a batch all four turns occur."""
    rng = np.random.default_rng(0)
    n, size = 64, 16
    reals = rng.integers(0, 200, (n, size, size, 3)).astype(np.uint8)
    masks = np.zeros((n, size, size), np.float32)
    masks[:, 2:5, 9:14] = 1.0  # an off-centre patch: every turn moves it somewhere else
    fakes = reals + (masks[..., None] * 50).astype(np.uint8)
    crops = np.stack([reals, fakes], 1).reshape(-1, size, size, 3)
    turned, turned_masks = rotate_pairs(crops, masks, np.random.default_rng(1))
    assert turned.shape == crops.shape and turned_masks.shape == masks.shape
    changed = np.abs(turned[1::2].astype(int) - turned[0::2]).sum(-1) > 0
    np.testing.assert_array_equal(changed, turned_masks > 0)
    positions = {tuple(np.argwhere(m > 0)[0]) for m in turned_masks}
    assert len(positions) == 4
    for i in range(n):  # each crop is its own pair's crop turned by the turn its mask took
        k = next(k for k in range(4) if np.array_equal(np.rot90(masks[i], k), turned_masks[i]))
        np.testing.assert_array_equal(turned[2 * i], np.rot90(reals[i], k))
    same, none = rotate_pairs(crops, None, np.random.default_rng(1))
    np.testing.assert_array_equal(same, turned)
    assert none is None


def test_roc_auc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(y, s) == pytest.approx(expected)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


# ---- end to end ---------------------------------------------------------------------------------------------


def _two_clips_and_a_photo(assets: Path) -> list[Path]:
    """Media for the quick training runs: the second clip is the held-out identity (see _args)."""
    return [assets / "videos" / "grid_bbaf2n.mpg", assets / "videos" / "grid_brbk7n.mpg",
            assets / "faces" / "max_Bryan.png"]


def _args(out: Path, media: list[Path], *extra: str):
    from swapwatch.cli import build_parser

    argv = ["train-detector", "--data-real", *map(str, media), "--out", str(out), "--swapwatch-fakes",
            "--val-identities", media[1].stem, "--max-frames", "12", "--crop-size", "64", "--widths", "8,16,16,16",
            "--epochs", "2", "--pairs-per-epoch", "16", "--head-epochs", "1", "--head-windows", "64",
            "--head-renders", "1", "--seed", "3", "--no-progress", *extra]
    return argv, build_parser().parse_args(argv)


def test_training_end_to_end_and_resume_gives_the_same_model(shared_assets, tmp_path, capsys):
    import torch

    from swapwatch.cli import main
    from swapwatch.commands.train_detector import config_from_args
    from swapwatch.engines.deepfake import DeepfakeDetector
    from swapwatch.engines.faces import FaceTracker, KeyframeTracker, YuNetDetector
    from swapwatch.engines.runtime import iter_video

    media = [shared_assets / "videos" / "grid_bbaf2n.mpg", shared_assets / "videos" / "grid_brbk7n.mpg",
             shared_assets / "faces" / "max_Bryan.png", shared_assets / "faces" / "max_Chris.jpeg"]

    # Uninterrupted, through the command line.
    argv, _ = _args(tmp_path / "a", media)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "scorer epoch 2/2" in printed and "head epoch 1/1" in printed and "window AUC" in printed
    log = json.loads((tmp_path / "a" / "training_log.json").read_text())
    epochs = log["epochs"]
    assert [(e["stage"], e["epoch"]) for e in epochs] == [("scorer", 1), ("scorer", 2), ("head", 1)]
    assert all("frame_auc" in e for e in epochs[:2]) and "window_auc" in epochs[2]
    assert log["data"]["val_identities"] == ["grid_brbk7n"]
    info = json.loads((tmp_path / "a" / "detector.json").read_text())
    assert max(info["parity_max_abs_error"].values()) <= 1e-4

    # Interrupted after one epoch, then resumed with the same command.
    argv_b, args_b = _args(tmp_path / "b", media)
    config, spec = config_from_args(args_b)
    train(config, spec, stop_after=1, echo=lambda s: None)
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (tmp_path / "b" / "detector.pt").exists()
    assert main(argv_b + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    a = torch.load(tmp_path / "a" / "detector.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "detector.pt", weights_only=True)
    for part in ("scorer", "head"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name} differs after resume"

    # A resume with other settings is refused rather than silently mixing runs.
    argv_c, _ = _args(tmp_path / "b", media)
    argv_c[argv_c.index("--seed") + 1] = "4"
    assert main(argv_c + ["--resume"]) != 0
    assert "other settings" in capsys.readouterr().err

    # The trained folder loads and scores a clip.
    detector = DeepfakeDetector.load(tmp_path / "a")
    tracker = KeyframeTracker(YuNetDetector(shared_assets / "models" / "face_detection_yunet_2023mar.onnx",
                                            backend="onnxruntime", device="cpu"), FaceTracker())
    frames = []
    for frame in iter_video(media[1]):
        if frame.index >= 6:
            break
        frames.append((frame.image, tracker.process(frame.image, frame.time), frame.time))
    scores = detector.score_clip(frames)
    assert len(scores.tracks) == 1 and 0.0 <= scores.score <= 1.0


def test_pair_pool_highpass_and_region_map_train_and_resume_exactly(shared_assets, tmp_path, capsys):
    """A pooled run (pairs rendered once, batches drawn from the pool) with the high-pass input and the
    region-map loss trains, and an interrupted run resumed from its checkpoint ends bit-identical (the pool is
    rebuilt from the seed)."""
    import torch

    from swapwatch.cli import main
    from swapwatch.commands.train_detector import config_from_args

    media = _two_clips_and_a_photo(shared_assets)
    extra = ("--pair-pool", "32", "--highpass", "--region-map", "1.0")
    argv, _ = _args(tmp_path / "a", media, *extra)
    assert main(argv) == 0
    argv_b, args_b = _args(tmp_path / "b", media, *extra)
    config, spec = config_from_args(args_b)
    assert config.pair_pool == 32 and config.scorer_highpass and config.scorer_aux_map == 1.0
    train(config, spec, stop_after=1, echo=lambda s: None)
    assert main(argv_b + ["--resume"]) == 0
    capsys.readouterr()
    a = torch.load(tmp_path / "a" / "detector.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "detector.pt", weights_only=True)
    assert a["scorer_config"]["highpass"] and a["scorer_config"]["aux_map"]
    for name in a["scorer"]:
        assert torch.equal(a["scorer"][name], b["scorer"][name]), name


def test_local_evidence_trains_and_needs_the_region_map(shared_assets, tmp_path, capsys):
    """A run with local evidence and the blend-boundary map target trains, exports and loads (the head reads
    K features); without the region map it is refused with one clear error."""
    import torch

    from swapwatch.cli import main
    from swapwatch.engines.deepfake import DeepfakeDetector

    media = _two_clips_and_a_photo(shared_assets)
    extra = ("--pair-pool", "32", "--region-map", "1.0", "--region-target", "boundary", "--widths", "8,16,16",
             "--local-evidence", "4")
    assert main(_args(tmp_path / "local", media, *extra)[0]) == 0
    saved = torch.load(tmp_path / "local" / "detector.pt", weights_only=True)
    assert saved["scorer_config"]["local_topk"] == 4 and saved["head_config"]["feature_dim"] == 4
    log = json.loads((tmp_path / "local" / "training_log.json").read_text())
    assert log["config"]["region_target"] == "boundary"
    detector = DeepfakeDetector.load(tmp_path / "local", backend="onnxruntime")
    feats, _ = detector.frame_features(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8))
    assert feats.shape == (2, 4) and (np.diff(feats, axis=1) <= 0).all()  # sorted cell logits
    assert main(_args(tmp_path / "bad", media, "--local-evidence", "4")[0]) == 2  # no map to score
    assert "--region-map" in capsys.readouterr().err
    # more cells asked for than a 64 px crop's map has (8 x 8 after three stages): one line, before any data
    assert main(_args(tmp_path / "bad", media, *extra[:-1], "65")[0]) == 2
    err = capsys.readouterr().err
    assert "local_topk must lie in [1, 64]" in err and "Traceback" not in err


def test_yunet_stem_trains_from_yunets_weights(shared_assets, tmp_path, capsys):
    """--stem yunet starts the scorer's first layers from YuNet's real weights (the same file that finds the
    faces), trains them at a tenth of the learning rate, and the folder loads; with --highpass it is refused."""
    import onnx
    import torch
    from onnx import numpy_helper

    from swapwatch.cli import main
    from swapwatch.engines.deepfake import DeepfakeDetector

    media = _two_clips_and_a_photo(shared_assets)
    extra = ("--pair-pool", "32", "--region-map", "1.0", "--stem", "yunet", "--widths", "16",
             "--local-evidence", "4")
    assert main(_args(tmp_path / "y", media, *extra)[0]) == 0
    saved = torch.load(tmp_path / "y" / "detector.pt", weights_only=True)
    assert saved["scorer_config"]["stem"] == "yunet"
    yunet = onnx.load(str(shared_assets / "models" / "face_detection_yunet_2023mar.onnx")).graph
    first = numpy_helper.to_array(next(t for t in yunet.initializer
                                       if t.name == next(n for n in yunet.node if n.op_type == "Conv").input[1]))
    trained = saved["scorer"]["stem.layers.0.weight"].numpy()
    # Started from YuNet's filters and moved only a little (a tenth of the learning rate, 4 steps).
    assert np.abs(trained - first).max() < 0.1 * np.abs(first).max()
    DeepfakeDetector.load(tmp_path / "y", backend="onnxruntime")
    assert main(_args(tmp_path / "bad", media, *extra, "--highpass")[0]) == 2
    assert "highpass" in capsys.readouterr().err


def test_frozen_yunet_stem_and_frame_mean_head(shared_assets, tmp_path):
    """--stem-lr-scale 0 keeps YuNet's filters exactly; --head mean scores a window by the mean of its frame
    logits (no GRU, no head epochs), through the exported graphs as well."""
    import torch

    from swapwatch.cli import main
    from swapwatch.engines.deepfake import DeepfakeDetector
    from swapwatch.export.deepfake import FrameScorer, ScorerConfig

    media = _two_clips_and_a_photo(shared_assets)
    extra = ("--pair-pool", "32", "--region-map", "1.0", "--stem", "yunet", "--widths", "16",
             "--local-evidence", "4", "--stem-lr-scale", "0", "--head", "mean")
    assert main(_args(tmp_path / "f", media, *extra)[0]) == 0
    saved = torch.load(tmp_path / "f" / "detector.pt", weights_only=True)
    fresh = FrameScorer(ScorerConfig(**saved["scorer_config"]))
    fresh.load_stem(shared_assets / "models" / "face_detection_yunet_2023mar.onnx")
    for name, value in fresh.stem.state_dict().items():
        torch.testing.assert_close(saved["scorer"][f"stem.{name}"], value, rtol=0, atol=0)
    assert saved["head_config"]["frame_mean"] and not any(k.startswith("grus.") for k in saved["head"])
    log = json.loads((tmp_path / "f" / "training_log.json").read_text())
    assert not [e for e in log["epochs"] if e["stage"] == "head"], "nothing to train in a frame-mean head"
    detector = DeepfakeDetector.load(tmp_path / "f", backend="onnxruntime")
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    feats, logits = detector.frame_features(crops)
    window, mask = pack_windows([feats], detector.window)
    np.testing.assert_allclose(detector.window_logits(window, mask), [logits.mean()], atol=1e-5)


def test_vary_mask_top_reaches_the_training_renders_only(shared_assets, yunet_onnx, tmp_path):
    """--vary-mask-top changes the pairs a run trains on (so its weights), not the clips it validates on (so
    runs with and without it are compared on the same clips)."""
    import torch

    from swapwatch.cli import main
    from swapwatch.commands.train_detector import config_from_args
    from swapwatch.engines.deepfake import DetectorTrainer, collect_items, prepare_data

    media = _two_clips_and_a_photo(shared_assets)
    runs = {"plain": ("--pair-pool", "32"), "top": ("--pair-pool", "32", "--vary-mask-top")}
    for name, extra in runs.items():
        assert main(_args(tmp_path / name, media, *extra)[0]) == 0
    logs = [json.loads((tmp_path / d / "training_log.json").read_text()) for d in runs]
    assert [log["config"]["vary_mask_top"] for log in logs] == [False, True]
    a, b = (torch.load(tmp_path / d / "detector.pt", weights_only=True)["scorer"] for d in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)

    trainers = []
    for name, extra in runs.items():
        config, spec = config_from_args(_args(tmp_path / name, media, *extra)[1])
        data = prepare_data(collect_items(spec), config, detector_model=yunet_onnx, echo=lambda s: None)
        trainers.append(DetectorTrainer(config, data, echo=lambda s: None))
    plain, top = trainers
    assert top.renderer.blender.config.top_cut == (0.0, 1.0) and plain.renderer.blender.config.top_cut is None
    assert top.val_renderer.blender.config.top_cut is None
    assert len(plain.val.crops) == len(top.val.crops) > 0
    for x, y in zip(plain.val.crops, top.val.crops):
        np.testing.assert_array_equal(x, y)
