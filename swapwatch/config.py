"""All of swapwatch's settings in one dataclass tree, with defaults that work offline on a CPU."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DetectorConfig:
    name: str = "yunet"  # mtcnn | yunet | scrfd
    backend: str = "auto"  # auto | tensorrt | onnxruntime | torch
    device: str = "auto"  # auto | cpu | cuda
    model_path: str | None = None  # an explicit model file instead of the registry's (SCRFD: det_10g.onnx)
    score_threshold: float | None = None  # None: the detector's own default


@dataclass(frozen=True)
class TrackingConfig:
    detect_every: int = 1  # run the detector every k frames, track with optical flow in between
    smoothing: bool = True  # One Euro filter on landmarks and boxes against jitter


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4
    max_upload_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
