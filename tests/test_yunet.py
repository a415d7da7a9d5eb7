"""YuNet through the engine layer: face counts on real photos and clips, landmark geometry, and parity
with OpenCV's own FaceDetectorYN decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
import pytest

from swapwatch.engines.faces import Face, Letterbox, YuNetDetector, box_iou
from swapwatch.errors import ModelError

# Consecutive clip frames are near-duplicates: every frame is checked for its face count and landmark
# geometry, every OPENCV_EVERY-th also against OpenCV (its DNN run costs ~50 ms a frame on 2 cores).
OPENCV_EVERY = 5


@pytest.fixture(scope="module")
def opencv_yunet(yunet_onnx):
    """OpenCV's reference implementation with our thresholds, one instance per input size."""
    made: dict[tuple[int, int], cv2.FaceDetectorYN] = {}

    def get(size: tuple[int, int], det: YuNetDetector) -> cv2.FaceDetectorYN:
        if size not in made:
            made[size] = cv2.FaceDetectorYN.create(str(yunet_onnx), "", size, det.score_threshold,
                                                   det.nms_threshold, det.top_k)
        return made[size]

    return get


def _frames(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def _geometry_problems(faces: list[Face]) -> list[str]:
    problems = []
    scores = [f.score for f in faces]
    if scores != sorted(scores, reverse=True):
        problems.append(f"not sorted by score: {scores}")
    for f in faces:
        x1, y1, x2, y2 = f.box
        (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = f.landmarks
        if not (x1 < x2 and y1 < y2):
            problems.append(f"degenerate box {f.box}")
        xs, ys = f.landmarks[:, 0], f.landmarks[:, 1]
        if not ((xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)).all():
            problems.append(f"landmarks outside box {f.box}: {f.landmarks.tolist()}")
        if not max(ley, rey) < ny < min(mly, mry):
            problems.append(f"eyes/nose/mouth not in vertical order: {f.landmarks.tolist()}")
        if not (lex < rex and mlx < mrx):
            problems.append(f"left/right swapped: {f.landmarks.tolist()}")
    return problems


def _as_rows(faces: list[Face]) -> np.ndarray:
    """(N, 15) x1 y1 x2 y2 score kps..., in image pixels."""
    return np.array([np.r_[f.box, f.score, f.landmarks.ravel()] for f in faces], dtype=np.float32).reshape(-1, 15)


def _opencv_rows(result: np.ndarray | None, scale: float) -> np.ndarray:
    """OpenCV's (N, 15) x y w h kps... score rows to our layout, scaled back to image pixels."""
    if result is None:
        return np.zeros((0, 15), np.float32)
    r = result.astype(np.float32)
    boxes = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:4]], axis=1) / scale
    return np.concatenate([boxes, r[:, 14:15], r[:, 4:14] / scale], axis=1)


def _parity_problems(ours: np.ndarray, ref: np.ndarray, *, min_iou: float, box_px: float, score_tol: float,
                     kps_px: float) -> list[str]:
    if len(ours) != len(ref):
        return [f"{len(ours)} faces, OpenCV found {len(ref)}"]
    if len(ours) == 0:
        return []
    iou = box_iou(ours[:, :4], ref[:, :4])
    match = iou.argmax(axis=1)
    problems = []
    if len(set(match.tolist())) != len(match) or iou.max(axis=1).min() < min_iou:
        problems.append(f"boxes disagree (IoU {np.round(iou.max(axis=1), 3).tolist()})")
    ref = ref[match]
    diffs = {"box": (np.abs(ours[:, :4] - ref[:, :4]).max(), box_px),
             "score": (np.abs(ours[:, 4] - ref[:, 4]).max(), score_tol),
             "landmarks": (np.abs(ours[:, 5:] - ref[:, 5:]).max(), kps_px)}
    problems += [f"{k} off by {v:.4g} > {tol}" for k, (v, tol) in diffs.items() if v > tol]
    return problems


def _check_against_opencv(det: YuNetDetector, opencv_yunet, image: np.ndarray, faces: list[Face], *,
                          native: bool = False) -> list[str]:
    """OpenCV on the very canvas our engine runs (must agree to float precision), and optionally on the
    image at its own size, OpenCV's usual mode (agrees loosely: the network sees a different scale)."""
    ours = _as_rows(faces)
    box = Letterbox.fit((image.shape[1], image.shape[0]), det.input_size)
    _, result = opencv_yunet(det.input_size, det).detect(box.apply(image))
    problems = _parity_problems(ours, _opencv_rows(result, box.scale), min_iou=0.99, box_px=0.05,
                                score_tol=1e-4, kps_px=0.05)
    if native:
        size = (image.shape[1], image.shape[0])
        _, result = opencv_yunet(size, det).detect(image)
        problems += [f"native: {p}" for p in _parity_problems(ours, _opencv_rows(result, 1.0), min_iou=0.8,
                                                              box_px=15.0, score_tol=0.05, kps_px=15.0)]
    return problems


def test_six_faces_in_t1(detector, opencv_yunet, t1_jpg):
    image = cv2.imread(str(t1_jpg))
    faces = detector.detect(image)
    assert len(faces) == 6, [f.to_json() for f in faces]
    assert _geometry_problems(faces) == []
    assert _check_against_opencv(detector, opencv_yunet, image, faces, native=True) == []


def test_one_face_per_photo(detector, opencv_yunet, face_photos):
    assert face_photos, "no face photos in the shared assets"
    problems = {}
    for path in face_photos:
        image = cv2.imread(str(path))
        assert image is not None, path
        faces = detector.detect(image)
        found = [] if len(faces) == 1 else [f"{len(faces)} faces"]
        found += _geometry_problems(faces) + _check_against_opencv(detector, opencv_yunet, image, faces, native=True)
        if found:
            problems[path.name] = found
    assert problems == {}


def test_one_face_in_every_clip_frame(detector, opencv_yunet, clips):
    assert any(p.suffix == ".gif" for p in clips) and len(clips) >= 2, clips
    problems: dict[str, list[str]] = {}
    for path in clips:
        n = 0
        for i, frame in enumerate(_frames(path)):
            faces = detector.detect(frame)
            found = [] if len(faces) == 1 else [f"{len(faces)} faces"]
            found += _geometry_problems(faces)
            if i % OPENCV_EVERY == 0:
                found += _check_against_opencv(detector, opencv_yunet, frame, faces)
            if found:
                problems[f"{path.name}#{i}"] = found
            n += 1
        assert n > 0, f"no frames decoded from {path.name}"
    assert problems == {}


def test_faces_map_back_to_image_pixels(detector, face_photos):
    """A 2x bigger copy of a photo reaches the network as (nearly) the same canvas, so its faces must come
    back at exactly twice the coordinates: the letterbox scale is undone correctly."""
    image = cv2.imread(str(next(p for p in face_photos if p.name == "max_Luciano.png")))
    big = cv2.resize(image, (image.shape[1] * 2, image.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    (small_face,) = detector.detect(image)
    (big_face,) = detector.detect(big)
    assert np.abs(big_face.box / 2 - small_face.box).max() < 2.0
    assert np.abs(big_face.landmarks / 2 - small_face.landmarks).max() < 2.0


def test_letterbox_geometry():
    box = Letterbox.fit((360, 288), (640, 640))
    assert box.resized_size == (640, 512) and box.scale == pytest.approx(512 / 288)
    canvas = box.apply(np.full((288, 360, 3), 7, np.uint8))
    assert canvas.shape == (640, 640, 3) and canvas[:512].min() == 7 and canvas[512:].max() == 0
    assert np.allclose(box.to_image([[640.0, 512.0]]), [[360.0, 288.0]])
    tall = Letterbox.fit((100, 400), (640, 640))
    assert tall.resized_size == (160, 640) and tall.scale == pytest.approx(1.6)
    same = Letterbox.fit((640, 480), (640, 640))
    assert same.scale == 1.0 and same.resized_size == (640, 480)


@pytest.fixture(scope="module")
def yunet_dynamic_onnx(yunet_onnx, tmp_path_factory) -> Path:
    """The released graph with its spatial dims made symbolic, as a re-export with dynamic axes would be."""
    import onnx

    model = onnx.load(str(yunet_onnx))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for value in model.graph.output:
        value.type.tensor_type.shape.dim[1].dim_param = "cells"
    del model.graph.value_info[:]  # inferred for 640x640
    path = tmp_path_factory.mktemp("yunet") / "yunet_dynamic.onnx"
    onnx.save(model, str(path))
    return path


def test_dynamic_graph_runs_at_any_canvas(yunet_dynamic_onnx, opencv_yunet, t1_jpg, face_photos):
    """A graph with dynamic dims runs at the requested canvas and still decodes exactly as OpenCV does.
    For t1.jpg the canvas (1280x896) holds the image unscaled, which is OpenCV's usual mode
    (setInputSize to the image size, zero padding to a multiple of 32)."""
    t1 = cv2.imread(str(t1_jpg))
    native = YuNetDetector(yunet_dynamic_onnx, input_size=(1280, 896))
    faces = native.detect(t1)
    assert len(faces) == 6
    _, result = opencv_yunet((t1.shape[1], t1.shape[0]), native).detect(t1)
    assert _parity_problems(_as_rows(faces), _opencv_rows(result, 1.0), min_iou=0.99, box_px=0.05,
                            score_tol=1e-4, kps_px=0.05) == []
    for size in [(320, 320), (640, 480)]:
        det = YuNetDetector(yunet_dynamic_onnx, input_size=size)
        assert det.input_size == size
        for path in face_photos:
            image = cv2.imread(str(path))
            faces = det.detect(image)
            assert len(faces) == 1, (size, path.name)
            assert _check_against_opencv(det, opencv_yunet, image, faces) == [], (size, path.name)
    assert YuNetDetector(yunet_dynamic_onnx).input_size == (640, 640)
    with pytest.raises(ValueError, match="multiple of 32"):
        YuNetDetector(yunet_dynamic_onnx, input_size=(640, 470))


def test_blank_image_has_no_faces(detector):
    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert detector.detect(np.full((100, 30, 3), 200, np.uint8)) == []


def test_rejects_bad_input(detector, yunet_onnx, tmp_path):
    with pytest.raises(ValueError):
        detector.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="fixed input"):
        YuNetDetector(yunet_onnx, input_size=(320, 320))
    with pytest.raises(ModelError):
        YuNetDetector(tmp_path / "missing.onnx")
    assert detector.name == "yunet"
    assert detector.input_size == (640, 640)
