"""Face tracking: the 1€ filter, id assignment on synthetic sequences, and detect-every-k on real clips."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from swapwatch.engines.faces import (
    ARCFACE_112, FACE_SMOOTHING, Face, FaceDetector, FaceTracker, KeyframeTracker, OneEuroConfig, OneEuroFilter,
)

FPS = 25.0


# ---- helpers --------------------------------------------------------------------------------------


def synthetic_face(cx: float, cy: float, size: float = 100.0, score: float = 0.9) -> Face:
    """A face whose box is ``size`` square around (cx, cy), landmarks from the ArcFace template."""
    landmarks = (ARCFACE_112.points[0] - 56.0) * (size / 112.0) + [cx, cy]
    half = size / 2
    return Face(box=[cx - half, cy - half, cx + half, cy + half], score=score, landmarks=landmarks)


class YuNetTestDetector(FaceDetector):
    """Test-only YuNet wrapper (the project's own YuNet detector is written elsewhere)."""

    name = "yunet-test"

    def __init__(self, onnx: Path) -> None:
        self.onnx = str(onnx)
        self._net = None
        self.calls = 0

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        self.check_image(image_bgr)
        self.calls += 1
        h, w = image_bgr.shape[:2]
        if self._net is None:
            self._net = cv2.FaceDetectorYN.create(self.onnx, "", (w, h))
        self._net.setInputSize((w, h))
        _, rows = self._net.detect(image_bgr)
        if rows is None:
            return []
        faces = [
            Face(box=[x, y, x + w, y + h], score=float(r[14]), landmarks=r[4:14].reshape(5, 2))
            for r in rows
            for x, y, w, h in [r[:4]]
        ]
        return sorted(faces, key=lambda f: -f.score)


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def grid_clips(clips, yunet_onnx):
    if not yunet_onnx.is_file():
        pytest.skip(f"{yunet_onnx} missing")
    grid = [p for p in clips if p.name.startswith("grid_")]
    if not grid:
        pytest.skip("no grid_*.mpg clips in the shared assets")
    return grid


@pytest.fixture(scope="module")
def grid_data(grid_clips, yunet_onnx):
    """(clip name, frames, per-frame YuNet detections) for every GRID clip."""
    out = []
    for path in grid_clips:
        frames = read_frames(path)
        det = YuNetTestDetector(yunet_onnx)
        out.append((path.name, frames, [det.detect(f) for f in frames]))
    return out


def inter_ocular(face: Face) -> float:
    return float(np.linalg.norm(face.landmarks[0] - face.landmarks[1]))


# ---- One Euro filter ------------------------------------------------------------------------------


def test_one_euro_first_sample_passes_and_shape_is_kept():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.1)
    x = np.arange(14, dtype=np.float64).reshape(7, 2)
    np.testing.assert_array_equal(f(x, 0.0), x)
    y = f(x + 1, 0.04)
    assert y.shape == (7, 2) and np.all(y > x) and np.all(y < x + 1)
    np.testing.assert_array_equal(f(x + 5, 0.04), y)  # a repeated timestamp keeps the estimate
    with pytest.raises(ValueError):
        f(np.zeros(3), 0.08)
    f.reset()
    np.testing.assert_array_equal(f(np.zeros(3), 1.0), np.zeros(3))
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0.0)


# FACE_SMOOTHING works in face-diagonal units. Measured at 25 fps on 400 frames: the variance of a static
# landmark with 0.5%-of-diagonal noise drops about 7x; during a 1 diagonal/s move the lag settles at about
# 0.02 diagonals (half a frame of motion).
def test_one_euro_reduces_jitter_and_follows_fast_moves():
    rng = np.random.default_rng(0)
    times = np.arange(400) / FPS
    noise = rng.normal(0.0, 0.005, size=(400, 5, 2))
    f = OneEuroFilter.from_config(FACE_SMOOTHING)
    smoothed = np.stack([f(x, t) for x, t in zip(noise, times)])
    reduction = noise[50:].var() / smoothed[50:].var()
    assert reduction > 5.0, reduction

    speed = 1.0  # face diagonals per second: a brisk head move
    truth = np.clip(times - 4.0, 0.0, None)[:, None, None] * speed * np.ones((1, 5, 2))
    f = OneEuroFilter.from_config(FACE_SMOOTHING)
    out = np.stack([f(x, t) for x, t in zip(truth + noise, times)])
    lag = np.abs(out - truth)[int(4.5 * FPS) : int(8 * FPS)].mean()
    assert lag < 0.04 * speed, lag  # under one frame of motion
    # A plain low-pass at the same minimum cutoff (beta = 0) lags far behind.
    f = OneEuroFilter(FACE_SMOOTHING.min_cutoff, 0.0, FACE_SMOOTHING.d_cutoff)
    plain = np.stack([f(x, t) for x, t in zip(truth + noise, times)])
    assert np.abs(plain - truth)[int(4.5 * FPS) : int(8 * FPS)].mean() > 3 * lag


# ---- FaceTracker on synthetic sequences -----------------------------------------------------------


def test_two_faces_crossing_keep_their_ids():
    tracker = FaceTracker()
    ids_a, ids_b = set(), set()
    for i in range(60):
        t = i / FPS
        a = synthetic_face(100 + 8 * i, 200)  # left to right
        b = synthetic_face(580 - 8 * i, 200)  # right to left, the same height: they pass through each other
        out = tracker.update([a, b], t)
        ids_a.add(out[0].track_id)
        ids_b.add(out[1].track_id)
    assert ids_a == {0} and ids_b == {1}


def test_crossing_with_occlusion_keeps_ids():
    tracker = FaceTracker(max_missed=5)
    ids_front, ids_back = set(), set()
    for i in range(60):
        t = i / FPS
        front = synthetic_face(100 + 8 * i, 200, size=110)
        back = synthetic_face(580 - 8 * i, 215, size=90)
        occluded = abs(front.box[0] - back.box[0]) < 40  # the face behind is not detected for a few frames
        faces = [front] if occluded else [front, back]
        out = tracker.update(faces, t)
        ids_front.add(out[0].track_id)
        if not occluded:
            ids_back.add(out[1].track_id)
    assert ids_front == {0} and ids_back == {1}


@pytest.mark.parametrize("gap,same_id", [(1, True), (3, True), (4, False), (10, False)])
def test_gap_shorter_than_max_missed_keeps_the_id(gap, same_id):
    tracker = FaceTracker(max_missed=3)
    frame = 0
    for _ in range(5):
        (first,) = tracker.update([synthetic_face(200, 200)], frame / FPS)
        frame += 1
    for _ in range(gap):
        assert tracker.update([], frame / FPS) == []
        frame += 1
    (again,) = tracker.update([synthetic_face(202, 201)], frame / FPS)
    assert (again.track_id == first.track_id) is same_id
    if not same_id:
        assert again.track_id > first.track_id


def test_ids_are_monotonic_and_never_reused():
    tracker = FaceTracker(max_missed=0)
    seen: list[int] = []
    for i in range(12):
        # A face flickers in and out at alternating places: every appearance is a new track.
        faces = [synthetic_face(100 + 300 * (i % 2), 200)] if i % 3 != 2 else []
        for face in tracker.update(faces, i / FPS):
            if not seen or face.track_id != seen[-1]:
                seen.append(face.track_id)
    assert seen == sorted(seen) and len(seen) == len(set(seen)) and len(seen) > 4
    tracker.reset()
    (fresh,) = tracker.update([synthetic_face(100, 100)], 1.0)
    assert fresh.track_id == max(seen) + 1


def test_gating_far_detection_starts_a_new_track_and_inputs_are_not_mutated():
    tracker = FaceTracker(max_missed=5)
    (a,) = tracker.update([synthetic_face(100, 100)], 0.0)
    far = synthetic_face(400, 100)  # 3 face widths away in one frame: not the same face
    (b,) = tracker.update([far], 1 / FPS)
    assert b.track_id != a.track_id
    assert far.track_id is None and b is not far
    both = tracker.update([synthetic_face(400, 101), synthetic_face(101, 100)], 2 / FPS)
    assert [f.track_id for f in both] == [b.track_id, a.track_id]  # returned in input order
    assert len(tracker.tracks) == 2


def test_tracker_smoothing_is_per_track_and_keeps_raw_measurements():
    rng = np.random.default_rng(1)
    tracker = FaceTracker(smoothing=FACE_SMOOTHING)
    raw, smooth = [], []
    for i in range(100):
        face = synthetic_face(200, 200)
        face.landmarks += rng.normal(0, 1.0, size=(5, 2)).astype(np.float32)
        (out,) = tracker.update([face], i / FPS)
        np.testing.assert_array_equal(out.extra["raw_landmarks"], face.landmarks)
        raw.append(face.landmarks)
        smooth.append(out.landmarks)
    assert np.var(np.diff(raw, axis=0)) > 10 * np.var(np.diff(smooth, axis=0))
    # A new track starts unsmoothed, at its own first measurement.
    (new,) = tracker.update([synthetic_face(200, 200), synthetic_face(600, 400)], 100 / FPS)[1:]
    np.testing.assert_allclose(new.landmarks, synthetic_face(600, 400).landmarks, atol=1e-4)


# ---- KeyframeTracker ------------------------------------------------------------------------------


class ListDetector(FaceDetector):
    """Returns pre-recorded detections in order and counts its calls."""

    def __init__(self, results: list[list[Face]]) -> None:
        self.results = results
        self.calls = 0

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        self.calls += 1
        return self.results[min(self.calls - 1, len(self.results) - 1)]


def test_k1_detects_every_frame_and_flow_failure_falls_back_to_detection(grid_data):
    _, frames, dets = grid_data[0]
    detector = ListDetector([dets[0], [], [], []])
    kt = KeyframeTracker(detector, k=1)
    for i in range(3):
        kt.process(frames[i], i / FPS)
    assert detector.calls == 3 and kt.frames_propagated == 0

    detector = ListDetector([dets[0], []])
    kt = KeyframeTracker(detector, k=10)
    (face,) = kt.process(frames[0], 0.0)
    (moved,) = kt.process(frames[1], 1 / FPS)
    assert moved.extra["propagated"] and moved.track_id == face.track_id and detector.calls == 1
    noise = np.random.default_rng(0).integers(0, 256, size=frames[0].shape, dtype=np.uint8)
    assert kt.process(noise, 2 / FPS) == []  # flow cannot follow the face into noise: detect instead
    assert kt.flow_failures == 1 and detector.calls == 2


@pytest.mark.parametrize("k", [1, 5])
def test_real_clip_keeps_one_track_id(grid_data, yunet_onnx, k):
    for name, frames, dets in grid_data:
        assert all(len(d) == 1 for d in dets), name
        detector = YuNetTestDetector(yunet_onnx)
        kt = KeyframeTracker(detector, k=k)
        outs = [kt.process(f, i / FPS) for i, f in enumerate(frames)]
        assert all(len(o) == 1 for o in outs), name
        assert {o[0].track_id for o in outs} == {0}, name
        expected = len(frames) if k == 1 else -(-len(frames) // k)
        assert expected <= detector.calls <= expected + kt.flow_failures, name
        assert kt.flow_failures <= 2, name


# Measured on the six GRID clips (inter-ocular distance 51-59 px): propagated landmarks are on average
# 1.4-2.5% of the inter-ocular distance (about 1 px) from that frame's own detection, at most 8.4%; YuNet's
# own frame-to-frame landmark jitter there is about 1%.
def test_propagated_landmarks_stay_close_to_detections(grid_data, yunet_onnx):
    for name, frames, dets in grid_data:
        kt = KeyframeTracker(YuNetTestDetector(yunet_onnx), k=5)
        errors = []
        for i, (frame, det) in enumerate(zip(frames, dets)):
            (out,) = kt.process(frame, i / FPS)
            if out.extra.get("propagated"):
                per_point = np.linalg.norm(out.landmarks - det[0].landmarks, axis=1)
                errors.append(per_point.mean() / inter_ocular(det[0]))
                assert out.box[0] < out.landmarks[:, 0].min() and out.box[2] > out.landmarks[:, 0].max()
        assert len(errors) >= 0.7 * len(frames), name
        assert np.mean(errors) < 0.03, (name, np.mean(errors))
        assert np.max(errors) < 0.12, (name, np.max(errors))


# Measured on the six GRID clips with FACE_SMOOTHING: the mean frame-to-frame acceleration of the eye
# landmarks (the second difference, which is what reads as flicker) drops by a factor of 5.0-6.2, and the
# smoothed eyes sit 1.1-1.3% of the inter-ocular distance from the raw detections on average.
def test_smoothing_reduces_jitter_on_real_clip(grid_data, yunet_onnx):
    for name, frames, dets in grid_data:
        kt = KeyframeTracker(YuNetTestDetector(yunet_onnx), FaceTracker(smoothing=FACE_SMOOTHING), k=1)
        outs = [kt.process(f, i / FPS)[0] for i, f in enumerate(frames)]
        raw = np.stack([o.extra["raw_landmarks"] for o in outs])[:, :2]
        smooth = np.stack([o.landmarks for o in outs])[:, :2]
        np.testing.assert_allclose(raw, np.stack([d[0].landmarks for d in dets])[:, :2], atol=1e-4)

        def accel(x: np.ndarray) -> float:
            return float(np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1).mean())

        assert accel(smooth) < accel(raw) / 4.0, (name, accel(raw), accel(smooth))
        # ... without drifting off the face.
        iod = np.mean([inter_ocular(d[0]) for d in dets])
        assert np.linalg.norm(smooth - raw, axis=-1).mean() < 0.03 * iod, name


def test_head_pose_clip_keeps_its_id_with_flow(clips, yunet_onnx):
    gif = [p for p in clips if p.suffix == ".gif"]
    if not gif or not yunet_onnx.is_file():
        pytest.skip("head-pose clip or YuNet missing")
    frames = read_frames(gif[0])
    kt = KeyframeTracker(YuNetTestDetector(yunet_onnx), k=5)
    ids = {f.track_id for i, frame in enumerate(frames) for f in kt.process(frame, i / FPS)}
    assert ids == {0}


def test_config_is_immutable():
    with pytest.raises(AttributeError):
        FACE_SMOOTHING.beta = 0.0  # type: ignore[misc]
    assert isinstance(FACE_SMOOTHING, OneEuroConfig)
