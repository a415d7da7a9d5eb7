"""Plots written to PNG files with matplotlib's non-interactive backend (the server has no display)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from swapwatch.errors import InputError


@contextlib.contextmanager
def png_figure(out: str | Path, *, width: float = 9.0, height: float = 4.0, dpi: int = 110, **subplots) -> Iterator:
    """``with png_figure("out.png") as (fig, ax): ...`` draws on a fresh figure and writes it atomically (a
    ``.part`` file renamed into place) when the block ends; nothing is written when the block raises."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise InputError(f"cannot write plot {out}: folder {out.parent} does not exist")
    fig, ax = plt.subplots(figsize=(width, height), dpi=dpi, **subplots)
    try:
        yield fig, ax
        fig.tight_layout()
        part = out.with_name(out.name + ".part")
        fig.savefig(part, format="png")
        os.replace(part, out)
    finally:
        plt.close(fig)
