"""Deepfake detection: the detector at run time, its alerts, offline verdicts, evaluation and training.

- ``detector``: the frame scorer and temporal head behind the engine layer, per-track sliding windows.
- ``thresholds``: a model's FAKE and REAL thresholds and the verdict they give (REAL, UNCERTAIN, FAKE), fitted
  on held-out scores.
- ``alerts``: the alert policy (hysteresis, dwell, refractory); ``monitor``: a live stream's frames to alerts
  and live verdicts, with swapwatch's own watermark checked first; ``verdict``: a video's REAL/UNCERTAIN/FAKE
  report; ``evaluation``: metrics on labelled sets.
- Making a detector: ``datasets`` (training media, identity split), ``tracks`` (face tracks cut from the media,
  swapwatch's own swaps of them, a run's data), ``sbi`` (self-blended pseudo-fakes), ``aefakes`` (an autoencoder
  trained here, whose re-renderings are a learned generator's fakes), ``renders`` (per-clip augmentation,
  aligned crops, training windows), ``train_config`` (every setting of a run), ``training`` (the
  two stages, checkpoints, export; ``train``), ``validation`` (held-out clips and metrics while training),
  ``calibration`` (cross-fitted calibration).

Uses ``runtime``, ``faces`` and ``swap`` (the watermark, swapwatch-made fakes for training).
"""

from swapwatch.engines import lazy_exports

# Public name -> the module that defines it; imported on first use (importing a room costs nothing).
__getattr__, __dir__ = lazy_exports(__name__, {
    "AlertEvent": "alerts", "AlertPolicy": "alerts", "AlertPolicyConfig": "alerts", "EVENTS": "alerts",
    "KINDS": "alerts",
    "AutoencoderConfig": "aefakes", "AutoencoderNet": "aefakes", "AutoencoderSwapper": "aefakes",
    "train_autoencoder": "aefakes",
    "fit_platt": "calibration", "identity_folds": "calibration",
    "ChangeConfig": "change", "ChangePolicy": "change",
    "DataSpec": "datasets", "FAKE": "datasets", "MediaItem": "datasets", "REAL": "datasets",
    "collect_items": "datasets", "dfdc_items": "datasets", "ffpp_items": "datasets", "folder_items": "datasets",
    "split_identities": "datasets",
    "EvidenceConfig": "evidence", "EvidenceFeatures": "evidence", "evidence_crops": "evidence", "flicker": "evidence",
    "DEFAULT_MODEL_DIR": "detector", "DeepfakeDetector": "detector", "DetectorInfo": "detector",
    "HEAD_FILE": "detector", "INFO_FILE": "detector", "SCORER_FILE": "detector", "WindowConfig": "detector",
    "create_deepfake_detector": "detector", "crop_faces": "detector", "score_video": "detector",
    "sigmoid": "detector",
    "CALIBRATION_BINS": "evaluation", "Evaluator": "evaluation", "StreamSettings": "evaluation",
    "evaluate": "evaluation", "reliability_bins": "evaluation", "roc_auc": "evaluation", "roc_curve": "evaluation",
    "stream_summary": "evaluation", "verdict_counts": "evaluation",
    "DeepfakeScorer": "monitor", "FrameMonitor": "monitor", "MODEL_POLICY": "monitor", "MonitorConfig": "monitor",
    "MonitorOverlay": "monitor", "MonitorState": "monitor", "VerdictEvent": "monitor", "WATERMARK_TRACK": "monitor",
    "live_thresholds": "monitor", "model_policy_for": "monitor",
    "pack_windows": "renders", "rotate_pairs": "renders", "sample_window": "renders",
    "BLEND_RATIOS": "sbi", "SBIConfig": "sbi", "SBIParams": "sbi", "SelfBlender": "sbi", "jpeg": "sbi",
    "prepare_data": "tracks",
    "ThresholdFit": "thresholds", "Thresholds": "thresholds", "VERDICTS": "thresholds",
    "TrainConfig": "train_config",
    "DetectorTrainer": "training", "train": "training",
    "WatermarkEvidence": "verdict", "detect_video": "verdict", "plot_report": "verdict",
})
