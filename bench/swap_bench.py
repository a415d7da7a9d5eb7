#!/usr/bin/env python3
"""Milliseconds per face for each swap model, backend and precision, and InsightFace's INSwapper.get ratio.

Usage: python bench/swap_bench.py [--repeats 10] [--device cpu|cuda] [--json OUT.json]

Learned models run on seeded fixture checkpoints with the released architectures (tests/fixtures_*.py):
compute time depends on the architecture, not the weights, so SimSwap timings stand for the real models.
The inswapper fixture is a small stand-in with the released interface (the real graph is ~3.6x SimSwap-224),
so its row measures swapwatch's overhead against InsightFace's own ``INSwapper.get`` on the same ONNX, not
inswapper's speed. Faces: the real face photos of ../shared/assets, aligned from YuNet landmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # fixture builders

from machine import describe as describe_machine  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def faces_and_images(assets: Path):
    from swapwatch.engines.faces import YuNetDetector

    detector = YuNetDetector(assets / "models" / "face_detection_yunet_2023mar.onnx", backend="onnxruntime",
                             device="cpu")
    out = []
    for path in sorted((assets / "faces").iterdir()):
        image = cv2.imread(str(path))
        out.append((image, detector.detect(image)[0]))
    return out


def crops_for(swapper, faces, n: int) -> np.ndarray:
    from swapwatch.engines.faces import align_face

    crops = [align_face(img, f.landmarks, swapper.template).crop for img, f in faces]
    return np.stack([crops[i % len(crops)] for i in range(n)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("SWAPWATCH_SHARED_ASSETS",
                                                                       REPO.parent / "shared" / "assets")))
    ap.add_argument("--skip-512", action="store_true", help="skip SimSwap-512 (slow on a CPU)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from fixtures_insightface import build_insightface_fixtures
    from fixtures_simswap import build_arcface_model, build_generator_checkpoint

    from swapwatch.engines.swap import ArcFaceEmbedder, ClassicSwapper, InswapperSwapper, SimSwapSwapper
    from swapwatch.export.arcface import ResNet
    from swapwatch.export.simswap import export_generator_onnx, load_generator

    faces = faces_and_images(args.assets)
    tmp = Path(tempfile.mkdtemp(prefix="swapbench-"))
    rows = []
    print(f"machine: {describe_machine()}\n")
    print("| model | backend | precision | batch | ms per face | faces/s |")
    print("|---|---|---|---|---|---|")

    def report(model, backend, precision, swapper, batch):
        crops = crops_for(swapper, faces, batch)
        source = swapper.prepare_source(*faces[0])
        ms = timed(lambda: swapper.generate(crops, [source] * batch), args.repeats) / batch
        print(f"| {model} | {backend} | {precision} | {batch} | {ms:.2f} | {1000 / ms:.0f} |", flush=True)
        rows.append({"model": model, "backend": backend, "precision": precision, "batch": batch, "ms_per_face": ms})

    for batch in (1, 4):
        report("classic", "numpy/opencv", "uint8", ClassicSwapper(), batch)

    arc_model, _ = build_arcface_model()
    arc_state = arc_model.state_dict()
    arcface = ResNet()
    arcface.load_state_dict(arc_state)
    for size in (224,) if args.skip_512 else (224, 512):
        generator = load_generator(build_generator_checkpoint(tmp / f"G{size}.pth", size), size)
        torch_swapper = SimSwapSwapper.from_modules(generator, arcface, device=args.device)
        halves = [("fp32", torch_swapper)]
        if args.device == "cuda":
            halves.append(("fp16", SimSwapSwapper.from_modules(generator, arcface, device="cuda", half=True)))
        for precision, swapper in halves:
            for batch in (1, 4):
                report(f"simswap-{size}", f"torch-{args.device}", precision, swapper, batch)
        if args.device == "cpu":
            from swapwatch.export.arcface import export_arcface_onnx

            gen_onnx = export_generator_onnx(generator, tmp / f"G{size}.onnx")
            arc_onnx = export_arcface_onnx(arcface, tmp / "arcface.onnx")
            ort_swapper = SimSwapSwapper.from_onnx(gen_onnx, arc_onnx, backend="onnxruntime", device="cpu")
            for batch in (1, 4):
                report(f"simswap-{size}", "onnxruntime-cpu", "fp32", ort_swapper, batch)

    # inswapper fixture: ours vs InsightFace's INSwapper.get on the same ONNX, same faces, same process.
    from insightface.app.common import Face as InsightFace
    from insightface.model_zoo.inswapper import INSwapper

    files = build_insightface_fixtures(tmp / "insightface")
    embedder = ArcFaceEmbedder(files["arcface"], backend="onnxruntime", device="cpu")
    ours = InswapperSwapper(files["inswapper_fixed"], embedder, backend="onnxruntime", device="cpu")
    theirs = INSwapper(model_file=str(files["inswapper_fixed"]))
    source = ours.prepare_source(*faces[0])
    raw = source.extra["arcface"]
    src_face = InsightFace(embedding=raw)
    targets = [(img, InsightFace(kps=f.landmarks, bbox=f.box, det_score=f.score)) for img, f in faces]

    def ours_one():
        for img, f in faces:
            ours.swap_face(img, f, source)

    def theirs_one():
        for img, t in targets:
            theirs.get(img, t, src_face, paste_back=False)

    ms_ours = timed(ours_one, args.repeats) / len(faces)
    ms_theirs = timed(theirs_one, args.repeats) / len(faces)
    print(f"\ninswapper fixture (align + generate, one face per call, onnxruntime-cpu): swapwatch {ms_ours:.2f} ms, "
          f"InsightFace INSwapper.get {ms_theirs:.2f} ms, ratio {ms_theirs / ms_ours:.2f}x")
    rows.append({"model": "inswapper-fixture", "swapwatch_ms": ms_ours, "insightface_ms": ms_theirs})
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
