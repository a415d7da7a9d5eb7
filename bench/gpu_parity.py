#!/usr/bin/env python3
"""GPU-versus-CPU parity of the paths that run on the device, printed as one table.

1. Batched alignment warp (torch grid_sample) on CUDA against cv2.warpAffine on the CPU.
2. MTCNN on CUDA (torch) against MTCNN on the CPU (ONNX Runtime): boxes and landmarks.
3. SimSwap generator (seeded fixture weights, released architecture) fp16 against fp32 on CUDA:
   max abs error, and a visual diff image written to OUT/simswap_fp16_diff.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("SWAPWATCH_SHARED_ASSETS",
                                                                       REPO.parent / "shared" / "assets")))
    ap.add_argument("--weights", type=Path, required=True, help="folder with pnet.pt, rnet.pt, onet.pt")
    ap.add_argument("--t1", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    from swapwatch.engines.faces import (
        ARCFACE_112, FFHQ_512, MTCNNDetector, SIMSWAP_224, estimate_alignment, warp_batch_torch,
    )

    t1 = cv2.imread(str(args.t1))
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| check | measure | value |\n|---|---|---|")

    cpu_det = MTCNNDetector.from_weights(args.weights, backend="onnxruntime", device="cpu",
                                         onnx_dir=Path(tempfile.mkdtemp()))
    gpu_det = MTCNNDetector.from_weights(args.weights, backend="torch", device="cuda")
    cpu_faces, gpu_faces = cpu_det.detect(t1), gpu_det.detect(t1)
    print(f"| MTCNN cuda vs cpu on t1.jpg | faces (cpu, cuda) | {len(cpu_faces)}, {len(gpu_faces)} |")
    if len(cpu_faces) == len(gpu_faces):
        box = max(float(np.abs(a.box - b.box).max()) for a, b in zip(cpu_faces, gpu_faces))
        lmk = max(float(np.abs(a.landmarks - b.landmarks).max()) for a, b in zip(cpu_faces, gpu_faces))
        print(f"| MTCNN cuda vs cpu on t1.jpg | max box / landmark diff (px) | {box:.3f} / {lmk:.3f} |")

    image = torch.from_numpy(t1).permute(2, 0, 1)[None].float().cuda()
    for template in (ARCFACE_112, SIMSWAP_224, FFHQ_512):
        worst = 0.0
        for face in cpu_faces:
            m = estimate_alignment(face.landmarks, template)
            ref = cv2.warpAffine(t1.astype(np.float32), m, (template.size, template.size), flags=cv2.INTER_LINEAR)
            out = warp_batch_torch(image, m[None], template.size)[0].permute(1, 2, 0).cpu().numpy()
            inner = (slice(2, -2), slice(2, -2))
            worst = max(worst, float(np.abs(out[inner] - ref[inner]).max()))
        print(f"| warp_batch_torch cuda vs cv2.warpAffine ({template.name}) | max abs diff (0-255) | {worst:.4f} |")

    from fixtures_simswap import build_generator_checkpoint

    from swapwatch.export.simswap import example_inputs, load_generator

    for size in (224, 512):
        gen = load_generator(build_generator_checkpoint(Path(tempfile.mkdtemp()) / "G.pth", size), size)
        gen = gen.cuda().eval()
        target, source = (t.cuda() for t in example_inputs(size, batch=4, seed=0))
        with torch.inference_mode():
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            fp32 = gen(target, source).float()
            fp16 = gen.half()(target.half(), source.half()).float()
        diff = (fp16 - fp32).abs()
        print(f"| SimSwap-{size} fp16 vs fp32 (cuda, fixture weights) | max / mean abs error ([0,1] image) | "
              f"{diff.max().item():.2e} / {diff.mean().item():.2e} |")
        vis = (diff[0].permute(1, 2, 0).cpu().numpy() * 255 * 20).clip(0, 255).astype(np.uint8)
        args.out.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.out / f"simswap{size}_fp16_diff_x20.png"), vis)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
