#!/usr/bin/env python3
"""Leave one video person out: how a training recipe does on each shared GRID speaker it was not trained on.

Two held-out splits say little when a split's three people move every figure more than recipes differ. This
trains the recipe once per GRID clip, holding out that clip's speaker and the source photo (so the photo is a
face the model has never seen either), and runs the issue's acceptance cases on the held-out clip: as it is,
classic-swapped with the photo's face, and self-blended (seeds 0 and 1), through YuNet, the smoothed tracker
and full windows, with the acceptance test's own functions (`bench/deepfake_acceptance.py` does the same for
one model). Prints a line per fold and a summary (real clips flagged, fakes missed, and whether one threshold
would separate every fold's cases), and writes OUT/loo.json.

Usage: python bench/deepfake_loo.py --out out/loo-shipped [--jobs 2] [--clips grid_bbaf2n,...] \
           [--source-photo max_Luciano.png] -- TRAIN-DETECTOR OPTIONS (without --out and --val-identities)
e.g. the default model's recipe:
    python bench/deepfake_loo.py --out out/loo-shipped -- --use-assets --swapwatch-fakes --seed 0 --threads 1 \
        --swap-sources 1 --stem yunet --stem-lr-scale 0 --head mean --widths 64 --region-map 1.0 \
        --region-target boundary --local-evidence 16 --pair-pool 8192 --epochs 6 --cache-dir out/dfcache
Folds already trained (OUT/CLIP/detector.json) are not trained again; an interrupted fold resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_deepfake as acceptance  # noqa: E402

from swapwatch.engines.deepfake import DeepfakeDetector  # noqa: E402


def _train_folds(clips: list[str], out: Path, photo_id: str, train_args: list[str], jobs: int) -> None:
    pending = [c for c in clips if not (out / c / "detector.json").is_file()]
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < jobs:
            clip = pending.pop(0)
            fold = out / clip
            cmd = [sys.executable, "-m", "swapwatch", "train-detector", *train_args, "--no-progress",
                   "--val-identities", f"{clip},{photo_id}", "--out", str(fold)]
            if (fold / "checkpoint.pt").is_file():
                cmd.append("--resume")
            fold.mkdir(parents=True, exist_ok=True)
            print(f"training fold {clip}: {' '.join(cmd[2:])}", flush=True)
            log = open(out / f"{clip}.log", "w")
            running.append((clip, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for clip, proc in list(running):
            if proc.poll() is not None:
                running.remove((clip, proc))
                if proc.returncode != 0:
                    raise SystemExit(f"fold {clip} failed (exit {proc.returncode}); see {out / f'{clip}.log'}")
                print(f"fold {clip} trained", flush=True)


def _prob(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def main() -> int:
    argv = sys.argv[1:]
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the fold models and loo.json")
    parser.add_argument("--assets", type=Path, default=ROOT.parent / "shared" / "assets")
    parser.add_argument("--clips", default=None, help="comma-separated GRID clip names (default: every grid_*.mpg)")
    parser.add_argument("--source-photo", default=acceptance.SOURCE_PHOTO,
                        help="face photo in ASSETS/faces swapped onto each clip, held out of every fold")
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once")
    args = parser.parse_args(own)
    if not train_args or any(a in ("--out", "--val-identities") for a in train_args):
        parser.error("give the recipe's train-detector options after --, without --out and --val-identities")
    clips = args.clips.split(",") if args.clips else sorted(p.stem for p in (args.assets / "videos").glob("grid_*.mpg"))
    photo_id = Path(args.source_photo).stem
    args.out.mkdir(parents=True, exist_ok=True)
    _train_folds(clips, args.out, photo_id, train_args, max(args.jobs, 1))

    yunet = args.assets / "models" / "face_detection_yunet_2023mar.onnx"
    folds = []
    for clip in clips:
        versions = acceptance._held_out_versions(args.assets / "videos" / f"{clip}.mpg",
                                                 args.assets / "faces" / args.source_photo, yunet)
        detector = DeepfakeDetector.load(args.out / clip, backend="onnxruntime", device="cpu")
        results = {v: acceptance._clip_score(detector, frames, yunet) for v, frames in versions.items()}
        final = json.loads((args.out / clip / "training_log.json").read_text())["final"]
        folds.append({"clip": clip, "scores": {v: r.score for v, r in results.items()},
                      "verdicts": {v: r.verdict for v, r in results.items()},
                      "window_auc": final.get("window_auc"), "threshold": detector.info.threshold})
        print(f"{clip}: " + ", ".join(
            f"{v} {r.verdict} {_prob(r.score)}{'' if r.verdict == acceptance.expected_verdict(v) else '!'}"
            for v, r in results.items()) + f"; window AUC {final.get('window_auc', float('nan')):.3f}", flush=True)
    cases = [(v, verdict) for f in folds for v, verdict in f["verdicts"].items()]
    reals = [s for f in folds for v, s in f["scores"].items() if v == "real" and s is not None]
    fakes = [s for f in folds for v, s in f["scores"].items() if v != "real" and s is not None]
    threshold = folds[0]["threshold"]
    n_real = sum(v == "real" for v, _ in cases)
    summary = {
        "folds": len(folds),
        "real_clips_flagged": sum(v == "real" and verdict == "FAKE" for v, verdict in cases),
        "fakes_missed": sum(v != "real" and verdict != "FAKE" for v, verdict in cases),
        "fakes": len(cases) - n_real,
        "cases_right": sum(verdict == acceptance.expected_verdict(v) for v, verdict in cases),
        "one_threshold_separates_all": bool(reals and fakes and max(reals) < min(fakes)),
        "highest_real": max(reals, default=None), "lowest_fake": min(fakes, default=None),
        "mean_window_auc": float(np.mean([f["window_auc"] for f in folds])),
    }
    (args.out / "loo.json").write_text(json.dumps({"train_args": train_args, "source_photo": args.source_photo,
                                                   "folds": folds, "summary": summary}, indent=2))
    print(f"summary: {summary['cases_right']}/{len(cases)} cases right at {threshold}; real clips flagged "
          f"{summary['real_clips_flagged']}/{n_real}, fakes missed {summary['fakes_missed']}/{summary['fakes']}; "
          f"highest real {_prob(summary['highest_real'])}, lowest fake {_prob(summary['lowest_fake'])}; "
          f"mean held-out window AUC {summary['mean_window_auc']:.3f} -> {args.out / 'loo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
