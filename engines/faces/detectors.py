"""Build a face detector by name, its model files resolved through the registry."""

from __future__ import annotations

from pathlib import Path

from swapwatch.config import DetectorConfig
from swapwatch.engines.faces.face import FaceDetector
from swapwatch.errors import InputError

DETECTORS = ("mtcnn", "yunet", "scrfd")
# Registry entry that provides each detector's weights when no explicit model path is given.
DEFAULT_MODEL = {"mtcnn": "mtcnn", "yunet": "yunet-2023mar", "scrfd": "scrfd-10g"}


def create_detector(config: DetectorConfig) -> FaceDetector:
    from swapwatch.engines.runtime import ensure_model

    if config.name not in DETECTORS:
        raise InputError(f"unknown detector {config.name!r}; choose from {', '.join(DETECTORS)}")
    explicit = Path(config.model_path) if config.model_path else None
    if explicit is not None and not explicit.exists():
        raise InputError(f"{explicit}: no such model file")
    thresholds = {} if config.score_threshold is None else {"score_threshold": config.score_threshold}

    if config.name == "mtcnn":
        from swapwatch.engines.faces.mtcnn import MTCNNConfig, MTCNNDetector

        weights_dir = explicit if explicit is not None else next(iter(ensure_model("mtcnn").values())).parent
        cascade = MTCNNConfig()
        if config.score_threshold is not None:  # the user's threshold applies to the final stage (ONet)
            cascade = MTCNNConfig(thresholds=(*cascade.thresholds[:2], config.score_threshold))
        return MTCNNDetector.from_weights(weights_dir, backend=config.backend, device=config.device,
                                          config=cascade)
    model = explicit if explicit is not None else next(iter(ensure_model(DEFAULT_MODEL[config.name]).values()))
    if config.name == "yunet":
        from swapwatch.engines.faces.yunet import YuNetDetector

        return YuNetDetector(model, backend=config.backend, device=config.device, **thresholds)
    from swapwatch.engines.faces.scrfd import SCRFDDetector

    return SCRFDDetector(model, backend=config.backend, device=config.device, **thresholds)
