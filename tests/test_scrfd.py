"""SCRFD decoding against InsightFace's own reference implementation, on seeded fixture graphs that have
the released files' layouts (the real weights cannot be fetched here; nothing below measures quality)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures_scrfd import build_scrfd_fixtures
from swapwatch.engines.faces import Face, SCRFDDetector, SCRFDLayout, box_iou
from swapwatch.errors import ModelError

TOL = 1e-3


@pytest.fixture(scope="module")
def scrfd_files(tmp_path_factory) -> dict[str, Path]:
    return build_scrfd_fixtures(tmp_path_factory.mktemp("scrfd"), seed=0)


@pytest.fixture(scope="module")
def images(t1_jpg, face_photos) -> dict[str, np.ndarray]:
    """Real photos of several sizes and aspect ratios, plus synthetic ones that stress the letterbox."""
    found = {"t1": cv2.imread(str(t1_jpg))}
    found.update({p.name: cv2.imread(str(p)) for p in face_photos})
    rng = np.random.default_rng(1)
    found["noise_640x480"] = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    found["tall_noise_200x700"] = rng.integers(0, 256, (700, 200, 3), dtype=np.uint8)
    found["t1_small_171x118"] = cv2.resize(found["t1"], (171, 118))
    assert all(im is not None for im in found.values())
    return found


def _reference(path: Path, *, input_size=(640, 640), det_thresh=0.5):
    from insightface.model_zoo.scrfd import SCRFD

    ref = SCRFD(model_file=str(path))
    ref.prepare(ctx_id=-1, input_size=input_size, det_thresh=det_thresh)
    return ref


def _mismatch(faces: list[Face], det: np.ndarray, kps: np.ndarray | None) -> str | None:
    """Why our faces differ from InsightFace's ``(det, kps)``, or None when they agree within TOL."""
    if len(faces) != len(det):
        return f"{len(faces)} faces, InsightFace {len(det)}"
    if not faces:
        return None
    boxes = np.stack([f.box for f in faces])
    iou = box_iou(boxes, det[:, :4])
    match = iou.argmax(axis=1)
    if len(set(match.tolist())) != len(match):
        return "faces do not pair up one to one"
    diffs = {
        "box": np.abs(boxes - det[match, :4]).max(),
        "score": np.abs(np.array([f.score for f in faces]) - det[match, 4]).max(),
        "kps": np.abs(np.stack([f.landmarks for f in faces]) - kps[match]).max(),
    }
    bad = {k: float(v) for k, v in diffs.items() if v > TOL}
    return f"differences over {TOL}: {bad}" if bad else None


@pytest.mark.parametrize("variant", ["det_10g", "batched", "static"])
def test_matches_insightface(variant, scrfd_files, images):
    ours = SCRFDDetector(scrfd_files[variant], backend="onnxruntime", device="cpu")
    ref = _reference(scrfd_files[variant])
    assert ref.batched == (variant == "batched")  # the reference really takes its batched branch
    problems, total = {}, 0
    for name, image in images.items():
        faces = ours.detect(image)
        det, kps = ref.detect(image)
        total += len(faces)
        if (why := _mismatch(faces, det, kps)) is not None:
            problems[name] = why
        scores = [f.score for f in faces]
        assert scores == sorted(scores, reverse=True), name
        assert all(f.score >= 0.5 for f in faces)
    assert problems == {}
    assert total >= 50, "the fixture should produce enough detections to exercise decoding and NMS"


@pytest.mark.parametrize("threshold,input_size", [(0.3, (640, 640)), (0.5, (320, 256)), (0.7, (640, 480))])
def test_matches_insightface_other_settings(threshold, input_size, scrfd_files, images):
    """Other score thresholds, and other canvases for a graph with dynamic input dims."""
    ours = SCRFDDetector(scrfd_files["det_10g"], score_threshold=threshold, input_size=input_size)
    assert ours.input_size == input_size
    ref = _reference(scrfd_files["det_10g"], input_size=input_size, det_thresh=threshold)
    problems = {}
    for name in ("t1", "max_Luciano.png", "noise_640x480", "tall_noise_200x700"):
        det, kps = ref.detect(images[name])
        if (why := _mismatch(ours.detect(images[name]), det, kps)) is not None:
            problems[name] = why
    assert problems == {}


def test_output_order_does_not_matter(scrfd_files, images):
    """The same weights with interleaved outputs (score_8, bbox_8, kps_8, score_16, ...) give the same faces."""
    grouped = SCRFDDetector(scrfd_files["det_10g"])
    interleaved = SCRFDDetector(scrfd_files["interleaved"])
    assert interleaved.layout.score == ("score_8", "score_16", "score_32")
    assert interleaved.layout.kps == ("kps_8", "kps_16", "kps_32")
    for name in ("t1", "noise_640x480"):
        a, b = grouped.detect(images[name]), interleaved.detect(images[name])
        assert len(a) == len(b) > 0
        for fa, fb in zip(a, b):
            assert np.array_equal(fa.box, fb.box) and np.array_equal(fa.landmarks, fb.landmarks)
            assert fa.score == fb.score


def test_layout_from_shapes():
    canvas = (640, 640)
    shapes = {"448": (12800, 1), "471": (3200, 1), "494": (800, 1), "451": (12800, 4), "474": (3200, 4),
              "497": (800, 4), "454": (12800, 10), "477": (3200, 10), "500": (800, 10)}
    layout = SCRFDLayout.from_shapes(shapes, canvas)
    assert layout == SCRFDLayout((8, 16, 32), ("448", "471", "494"), ("451", "474", "497"),
                                 ("454", "477", "500"), 2)
    # Five levels, one anchor, batched, in a shuffled order (the 15-output SCRFD exports).
    five = {}
    for s in (128, 8, 64, 32, 16):
        n = (640 // s) ** 2
        five.update({f"kps_{s}": (1, n, 10), f"score_{s}": (1, n, 1), f"bbox_{s}": (1, n, 4)})
    layout = SCRFDLayout.from_shapes(five, canvas)
    assert layout.strides == (8, 16, 32, 64, 128) and layout.anchors == 1
    assert layout.bbox == tuple(f"bbox_{s}" for s in (8, 16, 32, 64, 128))
    with pytest.raises(ModelError, match="no keypoints"):
        SCRFDLayout.from_shapes({k: v for k, v in shapes.items() if v[-1] != 10}, canvas)
    with pytest.raises(ModelError, match="rows"):
        SCRFDLayout.from_shapes(shapes, (640, 480))
    with pytest.raises(ModelError, match="shape"):
        SCRFDLayout.from_shapes({**shapes, "448": (12800, 2)}, canvas)


def test_rejects_bad_arguments(scrfd_files, yunet_onnx, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        SCRFDDetector(scrfd_files["det_10g"], input_size=(600, 600))
    with pytest.raises(ValueError, match="fixed input"):
        SCRFDDetector(scrfd_files["static"], input_size=(320, 320))
    with pytest.raises(ModelError, match="12 outputs"):
        SCRFDDetector(yunet_onnx)
    with pytest.raises(ModelError):
        SCRFDDetector(tmp_path / "missing.onnx")
    det = SCRFDDetector(scrfd_files["static"])
    assert det.name == "scrfd" and det.input_size == (640, 640)
    assert isinstance(det.detect(np.zeros((10, 10, 3), np.uint8)), list)  # tiny images upscale fine
    with pytest.raises(ValueError):
        det.detect(np.zeros((10, 10, 4), np.uint8))
