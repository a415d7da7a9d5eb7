"""Training the deepfake detector: the two training stages, checkpoints, export, and :func:`train` (what
``swapwatch train-detector`` runs).

Stage 1 trains the frame scorer on (real, fake) pairs of the same frame; stage 2 freezes it, renders clips,
computes their features and trains the temporal head on windows sampled with frame-rate changes, frame drops
and stalls and random lengths (masked). Every epoch is checkpointed; each epoch's random draws derive from
``(seed, stage, epoch, batch)`` alone, so a resumed run repeats an uninterrupted one.

The data come from ``datasets.py`` (media items, identity split) and ``tracks.py`` (face tracks, swapwatch's
own swaps); the fakes are self-blended (``sbi.py``) and rendered with ``renders.py``; the settings are
``train_config.py``'s :class:`TrainConfig`; validation is ``validation.py``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from swapwatch.engines.deepfake.datasets import FAKE, REAL, DataSpec, collect_items, default_assets_dir
from swapwatch.engines.deepfake.detector import detector_template, to_input
from swapwatch.engines.deepfake.renders import ClipRenderer, clip_positions, pack_windows, rotate_pairs, sample_window
from swapwatch.engines.deepfake.sbi import SelfBlender
from swapwatch.engines.deepfake.tracks import TrainingData, prepare_data
from swapwatch.engines.deepfake.train_config import TrainConfig, jsonable
from swapwatch.engines.deepfake.validation import TrainerValidation
from swapwatch.errors import InputError


@dataclass
class TrainResult:
    out: Path
    history: list[dict]
    metrics: dict
    seconds: float


# A mean absolute difference of this many grey levels over a map cell counts as fully altered.
REGION_DIFF_LEVELS = 8.0


class DetectorTrainer(TrainerValidation):
    """Both training stages of one run, its checkpoints and its export (validation: :class:`TrainerValidation`)."""

    def __init__(self, config: TrainConfig, data: TrainingData, *, echo: Callable[[str], None] = print,
                 stem_weights: Path | None = None) -> None:
        import torch

        from swapwatch.export.deepfake import FrameScorer, HeadConfig, TemporalHead

        self.config = config
        self.data = data
        self.echo = echo
        if config.threads:
            torch.set_num_threads(config.threads)
        self.template = detector_template(config.scorer_size, config.face_scale)
        # Training renders use the run's augmentation settings; validation always the defaults, so that runs
        # with different settings are validated on the same clips.
        self.renderer = ClipRenderer(self.template, SelfBlender(config.sbi_config()))
        self.val_renderer = ClipRenderer(self.template)
        torch.manual_seed(config.seed)
        scfg = config.scorer_config()
        self.scorer = FrameScorer(scfg)
        self.head = TemporalHead(HeadConfig(feature_dim=scfg.feature_dim, window=config.window,
                                            residual=config.head == "residual", frame_mean=config.head == "mean",
                                            monotone=bool(scfg.local_topk), calibrated=config.calibration_folds > 0))
        self.calibration = None  # a Calibration to fold into the head before the final validation and export
        params: list = list(self.scorer.parameters())
        if scfg.stem in ("yunet", "dlib"):
            if stem_weights is None:
                raise InputError(f"the {scfg.stem} stem starts from released weights: no weights file was given")
            self.scorer.load_stem(stem_weights)
            # Pretrained filters: a smaller learning rate and no weight decay (which would pull them to 0), or
            # frozen (then not in the optimizer at all, and no gradient is computed through them).
            named = list(self.scorer.named_parameters())
            params = [{"params": [p for n, p in named if not n.startswith("stem.")]}]
            if config.stem_lr_scale > 0:
                params.append({"params": [p for n, p in named if n.startswith("stem.")],
                               "lr_scale": config.stem_lr_scale, "weight_decay": 0.0})
            else:
                self.scorer.stem.requires_grad_(False)
        self.scorer_opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.head_opt = (torch.optim.AdamW(self.head.parameters(), lr=config.head_lr,
                                           weight_decay=config.weight_decay) if self.head.config.trainable else None)
        self.history: list[dict] = []
        self.stage, self.epoch = "scorer", 0  # the next epoch to run
        self.val = self._render_val()
        self.probe = self._render_val(data.train_real, frames=6, stream=6)
        self._head_train: list[list[tuple[np.ndarray, int]]] | None = None
        self._val_features: list[np.ndarray] | None = None  # per val clip, from the last validate_frames()
        self._pair_pool: np.ndarray | None = None
        self._pool_masks: np.ndarray | None = None  # (N, S, S) blend masks of the pool's fakes (-1: none)

    # ---- checkpoints ------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.config.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        import torch

        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"stage": self.stage, "epoch": self.epoch, "history": json.dumps(self.history),
                   "fingerprint": json.dumps(self.config.fingerprint()),
                   "scorer": self.scorer.state_dict(), "head": self.head.state_dict(),
                   "scorer_opt": self.scorer_opt.state_dict(),
                   "head_opt": self.head_opt.state_dict() if self.head_opt else {}}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self) -> bool:
        """Continue from ``checkpoint.pt`` if there is one; False when starting fresh."""
        import torch

        path = self.checkpoint_path
        if not path.is_file():
            self.echo(f"no checkpoint at {path}; starting from scratch")
            return False
        payload = torch.load(path, map_location="cpu", weights_only=True)
        # A setting added after the checkpoint was written had its default then.
        saved = {**TrainConfig(out=self.config.out).fingerprint(), **json.loads(payload["fingerprint"])}
        current = self.config.fingerprint()
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise InputError(f"{path} was written with other settings ({', '.join(diff)}); resume with the same "
                             f"options (only --epochs/--head-epochs may change) or start in a new --out")
        self.scorer.load_state_dict(payload["scorer"])
        self.head.load_state_dict(payload["head"])
        self.scorer_opt.load_state_dict(payload["scorer_opt"])
        if self.head_opt:
            self.head_opt.load_state_dict(payload["head_opt"])
        self.stage, self.epoch = payload["stage"], int(payload["epoch"])
        self.history = json.loads(payload["history"])
        self.echo(f"resumed from {path}: {self.stage} stage, next epoch {self.epoch + 1}")
        return True

    # ---- stage 1: frame scorer ----------------------------------------------------------------------------

    def _pool(self) -> np.ndarray:
        """The rendered pair pool, (N, 2, S, S, 3) uint8 as (real, fake), built once (seeded, so a resumed
        run rebuilds the same pool)."""
        if self._pair_pool is None:
            from tqdm import tqdm

            cfg = self.config
            batches = max(cfg.pair_pool // cfg.batch_pairs, 1)
            with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
                parts = list(tqdm(pool.map(lambda i: self._pair_batch(-1, i), range(batches)), total=batches,
                                  desc="rendering pair pool", unit="batch", file=sys.stderr,
                                  disable=not cfg.progress or None, leave=False))
            crops = np.concatenate([part[0] for part in parts])
            self._pair_pool = crops.reshape(-1, 2, *crops.shape[1:])
            if parts[0][2] is not None:
                self._pool_masks = np.concatenate([part[2] for part in parts])
        return self._pair_pool

    def _batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One training batch of (real, fake) pairs: from the pool or freshly rendered, optionally turned."""
        cfg = self.config
        crops, labels, masks = (self._pool_batch if cfg.pair_pool else self._pair_batch)(epoch, index)
        if cfg.rotate_pairs:
            crops, masks = rotate_pairs(crops, masks, np.random.default_rng([cfg.seed, 9, epoch, index]))
        return crops, labels, masks

    def _pool_batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cfg = self.config
        pool = self._pool()
        rng = np.random.default_rng([cfg.seed, 8, epoch, index])
        chosen = rng.choice(len(pool), min(cfg.batch_pairs, len(pool)), replace=False)
        pairs = pool[chosen]
        masks = self._pool_masks[chosen] if self._pool_masks is not None else None
        flip = rng.random(len(pairs)) < 0.5
        pairs[flip] = pairs[flip][:, :, :, ::-1]  # a copy (fancy indexing): the pool is untouched
        if masks is not None:
            masks[flip] = masks[flip][:, :, ::-1]
            masks = np.ascontiguousarray(masks)
        labels = np.tile(np.asarray([REAL, FAKE], np.float32), len(pairs))
        return np.ascontiguousarray(pairs.reshape(-1, *pairs.shape[2:])), labels, masks

    def _pair_batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``batch_pairs`` (real, fake) pairs as (crops, labels, blend masks): with the boundary target, the
        masks are (P, S, S) float16, each self-blended fake's mask shape in its crop (peak 1) and -1 everywhere
        for fakes without one; else None. Every draw derives from (seed, epoch, index)."""
        cfg = self.config
        # epoch -1: the pair pool's batches (their own stream)
        rng = np.random.default_rng([cfg.seed, 1, epoch, index] if epoch >= 0 else [cfg.seed, 7, index])
        crops, labels, masks = [], [], []
        size = self.template.size
        want_masks = cfg.region_target == "boundary"
        reals, files = self.data.train_real, self.data.train_fake
        for _ in range(cfg.batch_pairs):
            track = reals[int(rng.integers(len(reals)))]
            i = int(rng.integers(len(track)))
            swaps = self.data.swaps_of(track)
            pair_is_sbi = False
            if files and rng.random() < 0.5:  # a labelled fake frame, with its own conditions
                fake_track = files[int(rng.integers(len(files)))]
                real = self.renderer.render(track, [i], ["real"], rng)[0]
                j = int(rng.integers(len(fake_track)))
                fake = self.renderer.render(fake_track, [j], ["real"], rng)[0]
                pair = [real, fake]
            elif swaps and rng.random() >= cfg.sbi_fraction:
                swap = swaps[int(rng.integers(len(swaps)))]
                pair = self.renderer.render(track, [i], ["real", "swap"], rng, {"swap": swap})
            else:
                pair_is_sbi, shapes = True, []
                pair = self.renderer.render(track, [i], ["real", "sbi"], rng, masks=shapes if want_masks else None)
            crops += [pair[0][0], pair[1][0]]
            labels += [REAL, FAKE]
            if want_masks:
                masks.append(shapes[0] if pair_is_sbi else np.full((size, size), -1.0, np.float32))
        boundary = np.stack(masks).astype(np.float16) if want_masks else None
        return np.stack(crops), np.asarray(labels, np.float32), boundary

    def _lr(self, base: float, step: int, total: int, warmup: int = 50) -> float:
        if step < warmup:
            return base * (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _scorer_loss(self, logits, labels):
        """BCE per frame plus a ranking loss per (real, fake) pair of the same frame.

        The ranking term asks only that a frame's fake score above the frame itself, which no property of the
        person can achieve: with a handful of identities, BCE alone is also lowered by recognising the
        training faces as "real", and a new face then looks fake.
        """
        import torch.nn.functional as F

        cfg = self.config
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        pairs = logits.view(-1, 2)  # batches are (real, fake) pairs in order
        rank = F.softplus(pairs[:, 0] - pairs[:, 1]).mean()
        return cfg.bce_weight * bce + cfg.rank_weight * rank

    @staticmethod
    def _region_loss(region, crops: np.ndarray, masks: np.ndarray | None = None):
        """BCE of the predicted altered-region map against where each fake differs from its real frame (the
        pairs are rendered under one augmentation draw, so outside the manipulation they are equal up to
        noise and compression), pooled to the map's size; zero maps for the real frames. Where ``masks``
        gives a fake's blend mask M (>= 0), its target is the blend's boundary 4M(1-M) instead."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(crops.astype(np.float32)).view(-1, 2, *crops.shape[1:])  # (P, 2, S, S, 3)
        diff = (x[:, 1] - x[:, 0]).abs().mean(dim=3, keepdim=True).permute(0, 3, 1, 2)  # (P, 1, S, S)
        diff = F.adaptive_avg_pool2d(diff, region.shape[-2:])
        target = (diff / REGION_DIFF_LEVELS).clamp(0.0, 1.0)
        if masks is not None:  # Face X-ray's boundary 4M(1-M) where the blend mask M is known
            m = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)  # (P, 1, S, S)
            known = m.flatten(1).min(dim=1).values >= 0
            if known.any():
                edge = F.adaptive_max_pool2d(4.0 * m[known] * (1.0 - m[known]), region.shape[-2:])
                target = target.clone()
                target[known] = edge.clamp(0.0, 1.0)
        targets = torch.stack([torch.zeros_like(target), target], dim=1).view_as(region)
        return F.binary_cross_entropy_with_logits(region, targets)

    def train_scorer_epoch(self, epoch: int) -> dict:
        import torch
        from tqdm import tqdm

        cfg = self.config
        torch.manual_seed(cfg.seed * 1000 + epoch)
        steps = max(cfg.pairs_per_epoch // cfg.batch_pairs, 1)
        total = steps * max(cfg.epochs, 1)
        self.scorer.train()
        losses = []
        bar = tqdm(total=steps, desc=f"scorer {epoch + 1}/{cfg.epochs}", unit="batch", file=sys.stderr,
                   disable=not cfg.progress or None, leave=False)
        # Render the next batch in a thread while this one trains (OpenCV releases the GIL).
        if cfg.pair_pool:
            self._pool()
        with ThreadPoolExecutor(1) as pool, bar:
            future = pool.submit(self._batch, epoch, 0)
            for k in range(steps):
                crops, labels, masks = future.result()
                if k + 1 < steps:
                    future = pool.submit(self._batch, epoch, k + 1)
                for group in self.scorer_opt.param_groups:
                    group["lr"] = self._lr(cfg.lr, epoch * steps + k, total) * group.get("lr_scale", 1.0)
                _, logits, region = self.scorer.forward_train(torch.from_numpy(to_input(crops)))
                loss = self._scorer_loss(logits, torch.from_numpy(labels))
                if region is not None:
                    loss = loss + cfg.scorer_aux_map * self._region_loss(region, crops, masks)
                self.scorer_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.scorer_opt.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return {"loss": float(np.mean(losses))}

    # ---- stage 2: temporal head ---------------------------------------------------------------------------

    def _head_sequences(self) -> list[list[tuple[np.ndarray, int]]]:
        """Feature sequences of rendered training clips, grouped by render: a real clip with its self-blended
        and swapped versions under the same conditions (frame-aligned), or one labelled fake clip."""
        from tqdm import tqdm

        cfg = self.config
        groups: list[list[tuple[np.ndarray, int]]] = []
        jobs = []
        for n, track in enumerate(self.data.train_real):
            swaps = {f"swap{j}": s for j, s in enumerate(self.data.swaps_of(track))}
            for r in range(cfg.head_renders):
                jobs.append((n, r, track, ["real", "sbi", *swaps], swaps))
        for n, track in enumerate(self.data.train_fake):
            for r in range(cfg.head_renders):
                jobs.append((len(self.data.train_real) + n, r, track, ["real"], {}))
        for n, r, track, kinds, swaps in tqdm(jobs, desc="head features", unit="clip", file=sys.stderr,
                                              disable=not cfg.progress or None, leave=False):
            rng = np.random.default_rng([cfg.seed, 5, n, r])
            crops = self.renderer.render(track, clip_positions(track, cfg.still_frames), kinds, rng, swaps)
            groups.append([(self.features(c)[0], track.label if kind == "real" else FAKE)
                           for kind, c in zip(kinds, crops)])
        return groups

    def _head_pair(self, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
        """A (real, fake) pair of windows: one render's real clip and one of its fakes through the same frame
        drops and rate changes; a labelled fake clip is paired with a random real clip instead."""
        groups = self._head_train
        group = groups[int(rng.integers(len(groups)))]
        if len(group) > 1:
            real, fake = group[0], group[1 + int(rng.integers(len(group) - 1))]
            idx = self._window_indices(len(real[0]), rng)
            return [real[0][idx], fake[0][idx]], [REAL, FAKE]
        paired = [g for g in groups if len(g) > 1]
        real = paired[int(rng.integers(len(paired)))][0][0]
        return ([real[self._window_indices(len(real), rng)], group[0][0][self._window_indices(len(group[0][0]), rng)]],
                [REAL, group[0][1]])

    def _window_indices(self, length: int, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        return sample_window(length, cfg.window, rng, min_window=cfg.min_window, max_rate=cfg.max_rate,
                             drop_prob=cfg.drop_prob, stall_prob=cfg.stall_prob)

    def train_head_epoch(self, epoch: int) -> dict:
        import torch

        cfg = self.config
        if self._head_train is None:
            self._head_train = self._head_sequences()
            feats = np.concatenate([s for g in self._head_train for s, _ in g])
            if self.stage == "head" and epoch == 0:
                self.head.set_normalisation(feats.mean(0), feats.std(0))
        torch.manual_seed(cfg.seed * 1000 + 500 + epoch)
        rng = np.random.default_rng([cfg.seed, 2, epoch])
        self.head.train()
        self.scorer.eval()
        steps = max(cfg.head_windows_per_epoch // cfg.head_batch, 1)
        total = steps * max(cfg.head_epochs, 1)
        losses = []
        for k in range(steps):
            windows, labels = [], []
            for _ in range(max(cfg.head_batch // 2, 1)):
                w, y = self._head_pair(rng)
                windows += w
                labels += y
            feats, masks = pack_windows(windows, cfg.window)
            for group in self.head_opt.param_groups:
                group["lr"] = self._lr(cfg.head_lr, epoch * steps + k, total, warmup=20)
            x = torch.from_numpy(feats)
            if cfg.head_feature_noise > 0:
                # Noise in standardised units: the scorer is sharper on its own training faces than on new
                # ones, and a head fitted to those clean features would be over-confident elsewhere.
                noise = torch.from_numpy(rng.normal(0, cfg.head_feature_noise, feats.shape).astype(np.float32))
                x = x + noise * self.head.feature_std
            logits = self.head(x, torch.from_numpy(masks))
            # The same loss as the scorer's: per-window BCE plus the within-pair ranking term.
            loss = self._scorer_loss(logits, torch.tensor(labels, dtype=torch.float32))
            self.head_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.head_opt.step()
            losses.append(loss.item())
        return {"loss": float(np.mean(losses))}

    # ---- the whole run --------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train both stages (from the checkpoint with ``resume``), then export. ``stop_after`` ends the run after
        that many epochs of this call (for tests of resuming)."""
        cfg = self.config
        start = time.perf_counter()
        if resume:
            self.load_checkpoint()
        ran = 0
        if self.stage == "scorer":
            while self.epoch < cfg.epochs:
                if stop_after is not None and ran >= stop_after:
                    return TrainResult(cfg.out, self.history, {}, time.perf_counter() - start)
                t0 = time.perf_counter()
                stats = self.train_scorer_epoch(self.epoch)
                stats.update(self.validate_frames())
                self._log("scorer", self.epoch, cfg.epochs, stats, time.perf_counter() - t0)
                self.epoch += 1
                ran += 1
                self.save_checkpoint()
            self.stage, self.epoch = "head", 0
            if self.head.config.uses_frame_classifier:  # the scorer is final from here on
                self.head.set_frame_classifier(self.scorer.classifier)
            self.save_checkpoint()
        while self.head.config.trainable and self.epoch < cfg.head_epochs:
            if stop_after is not None and ran >= stop_after:
                return TrainResult(cfg.out, self.history, {}, time.perf_counter() - start)
            t0 = time.perf_counter()
            stats = self.train_head_epoch(self.epoch)
            stats.update({k: v for k, v in self.validate_head().items() if k != "clips"})
            self._log("head", self.epoch, cfg.head_epochs, stats, time.perf_counter() - t0)
            self.epoch += 1
            ran += 1
            self.save_checkpoint()
        if self.calibration is not None:
            self.head.set_calibration(self.calibration.scale, self.calibration.bias)
            self.echo(f"calibrated the window logit: {self.calibration.scale:.3f} x logit + "
                      f"{self.calibration.bias:.3f} (fitted on the calibration folds)")
        metrics = {**self.validate_frames(), **self.validate_head()}
        self.export(metrics, time.perf_counter() - start)
        return TrainResult(cfg.out, self.history, metrics, time.perf_counter() - start)

    def _log(self, stage: str, epoch: int, epochs: int, stats: dict, seconds: float) -> None:
        entry = {"stage": stage, "epoch": epoch + 1, "seconds": round(seconds, 1),
                 **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}}
        self.history.append(entry)
        shown = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in entry.items() if k not in ("stage", "epoch", "seconds") and v is not None)
        self.echo(f"{stage} epoch {epoch + 1}/{epochs} ({seconds:.0f} s): {shown}")
        _write_json(self.config.out / "training_log.json",
                    {"config": jsonable(asdict(self.config)), "data": self.data.summary(), "epochs": self.history})

    # ---- export ---------------------------------------------------------------------------------------------

    def export(self, metrics: dict, seconds: float) -> None:
        """detector.pt, scorer.onnx and head.onnx (parity-checked), detector.json and the training log."""
        import torch

        from swapwatch.engines.deepfake.detector import write_detector
        from swapwatch.export.deepfake import DetectorModels
        from swapwatch.export.onnx_export import describe_parity

        cfg = self.config
        self.scorer.eval()
        self.head.eval()
        meta = {"face_scale": cfg.face_scale, "threshold": cfg.threshold, "seed": cfg.seed}
        calibration = {}
        if self.calibration is not None:
            # The verdict thresholds come from people the fold models never saw, as the calibration does.
            thresholds, fitted = self.calibration.verdict_thresholds(max_real_flagged=cfg.max_real_flagged)
            meta.update(threshold=thresholds.fake, real_threshold=thresholds.real)
            calibration = {"calibration": self.calibration.report(), "thresholds": fitted}
            self.echo(f"verdict thresholds from {fitted['n_real']} held-out real and {fitted['n_fake']} fake clips: "
                      f"FAKE at >= {thresholds.fake:.3f} ({fitted['reals_flagged']} real clips reach it), REAL "
                      f"below {thresholds.real:.3f} ({fitted['fakes_below_real']} fakes below it)")
        info = write_detector(DetectorModels(self.scorer, self.head, meta), cfg.out, extra={
            "data": self.data.summary(), "validation": {k: v for k, v in metrics.items() if k != "clips"},
            **calibration, "train_seconds": round(seconds, 1), "torch": torch.__version__})
        _write_json(cfg.out / "training_log.json", {"config": jsonable(asdict(cfg)), "data": self.data.summary(),
                                                    "epochs": self.history, "final": metrics, **calibration})
        self.echo(f"parity vs PyTorch: {describe_parity(info.extra)}")
        self.echo(f"wrote {cfg.out / 'detector.pt'}, scorer.onnx, head.onnx, detector.json, training_log.json")


def train(config: TrainConfig, spec: DataSpec, *, resume: bool = False, detector_model: Path | None = None,
          echo: Callable[[str], None] = print, stop_after: int | None = None) -> TrainResult:
    """Collect media, build tracks and fakes, train, export: what ``swapwatch train-detector`` runs."""
    started = time.perf_counter()
    model = detector_model or _yunet_path(spec)
    items = collect_items(spec)
    data = prepare_data(items, config, detector_model=model, echo=echo)
    s = data.summary()
    echo(f"data: {s['train_real']['tracks']} real training tracks ({len(data.train_ids)} identities), "
         f"{s['val_real']['tracks']} validation tracks ({', '.join(data.val_ids) or 'none'}), "
         f"{s['swapped_tracks']} swapped tracks, {s['train_labelled_fake']['tracks']} + "
         f"{s['val_labelled_fake']['tracks']} labelled fake tracks ({time.perf_counter() - started:.0f} s)")
    stem = _stem_weights(config, model)
    calibration = None
    if config.calibration_folds:
        from swapwatch.engines.deepfake.calibration import cross_fit

        # Fold models resume from their own checkpoints, so --resume is implied for them.
        calibration = cross_fit(config, data, stem_weights=stem, echo=echo)
    trainer = DetectorTrainer(config, data, echo=echo, stem_weights=stem)
    trainer.calibration = calibration
    result = trainer.run(resume=resume, stop_after=stop_after)
    result.seconds = time.perf_counter() - started
    return result


def _stem_weights(config: TrainConfig, yunet: Path) -> Path | None:
    """The released weights a pretrained stem starts from: YuNet's (the face detector's own file) or dlib's
    face-recognition ResNet (the registry's ``dlib-resnet-v1``: PyPI's face_recognition_models, sha256-pinned)."""
    if config.scorer_stem == "dlib":
        from swapwatch.engines.runtime import ensure_model

        return next(iter(ensure_model("dlib-resnet-v1").values()))
    return yunet if config.scorer_stem == "yunet" else None


def _yunet_path(spec: DataSpec) -> Path:
    """YuNet from the shared assets when present, else through the model registry."""
    local = (spec.assets_dir or default_assets_dir()) / "models" / "face_detection_yunet_2023mar.onnx"
    if local.is_file():
        return local
    from swapwatch.engines.runtime import ensure_model

    return next(iter(ensure_model("yunet-2023mar").values()))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)
