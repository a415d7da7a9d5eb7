"""Every setting of a training run (:class:`TrainConfig`), checked before any data is read, and the JSON form
of settings (its fingerprint ties a checkpoint to the settings that wrote it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from swapwatch.engines.deepfake.sbi import SBIConfig
from swapwatch.errors import InputError

REGION_TARGETS = ("diff", "boundary")
HEADS = ("gru", "residual", "mean")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Defaults train the committed default model in ~15 minutes on 2 cores."""

    out: Path = Path("out/deepfake")
    seed: int = 0
    # stage 1: frame scorer
    epochs: int = 12
    pairs_per_epoch: int = 2048  # (real, fake) pairs per epoch
    batch_pairs: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05  # AdamW's usual vision setting: with a handful of identities, memorising is the risk
    sbi_fraction: float = 0.6  # a pair's fake is self-blended with this probability, else a swap (if any)
    rank_weight: float = 1.0  # weight of the within-pair ranking loss (fake above its own real frame)
    bce_weight: float = 0.5  # weight of the per-frame BCE (keeps the logit calibrated)
    # stage 2: temporal head
    head_epochs: int = 8
    head_windows_per_epoch: int = 4096
    head_batch: int = 64
    head_lr: float = 3e-3
    head_renders: int = 3  # renders of each (track, kind) clip whose features the head trains on
    # "gru": the original head; "residual": the GRU corrects the window's mean frame logit (measured on the
    # first model: no better); "mean": the mean frame logit itself, nothing to train (HeadConfig.frame_mean).
    head: str = "gru"
    head_feature_noise: float = 0.5  # Gaussian noise on the standardised features while the head trains
    window: int = 20
    min_window: int = 6  # shortest (masked) window the head trains on
    max_rate: float = 3.0  # frame-rate changes: windows sample the clip every 0.5 .. max_rate frames
    drop_prob: float = 0.1  # a frame dropped (skipped)
    stall_prob: float = 0.05  # a frame repeated
    # models and crops
    scorer_size: int = 128
    scorer_widths: tuple[int, ...] = (16, 32, 64, 128)
    scorer_blocks: tuple[int, ...] = (1, 1, 1, 1)
    scorer_highpass: bool = False
    scorer_aux_map: float = 0.0  # weight of the altered-region map loss (0: no map head)
    scorer_local_topk: int = 0  # K > 0: the frame's evidence is the map's K largest cells (ScorerConfig.local_topk)
    # What the region map learns for a self-blended fake: "diff" (where it differs from its real frame) or
    # "boundary" (where the blend mask blends, Face X-ray's 4M(1-M)). Fakes without a mask always use "diff".
    region_target: str = "diff"
    scorer_stem: str = "resnet"  # "yunet": YuNet's first layers, started from its real weights (ScorerConfig.stem)
    # Learning-rate factor of the pretrained YuNet stem (no weight decay on it); 0 freezes it: its filters
    # were learned on far more faces than any training set here, and 17 people can only narrow them.
    stem_lr_scale: float = 0.1
    # Identity-independent evidence features beside the local evidence (ScorerConfig.evidence), e.g. ("hf", "seam").
    scorer_evidence: tuple[str, ...] = ()
    # 0: render fresh pairs for every batch. N: render N pairs once and draw every epoch's batches from them
    # (with flips): rendering, not the network, bounds a step on a CPU, so a pool buys many more steps.
    pair_pool: int = 0
    # Turn each training pair by a random multiple of 90 degrees (real and fake alike): a seam is a seam at
    # any angle, while "an edge across the forehead" is a position the blend masks' tops share with wrinkles.
    rotate_pairs: bool = False
    # Self-blend masks cut at a random forehead height (SBIConfig.top_cut), not at the outline's top or a
    # fixed line above the eyes: the seam's height then says nothing, as with rotation, but upright.
    vary_mask_top: bool = False
    face_scale: float = 0.75
    threshold: float = 0.5
    # K >= 2: fit the head's output calibration on K cross-fitted fold models (engines/deepfake/calibration.py), which
    # trains K more models. 0: the logit as trained.
    calibration_folds: int = 0
    # With calibration folds: the FAKE threshold is set so that at most this share of the out-of-fold (new
    # people's) real clips reach it, and the REAL threshold below all but 5% of their fakes; UNCERTAIN between.
    max_real_flagged: float = 0.05
    # data
    max_frames: int = 96  # first N frames of each video
    still_frames: int = 24  # a photo becomes a clip of this many jittered frames
    min_track_frames: int = 8
    val_identities: tuple[str, ...] = ()  # explicit held-out identities (else val_fraction of them, seeded)
    val_fraction: float = 0.25
    swap_fakes: bool = False  # swapwatch's own swaps as fakes
    swappers: tuple[str, ...] = ("classic",)
    autoencoder_steps: int = 600  # training steps of the autoencoder swapper (swappers "autoencoder")
    swap_sources: int = 0  # other identities swapped onto each track (see _self_source for why 0 on tiny data)
    self_swaps: bool = True  # also swap each track with its own face (another frame, or its mirror image)
    max_items: int | None = None  # quick runs: the first N items after sorting
    threads: int = 0  # torch threads (0: torch's default)
    cache_dir: Path | None = None  # face-track cache (default OUT/cache)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.head_epochs < 0:
            raise InputError("epochs must be >= 0")
        if not 1 <= self.min_window <= self.window:
            raise InputError("min_window must lie in [1, window]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError("val_fraction must lie in [0, 1)")
        if self.scorer_local_topk and self.scorer_aux_map <= 0:
            raise InputError("local evidence scores the region map: give --region-map a weight > 0")
        if self.region_target not in REGION_TARGETS:
            raise InputError(f"region target must be one of {', '.join(REGION_TARGETS)}")
        if self.head not in HEADS:
            raise InputError(f"head must be one of {', '.join(HEADS)}")
        if self.calibration_folds == 1 or self.calibration_folds < 0:
            raise InputError("calibration needs at least 2 folds (0: no calibration)")
        if self.stem_lr_scale < 0:
            raise InputError("stem_lr_scale must be >= 0 (0 freezes the stem)")
        self.scorer_config()  # crop size, widths and K checked before any data is read

    def sbi_config(self) -> SBIConfig:
        """How training self-blends are drawn."""
        return SBIConfig(top_cut=(0.0, 1.0)) if self.vary_mask_top else SBIConfig()

    def scorer_config(self):
        """The frame scorer's :class:`~swapwatch.export.deepfake.ScorerConfig` (InputError when inconsistent)."""
        from swapwatch.export.deepfake import ScorerConfig

        try:
            return ScorerConfig(self.scorer_size, self.scorer_widths, self.scorer_blocks,
                                highpass=self.scorer_highpass, aux_map=self.scorer_aux_map > 0,
                                local_topk=self.scorer_local_topk, stem=self.scorer_stem,
                                evidence=self.scorer_evidence, face_scale=self.face_scale)
        except ValueError as exc:
            raise InputError(f"scorer: {exc}") from None

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the checkpoint (epoch counts may grow)."""
        skip = {"out", "epochs", "head_epochs", "threads", "cache_dir", "progress"}
        return {k: jsonable(v) for k, v in asdict(self).items() if k not in skip}


def jsonable(value: Any) -> Any:
    """``value`` as JSON holds it: paths as text, tuples as lists, non-finite floats as null."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
