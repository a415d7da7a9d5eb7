"""Running the real `python -m swapwatch` entry point from tests, and its one-line error contract."""

from __future__ import annotations

import subprocess
import sys


def swapwatch_cmd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m swapwatch ARGS`` in a subprocess, output captured as text."""
    return subprocess.run([sys.executable, "-m", "swapwatch", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    """A failed command: non-zero exit, no traceback, exactly one stderr line, and it contains ``needle``."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]
