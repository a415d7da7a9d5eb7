"""Validation while training: the held-out clips (:class:`ValSet`, rendered once with a fixed seed) and the
frame- and window-level metrics logged after every epoch, computed by the scorer and head in eval mode
(:class:`TrainerValidation`, the validation half of
:class:`~swapwatch.engines.deepfake.training.DetectorTrainer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from swapwatch.engines.deepfake.datasets import FAKE, REAL
from swapwatch.engines.deepfake.detector import sigmoid, to_input
from swapwatch.engines.deepfake.evaluation import roc_auc
from swapwatch.engines.deepfake.renders import ClipRenderer, clip_positions, pack_windows
from swapwatch.engines.deepfake.tracks import FaceTrack, TrainingData
from swapwatch.engines.deepfake.train_config import TrainConfig

if TYPE_CHECKING:
    from swapwatch.export.deepfake import FrameScorer, TemporalHead


@dataclass
class ValSet:
    """Validation clips rendered once: per clip its crops, label, kind and name."""

    crops: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


class TrainerValidation:
    """What :class:`~swapwatch.engines.deepfake.training.DetectorTrainer` validates with (a mixin): the
    trainer sets the attributes below, builds ``val`` and ``probe`` with :meth:`_render_val`, and logs
    :meth:`validate_frames` and :meth:`validate_head` after every epoch."""

    config: TrainConfig
    data: TrainingData
    val_renderer: ClipRenderer
    scorer: FrameScorer
    head: TemporalHead
    val: ValSet
    probe: ValSet
    _val_features: list[np.ndarray] | None

    def _render_val(self, tracks: Sequence[FaceTrack] | None = None, frames: int | None = None,
                    stream: int = 3) -> ValSet:
        """Real, self-blended and swapped clips of every held-out track, plus labelled val fakes, rendered
        once with a fixed seed. With ``tracks`` and ``frames``: the first frames of those tracks instead (the
        training-set probe that tells fitting from generalising)."""
        val = ValSet()
        cfg = self.config
        probe = tracks is not None
        for n, track in enumerate(self.data.val_real if tracks is None else tracks):
            rng = np.random.default_rng([cfg.seed, stream, n])
            pos = clip_positions(track, cfg.still_frames)[:frames]
            swaps = {f"swap{j}": s for j, s in enumerate(self.data.swaps_of(track))}
            # The real clip as it is (not a self-blend's recoloured target) and its fakes, all under the same
            # ClipAugment draw: it is the first draw of each render, so two generators with one seed agree.
            kinds = ["real", *swaps, "sbi"]
            rendered = self.val_renderer.render(track, pos, kinds[:-1], rng, swaps)
            rendered += self.val_renderer.render(track, pos, ["sbi"], np.random.default_rng([cfg.seed, stream, n]))
            for kind, crops in zip(kinds, rendered):
                val.crops.append(crops)
                val.labels.append(REAL if kind == "real" else FAKE)
                val.kinds.append(swaps[kind].kind if kind in swaps else kind)
                val.names.append(f"{track.identity}:{swaps[kind].origin if kind in swaps else kind}")
        for n, track in enumerate([] if probe else self.data.val_fake):
            rng = np.random.default_rng([cfg.seed, 4, n])
            val.crops.append(self.val_renderer.render(track, clip_positions(track, cfg.still_frames), ["real"], rng)[0])
            val.labels.append(FAKE)
            val.kinds.append("labelled")
            val.names.append(f"{track.identity}:{track.origin}")
        return val

    def features(self, crops: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Scorer features and frame probabilities of (N, S, S, 3) crops, in eval mode."""
        import torch

        self.scorer.eval()
        feats, probs = [], []
        with torch.inference_mode():
            for s in range(0, len(crops), batch):
                f, lg = self.scorer(torch.from_numpy(to_input(crops[s:s + batch])))
                feats.append(f.numpy())
                probs.append(sigmoid(lg.numpy()))
        return np.concatenate(feats), np.concatenate(probs)

    def validate_frames(self) -> dict:
        """Frame-level AUC on the held-out identities, overall and per fake kind, and the AUC of the mean frame
        probability over full windows (the head's baseline)."""
        if not self.val.crops:
            return {}
        clip_feats, clip_probs = zip(*(self.features(c) for c in self.val.crops))
        self._val_features = list(clip_feats)
        out = {}
        labels = np.concatenate([[y] * len(p) for y, p in zip(self.val.labels, clip_probs)])
        kinds = np.concatenate([[k] * len(p) for k, p in zip(self.val.kinds, clip_probs)])
        probs = np.concatenate(clip_probs)
        out["frame_auc"] = roc_auc(labels, probs)
        for kind in sorted(set(self.val.kinds) - {"real"}):
            keep = (kinds == "real") | (kinds == kind)
            out[f"frame_auc_{kind}"] = roc_auc(labels[keep], probs[keep])
        wl, ws, _, _ = self._val_windows(lambda seqs, masks: np.array([
            float(np.mean(s[m > 0])) for s, m in zip(seqs, masks)]), use_probs=clip_probs)
        out["window_mean_auc"] = roc_auc(wl, ws)
        probe = [self.features(c)[1] for c in self.probe.crops]
        out["train_frame_auc"] = roc_auc(np.concatenate([[y] * len(p) for y, p in zip(self.probe.labels, probe)]),
                                         np.concatenate(probe))
        for name, label in (("real", REAL), ("fake", FAKE)):
            means = [p.mean() for p, y in zip(clip_probs, self.val.labels) if y == label]
            out[f"{name}_clip_mean_prob"] = float(np.mean(means))
        return out

    def _val_windows(self, score: Callable, *, use_probs=None, stride: int = 5):
        """Every full window (stride 5) of every val clip -> (labels, scores, kinds, index of the window's clip)."""
        w = self.config.window
        labels, kinds, clips, seqs = [], [], [], []
        source = use_probs if use_probs is not None else self._val_features
        for clip, (values, y, kind) in enumerate(zip(source, self.val.labels, self.val.kinds)):
            values = np.asarray(values, np.float32)
            if values.ndim == 1:
                values = values[:, None]
            ends = list(range(min(w, len(values)) - 1, len(values), stride))
            for e in ends:
                seqs.append(values[max(0, e + 1 - w):e + 1])
                labels.append(y)
                kinds.append(kind)
                clips.append(clip)
        feats, masks = pack_windows(seqs, w)
        scores = score(feats[..., 0] if use_probs is not None else feats, masks)
        return np.asarray(labels), np.asarray(scores), np.asarray(kinds), np.asarray(clips)

    def _head_logits(self, feats: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The head's logits of packed windows, in eval mode."""
        import torch

        self.head.eval()
        with torch.inference_mode():
            return self.head(torch.from_numpy(feats), torch.from_numpy(masks)).numpy()

    def window_logits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(labels, head logits, kinds, clip names "identity:kind-or-origin") of every full validation window
        (stride 5)."""
        labels, logits, kinds, clips = self._head_windows()
        seen: dict[str, int] = {}
        unique = []  # one identity can have several tracks (a clip and a photo): number the repeats
        for name in self.val.names:
            seen[name] = seen.get(name, 0) + 1
            unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return labels, logits, kinds, np.asarray(unique, dtype=object)[clips]

    def _head_windows(self):
        if self._val_features is None:
            self.validate_frames()
        return self._val_windows(self._head_logits)

    def validate_head(self) -> dict:
        if not self.val.crops:
            return {}
        labels, logits, kinds, clips = self._head_windows()
        scores = sigmoid(logits)
        out = {"window_auc": roc_auc(labels, scores)}
        for kind in sorted(set(kinds.tolist()) - {"real"}):
            keep = (kinds == "real") | (kinds == kind)
            out[f"window_auc_{kind}"] = roc_auc(labels[keep], scores[keep])
        thr = self.config.threshold
        out["real_windows_flagged"] = float(np.mean(scores[labels == REAL] >= thr)) if (labels == REAL).any() else None
        out["fake_windows_flagged"] = float(np.mean(scores[labels == FAKE] >= thr)) if (labels == FAKE).any() else None
        out["clips"] = [{"clip": name, "label": "FAKE" if y else "REAL",
                         "mean_window_prob": round(float(np.mean(scores[clips == i])), 4)}
                        for i, (name, y) in enumerate(zip(self.val.names, self.val.labels))]
        return out
