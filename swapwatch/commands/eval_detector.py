"""`swapwatch eval-detector`: measure the deepfake detector on a labelled video dataset.

Video level: AUC, EER, accuracy at the threshold, calibration error, and how many real and fake videos the
model's thresholds call REAL, UNCERTAIN and FAKE. Live: time to alert on streams spliced
from a real video to a fake one, and false alerts per hour of real footage, for the model alert (a fixed
threshold) and the change alert (a face's score stepping up over its own baseline)
(``engines/deepfake/evaluation.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from swapwatch.errors import InputError

TABLE_ROWS = 40  # per-video rows printed (all of them go to --json)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from swapwatch.commands.options import add_live_stride_options, add_threshold_options

    p = subparsers.add_parser(
        name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=help_text + "\n\n"
        "Layouts of DATASET:\n"
        "  folders  DATASET/real/ and DATASET/fake/, each holding videos (sub-folders allowed: the first\n"
        "           sub-folder names the person; a fake and a real video of the same person, or with the same\n"
        "           file name, are spliced together for the time-to-alert streams)\n"
        "  ffpp     a FaceForensics++ root (original_sequences/youtube/<c>/videos, manipulated_sequences/...)\n"
        "  dfdc     a DFDC root (metadata.json files beside the videos)\n\n"
        "Each video gets the detector's offline score (its most suspicious face track) and a verdict: FAKE at\n"
        "or above the fake threshold, REAL below the real one, UNCERTAIN between (a model with one threshold\n"
        "is never UNCERTAIN); videos without a face are listed as NO_FACES and left out of the metrics. The\n"
        "live measures run the monitor's path\n"
        "(face tracker, sliding windows with the live strides, the model and change alert policies; watermark\n"
        "check off): time to alert from the splice on streams made of a real video's frames followed by a\n"
        "fake's, and alerts per hour on the real videos, for each kind of alert.")
    p.add_argument("dataset", metavar="DATASET", type=Path, help="dataset folder (see the layouts above)")
    p.add_argument("--layout", choices=("folders", "ffpp", "dfdc"), default="folders",
                   help="how labels are read (default: folders, i.e. DATASET/real and DATASET/fake)")
    p.add_argument("--ffpp-compression", default="c23", choices=("raw", "c23", "c40"),
                   help="FaceForensics++ compression level (default: c23)")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="detector folder written by train-detector (default: the committed demonstration model)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--detector", choices=("mtcnn", "yunet", "scrfd"), default="yunet",
                   help="face detector (default: yunet)")
    add_threshold_options(
        p, fake_help="the fake threshold: probability at or above which a video is called FAKE (default: the "
                     "model's). Given alone, it moves a one-threshold model's only threshold; a model's real "
                     "threshold above P drops to P. The live measures keep the model's own",
        real_help="the real threshold: a video scoring below P is called REAL, from P up to the fake threshold "
                  "UNCERTAIN (default: the model's)")
    p.add_argument("--json", metavar="OUT", type=Path, help="write the full report as JSON")
    p.add_argument("--plot", metavar="OUT.png", type=Path,
                   help="write ROC curve, score histograms and reliability diagram to a PNG")
    p.add_argument("--max-frames", type=int, metavar="N", help="read at most the first N frames of each video")
    p.add_argument("--max-videos", type=int, metavar="N", help="at most N real and N fake videos (in name order)")
    p.add_argument("--splices", type=int, default=10, metavar="N",
                   help="spliced real-to-fake streams for time to alert, at most one per real video (default: "
                        "10; 0: none)")
    add_live_stride_options(p.add_argument_group("live strides (time to alert, false alerts), as serve and monitor"),
                            "--stride", "--score-every")
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="detect faces every K frames, tracking in between (default: 1)")
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from swapwatch.commands.options import check_threshold_options
    from swapwatch.config import DetectorConfig
    from swapwatch.engines.deepfake import DeepfakeDetector, Evaluator, StreamSettings, WindowConfig, evaluate
    from swapwatch.engines.faces import create_detector

    check_threshold_options(args)
    for name in ("max_videos", "max_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.splices < 0:
        raise InputError("--splices must be >= 0")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError("--plot needs a .png file name")
    for out in (args.json, args.plot):
        if out is not None and not out.parent.is_dir():
            raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    # Read the dataset before loading models, so a bad folder fails fast.
    items = dataset_items(args.dataset, args.layout, compression=args.ffpp_compression,
                          max_videos=args.max_videos)
    try:
        window = WindowConfig(feature_stride=args.deepfake_stride, score_stride=args.deepfake_score_every)
        settings = StreamSettings(max_frames=args.max_frames, detect_every=args.detect_every)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    detector = DeepfakeDetector.load(args.model, backend=args.backend, config=window)
    faces = create_detector(DetectorConfig(name=args.detector, backend=args.backend))
    try:
        thresholds = detector.info.thresholds.overridden(fake=args.threshold, real=args.real_threshold)
    except ValueError as exc:
        raise InputError(f"--real-threshold must not be above the fake threshold: {exc}") from None
    for warning in class_warnings(items):
        print(f"swapwatch eval-detector: warning: {warning}", file=sys.stderr)

    def progress(iterable, total, desc):
        return tqdm(iterable, total=total, desc=desc, unit="video" if desc == "videos" else "stream",
                    disable=None, file=sys.stderr)

    report = evaluate(items, Evaluator(detector, faces, settings), thresholds=thresholds, splices=args.splices,
                      model=model_info(args, detector, window, settings), progress=progress)
    print_report(report)
    if args.json is not None:
        _write_json(args.json, report.to_json())
        print(f"report: {args.json}", file=sys.stderr)
    if args.plot is not None:
        plot_report(report, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def dataset_items(root: Path, layout: str, *, compression: str = "c23", max_videos: int | None = None) -> list:
    """The dataset's videos through the training readers, at most ``max_videos`` per label (name order)."""
    from swapwatch.engines.deepfake import FAKE, REAL, dfdc_items, ffpp_items, folder_items

    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (DATASET is a dataset folder)")
    if layout == "folders":
        subs = {label: root / name for label, name in ((REAL, "real"), (FAKE, "fake"))}
        if not any(p.is_dir() for p in subs.values()):
            raise InputError(f"{root}: expected real/ and fake/ sub-folders of videos (or pass --layout ffpp|dfdc)")
        items = [it for label, p in subs.items() if p.is_dir() for it in folder_items([p], label)]
    elif layout == "ffpp":
        items = ffpp_items(root, compression)
    elif layout == "dfdc":
        items = dfdc_items(root)
    else:
        raise InputError(f"unknown layout {layout!r}")
    skipped = sum(not it.is_video for it in items)
    items = [it for it in items if it.is_video]
    if skipped:
        print(f"swapwatch eval-detector: note: {skipped} still image(s) skipped (videos only)", file=sys.stderr)
    if not items:
        raise InputError(f"{root}: no videos found (layout {layout})")
    if max_videos:
        items = [it for label in (REAL, FAKE) for it in [i for i in items if i.label == label][:max_videos]]
    return items


def class_warnings(items) -> list[str]:
    from swapwatch.engines.deepfake import FAKE

    fakes = sum(it.label == FAKE for it in items)
    reals = len(items) - fakes
    if not fakes:
        return [("no fake videos: AUC, EER and time to alert are undefined; reporting accuracy, calibration and "
                 "false alerts only")]
    if not reals:
        return [("no real videos: AUC, EER and false alerts per hour are undefined; reporting accuracy and "
                 "calibration only")]
    return []


def model_info(args, detector, window, settings) -> dict:
    from dataclasses import asdict

    from swapwatch.engines.deepfake import DEFAULT_MODEL_DIR, ChangeConfig, live_thresholds, model_policy_for

    info = detector.info
    policy = settings.policy or model_policy_for(live_thresholds(detector))  # as the monitor chooses it
    return {"path": str(args.model or DEFAULT_MODEL_DIR), "default": args.model in (None, "default"),
            "threshold": info.threshold, "real_threshold": info.real_threshold, "window": info.window,
            "crop_size": info.crop_size,
            "sha256": info.extra.get("sha256"), "backend": args.backend, "face_detector": args.detector,
            "live": {"feature_stride": window.feature_stride, "score_stride": window.score_stride,
                     "detect_every": settings.detect_every, "max_frames": settings.max_frames,
                     "policy": asdict(policy),
                     "change": asdict(settings.change or ChangeConfig())}}


def _write_json(path: Path, data: dict) -> None:
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _f(value, fmt: str = ".3f", none: str = "n/a") -> str:
    return none if value is None else format(value, fmt)


def _s(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def print_report(report) -> None:
    videos = report.videos
    width = min(max([len(v.path) for v in videos] + [5]), 60)
    print(f"{'video':<{width}}  label  score  verdict   frames  seconds")
    for v in videos[:TABLE_ROWS]:
        path = v.path if len(v.path) <= width else "..." + v.path[-(width - 3):]
        print(f"{path:<{width}}  {v.label:<5}  {_f(v.score):>5}  {v.verdict:<8}  {v.frames:>6}  {v.seconds:>7.2f}")
    if len(videos) > TABLE_ROWS:
        print(f"... {len(videos) - TABLE_ROWS} more (all in --json)")
    m, s = report.metrics, report.streams
    print(f"videos: {m['n_real']} real, {m['n_fake']} fake scored; {m['n_no_faces']} without faces, "
          f"{m['n_errors']} unreadable")
    print(f"AUC {_f(m['auc'])}   EER {_f(m['eer'])} (threshold {_f(m['eer_threshold'])})   "
          f"accuracy {_f(m['accuracy'])} at {m['threshold']:.3f}   ECE {_f(m['ece'])} ({m['ece_bins']} bins)")
    print_verdicts(m)
    print_live_table(s)
    for note in report.notes:
        print(f"note: {note}")


def print_verdicts(m: dict) -> None:
    """How the thresholds call each class: the errors, and what they leave UNCERTAIN."""
    real, fake = m["verdicts"]["real"], m["verdicts"]["fake"]
    band = (f"real below {m['real_threshold']:.3f}, fake at {m['threshold']:.3f}"
            if _has_band(m) else f"threshold {m['threshold']:.3f}")
    print(f"verdicts ({band}): real clips called FAKE: {real['FAKE']}/{m['n_real']}, UNCERTAIN: "
          f"{real['UNCERTAIN']}/{m['n_real']}; fake clips called REAL: {fake['REAL']}/{m['n_fake']}, UNCERTAIN: "
          f"{fake['UNCERTAIN']}/{m['n_fake']}")


def _has_band(m: dict) -> bool:
    from swapwatch.engines.deepfake import Thresholds

    return Thresholds(fake=m["threshold"], real=m["real_threshold"]).has_band


LIVE_KINDS = (("model", ""), ("change", "change_"))  # alert kind, its prefix in the report's streams


def print_live_table(s: dict) -> None:
    """Time to alert on the spliced streams and false alerts on real footage, one row per kind of alert."""
    splices, reals = s["time_to_alert_s"]["splices"], s["real_videos"]
    if not splices and not reals:
        return
    print(f"live alerts: {splices} spliced stream(s), {s['real_hours'] * 3600:.1f} s of real footage "
          f"({reals} video(s))")
    print(f"{'alert':<7}  {'time to alert: median':>21}  {'mean':>7}  {'missed':>8}  {'false before splice':>19}  "
          f"{'false alerts':>12}  {'per hour':>8}")
    for kind, prefix in LIVE_KINDS:
        t = s[f"{prefix}time_to_alert_s"]
        missed = f"{t['missed']}/{t['splices']}" if splices else "n/a"
        before = str(s[f"{prefix}false_alerts_before_splice"]) if splices else "n/a"
        false = str(s[f"{prefix}false_alerts"]) if reals else "n/a"
        print(f"{kind:<7}  {_s(t['median']):>21}  {_s(t['mean']):>7}  {missed:>8}  {before:>19}  {false:>12}  "
              f"{_f(s[f'{prefix}false_alerts_per_hour'], '.1f'):>8}")


def plot_report(report, out: Path) -> None:
    """ROC curve, score histograms per label and reliability diagram side by side in one PNG."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from swapwatch.engines.deepfake import CALIBRATION_BINS, reliability_bins, roc_curve
    from swapwatch.plotting import png_figure

    scored = report.scored
    y = np.array([v.y for v in scored], dtype=np.int64)
    s = np.array([v.score for v in scored], dtype=np.float64)
    m = report.metrics
    with png_figure(out, width=14.0, height=4.4, ncols=3) as (fig, axes):
        roc, hist, rel = axes
        roc.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        if m["auc"] is not None:
            fpr, tpr, _ = roc_curve(y, s)
            roc.plot(fpr, tpr, color="C3", linewidth=2, label=f"AUC {m['auc']:.3f}")
            roc.plot([m["eer"]], [1 - m["eer"]], "o", color="k", label=f"EER {m['eer']:.3f}")
            roc.legend(loc="lower right")
        else:
            roc.text(0.5, 0.5, "AUC undefined\n(needs real and fake videos)", ha="center", va="center")
        roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (real called fake)",
                ylabel="true positive rate (fake caught)", title="ROC (video level)")
        edges = np.linspace(0, 1, 21)
        for label, name, colour in ((0, "real", "C0"), (1, "fake", "C3")):
            if (y == label).any():
                hist.hist(s[y == label], bins=edges, alpha=0.6, color=colour, label=f"{name} ({(y == label).sum()})")
        if _has_band(m):  # the UNCERTAIN band between the two thresholds
            hist.axvspan(m["real_threshold"], m["threshold"], color="#f5c542", alpha=0.2, lw=0, label="uncertain")
            hist.axvline(m["real_threshold"], color="C2", linestyle=":", label=f"REAL below {m['real_threshold']:.2f}")
            hist.axvline(m["threshold"], color="k", linestyle=":", label=f"FAKE at {m['threshold']:.2f}")
        else:
            hist.axvline(m["threshold"], color="k", linestyle=":", label=f"threshold {m['threshold']:.2f}")
        hist.set(xlim=(0, 1), xlabel="video score (probability of fake)", ylabel="videos", title="Scores by label")
        hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        hist.legend(loc="best")
        bins = reliability_bins(y, s) if len(y) else []
        full = [b for b in bins if b["count"]]
        rel.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfect calibration")
        if full:
            rel.bar([(b["lo"] + b["hi"]) / 2 for b in full], [b["fraction_fake"] for b in full],
                    width=1.0 / CALIBRATION_BINS * 0.9, color="C2", alpha=0.7, label="fraction fake")
            rel.plot([b["mean_score"] for b in full], [b["fraction_fake"] for b in full], "o", color="k",
                     markersize=5, label="at the bin's mean score")
        rel.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="video score", ylabel="fraction of fakes",
                title=f"Reliability, ECE {_f(m['ece'])} ({CALIBRATION_BINS} bins)")
        rel.legend(loc="best")
        fig.suptitle(f"{m['n_real']} real, {m['n_fake']} fake videos", fontsize=10)
