"""The interface every face-swap model implements, learned (SimSwap, inswapper) or not (classic).

A swapper works on aligned crops: the pipeline aligns each target face to ``swapper.template``, calls
``generate`` on the batch, and pastes the results back. The source identity is prepared once per source
photo (``prepare_source``) and reused for every frame.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swapwatch.engines.faces import CropTemplate, Face


@dataclass(frozen=True)
class SourceIdentity:
    """What a swapper needs from one source photo: an identity vector for learned models (L2-normalised,
    shape (D,)), and the aligned source crop (BGR uint8) that the weight-free swapper pastes."""

    swapper: str
    embedding: np.ndarray | None
    crop: np.ndarray | None
    extra: dict[str, Any] = field(default_factory=dict)


class Swapper(abc.ABC):
    name: str = "?"
    template: CropTemplate  # the crop the model works on (size and 5-point template)
    learned: bool = True  # False for the weight-free classic swapper (the UI and outputs say so)

    @abc.abstractmethod
    def prepare_source(self, image_bgr: np.ndarray, face: Face) -> SourceIdentity:
        """Identity of ``face`` in ``image_bgr`` (computed once per source photo and cached by the caller)."""

    def checked_batch(self, target_crops: np.ndarray, sources: list[SourceIdentity]) -> np.ndarray:
        """``target_crops`` as an (N, S, S, 3) uint8 array at the template's size, one source per crop, or
        ValueError saying what came instead."""
        size = self.template.size
        targets = np.asarray(target_crops)
        if targets.ndim != 4 or targets.shape[1:] != (size, size, 3) or targets.dtype != np.uint8:
            raise ValueError(f"expected (N, {size}, {size}, 3) uint8 target crops, got {targets.shape} "
                             f"{targets.dtype}")
        if len(sources) != len(targets):
            raise ValueError(f"{len(targets)} target crops but {len(sources)} sources")
        return targets

    @abc.abstractmethod
    def generate(self, target_crops: np.ndarray, sources: list[SourceIdentity]) -> np.ndarray:
        """Swap a batch: ``target_crops`` (N, S, S, 3) BGR uint8 aligned to ``template``, one source per crop.

        Returns (N, S, S, 3) BGR uint8 crops with the source identity, in the same alignment.
        """
