#!/usr/bin/env python3
"""The issue's acceptance check for any detector folder: the held-out GRID clips as they are, classic-swapped
with max_Luciano.png and self-blended (seeds 0 and 1), through YuNet, the smoothed tracker and full windows,
exactly as `tests/test_deepfake.py::test_default_model_verdicts_on_held_out_identities` does (the frames and
the scoring are that test's own functions). Prints one line per model: cases right out of 8, then each case's
window probability and mean frame probability (`!` marks a wrong verdict).

Usage: python bench/deepfake_acceptance.py [MODEL_DIR|default ...] [--assets ../shared/assets]
           [--clips grid_bbaf2n,grid_lrwp9a --source-photo max_Chris.jpeg]
Only meaningful for models that did not train on the clips' identities nor on the source photo's (by default
grid_lbbc2a, grid_s2_swwp2s and max_Luciano, the default model's held-out identities). Other clips let a
recipe be chosen on another held-out split before it is trained on the default split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_deepfake as acceptance  # noqa: E402

from swapwatch.engines.deepfake import DeepfakeDetector  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["default"], help="detector folders, or 'default'")
    parser.add_argument("--assets", type=Path, default=ROOT.parent / "shared" / "assets")
    parser.add_argument("--clips", default=",".join(acceptance.HELD_OUT),
                        help="comma-separated clip names in ASSETS/videos (default: %(default)s)")
    parser.add_argument("--source-photo", default=acceptance.SOURCE_PHOTO,
                        help="face photo in ASSETS/faces swapped onto the clips (default: %(default)s)")
    args = parser.parse_args()
    yunet = args.assets / "models" / "face_detection_yunet_2023mar.onnx"
    clips = {c: acceptance._held_out_versions(args.assets / "videos" / f"{c}.mpg",
                                              args.assets / "faces" / args.source_photo, yunet)
             for c in args.clips.split(",")}
    for model in args.models:
        detector = DeepfakeDetector.load(None if model == "default" else model, backend="onnxruntime", device="cpu")
        right, cases = 0, []
        for clip, versions in clips.items():
            for version, frames in versions.items():
                scores = acceptance._clip_score(detector, frames, yunet)
                frame_mean = np.mean([p for t in scores.tracks.values() for p in t.frame_probs])
                ok = scores.verdict == acceptance.expected_verdict(version)
                right += ok
                cases.append(f"{clip}/{version} {scores.score:.3f}{'' if ok else '!'} (frames {frame_mean:.2f})")
        print(f"{model}: {right}/{len(cases)} right; " + "; ".join(cases), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
