#!/usr/bin/env python3
"""Face-detection latency per frame, for each detector and backend, at 640x480 and 1280x720.

Usage: python bench/detect_bench.py [--repeats 30] [--json OUT.json]

Input: InsightFace's bundled group photo t1.jpg (six faces) resized to each resolution, so every run
detects the same real faces. Prints a markdown table (median and p95 ms) with the machine in the header.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from swapwatch.config import DetectorConfig  # noqa: E402
from swapwatch.engines.faces import create_detector
from swapwatch.errors import SwapwatchError

from machine import describe as describe_machine  # noqa: E402  (bench/ is on sys.path when run)

RESOLUTIONS = ((640, 480), (1280, 720))
CASES = (("mtcnn", "torch"), ("mtcnn", "onnxruntime"), ("yunet", "onnxruntime"), ("scrfd", "onnxruntime"))


def frame_at(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def time_detector(detector, frame: np.ndarray, repeats: int) -> tuple[float, float, int]:
    faces = detector.detect(frame)  # warm-up (and lazy initialisation)
    detector.detect(frame)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.detect(frame)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))], len(faces)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args()

    import insightface

    image = cv2.imread(str(Path(insightface.__file__).parent / "data/images/t1.jpg"))
    rows = []
    print(f"machine: {describe_machine()}\n")
    print("| detector | backend | device | resolution | faces | p50 ms | p95 ms | fps (p50) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, backend in CASES:
        try:
            # torch rows follow --device; ONNX Runtime picks its best provider (CUDA where onnxruntime-gpu is).
            device = args.device if backend == "torch" else "auto"
            detector = create_detector(DetectorConfig(name=name, backend=backend, device=device))
        except SwapwatchError as exc:
            print(f"| {name} | {backend} | - | - | - | skipped: {exc} | | |")
            rows.append({"detector": name, "backend": backend, "skipped": str(exc)})
            continue
        engine = getattr(detector, "engine", None) or getattr(detector, "pnet", None)
        device = engine.device if engine is not None else "?"
        for size in RESOLUTIONS:
            p50, p95, n = time_detector(detector, frame_at(image, size), args.repeats)
            print(f"| {name} | {backend} | {device} | {size[0]}x{size[1]} | {n} | {p50:.1f} | {p95:.1f} | "
                  f"{1000 / p50:.0f} |")
            rows.append({"detector": name, "backend": backend, "device": str(device),
                         "resolution": f"{size[0]}x{size[1]}", "faces": n, "p50_ms": p50, "p95_ms": p95})
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
