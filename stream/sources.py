"""Uploaded source faces, held in memory only (nothing a user sends is written to disk).

Each source belongs to the client that uploaded it (its address), which holds at most ``per_client`` of them;
the store holds at most ``capacity`` in all. Room is made by evicting a source that no live session uses: the
uploader's own oldest first when it is over its quota, else the oldest of whichever client holds the most, so
one client uploading photo after photo evicts its own and never another client's source in use (issue 17).
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from swapwatch.engines.faces import Face
from swapwatch.engines.swap import SourceIdentity


@dataclass
class SourceFace:
    """An uploaded source photo and its largest face. ``identities`` caches the swapper's prepared identity
    (by swapper name) so that sessions sharing a photo compute it once; only the worker thread fills it.
    ``owner``: the uploading client's address."""

    id: str
    image: np.ndarray
    face: Face
    created: float = field(default_factory=time.monotonic)
    identities: dict[str, SourceIdentity] = field(default_factory=dict)
    owner: str = "unknown"


class SourceQuotaExceeded(Exception):
    """No room for another source: ``status`` 429 (this client's sources are all in use) or 503 (everyone's)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SourceStore:
    """Uploaded source faces by unguessable id, bounded in all and per client so uploads cannot exhaust memory
    or push out other clients' sources. ``in_use()``: the ids live sessions use (never evicted)."""

    def __init__(self, capacity: int = 64, per_client: int = 8,
                 in_use: Callable[[], Collection[str]] = frozenset) -> None:
        if capacity < 1 or per_client < 1:
            raise ValueError("source capacity and per-client quota must be at least 1")
        self.capacity = capacity
        self.per_client = per_client
        self.in_use = in_use
        self._items: dict[str, SourceFace] = {}  # oldest first
        self.evicted = 0

    def add(self, image: np.ndarray, face: Face, owner: str = "unknown") -> SourceFace:
        """Keep a new source for ``owner``, evicting as the module says (:class:`SourceQuotaExceeded` when
        every candidate is in use)."""
        used = set(self.in_use())
        mine = [s for s in self._items.values() if s.owner == owner]
        if len(mine) >= self.per_client:
            spare = [s for s in mine if s.id not in used]
            if not spare:
                raise SourceQuotaExceeded(429, f"you have {len(mine)} source photos in use (at most "
                                               f"{self.per_client}); end a session that uses one first")
            self._evict(spare[0])
        if len(self._items) >= self.capacity:
            spare = [s for s in self._items.values() if s.id not in used]
            if not spare:
                raise SourceQuotaExceeded(503, f"the server holds {len(self._items)} source photos, all in use; "
                                               "try again later")
            held = Counter(s.owner for s in spare)
            self._evict(next(s for s in spare if held[s.owner] == max(held.values())))
        item = SourceFace(secrets.token_urlsafe(16), image, face, owner=owner)
        self._items[item.id] = item
        return item

    def _evict(self, item: SourceFace) -> None:
        # Sessions using a source hold their own reference; this only forgets the id.
        del self._items[item.id]
        self.evicted += 1

    def get(self, source_id: str) -> SourceFace | None:
        return self._items.get(source_id)

    def of(self, owner: str) -> int:
        return sum(s.owner == owner for s in self._items.values())

    def __len__(self) -> int:
        return len(self._items)
