"""Judging a source photo (engines/swap/source_quality.py) on the real shared photos, and `swapwatch swap`'s use of it.

Measured with YuNet (the default detector) on the largest face; eyes = eye distance in px, yaw/pitch in degrees
(yaw < 0: nose to the image's left; pitch < 0: chin down), sharpness as ``source_quality.sharpness``, inside =
share of the inner face inside the photo. The thresholds in engines/swap/source_quality.py were set on these values.

    photo                             faces eyes   box      yaw    pitch  sharp  inside verdict
    intel_headpose_female_frame0.png  1     18.0   62x83   -43.1   -5.5  0.213  1.00   turned-head poor; small-face note
    max_Bryan.png                     1     16.1   36x52     4.1  -13.6  0.571  1.00   small-face note
    max_Chris.jpeg                    1    109.1  237x326   10.1  -16.6  0.899  1.00   -
    max_Luciano.png                   1     58.6  127x185    5.2    0.7  0.881  1.00   -
    ed_walsh_1911_pd.jpg              1     89.1  190x273    5.4   -7.3  1.059  1.00   -
    t1.jpg (insightface)              6     55.8  113x150   -5.7  -12.3  0.758  1.00   several-faces note (2nd: 0.96)
      its other five faces: yaw -26.4, -11.7, -46.1, -18.1, 8.2; pitch -16.2..-3.5; eyes 30.9-47.9

    head-pose-face-detection-female.gif, per frame (eyes 15.9-33.4 px, pitch -12.6..+4.3, sharpness 0.145-0.582,
    inside 1.00 throughout):
      yaw  0: -43.1   1: -49.5   2: -53.0   3: -50.9   4: -51.9   5: -38.6   6: -34.3   7: -28.3
           8: -14.1   9:   2.2  10:  11.7  11:  27.3  12:  30.9  13:  30.3  14:  26.8  15:  22.8
          16:  25.8  17:  14.0  18:   5.7  19:  -2.5  20: -13.9  21: -17.7  22: -26.0
      (frames 0-6 turned away: poor; 7, 11, 14-16, 22 half-turned: note; 12-13 at 30.3-30.9: poor;
       sharpness lowest on frame 9, 0.145, smeared by the head's motion)

    synthetic, frontal photos: Gaussian blur sigma = k x eye distance -> sharpness
      k = 0.05: Chris 0.111, Luciano 0.169, Walsh 0.227, Bryan 0.168 (no problem)
      k = 0.08: Chris 0.043, Luciano 0.052, Walsh 0.095, Bryan 0.068 (blurry)
      k = 0.12: Chris 0.019, Luciano 0.027, Walsh 0.040, Bryan 0.023 (blurry)
    downscaled so the eyes are 10 px apart: Chris 9.7, Luciano 9.9, Walsh 10.2, Bryan 10.0 (still detected;
      small-face poor; sharpness 0.19-0.34, so the size, not blur, is what is flagged)
    max_Chris.jpeg cut 20% / 30% into its face box: left 0.94 / 0.83, bottom 0.94 / 0.81 inside (note / poor)

The judgement takes 0.5-2 ms per photo on 2 CPU cores (measured by hand; no timing is asserted).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from swapwatch.cli import main
from swapwatch.engines.faces import Face
from swapwatch.engines.swap import (
    BLURRY_POOR,
    SECOND_FACE_COMPARABLE,
    SMALL_FACE_POOR_PX,
    YAW_POOR_DEG,
    head_pose,
    judge_source,
)

from cli_util import assert_one_line_error, swapwatch_cmd

TURNED = "intel_headpose_female_frame0.png"
FRONTAL = ("max_Bryan.png", "max_Chris.jpeg", "max_Luciano.png", "ed_walsh_1911_pd.jpg")


@pytest.fixture(scope="module")
def photos(face_photos) -> dict:
    by_name = {p.name: p for p in face_photos}
    missing = [n for n in (TURNED, *FRONTAL) if n not in by_name]
    if missing:
        pytest.skip(f"shared photos missing: {missing}")
    return by_name


def judge(detector, image):
    return judge_source(image, detector.detect(image))


def eye_distance(detector, image) -> float:
    face = max(detector.detect(image), key=lambda f: f.area)
    return float(np.linalg.norm(face.landmarks[1] - face.landmarks[0]))


# ------------------------------------------------------------------------------------------- the judge


def test_turned_head_photo_is_poor(detector, photos):
    quality = judge(detector, cv2.imread(str(photos[TURNED])))
    assert not quality.ok
    assert [p.code for p in quality.poor] == ["turned-head"]
    assert abs(quality.measures.yaw_deg) > YAW_POOR_DEG + 5  # not a borderline call
    message = quality.poor[0].message
    assert "turned" in message and "use a frontal photo, eyes level, looking at the camera" in message


@pytest.mark.parametrize("name", FRONTAL)
def test_frontal_photos_have_no_poor_problem(detector, photos, name):
    quality = judge(detector, cv2.imread(str(photos[name])))
    assert quality.ok, quality.problems
    m = quality.measures
    assert m.faces == 1 and abs(m.yaw_deg) < YAW_POOR_DEG / 2 and m.sharpness > 3 * BLURRY_POOR
    assert m.inside_fraction == 1.0
    assert "turned-head" not in quality.codes and "blurry" not in quality.codes


def test_group_photo_is_a_note_about_several_faces(detector, t1_jpg):
    quality = judge(detector, cv2.imread(str(t1_jpg)))
    assert quality.ok and quality.codes == ("several-faces",)
    note = quality.notes[0]
    assert note.severity == "note" and "6 faces" in note.message and "largest" in note.message
    # the six faces are much the same size, so the note says the largest may not be the one meant
    assert quality.measures.second_face_ratio >= SECOND_FACE_COMPARABLE and "nearly as large" in note.message


@pytest.mark.parametrize("name", ["max_Chris.jpeg", "max_Luciano.png", "ed_walsh_1911_pd.jpg"])
def test_heavily_blurred_frontal_photo_is_blurry(detector, photos, name):
    image = cv2.imread(str(photos[name]))
    sigma = 0.12 * eye_distance(detector, image)
    blurred = judge(detector, cv2.GaussianBlur(image, (0, 0), sigma))
    assert "blurry" in [p.code for p in blurred.poor]
    assert "use a sharp" in next(p for p in blurred.poor if p.code == "blurry").message
    assert blurred.measures.sharpness < judge(detector, image).measures.sharpness / 5


def test_sharpness_does_not_depend_on_the_photo_resolution(detector, photos):
    """The same sharp face at full size and at a third of it reads alike (neither is blurry)."""
    image = cv2.imread(str(photos["max_Chris.jpeg"]))
    small = cv2.resize(image, None, fx=1 / 3, fy=1 / 3, interpolation=cv2.INTER_AREA)
    full, third = judge(detector, image).measures.sharpness, judge(detector, small).measures.sharpness
    assert third > 3 * BLURRY_POOR and 0.5 < third / full < 2.0


@pytest.mark.parametrize("name", ["max_Chris.jpeg", "ed_walsh_1911_pd.jpg"])
def test_frontal_photo_shrunk_to_a_tiny_face_is_small_face(detector, photos, name):
    image = cv2.imread(str(photos[name]))
    scale = 10.0 / eye_distance(detector, image)
    tiny = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    quality = judge(detector, tiny)
    assert quality.measures.eye_distance_px < SMALL_FACE_POOR_PX
    assert [p.code for p in quality.poor] == ["small-face"]
    assert "larger or closer photo" in quality.poor[0].message


def test_face_cut_by_the_edge(detector, photos):
    image = cv2.imread(str(photos["max_Chris.jpeg"]))
    x1, _, x2, _ = max(detector.detect(image), key=lambda f: f.area).box
    slight = judge(detector, np.ascontiguousarray(image[:, int(x1 + 0.2 * (x2 - x1)):]))
    deep = judge(detector, np.ascontiguousarray(image[:, int(x1 + 0.3 * (x2 - x1)):]))
    assert slight.ok and "cut-off" in [p.code for p in slight.notes]
    assert "cut-off" in [p.code for p in deep.poor]
    assert deep.measures.inside_fraction < slight.measures.inside_fraction < 1.0


def test_yaw_follows_the_head_turning_in_the_intel_clip(detector, clips):
    from swapwatch.engines.runtime import iter_video

    clip = next((c for c in clips if c.name == "head-pose-face-detection-female.gif"), None)
    if clip is None:
        pytest.skip("head-pose-face-detection-female.gif not in the shared assets")
    yaw = [judge(detector, f.image).measures.yaw_deg for f in iter_video(clip)]
    assert all(y < -YAW_POOR_DEG for y in yaw[0:6])  # turned away to the image's left
    assert all(abs(y) < 15 for y in (yaw[9], yaw[18], yaw[19]))  # facing the camera
    assert all(20 < y < 35 for y in yaw[11:17])  # half-turned the other way
    assert yaw[0] < yaw[7] < yaw[9] < yaw[11]  # the turn is monotonic through the first sweep


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (40, 0), (-25, 0), (0, 30), (0, -30), (60, 0)])
def test_head_pose_recovers_a_known_rotation(yaw, pitch):
    """Landmarks of the generic face itself, rotated and projected: the fit returns the angles it was given."""
    from swapwatch.engines.swap.source_quality import _MODEL_3D

    landmarks = (_MODEL_3D @ _rotation(yaw, pitch).T)[:, :2] * 3.0 + [320.0, 240.0]
    got_yaw, got_pitch, _ = head_pose(landmarks)
    assert got_yaw == pytest.approx(yaw, abs=1.0) and got_pitch == pytest.approx(pitch, abs=1.0)


def test_head_tilted_far_down_is_poor(detector, photos):
    """No shared photo is tilted: put a 45 degree nod's landmarks on a real face and its pixels."""
    from swapwatch.engines.swap.source_quality import _MODEL_3D

    image = cv2.imread(str(photos["max_Chris.jpeg"]))
    face = max(detector.detect(image), key=lambda f: f.area)
    centre = face.landmarks.mean(axis=0)
    scale = eye_distance(detector, image) / float(np.ptp(_MODEL_3D[:2, 0]))
    landmarks = (_MODEL_3D @ _rotation(0, -45).T)[:, :2] * scale + centre
    quality = judge_source(image, [Face(face.box, face.score, landmarks)])
    assert "tilted-head" in [p.code for p in quality.poor]
    assert quality.measures.pitch_deg < -35 and "tilted down" in quality.poor[0].message


def test_no_face_is_poor_and_serialises(detector):
    quality = judge_source(np.full((120, 160, 3), 90, np.uint8), [])
    assert not quality.ok and quality.codes == ("no-face",) and quality.measures is None
    assert json.loads(json.dumps(quality.to_json())) == {
        "ok": False, "problems": [{"code": "no-face", "severity": "poor", "message": quality.problems[0].message}],
        "measures": None}


def test_to_json_carries_verdict_problems_and_measures(detector, photos):
    data = json.loads(json.dumps(judge(detector, cv2.imread(str(photos[TURNED]))).to_json()))
    assert data["ok"] is False
    assert {"code": "turned-head", "severity": "poor"}.items() <= data["problems"][0].items()
    assert set(data["measures"]) >= {"faces", "eye_distance_px", "box_width_px", "box_height_px", "yaw_deg",
                                     "pitch_deg", "sharpness", "inside_fraction", "second_face_ratio"}


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """Yaw about the vertical axis (> 0: nose to the image's right), then pitch (> 0: chin up); y points down."""
    a, b = np.radians(yaw), np.radians(-pitch)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), np.sin(b)], [0, -np.sin(b), np.cos(b)]])
    return ry @ rx


# --------------------------------------------------------------------------------------- swapwatch swap


def test_swap_refuses_a_turned_head_source_before_loading_the_model(photos, tmp_path):
    out = tmp_path / "out.png"
    result = swapwatch_cmd("swap", "--source", str(photos[TURNED]), "--target", str(photos["max_Luciano.png"]),
                           "--output", str(out), "--model", "classic")
    assert_one_line_error(result, str(photos[TURNED]))
    line = result.stderr.strip()
    assert result.returncode == 2
    assert "turned" in line and "use a frontal photo, eyes level, looking at the camera" in line
    assert "--accept-source" in line
    assert not out.exists()


def test_swap_checks_the_source_before_the_swap_model_loads(photos, tmp_path, monkeypatch, capsys):
    import swapwatch.engines.swap.swappers as swappers

    def no_model(*args, **kwargs):
        raise AssertionError("the swap model was loaded before the source photo was judged")

    monkeypatch.setattr(swappers, "create_swapper", no_model)
    code = main(["swap", "--source", str(photos[TURNED]), "--target", str(photos["max_Luciano.png"]),
                 "--output", str(tmp_path / "out.png"), "--model", "classic"])
    assert code == 2 and "poor source photo" in capsys.readouterr().err


def test_swap_with_accept_source_goes_on_with_a_warning(photos, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["swap", "--source", str(photos[TURNED]), "--target", str(photos["max_Luciano.png"]),
                 "--output", str(out), "--model", "classic", "--accept-source"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert any("turned" in line and str(photos[TURNED]) in line for line in warnings), err
    assert "error" not in err and out.is_file() and cv2.imread(str(out)) is not None


def test_swap_prints_notes_as_warnings_and_goes_on(photos, t1_jpg, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["swap", "--source", str(t1_jpg), "--target", str(photos["max_Luciano.png"]), "--output", str(out),
                 "--model", "classic"]) == 0
    err = capsys.readouterr().err
    assert any("warning:" in line and "6 faces found" in line for line in err.splitlines()), err
    assert out.is_file()
