"""One line naming the machine a benchmark ran on: CPU, cores, GPU and the library versions that matter."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cv2
    import onnxruntime
    import torch

    try:
        import av

        pyav = av.__version__
    except ImportError:  # the GPU machine's image has no PyAV
        pyav = "absent"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())}), "
            f"OpenCV {cv2.__version__}, PyAV {pyav}")
