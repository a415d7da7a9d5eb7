"""What ``swapwatch bench`` runs and reports: the server's frame path and the plain loop, side by side.

- ``benchmark``: the configuration, the run and the report; ``baseline``: the loop users of InsightFace and
  OpenCV write; ``runners``, ``device_runner``: the two sides; ``models``, ``media``: their models and input;
  ``stats``, ``report``: stage timing and the table.

Uses every other room; nothing but the ``bench`` command (and its tests) uses this one.
"""

from swapwatch.engines import lazy_exports

# Public name -> the module that defines it; imported on first use (importing a room costs nothing).
__getattr__, __dir__ = lazy_exports(__name__, {
    "BaselineLoop": "baseline", "StageClock": "baseline",
    "BenchConfig": "benchmark", "STAGES": "benchmark", "StageStats": "benchmark", "default_clips": "benchmark",
    "format_report": "benchmark", "open_decoder": "benchmark", "plot_stages": "benchmark",
    "prepare_input": "benchmark", "run_bench": "benchmark", "stderr_progress": "benchmark", "workdir": "benchmark",
})
