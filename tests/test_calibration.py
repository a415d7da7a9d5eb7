"""Cross-fitted calibration of the window logit (engines/deepfake/calibration.py, train-detector --calibrate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from swapwatch.engines.deepfake import fit_platt, identity_folds, sigmoid
from swapwatch.errors import InputError


def _balanced_log_loss(a: float, b: float, y: np.ndarray, x: np.ndarray, ridge: float) -> float:
    p = np.clip(sigmoid(a * x + b), 1e-12, 1 - 1e-12)
    nll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return 0.5 * nll[y == 1].mean() + 0.5 * nll[y == 0].mean() + 0.5 * ridge * (a - 1.0) ** 2


def test_platt_fit_is_the_minimum_of_the_balanced_log_loss():
    rng = np.random.default_rng(0)
    # Three times more fakes than reals (as in training: three fakes per real clip), overlapping scores.
    x = np.concatenate([rng.normal(-1.0, 1.5, 200), rng.normal(2.5, 2.0, 600)])
    y = np.concatenate([np.zeros(200), np.ones(600)])
    a, b = fit_platt(y, x)
    best = _balanced_log_loss(a, b, y, x, 1e-3)
    grid = [_balanced_log_loss(ga, gb, y, x, 1e-3) for ga in np.linspace(0.05, 3, 60) for gb in np.linspace(-4, 4, 81)]
    assert best <= min(grid) + 1e-9
    # Balanced weights: the 0.5 boundary does not drift towards the larger class.
    boundary = -b / a
    assert -1.0 < boundary < 2.5


def test_platt_fit_stays_finite_when_the_classes_separate():
    x = np.array([-3.0, -2.5, -2.0, 0.5, 1.0, 4.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    a, b = fit_platt(y, x)
    assert np.isfinite(a) and np.isfinite(b) and a > 0
    assert -2.0 < -b / a < 0.5  # the threshold falls in the gap
    with pytest.raises(InputError, match="both real and fake"):
        fit_platt([1, 1], [0.2, 0.3])


@pytest.mark.parametrize("seed", range(3))
def test_platt_fit_converges_from_far_logits(seed):
    """A trained detector's logits reach +-50; a full Newton step from (1, 0) there overshoots into a region
    where every sigmoid saturates (a plain Newton iteration ended at bias ~ -5e11 on such data)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-30, 10, 62), rng.normal(25, 15, 186)])
    y = np.concatenate([np.zeros(62), np.ones(186)])
    a, b = fit_platt(y, x)
    assert 0 < a < 5 and abs(b) < 50
    assert _balanced_log_loss(a, b, y, x, 1e-3) <= _balanced_log_loss(1.0, 0.0, y, x, 1e-3)
    grid = [_balanced_log_loss(ga, gb, y, x, 1e-3) for ga in np.linspace(0.01, 1, 100) for gb in np.linspace(-6, 6, 61)]
    assert _balanced_log_loss(a, b, y, x, 1e-3) <= min(grid) + 1e-9


def test_identity_folds_partition_the_identities_reproducibly():
    ids = [f"id{i}" for i in range(17)]
    folds = identity_folds(ids, 4, seed=0)
    assert sorted(i for f in folds for i in f) == sorted(ids)
    assert sorted(len(f) for f in folds) == [4, 4, 4, 5]
    assert folds == identity_folds(list(reversed(ids)), 4, seed=0)
    assert folds != identity_folds(ids, 4, seed=1)
    for bad in (1, 18):
        with pytest.raises(InputError, match="folds"):
            identity_folds(ids, bad, seed=0)


def test_calibrated_training_end_to_end_and_resume(shared_assets, tmp_path, capsys):
    """--calibrate 2 trains one model per fold of the training identities, fits the window logit's calibration
    on their out-of-fold windows and folds it into the final head (exported with parity); run again with
    --resume, the folds come from their checkpoints and the calibration is the same."""
    import torch

    from swapwatch.cli import main
    from swapwatch.engines.deepfake import DeepfakeDetector
    from test_training import _args

    media = [shared_assets / "videos" / "grid_bbaf2n.mpg", shared_assets / "videos" / "grid_brbk7n.mpg",
             shared_assets / "faces" / "max_Bryan.png", shared_assets / "faces" / "max_Chris.jpeg"]
    out = tmp_path / "c"
    argv, _ = _args(out, media, "--calibrate", "2")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "calibration fold 2/2" in printed and "calibrated the window logit" in printed
    info = json.loads((out / "detector.json").read_text())
    cal = info["calibration"]
    assert sorted(i for f in cal["folds"] for i in f) == ["grid_bbaf2n", "max_Bryan", "max_Chris"]
    assert cal["scale"] > 0 and set(cal["windows"]) >= {"real", "sbi"}
    assert max(info["parity_max_abs_error"].values()) <= 1e-4
    for k in (1, 2):
        fold = json.loads((out / "calibration" / f"fold-{k}" / "detector.json").read_text())
        assert fold["data"]["val_identities"] == cal["folds"][k - 1]
        assert "calibration" not in fold
    saved = torch.load(out / "detector.pt", weights_only=True)
    np.testing.assert_allclose(saved["head"]["calibration"].numpy(), [cal["scale"], cal["bias"]], atol=1e-5)
    detector = DeepfakeDetector.load(out, backend="onnxruntime")

    # The verdict thresholds come from the out-of-fold clips: every held-out identity's real clip is there,
    # no real clip reaches FAKE (under 20 of them, 5% allows none), and REAL lies at or below FAKE.
    clips, fitted = cal["clips"], info["thresholds"]
    real = [c["score"] for c in clips if c["label"] == 0]
    assert {c["identity"] for c in clips if c["label"] == 0} == {"grid_bbaf2n", "max_Bryan", "max_Chris"}
    assert fitted["fake"] > max(real) and fitted["reals_flagged"] == 0
    assert 0.0 <= fitted["real"] <= fitted["fake"] <= 1.0
    assert (info["threshold"], info["real_threshold"]) == (fitted["fake"], fitted["real"])
    assert detector.info.thresholds.fake == fitted["fake"] and detector.info.thresholds.real == fitted["real"]
    assert sum(sum(v["real"].values()) for v in fitted["per_identity"].values()) == len(real)
    assert "verdict thresholds from" in printed

    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "[fold 1] resumed from" in printed and "[fold 2] resumed from" in printed
    assert "[fold 1] scorer epoch" not in printed
    assert json.loads((out / "detector.json").read_text())["calibration"] == cal


def test_calibrate_needs_two_folds(tmp_path, capsys):
    from swapwatch.cli import main

    assert main(["train-detector", "--use-assets", "--calibrate", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "at least 2 folds" in err and "Traceback" not in err
    assert not (Path(tmp_path) / "x").exists()
