"""`swapwatch bench`: per-stage p50/p95 latency and end-to-end frame rate of the live frame path, optionally
against the straightforward InsightFace/OpenCV loop on the same frames and models (``--compare-baseline``).
``--device-path`` measures the device-resident frame path (engines/swap/device_path.py) with sessions batched into
one call, ``--no-codec`` server-side processing alone (no H.264 decode or encode).

What each side runs, how the input is built and how it is timed: ``swapwatch/engines/bench/benchmark.py``'s
docstring (engines/bench/benchmark.py in the repository) and engines/bench/baseline.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from swapwatch.commands.options import add_live_stride_options
from swapwatch.config import TrackingConfig
from swapwatch.errors import InputError


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--resolution", default="640x480", metavar="WxH", help="frame size (default: 640x480)")
    p.add_argument("--input", type=Path, default=None, metavar="FILE",
                   help="video to use (default: the shared GRID clips, ../shared/assets/videos/grid_*.mpg); "
                        "fitted to --resolution")
    p.add_argument("--source", type=Path, default=None, metavar="FACE.jpg",
                   help="source face photo (default: a shared face photo, else the input's first face)")
    p.add_argument("--faces", type=int, default=1, metavar="N",
                   help="faces per frame: the clip tiled in N cells (default: 1)")
    p.add_argument("--sessions", type=int, default=1, metavar="N",
                   help="streams through the one batched inference worker (default: 1)")
    p.add_argument("--frames", type=int, default=200, metavar="N", help="timed frames per session (default: 200)")
    p.add_argument("--warmup", type=int, default=20, metavar="N",
                   help="untimed warm-up frames per session, on each side (default: 20)")
    p.add_argument("--rounds", type=int, default=2, metavar="N",
                   help="alternate pipeline and baseline in N timed chunks (default: 2)")
    p.add_argument("--swap-model", default="auto",
                   choices=("auto", "classic", "inswapper-128", "simswap-224", "simswap-512"),
                   help="swap model (default: the best installed learned model, else the weight-free classic)")
    p.add_argument("--random-weights", action="store_true",
                   help="SimSwap in its released architecture with seeded random weights (speed only)")
    # --detector is the face detector here as in every other command; the deepfake detector is --deepfake.
    p.add_argument("--detector", "--face-detector", dest="face_detector", default="yunet",
                   choices=("yunet", "mtcnn", "scrfd"), help="face detector (default: %(default)s)")
    p.add_argument("--deepfake", default="on", choices=("on", "off"),
                   help="run the deepfake detector on every output frame's faces, at the live strides below "
                        "(default: on)")
    p.add_argument("--detect-every", type=int, default=TrackingConfig.detect_every, metavar="K",
                   help="pipeline: run the face detector every K frames, optical flow in between (default: "
                        f"serve's, {TrackingConfig.detect_every}; the baseline detects on every frame)")
    # The live strides, spelled as serve's and monitor's (the older --feature-stride/--score-stride still parse).
    add_live_stride_options(p, "--feature-stride", "--score-stride")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also run the straightforward loop (detect every frame, per-face warps, full-frame "
                        "paste, synchronous) on the same frames and models, and report both")
    p.add_argument("--device-path", action="store_true",
                   help="pipeline side: the device-resident frame path (engines/swap/device_path.py: one upload and one "
                        "download per frame, batched warps, one generator batch per step, on-device paste and "
                        "labels) instead of the server's FrameProcessor path; sessions are batched into one call. "
                        "serve's --device-path auto (its default) uses this path when the swapper runs on CUDA. "
                        "Runs on --device (auto: CUDA when present, else CPU)")
    p.add_argument("--no-codec", dest="codec", action="store_false",
                   help="server-side processing only: frames composed in memory (no H.264 decode) and outputs not "
                        "encoded; fps then counts processing alone")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="device path on CUDA: replay the generator as CUDA graphs (falls back to eager if capture "
                        "fails)")
    p.add_argument("--host-threads", type=int, default=1, metavar="N",
                   help="device path: run the sessions' host stages (detect, track) and monitors on N threads "
                        "(default: 1, one session after another)")
    p.add_argument("--path-config", default="", metavar="KEY=0|1,...",
                   help="device path switches: pinned, streams, events, colour_match, keep_mouth (e.g. "
                        "streams=0,pinned=0 for plain synchronous copies)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="write a per-stage bar chart")
    return p


def parse_resolution(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m:
        raise InputError(f"--resolution {text!r}: expected WxH, e.g. 640x480")
    return int(m.group(1)), int(m.group(2))


PATH_SWITCHES = ("pinned", "streams", "events", "colour_match", "keep_mouth")


def parse_path_config(text: str) -> tuple[tuple[str, bool], ...]:
    """``pinned=0,streams=0`` -> (("pinned", False), ("streams", False))."""
    out = []
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in PATH_SWITCHES or value.strip() not in ("0", "1"):
            raise InputError(f"--path-config {item!r}: expected KEY=0 or KEY=1 with KEY one of "
                             f"{', '.join(PATH_SWITCHES)}")
        out.append((key, value.strip() == "1"))
    return tuple(out)


def _check_out(path: Path | None, flag: str) -> None:
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory")
    if not path.parent.is_dir():
        raise InputError(f"{flag} {path}: folder {path.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    from swapwatch.engines.bench import (
        BenchConfig,
        format_report,
        plot_stages,
        run_bench,
        stderr_progress,
        workdir,
    )
    from swapwatch.engines.runtime import check_file

    width, height = parse_resolution(args.resolution)
    if args.input is not None:
        check_file(args.input)
    if args.source is not None:
        check_file(args.source)
    _check_out(args.json, "--json")
    _check_out(args.plot, "--plot")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"--plot {args.plot}: the chart is written as PNG (name it .png)")
    cfg = BenchConfig(backend=args.backend, device=args.device, precision=args.precision, width=width, height=height,
                      input=args.input, source=args.source, faces=args.faces, sessions=args.sessions,
                      frames=args.frames, warmup=args.warmup, rounds=args.rounds, swap_model=args.swap_model,
                      random_weights=args.random_weights, face_detector=args.face_detector,
                      deepfake=args.deepfake == "on", detect_every=args.detect_every,
                      feature_stride=args.deepfake_stride, score_stride=args.deepfake_score_every,
                      compare_baseline=args.compare_baseline, device_path=args.device_path, codec=args.codec,
                      cuda_graphs=args.cuda_graphs, path_options=parse_path_config(args.path_config),
                      host_threads=args.host_threads)
    command = "swapwatch " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    with workdir() as tmp:
        result = run_bench(cfg, tmp, progress=stderr_progress, command=command)
    print(format_report(result))
    if args.json is not None:
        part = args.json.with_name(args.json.name + ".part")
        part.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        part.replace(args.json)
        stderr_progress(f"wrote {args.json}")
    if args.plot is not None:
        plot_stages(result, args.plot)
        stderr_progress(f"wrote {args.plot}")
    return 0
