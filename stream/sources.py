"""Uploaded source faces, held in memory only (nothing a user sends is written to disk)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from swapwatch.engines.faces import Face
from swapwatch.engines.swap import SourceIdentity


@dataclass
class SourceFace:
    """An uploaded source photo and its largest face. ``identities`` caches the swapper's prepared identity
    (by swapper name) so that sessions sharing a photo compute it once; only the worker thread fills it."""

    id: str
    image: np.ndarray
    face: Face
    created: float = field(default_factory=time.monotonic)
    identities: dict[str, SourceIdentity] = field(default_factory=dict)


class SourceStore:
    """Uploaded source faces by unguessable id, bounded so uploads cannot exhaust memory."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: dict[str, SourceFace] = {}

    def add(self, image: np.ndarray, face: Face) -> SourceFace:
        while len(self._items) >= self.capacity:  # evict the oldest; live sessions keep their own reference
            self._items.pop(next(iter(self._items)))
        item = SourceFace(secrets.token_urlsafe(16), image, face)
        self._items[item.id] = item
        return item

    def get(self, source_id: str) -> SourceFace | None:
        return self._items.get(source_id)

    def __len__(self) -> int:
        return len(self._items)
