"""Deepfake detection: the detector at run time, its alerts, offline verdicts, evaluation and training.

- ``detector``: the frame scorer and temporal head behind the engine layer, per-track sliding windows.
- ``alerts``: the alert policy (hysteresis, dwell, refractory); ``monitor``: a live stream's frames to alerts,
  with swapwatch's own watermark checked first; ``verdict``: a video's REAL/FAKE report; ``evaluation``:
  metrics on labelled sets.
- ``training``, ``sbi`` (self-blended pseudo-fakes), ``calibration``: making a detector.

Uses ``runtime``, ``faces`` and ``swap`` (the watermark, swapwatch-made fakes for training).
"""

from swapwatch.engines import lazy_exports

# Public name -> the module that defines it; imported on first use (importing a room costs nothing).
__getattr__, __dir__ = lazy_exports(__name__, {
    "AlertEvent": "alerts", "AlertPolicy": "alerts", "AlertPolicyConfig": "alerts", "EVENTS": "alerts",
    "KINDS": "alerts",
    "fit_platt": "calibration", "identity_folds": "calibration",
    "DEFAULT_MODEL_DIR": "detector", "DeepfakeDetector": "detector", "DetectorInfo": "detector",
    "HEAD_FILE": "detector", "INFO_FILE": "detector", "SCORER_FILE": "detector", "WindowConfig": "detector",
    "create_deepfake_detector": "detector", "crop_faces": "detector", "score_video": "detector",
    "sigmoid": "detector",
    "CALIBRATION_BINS": "evaluation", "Evaluator": "evaluation", "StreamSettings": "evaluation",
    "evaluate": "evaluation", "reliability_bins": "evaluation", "roc_curve": "evaluation",
    "stream_summary": "evaluation",
    "DeepfakeScorer": "monitor", "FrameMonitor": "monitor", "MODEL_POLICY": "monitor", "MonitorConfig": "monitor",
    "MonitorOverlay": "monitor", "MonitorState": "monitor", "WATERMARK_TRACK": "monitor",
    "BLEND_RATIOS": "sbi", "SBIConfig": "sbi", "SBIParams": "sbi", "SelfBlender": "sbi", "jpeg": "sbi",
    "DataSpec": "training", "DetectorTrainer": "training", "FAKE": "training", "MediaItem": "training",
    "REAL": "training", "TrainConfig": "training", "collect_items": "training", "dfdc_items": "training",
    "ffpp_items": "training", "folder_items": "training", "pack_windows": "training", "prepare_data": "training",
    "roc_auc": "training", "rotate_pairs": "training", "sample_window": "training", "split_identities": "training",
    "train": "training",
    "detect_video": "verdict", "plot_report": "verdict",
})
