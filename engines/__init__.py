"""Everything that runs a model at serving time, in five rooms (ARCHITECTURE.md):

- ``runtime``: engines and backends, the model registry, verified fetching, media reading and writing;
- ``faces``: detectors, alignment, tracking;
- ``swap``: swappers, identities, masks and paste-back, labelling, the swap pipeline and its device path;
- ``deepfake``: the detector, alerts, monitor, verdicts, evaluation and training;
- ``bench``: what ``swapwatch bench`` runs.

Imports run one way: ``runtime`` <- ``faces`` <- ``swap`` <- ``deepfake`` <- ``bench`` (each may use the rooms
before it; tests/test_architecture.py checks it). The rest of the project imports a room's public names from
the room (``from swapwatch.engines.faces import YuNetDetector``); a room's own modules import each other
directly. ``weights/`` holds the weights that ship inside the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a room's ``__init__``: each public name in ``exports`` (name ->
    module of the room) is imported from its module when first used, so importing a room imports nothing
    heavy (``swapwatch --help`` stays free of torch) and no room imports another's modules at import time."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
