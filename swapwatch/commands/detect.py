"""`swapwatch detect`: offline deepfake detection of a video file (REAL, UNCERTAIN, FAKE or NO_FACES)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from swapwatch.commands.options import add_threshold_options, check_threshold_options
from swapwatch.errors import InputError


UNCERTAIN_TEXT = "score between the real and fake thresholds: the detector cannot tell"


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name, help=help_text,
        description=help_text + " Faces are found and tracked through the video, every face is scored over "
        "sliding windows, and the video's score is its most suspicious face track's: FAKE at or above the fake "
        "threshold, REAL below the real threshold, UNCERTAIN in between (a model with one threshold is never "
        "UNCERTAIN). A video without faces gives NO_FACES, not a guess.",
        epilog="Exit status: 0 whatever the verdict (REAL, UNCERTAIN, FAKE or NO_FACES: read it from the output), "
        "2 for an input that cannot be used, 3 for a missing or broken model, 4 for a backend that cannot run.")
    p.add_argument("input", help="a video file (any format FFmpeg reads, GIF included)")
    p.add_argument("--json", action="store_true",
                   help='print only a JSON object: {"verdict", "verified", "score", "threshold", "thresholds", '
                        '"watermark", "windows", "tracks", "video", "model", "settings", "timings"}')
    p.add_argument("--plot", metavar="OUT.png", help="write the score over time per face track as a PNG")
    p.add_argument("--model", metavar="DIR", default="default",
                   help="detector folder written by train-detector (default: the committed demonstration model; "
                        "see its MODEL_CARD.md)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"),
                   help="inference backend for the face and deepfake detectors (default: best available)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--detector", choices=("mtcnn", "yunet", "scrfd"), default="yunet",
                   help="face detector (default: yunet)")
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="run the face detector every K frames, tracking in between (default: 1)")
    p.add_argument("--max-frames", type=int, metavar="N", help="analyse only the first N frames")
    p.add_argument("--window-stride", type=int, metavar="S",
                   help="score a window every S frames of each face track (default: every frame)")
    add_threshold_options(
        p, fake_help="the fake threshold: call the video FAKE when its score is at least P (default: the model's "
                     "own). Given alone, it moves a one-threshold model's only threshold; a model's real threshold "
                     "stays, unless it is above P: then it drops to P (no UNCERTAIN band left)",
        real_help="the real threshold: call the video REAL when its score is below P, UNCERTAIN from P up to the "
                  "fake threshold (default: the model's own; at most the fake threshold)")
    p.add_argument("--no-watermark-check", dest="check_watermark", action="store_false",
                   help="do not look for swapwatch's own watermark (by default a video that carries it is FAKE, "
                        "verified, whatever the model's score)")
    return p


def run(args: argparse.Namespace) -> int:
    from swapwatch.config import DetectorConfig
    from swapwatch.engines.deepfake import DeepfakeDetector, detect_video, plot_report
    from swapwatch.engines.faces import create_detector
    from swapwatch.engines.runtime import check_file, is_image_file, probe_video

    if args.detect_every < 1:
        raise InputError("--detect-every must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError("--max-frames must be at least 1")
    if args.window_stride is not None and args.window_stride < 1:
        raise InputError("--window-stride must be at least 1")
    check_threshold_options(args)
    if args.threshold is not None and args.real_threshold is not None and args.real_threshold > args.threshold:
        raise InputError(f"--real-threshold {args.real_threshold:g} is above --threshold {args.threshold:g}: "
                         "REAL must lie below FAKE")
    if args.plot:
        plot = Path(args.plot)
        if plot.suffix.lower() != ".png":
            raise InputError(f"--plot writes a PNG: give a file name ending in .png, not {plot.name}")
        if not plot.parent.is_dir():
            raise InputError(f"cannot write plot {plot}: folder {plot.parent} does not exist")
    # Check the input before loading any model, so a bad file fails fast.
    path = check_file(args.input)
    if is_image_file(path):
        raise InputError(f"{path}: is a still image; detect analyses videos (any format FFmpeg reads)")
    probe_video(path)

    deepfake = DeepfakeDetector.load(args.model, backend=args.backend, device=args.device)
    faces = create_detector(DetectorConfig(name=args.detector, backend=args.backend, device=args.device))
    progress = _ProgressBar(path.name)
    try:
        report = detect_video(path, detector=deepfake, face_detector=faces, detect_every=args.detect_every,
                              max_frames=args.max_frames, window_stride=args.window_stride,
                              threshold=args.threshold, real_threshold=args.real_threshold, model_path=args.model,
                              check_watermark=args.check_watermark, progress=progress)
    finally:
        progress.close()
    if args.plot:
        plot_report(report, args.plot)
    model = report.model
    warning = f"warning: {model['note']}" if model.get("demonstration") and model.get("note") else (
        "warning: demonstration model; do not use its verdicts for real decisions" if model.get("demonstration")
        else None)
    if args.json:
        print(json.dumps(report.to_json()), flush=True)
        if warning:
            print(warning, file=sys.stderr)
    else:
        _print_human(report, warning)
    if args.plot:
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


class _ProgressBar:
    """A tqdm bar on stderr (shown only when stderr is a terminal), fed by detect_video's progress calls."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="frame", desc=self.desc, disable=None, file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_human(report, warning: str | None) -> None:
    v, m = report.video, report.model
    # rounded as in the JSON first, so the video's and its tracks' scores print alike
    score = "no score" if report.score is None else f"score {round(report.score, 4):.3f}"
    n_tracks = len(report.tracks)
    duration = f"{v['duration']:.2f} s" if v.get("duration") is not None else "unknown length"
    th = report.thresholds
    limits = (f"real below {th.real:.2f}, fake at {th.fake:.2f}" if th.has_band else f"threshold {th.fake:.2f}")
    print(f"{v['name']}: {report.verdict} ({score}, {limits}) - {v['frames']} frames"
          f"{' (first only)' if v.get('truncated') else ''}, {duration}, {n_tracks} face track(s), "
          f"analysed in {report.timings['analysis_s']:.1f} s")
    wm = report.watermark
    if report.verified:
        print(f"  verified: swapwatch's watermark is in {wm['found']} of {wm['checked']} frames "
              f"({wm['first']:.2f}-{wm['last']:.2f} s): a swapwatch swap, FAKE whatever the model's score")
    elif report.verdict == "NO_FACES":
        print("  no face was found in any analysed frame: no verdict on whether it is fake")
    elif report.verdict == "UNCERTAIN":
        print(f"  UNCERTAIN ({UNCERTAIN_TEXT})")
    for t in report.tracks:
        brief = "" if t["counted"] else " (brief track, not counted in the video's score)"
        print(f"  track {t['track']}: {t['score']:.3f} {t['verdict']}, {t['frames']} frames, "
              f"{t['first']:.2f}-{t['last']:.2f} s{brief}")
    where = " (the committed default)" if m["default"] else (f" at {m['path']}" if m.get("path") else "")
    sha = f", sha256 {m['sha256'][:12]}" if m.get("sha256") else ""
    print(f"model: {m['name']}{where}{sha}")
    if warning:
        print(warning)
