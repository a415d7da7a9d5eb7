"""Cross-fitted calibration of the detector's window logit (``train-detector --calibrate K``).

A detector trained on a handful of people scores its own training faces far lower than new ones, so neither
its raw 0.5 threshold nor a threshold read off its training windows says where new people's real windows
fall. Cross-fitting measures that: the training identities are split into K folds; for each fold a model is
trained, with the same recipe, on the other folds and scores the fold's windows (real, self-blended, swapped
with the person's own face and with another person's). Every training identity is thus scored by a model that
never saw it. A Platt scaling (``p = sigmoid(a * logit + b)``) fitted to those out-of-fold windows, real and
fake weighted equally, is then folded into the final model's head (trained on all identities), so its 0.5
threshold and the live alert levels sit where K models put new people.

The fold models live in ``OUT/calibration/fold-K/`` with their own checkpoints: an interrupted calibration
resumes like any run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from swapwatch.engines.deepfake import sigmoid
from swapwatch.engines.evaluation import roc_auc
from swapwatch.errors import InputError

FOLD_STREAM = 12  # random stream of the fold assignment and the folds' cross-identity swaps


@dataclass(frozen=True)
class Calibration:
    """A fitted logit map and what it was fitted on."""

    scale: float
    bias: float
    folds: list[list[str]]  # identities per fold
    windows: dict[str, int]  # out-of-fold windows per kind
    window_auc: float  # out-of-fold, before calibration (an affine map with scale > 0 keeps it)
    real_flagged: float  # out-of-fold real windows at or above 0.5 after calibration
    fake_flagged: float  # out-of-fold fake windows at or above 0.5 after calibration
    raw_real_flagged: float  # the same before calibration
    raw_fake_flagged: float

    @property
    def threshold_logit(self) -> float:
        """The raw logit that the calibrated 0.5 threshold corresponds to."""
        return -self.bias / self.scale

    def report(self) -> dict:
        return {"scale": round(self.scale, 5), "bias": round(self.bias, 5),
                "raw_threshold": round(float(sigmoid(np.float64(self.threshold_logit))), 4),
                "folds": self.folds, "windows": self.windows, "out_of_fold_window_auc": round(self.window_auc, 4),
                "real_windows_flagged": round(self.real_flagged, 4),
                "fake_windows_flagged": round(self.fake_flagged, 4),
                "uncalibrated_real_windows_flagged": round(self.raw_real_flagged, 4),
                "uncalibrated_fake_windows_flagged": round(self.raw_fake_flagged, 4)}


def fit_platt(labels: Sequence[int], logits: Sequence[float], *, ridge: float = 1e-3,
              iterations: int = 100) -> tuple[float, float]:
    """``(a, b)`` minimising the class-balanced log loss of ``sigmoid(a * logit + b)`` (Newton's method).

    ``ridge`` pulls ``a`` towards 1: when the two classes are separable the unregularised optimum is an
    infinitely steep step, which would turn every score into 0 or 1.
    """
    y = np.asarray(labels, np.float64)
    x = np.asarray(logits, np.float64)
    n_fake, n_real = int((y == 1).sum()), int((y == 0).sum())
    if n_fake == 0 or n_real == 0:
        raise InputError("calibration needs both real and fake windows")
    w = np.where(y == 1, 0.5 / n_fake, 0.5 / n_real)
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = sigmoid(a * x + b)
        r = w * (p - y)
        grad = np.array([np.sum(r * x) + ridge * (a - 1.0), np.sum(r)])
        h = w * p * (1.0 - p)
        hess = np.array([[np.sum(h * x * x) + ridge, np.sum(h * x)], [np.sum(h * x), np.sum(h) + 1e-12]])
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def identity_folds(identities: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """``folds`` groups of identities (seeded, sizes differing by at most one)."""
    ids = sorted(set(identities))
    if not 2 <= folds <= len(ids):
        raise InputError(f"--calibrate needs 2 to {len(ids)} folds (one identity at least in each), got {folds}")
    order = np.random.default_rng([seed, FOLD_STREAM]).permutation(len(ids))
    return [sorted(ids[i] for i in order[k::folds]) for k in range(folds)]


def cross_fit(config, data, *, stem_weights: Path | None, echo: Callable[[str], None] = print) -> Calibration:
    """Train one model per fold of ``data``'s training identities, collect its windows on the fold, and fit
    the calibration (see the module docstring). ``config`` is the final run's :class:`TrainConfig`."""
    from swapwatch.engines.training import FAKE, REAL, DetectorTrainer, TrainingData, make_swappers

    groups = identity_folds(data.train_ids, config.calibration_folds, config.seed)
    fakers = make_swappers(config.swappers) if config.swap_fakes else []
    labels, logits, kinds = [], [], []
    for k, held in enumerate(groups):
        held_set = set(held)
        fold = TrainingData(
            train_real=[t for t in data.train_real if t.identity not in held_set],
            train_fake=[t for t in data.train_fake if t.identity not in held_set],
            val_real=[t for t in data.train_real if t.identity in held_set],
            val_fake=[t for t in data.train_fake if t.identity in held_set],
            swaps=dict(data.swaps), train_ids=[i for i in data.train_ids if i not in held_set], val_ids=held)
        if not fold.train_real:
            raise InputError(f"calibration fold {k + 1} leaves no real training track")
        # Each held-out track also gets another person's face swapped in, as validation does: the fake the
        # detector is for.
        rng = np.random.default_rng([config.seed, FOLD_STREAM, k])
        for n, target in enumerate(fold.val_real if fakers else []):
            others = [t for t in data.train_real if t.identity != target.identity]
            source = others[int(rng.integers(len(others)))]
            fold.swaps[id(target)] = [*data.swaps.get(id(target), []), fakers[n % len(fakers)](target, source)]
        fold_config = replace(config, out=config.out / "calibration" / f"fold-{k + 1}", calibration_folds=0)
        echo(f"calibration fold {k + 1}/{len(groups)}: held out {', '.join(held)}")
        trainer = DetectorTrainer(fold_config, fold, echo=lambda line, k=k: echo(f"  [fold {k + 1}] {line}"),
                                  stem_weights=stem_weights)
        trainer.run(resume=True)
        y, z, kind = trainer.window_logits()
        labels.append(y)
        logits.append(z)
        kinds.append(kind)
    y, z, kind = np.concatenate(labels), np.concatenate(logits), np.concatenate(kinds)
    auc = roc_auc(y, z)
    a, b = fit_platt(y, z)
    if not a > 0:
        raise InputError(f"out-of-fold windows rank real above fake (AUC {auc:.3f}): no calibration can help; "
                         "train without --calibrate")
    calibrated = sigmoid(a * z + b)
    raw = sigmoid(z)
    return Calibration(
        scale=a, bias=b, folds=groups, windows={str(v): int((kind == v).sum()) for v in sorted(set(kind.tolist()))},
        window_auc=auc, real_flagged=float(np.mean(calibrated[y == REAL] >= 0.5)),
        fake_flagged=float(np.mean(calibrated[y == FAKE] >= 0.5)),
        raw_real_flagged=float(np.mean(raw[y == REAL] >= 0.5)), raw_fake_flagged=float(np.mean(raw[y == FAKE] >= 0.5)))
