"""`swapwatch swap`: swap faces in an image or a video to the identity in a source photo."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from swapwatch.errors import InputError

log = logging.getLogger("swapwatch.swap")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text + " Output is marked as synthetic.")
    p.add_argument("--source", required=True, action="append", metavar="FACE.jpg",
                   help="source face photo; with --faces map:..., give NAME=FACE.jpg once per source")
    p.add_argument("--target", required=True, metavar="IMAGE_OR_VIDEO")
    p.add_argument("--output", required=True, metavar="OUT", help="an image file, or a .mp4/.mkv/.mov/.webm video")
    p.add_argument("--model", default="auto", choices=("auto", "simswap-224", "simswap-512", "inswapper-128",
                                                       "classic"),
                   help="swap model (default: the best installed learned model, else the weight-free classic)")
    p.add_argument("--faces", default="all", metavar="all|largest|match:REF.jpg|map:A=X.jpg,B=Y.jpg",
                   help="which target faces to swap (default: all)")
    p.add_argument("--mask", default="feather", choices=("feather", "parsing"),
                   help="blend mask: a feathered face ellipse, or BiSeNet face parsing (needs the model)")
    p.add_argument("--keep-mouth", action="store_true", help="keep the target's own mouth")
    p.add_argument("--no-colour-match", dest="colour_match", action="store_false",
                   help="do not match the swapped face's colours to the target's skin")
    p.add_argument("--poisson", action="store_true", help="seamless (Poisson) blending; slower")
    p.add_argument("--detector", default="yunet", choices=("mtcnn", "yunet", "scrfd"))
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="video: detect every K frames and track in between (default: 1)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-label", action="store_true",
                   help="do not draw the visible SYNTHETIC mark (the invisible watermark stays)")
    p.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark")
    p.add_argument("--accept-source", action="store_true",
                   help="swap even with a source photo judged poor (turned head, tiny or blurred face, ...); "
                        "its problems are printed as warnings")
    return p


def run(args: argparse.Namespace) -> int:
    from swapwatch.config import DetectorConfig
    from swapwatch.engines.faces import create_detector
    from swapwatch.engines.runtime import IMAGE_SUFFIXES, check_file, is_image_file, read_image
    from swapwatch.engines.swap import (
        DEFAULT_SOURCE, FaceSelection, LabelConfig, LabellingConfig, SwapOptions, SwapPipeline, SyntheticLabeller,
        create_swapper,
    )

    target = check_file(args.target)
    output = Path(args.output)
    as_image = target.suffix.lower() in IMAGE_SUFFIXES or is_image_file(target)
    _check_output(output, target, as_image)
    selection = FaceSelection.parse(args.faces)
    sources = _parse_sources(args.source, selection, DEFAULT_SOURCE)
    source_images = {key: read_image(path) for key, path in sources.items()}  # fail fast on a bad photo

    options = SwapOptions(mask=args.mask, keep_mouth=args.keep_mouth, colour_match=args.colour_match,
                          blend="poisson" if args.poisson else "alpha", detect_every=args.detect_every)
    detector = create_detector(DetectorConfig(name=args.detector, backend=args.backend, device=args.device))
    for key, path in sources.items():  # before the swap model loads: a poor photo stops here, in seconds
        _judge_source(path, source_images[key], detector, accept=args.accept_source)
    loaded = create_swapper(args.model, backend=args.backend, device=args.device)
    parser = _load_parser(args) if args.mask == "parsing" else None
    pipeline = SwapPipeline(detector, loaded.swapper, options=options, selection=selection,
                            identity=loaded.identity, parser=parser,
                            labeller=SyntheticLabeller(LabellingConfig(
                                visible=LabelConfig(enabled=not args.no_label),
                                watermark_enabled=not args.no_watermark)))
    for key, path in sources.items():
        pipeline.add_source(source_images[key], key, name=str(path))
    kind = "learned" if loaded.swapper.learned else "weight-free (no learned swapper installed)"
    print(f"swap model: {loaded.swapper.name} [{kind}]", file=sys.stderr)

    if as_image:
        return _swap_image(pipeline, target, output)
    return _swap_video(pipeline, target, output)


def _check_output(output: Path, target: Path, as_image: bool) -> None:
    """The output can be written and fits the target, checked before any model loads."""
    from swapwatch.engines.runtime import IMAGE_SUFFIXES, VIDEO_OUTPUT_SUFFIXES
    if output.resolve() == target.resolve():
        raise InputError("--output must differ from --target (the input is never overwritten)")
    folder = output.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"{output}: the output folder {folder} {what}; create it or choose another --output")
    suffix = output.suffix.lower()
    if as_image and suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{output}: an image target needs an image output ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if not as_image and suffix not in VIDEO_OUTPUT_SUFFIXES:
        raise InputError(f"{output}: a video target needs a video output "
                         f"({', '.join(sorted(VIDEO_OUTPUT_SUFFIXES))})")


def _judge_source(path: Path, image, detector, *, accept: bool) -> None:
    """Stop on a source photo that would give a broken swap (unless ``accept``); print its other problems."""
    from swapwatch.engines.swap import judge_source

    quality = judge_source(image, detector.detect(image))
    if quality.measures is None:  # no face: nothing to swap from, --accept-source or not
        raise InputError(f"{path}: {quality.problems[0].message}")
    if quality.poor and not accept:
        reasons = "; ".join(p.message for p in quality.poor)
        raise InputError(f"{path}: poor source photo: {reasons} (--accept-source swaps with it anyway)")
    for problem in quality.problems:
        label = "poor source photo, swapping anyway" if problem.severity == "poor" else "note"
        print(f"swapwatch swap: warning: {path}: {label}: {problem.message}", file=sys.stderr)


def _parse_sources(values: list[str], selection, default_key: str) -> dict[str, Path]:
    if selection.mode != "map":
        if len(values) != 1:
            raise InputError("give one --source (several sources need --faces map:NAME=REF.jpg,...)")
        return {default_key: Path(values[0])}
    sources = {}
    for value in values:
        key, eq, path = value.partition("=")
        if not eq:
            raise InputError(f"--source {value!r}: with --faces map:..., write NAME=FACE.jpg")
        sources[key.strip()] = Path(path.strip())
    missing = set(selection.source_keys) - set(sources)
    if missing:
        raise InputError(f"--faces map names {', '.join(sorted(missing))} but no --source NAME=FACE.jpg for it")
    return sources


def _load_parser(args):
    from swapwatch.engines.runtime import ensure_model
    from swapwatch.engines.swap import FaceParser

    checkpoint = next(iter(ensure_model("bisenet-faceparsing").values()))
    return FaceParser.from_checkpoint(checkpoint, device=args.device)


def _swap_image(pipeline, target: Path, output: Path) -> int:
    import cv2

    from swapwatch.engines.runtime import read_image

    result = pipeline.process(read_image(target), 0.0)
    if not result.faces:
        log.warning("%s: no face found; writing the image unchanged", target)
    if not cv2.imwrite(str(output), result.frame):
        raise InputError(f"cannot write {output}")
    print(f"{output}: {len(result.swapped)} of {len(result.faces)} face(s) swapped", file=sys.stderr)
    return 0


def _swap_video(pipeline, target: Path, output: Path) -> int:
    from swapwatch.engines.runtime import transcode_video

    counts = {"frames": 0, "with_faces": 0, "swapped": 0}

    def process(frame):
        result = pipeline.process(frame.image, frame.time)
        counts["frames"] += 1
        counts["with_faces"] += bool(result.faces)
        counts["swapped"] += bool(result.swapped)
        return result.frame

    stats = transcode_video(target, output, process)
    if counts["with_faces"] == 0:
        log.warning("%s: no face in any frame; the video was passed through unchanged", target)
    print(f"{output}: {stats.frames} frames at {stats.fps:g} fps, faces swapped in {counts['swapped']}, "
          f"audio {stats.audio}", file=sys.stderr)
    return 0
