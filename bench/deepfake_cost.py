#!/usr/bin/env python3
"""What the deepfake detector costs a live session: frame rate of serve's frame path with and without it.

Usage: python bench/deepfake_cost.py [--frames 150] [--sizes 640x480,1280x720] [--model DIR] [--json OUT.json]

Part 1 runs frames of a GRID clip (one face, resized to each size) one at a time through the server's own
path — `InferenceWorker.submit(FrameProcessor, frame)`: convert, detect + track (YuNet), monitor (watermark
check, and with a model the `DeepfakeDetector.score_faces` windows + alert policy), overlay, yuv output — in
`monitor` and `both` (classic swap + monitor) sessions, with no model, with the default model at the live
strides (scorer every 2nd frame of a track, head after every 5th score: serve's default) and with the
strides at 1 (every frame). The cost is 1 - fps(with) / fps(without); the issue allows at most 20%.

Part 2 times the two networks alone per backend: the frame scorer (ms per face, aligned crops at the model's size) and
the temporal head (ms per 20-frame window), at batch 1, 4 and 16, plus the crop alignment per face.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SWAPWATCH_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
os.environ.setdefault("SWAPWATCH_MODEL_MIRROR", str(ASSETS / "models"))
sys.path.insert(0, str(REPO / "bench"))

from machine import describe as describe_machine  # noqa: E402

from swapwatch.config import DetectorConfig, TrackingConfig  # noqa: E402
from swapwatch.engines.deepfake import DeepfakeDetector, WindowConfig, crop_faces  # noqa: E402
from swapwatch.engines.faces import create_detector  # noqa: E402
from swapwatch.engines.runtime import iter_video  # noqa: E402
from swapwatch.engines.deepfake import FrameMonitor  # noqa: E402
from swapwatch.engines.swap import create_swapper  # noqa: E402
from swapwatch.stream.offer import SessionSettings  # noqa: E402
from swapwatch.stream.processing import FrameProcessor  # noqa: E402
from swapwatch.stream.sources import SourceStore  # noqa: E402
from swapwatch.stream.worker import InferenceWorker  # noqa: E402

CLIP = "grid_lbbc2a.mpg"
SOURCE_PHOTO = "max_Luciano.png"
VARIANTS = (("no model", None), ("default model, strides 2/5", (2, 5)), ("default model, strides 1/1", (1, 1)))


def clip_frames(size: tuple[int, int], count: int) -> list[av.VideoFrame]:
    images = [f.image for f in iter_video(ASSETS / "videos" / CLIP)]
    out = []
    for i in range(count):  # play the clip forwards and backwards so the track never jumps
        k = i % (2 * len(images) - 2)
        image = images[k if k < len(images) else 2 * len(images) - 2 - k]
        out.append(av.VideoFrame.from_ndarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                                              format="bgr24"))
    return out


def make_processor(worker, face_detector, swapper, source, mode: str, deepfake, strides) -> FrameProcessor:
    if strides is None:
        factory = FrameMonitor
    else:
        live = deepfake.fork(WindowConfig(feature_stride=strides[0], score_stride=strides[1]))

        def factory():
            return FrameMonitor(detector=live)
    settings = SessionSettings(mode=mode, source=source.id if mode != "monitor" else None)

    def make():
        return FrameProcessor(face_detector, swapper, settings, source if mode != "monitor" else None,
                              tracking=TrackingConfig(), monitor_factory=factory)

    return worker.call(make).result()


def compare_variants(worker, processors: list[FrameProcessor], frames, rounds: int = 5, warm: int = 25) -> list[dict]:
    """Per-frame wall time of each processor on the same frames, in interleaved rounds (each round feeds
    every processor the next chunk of frames), so that load from other jobs hits all variants alike."""
    chunk = max(1, len(frames) // rounds)
    samples: list[list[float]] = [[] for _ in processors]
    for index, processor in enumerate(processors):  # warm-up: first use, track start, window fill
        for i in range(warm):
            worker.submit(processor, frames[i % len(frames)], i / 30.0).result()
    for r in range(rounds):
        for index, processor in enumerate(processors):
            for j in range(r * chunk, (r + 1) * chunk):
                t0 = time.perf_counter()
                worker.submit(processor, frames[j], (warm + j) / 30.0).result()
                samples[index].append(time.perf_counter() - t0)
    out = []
    for ts in samples:
        ts.sort()
        out.append({"fps": len(ts) / sum(ts), "p50_ms": 1000 * statistics.median(ts),
                    "p95_ms": 1000 * ts[int(0.95 * (len(ts) - 1))]})
    return out


def model_timings(backend: str, model: str | None = None, repeats: int = 30) -> list[dict]:
    detector = DeepfakeDetector.load(model, backend=backend)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 4, 16):
        size = detector.info.crop_size  # the model's own crop (128, or 150 for a dlib stem)
        crops = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        feats = rng.standard_normal((batch, detector.window, detector.info.feature_dim)).astype(np.float32)
        masks = np.ones((batch, detector.window), np.float32)
        row = {"backend": backend, "batch": batch}
        for name, fn in (("scorer_ms_per_face", lambda: detector.frame_features(crops)),
                         ("head_ms_per_window", lambda: detector.window_logits(feats, masks))):
            fn(), fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            row[name] = 1000 * statistics.median(ts) / batch
        rows.append(row)
    return rows


def align_ms(face_detector, frames: list[av.VideoFrame], template) -> float:
    image = frames[0].to_ndarray(format="bgr24")
    faces = face_detector.detect(image)
    ts = []
    for _ in range(50):
        t0 = time.perf_counter()
        crop_faces(image, [f.landmarks for f in faces], template)
        ts.append((time.perf_counter() - t0) / max(1, len(faces)))
    return 1000 * statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--sizes", default="640x480,1280x720")
    ap.add_argument("--modes", default="monitor,both")
    ap.add_argument("--backends", default="onnxruntime,torch")
    ap.add_argument("--model", default=None, help="detector folder (default: the committed default model)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

    print(f"machine: {describe_machine()}")
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    face_detector = create_detector(DetectorConfig(name="yunet"))
    swapper = create_swapper("classic").swapper
    deepfake = DeepfakeDetector.load(args.model)
    worker = InferenceWorker()
    worker.start()
    worker.attach()
    photo = cv2.imread(str(ASSETS / "faces" / SOURCE_PHOTO))
    source = SourceStore().add(photo, max(face_detector.detect(photo), key=lambda f: f.area))
    result = {"machine": describe_machine(), "model": args.model or "default", "clip": CLIP, "frames": args.frames, "sessions": [], "models": []}
    print("| mode | size | detector | fps | p50 ms | p95 ms | cost vs no model |")
    print("|---|---|---|---|---|---|---|")
    try:
        for size in sizes:
            frames = clip_frames(size, args.frames)
            for mode in args.modes.split(","):
                processors = [make_processor(worker, face_detector, swapper, source, mode, deepfake, strides)
                              for _, strides in VARIANTS]
                rows = compare_variants(worker, processors, frames)
                for (label, strides), r in zip(VARIANTS, rows):
                    r.update(mode=mode, size=f"{size[0]}x{size[1]}", variant=label, strides=strides,
                             cost=1 - r["fps"] / rows[0]["fps"])
                    result["sessions"].append(r)
                    print(f"| {mode} | {r['size']} | {label} | {r['fps']:.1f} | {r['p50_ms']:.1f} | "
                          f"{r['p95_ms']:.1f} | {100 * r['cost']:.0f}% |", flush=True)
        print("\n| backend | batch | scorer ms/face | head ms/window |")
        print("|---|---|---|---|")
        for backend in args.backends.split(","):
            for row in model_timings(backend, args.model):
                result["models"].append(row)
                print(f"| {backend} | {row['batch']} | {row['scorer_ms_per_face']:.2f} | "
                      f"{row['head_ms_per_window']:.2f} |", flush=True)
        result["align_ms_per_face"] = align_ms(face_detector, clip_frames((640, 480), 1), deepfake.template)
        print(f"\ncrop alignment: {result['align_ms_per_face']:.2f} ms per face")
    finally:
        worker.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
