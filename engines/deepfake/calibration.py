"""Cross-fitted calibration of the detector's window logit (``train-detector --calibrate K``).

A detector trained on a handful of people scores its own training faces far lower than new ones, so neither
its raw 0.5 threshold nor a threshold read off its training windows says where new people's real windows
fall. Cross-fitting measures that: the training identities are split into K folds; for each fold a model is
trained, with the same recipe, on the other folds and scores the fold's windows (real, self-blended, swapped
with the person's own face and with another person's). Every training identity is thus scored by a model that
never saw it. A Platt scaling (``p = sigmoid(a * logit + b)``) fitted to those out-of-fold windows, real and
fake weighted equally, is then folded into the final model's head (trained on all identities), so its 0.5
threshold and the live alert levels sit where K models put new people.

The fit leaves out the self-swaps (a person's own face pasted back onto them): they teach the scorer to find a
swapper's traces without a change of identity, but as fakes they are the least harmful and the most
real-looking, and would pull the threshold into the real windows. The fakes calibrated for are the ones the
detector is for: self-blends and another person's face swapped in. Every kind's flagged rate is reported.

The fold models live in ``OUT/calibration/fold-K/`` with their own checkpoints: an interrupted calibration
resumes like any run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from swapwatch.engines.deepfake.detector import sigmoid
from swapwatch.engines.deepfake.evaluation import roc_auc
from swapwatch.engines.deepfake.thresholds import Thresholds
from swapwatch.errors import InputError

FOLD_STREAM = 12  # random stream of the fold assignment and the folds' cross-identity swaps


@dataclass(frozen=True)
class Calibration:
    """A fitted logit map and what it was fitted on."""

    scale: float
    bias: float
    folds: list[list[str]]  # identities per fold
    fitted_on: list[str]  # window kinds the fit used (real and the fakes it calibrates for)
    windows: dict[str, int]  # out-of-fold windows per kind
    window_auc: float  # out-of-fold, over the fitted kinds (an affine map with scale > 0 keeps it)
    flagged: dict[str, float]  # per kind: out-of-fold windows at or above 0.5 after calibration
    raw_flagged: dict[str, float]  # the same before calibration
    # Per out-of-fold clip: {"clip", "identity", "kind", "label", "score"}, score the mean calibrated window
    # probability (what a video's track gets at run time): what the verdict thresholds are fitted on.
    clips: list[dict] = field(default_factory=list)

    @property
    def threshold_logit(self) -> float:
        """The raw logit that the calibrated 0.5 threshold corresponds to."""
        return -self.bias / self.scale

    def counted_clips(self, *, kinds: Sequence[str] | None = None) -> list[dict]:
        """The out-of-fold clips the thresholds count: every real clip, and the fakes of ``kinds`` (default: the
        fitted ones; self-swaps are scored but not counted)."""
        keep = set(self.fitted_on if kinds is None else kinds)
        return [c for c in self.clips if c["label"] == 0 or c["kind"] in keep]

    def clip_scores(self, *, kinds: Sequence[str] | None = None) -> tuple[list[float], list[float]]:
        """(real clip scores, fake clip scores) of :meth:`counted_clips`."""
        counted = self.counted_clips(kinds=kinds)
        return [c["score"] for c in counted if c["label"] == 0], [c["score"] for c in counted if c["label"] == 1]

    def verdict_thresholds(self, *, max_real_flagged: float = 0.05,
                           min_fake_caught: float = 0.95) -> tuple[Thresholds, dict]:
        """The FAKE and REAL thresholds fitted on the out-of-fold clips (:meth:`Thresholds.fit`: at most
        ``max_real_flagged`` of held-out people's real clips at FAKE), and a report with, per identity, how its
        real clips and its fakes fare at them: what a new person's real video can expect."""
        real, fake = self.clip_scores()
        thresholds, fit = Thresholds.fit(real, fake, max_real_flagged=max_real_flagged,
                                         min_fake_caught=min_fake_caught)
        per_identity: dict[str, dict] = {}
        for c in self.counted_clips():
            row = per_identity.setdefault(c["identity"], {"real": {}, "fake": {}})
            side = row["real" if c["label"] == 0 else "fake"]
            verdict = thresholds.verdict(c["score"])
            side[verdict] = side.get(verdict, 0) + 1
        return thresholds, {**thresholds.to_json(), "max_real_flagged": max_real_flagged,
                            "min_fake_caught": min_fake_caught, "fitted_on": "out-of-fold clips (" +
                            ", ".join(self.fitted_on) + ")", **fit.to_json(),
                            "per_identity": dict(sorted(per_identity.items()))}

    def report(self) -> dict:
        return {"scale": round(self.scale, 5), "bias": round(self.bias, 5),
                "raw_threshold": round(float(sigmoid(np.float64(self.threshold_logit))), 4),
                "folds": self.folds, "fitted_on": self.fitted_on, "windows": self.windows,
                "out_of_fold_window_auc": round(self.window_auc, 4),
                "windows_flagged": {k: round(v, 4) for k, v in self.flagged.items()},
                "uncalibrated_windows_flagged": {k: round(v, 4) for k, v in self.raw_flagged.items()},
                "clips": [{**c, "score": round(float(c["score"]), 4)} for c in self.clips]}


def fit_platt(labels: Sequence[int], logits: Sequence[float], *, ridge: float = 1e-3,
              iterations: int = 100) -> tuple[float, float]:
    """``(a, b)`` minimising the class-balanced log loss of ``sigmoid(a * logit + b)`` (Newton's method with a
    backtracking line search, so logits far from 0 cannot make a full step overshoot).

    ``ridge`` pulls ``a`` towards 1: when the two classes are separable the unregularised optimum is an
    infinitely steep step, which would turn every score into 0 or 1.
    """
    y = np.asarray(labels, np.float64)
    x = np.asarray(logits, np.float64)
    n_fake, n_real = int((y == 1).sum()), int((y == 0).sum())
    if n_fake == 0 or n_real == 0:
        raise InputError("calibration needs both real and fake windows")
    if not np.isfinite(x).all():
        raise InputError("calibration got non-finite logits")
    w = np.where(y == 1, 0.5 / n_fake, 0.5 / n_real)

    def loss(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * ridge * (a - 1.0) ** 2)

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = sigmoid(a * x + b)
        r = w * (p - y)
        grad = np.array([np.sum(r * x) + ridge * (a - 1.0), np.sum(r)])
        h = w * p * (1.0 - p)
        hess = np.array([[np.sum(h * x * x) + ridge, np.sum(h * x)], [np.sum(h * x), np.sum(h) + 1e-9]])
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            trial = loss(a - t * step[0], b - t * step[1])
            if trial <= current - 1e-4 * t * float(grad @ step):
                break
            t *= 0.5
        else:
            break  # no step lowers the loss: converged to rounding
        a, b, current = a - t * step[0], b - t * step[1], trial
        if np.abs(t * step).max() < 1e-10:
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
    from swapwatch.engines.deepfake.tracks import TrainingData, make_swappers
    from swapwatch.engines.deepfake.training import DetectorTrainer

    groups = identity_folds(data.train_ids, config.calibration_folds, config.seed)
    # A swap from another person for each held-out track (the autoencoder only re-renders a person's own face).
    cross = [name for name in config.swappers if name != "autoencoder"]
    fakers = make_swappers(cross) if config.swap_fakes and cross else []
    labels, logits, kinds, names = [], [], [], []
    for k, held in enumerate(groups):
        held_set = set(held)
        fold = TrainingData(
            train_real=[t for t in data.train_real if t.identity not in held_set],
            train_fake=[t for t in data.train_fake if t.identity not in held_set],
            val_real=[t for t in data.train_real if t.identity in held_set],
            val_fake=[t for t in data.train_fake if t.identity in held_set],
            # No held-out face may reach a fold's training, not even pasted onto another head as a fake.
            swaps={key: [s for s in swaps if s.source not in held_set or s.identity in held_set]
                   for key, swaps in data.swaps.items()},
            train_ids=[i for i in data.train_ids if i not in held_set], val_ids=held)
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
        y, z, kind, name = trainer.window_logits()
        labels.append(y)
        logits.append(z)
        kinds.append(kind)
        names.append(name)
    y, z, kind, name = (np.concatenate(v) for v in (labels, logits, kinds, names))
    fit = kind != "selfswap"
    auc = roc_auc(y[fit], z[fit])
    a, b = fit_platt(y[fit], z[fit])
    if not a > 0:
        raise InputError(f"out-of-fold windows rank real above fake (AUC {auc:.3f}): no calibration can help; "
                         "train without --calibrate")
    kind_names = sorted(set(kind.tolist()), key=lambda v: (v != "real", v))  # real first
    fitted = set(kind[fit].tolist())
    prob = sigmoid(a * z + b)
    clips = [{"clip": str(c), "identity": str(c).split(":", 1)[0], "kind": str(kind[name == c][0]),
              "label": int(y[name == c][0]), "score": float(np.mean(prob[name == c]))}
             for c in dict.fromkeys(name.tolist())]
    result = Calibration(
        scale=a, bias=b, folds=groups, fitted_on=[v for v in kind_names if v in fitted],
        windows={v: int((kind == v).sum()) for v in kind_names}, window_auc=auc,
        flagged={v: float(np.mean(prob[kind == v] >= 0.5)) for v in kind_names},
        raw_flagged={v: float(np.mean(sigmoid(z[kind == v]) >= 0.5)) for v in kind_names}, clips=clips)
    echo(f"calibration: {a:.3f} x logit + {b:.3f} from {int(fit.sum())} out-of-fold windows (window AUC "
         f"{auc:.3f}); windows flagged before -> after: " +
         ", ".join(f"{v} {result.raw_flagged[v]:.0%} -> {result.flagged[v]:.0%}" for v in kind_names))
    return result
