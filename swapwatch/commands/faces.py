"""`swapwatch faces`: detect faces in an image, or detect and track them through a video."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from swapwatch.errors import InputError

VIDEO_OUT_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm"}


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.add_argument("input", help="an image (jpg, png, ...) or a video (any format FFmpeg reads, GIF included)")
    p.add_argument("--detector", choices=("mtcnn", "yunet", "scrfd"), default="yunet",
                   help="face detector (default: yunet)")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"),
                   help="inference backend (default: best available)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", metavar="PATH", help="explicit model file (e.g. det_10g.onnx for scrfd)")
    p.add_argument("--threshold", type=float, help="score threshold (default: the detector's own)")
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="video: run the detector every K frames and track in between (default: 1)")
    p.add_argument("--no-smooth", action="store_true", help="video: no landmark smoothing")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--draw", metavar="OUT", help="write the input with boxes and landmarks drawn "
                   "(an image file for an image, a .mp4/.mkv/.webm for a video)")
    return p


def run(args: argparse.Namespace) -> int:
    from swapwatch.config import DetectorConfig
    from swapwatch.engines.faces import create_detector
    from swapwatch.engines.runtime import IMAGE_SUFFIXES, check_file, is_image_file

    path = check_file(args.input)
    if args.detect_every < 1:
        raise InputError("--detect-every must be at least 1")
    # A name like .jpg means the user meant an image: report it as an unreadable image, not a video.
    as_image = path.suffix.lower() in IMAGE_SUFFIXES or is_image_file(path)
    if args.draw and not as_image and Path(args.draw).suffix.lower() not in VIDEO_OUT_SUFFIXES:
        raise InputError(f"--draw for a video needs one of {', '.join(sorted(VIDEO_OUT_SUFFIXES))}")
    # Read the input before loading a model, so a bad file fails fast.
    media = _load_image(path) if as_image else _open_video(path)
    detector = create_detector(DetectorConfig(name=args.detector, backend=args.backend, device=args.device,
                                              model_path=args.model, score_threshold=args.threshold))
    if as_image:
        return _run_image(args, path, media, detector)
    return _run_video(args, path, *media, detector)


def _load_image(path: Path):
    from swapwatch.engines.runtime import read_image

    return read_image(path)


def _open_video(path: Path):
    """Video info and a frame iterator whose first frame has already been decoded (so 0 frames fails here)."""
    import itertools

    from swapwatch.engines.runtime import iter_video, probe_video

    info = probe_video(path)
    frames = iter_video(path)
    first = next(frames)
    return info, itertools.chain([first], frames)


def _run_image(args, path: Path, image, detector) -> int:
    import cv2

    from swapwatch.engines.faces import draw_faces

    faces = detector.detect(image)
    if args.json:
        print(json.dumps({"input": str(path), "detector": detector.name,
                          "size": [int(image.shape[1]), int(image.shape[0])],
                          "faces": [f.to_json() for f in faces]}))
    else:
        print(f"{path}: {len(faces)} face(s) [{detector.name}]")
        for i, f in enumerate(faces):
            x1, y1, x2, y2 = (int(round(v)) for v in f.box)
            print(f"  #{i}: box ({x1}, {y1}, {x2}, {y2}) score {f.score:.3f}")
    if args.draw:
        out = Path(args.draw)
        if not cv2.imwrite(str(out), draw_faces(image, faces)):
            raise InputError(f"cannot write {out} (unknown image extension or unwritable folder)")
        print(f"drawn: {out}", file=sys.stderr)
    return 0


def _run_video(args, path: Path, info, frames, detector) -> int:
    from tqdm import tqdm

    from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker, VideoWriter, draw_faces

    tracker = KeyframeTracker(detector, FaceTracker(smoothing=None if args.no_smooth else FACE_SMOOTHING),
                              k=args.detect_every)
    writer = VideoWriter(Path(args.draw), info.fps, info.width, info.height) if args.draw else None
    frames_out = []
    tracks: dict[int, dict] = {}
    try:
        bar = tqdm(frames, total=info.frames or None, unit="frame", desc=path.name,
                   disable=None, file=sys.stderr)
        for frame in bar:
            faces = tracker.process(frame.image, frame.time)
            frames_out.append({"index": frame.index, "time": round(frame.time, 4),
                               "faces": [f.to_json() for f in faces]})
            for f in faces:
                t = tracks.setdefault(f.track_id, {"track_id": f.track_id, "first_frame": frame.index,
                                                   "frames": 0})
                t["last_frame"] = frame.index
                t["frames"] += 1
            if writer:
                writer.write(draw_faces(frame.image, faces))
    finally:
        if writer:
            writer.close()
    if args.json:
        print(json.dumps({"input": str(path), "detector": detector.name, "size": [info.width, info.height],
                          "fps": info.fps, "detect_every": args.detect_every, "frames": frames_out,
                          "tracks": list(tracks.values())}))
    else:
        counts = [len(f["faces"]) for f in frames_out]
        print(f"{path}: {len(frames_out)} frames, {len(tracks)} track(s), "
              f"faces per frame min {min(counts)} max {max(counts)} [{detector.name}]")
        for t in tracks.values():
            print(f"  track {t['track_id']}: frames {t['first_frame']}-{t['last_frame']} ({t['frames']} seen)")
    if args.draw:
        print(f"drawn: {args.draw}", file=sys.stderr)
    return 0
