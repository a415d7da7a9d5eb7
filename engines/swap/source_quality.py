"""Judge a source photo before it is used for a swap: face size, head pose, sharpness, other faces, edges.

A swap copies the identity (and, for the weight-free swapper, the texture) of the source face. A photo with the
head turned, a tiny or blurred face, or the face cut by the frame gives a smeared, broken swap, and nothing
downstream says why. :func:`judge_source` measures those properties from the detector's box and 5 landmarks
(a few milliseconds, no model) and lists the problems, each with a stable ``code``, a severity (``poor``: the
swap will be broken; ``note``: worth knowing, the swap still works) and a one-line message that says why the
swap suffers and which photo to use instead.

The thresholds below were set on the shared test photos and the frames of the Intel head-pose clip; the measured
values are listed in tests/test_source_quality.py's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from swapwatch.engines.faces import ARCFACE_112, Face, estimate_alignment, inverse_matrix, transform_points, warp_face

__all__ = [
    "BLURRY_POOR",
    "CUT_NOTE_INSIDE",
    "CUT_POOR_INSIDE",
    "PITCH_POOR_DEG",
    "SECOND_FACE_COMPARABLE",
    "SMALL_FACE_NOTE_PX",
    "SMALL_FACE_POOR_PX",
    "YAW_NOTE_DEG",
    "YAW_POOR_DEG",
    "SourceMeasures",
    "SourceProblem",
    "SourceQuality",
    "head_pose",
    "inside_fraction",
    "judge_source",
    "sharpness",
]

POOR = "poor"
NOTE = "note"
FRONTAL_ADVICE = "use a frontal photo, eyes level, looking at the camera"

# ---- thresholds (how each was chosen: tests/test_source_quality.py lists every measured value) ---------------

# Head yaw, degrees. The frontal shared photos read |yaw| <= 10; the Intel clip's turned-away frames 0-6 read 34-53
# (the turned-head photo is its frame 0: 43) and its half-turned frames 23-31. Past 30 degrees the far cheek and
# eye corner are foreshortened or hidden and the swap smears them; 20-30 still swaps, with less detail there.
YAW_POOR_DEG = 30.0
YAW_NOTE_DEG = 20.0
# Head pitch, degrees. No shared photo is tilted: frontal faces read -17..+4, because 5 points cannot tell a
# person's nose height from a tilt; only a clear tilt, well past that spread, is judged poor.
PITCH_POOR_DEG = 35.0
# Eye distance, pixels. The identity models read the face on the 112 px ArcFace crop, eyes 35 px apart. Under
# 24 px the face is upscaled more than 1.5x (a note: max_Bryan.png, 16 px, still swaps); under 14 px more than
# 2.5x, and the identity is mostly interpolation (poor). A frontal photo shrunk to eyes 10 px apart is still found.
SMALL_FACE_POOR_PX = 14.0
SMALL_FACE_NOTE_PX = 24.0
# Sharpness (see :func:`sharpness`). The shared photos and clip frames read 0.145-1.06 (lowest: a clip frame
# smeared by the head's motion). A Gaussian blur of sigma 0.08 x the eye distance (2.8 px on the ArcFace crop)
# takes the frontal shared photos to 0.043-0.095, just under the line; 0.12 x to 0.019-0.040.
BLURRY_POOR = 0.10
# A second face at least this large (square root of the box area, relative to the largest) may be the person
# meant; t1.jpg's six faces are all within 0.8 of each other.
SECOND_FACE_COMPARABLE = 0.8
# Share of the inner face (see _INNER_FACE) inside the photo. Every shared photo and clip frame reads 1.00;
# max_Chris.jpeg cut 20% into its face box (left or bottom) reads 0.94, cut 30% in 0.83 and 0.81. Under 0.85 the
# swap pastes a face with a piece missing (poor); under 0.98 an edge of it may be missing (a note).
CUT_POOR_INSIDE = 0.85
CUT_NOTE_INSIDE = 0.98

# ---- measurements ----------------------------------------------------------------------------------------------

_TEMPLATE_112 = ARCFACE_112.points[0].astype(np.float64)
_TEMPLATE_EYE_DISTANCE = float(np.linalg.norm(_TEMPLATE_112[1] - _TEMPLATE_112[0]))  # 35.2 px at 112

# A generic face for the pose fit, in ArcFace-112 template units: x, y are the (frontal) template points, z points
# towards the camera. The nose tip stands half an eye distance in front of the eyes (about 32 mm on an adult with
# 63 mm between the pupils) and the mouth corners sit at the eyes' depth, as in the usual generic head models.
# Angles are approximate (the depth is everyone's and no one's); the thresholds above are on this same scale.
_MODEL_3D = np.column_stack([_TEMPLATE_112, [0.0, 0.0, _TEMPLATE_EYE_DISTANCE / 2, 0.0, 0.0]])
_MODEL_3D -= _MODEL_3D.mean(axis=0)

# The inner face (brows to chin, cheek to cheek) on the ArcFace crop, as fractions (x0, y0, x1, y1) of its side:
# what the swap replaces, without the hair and background around it.
_INNER_FACE = (0.2, 0.2, 0.8, 0.9)
# Sharpness is measured on the ArcFace crop scaled to 48 px (eyes 15 px apart, about the smallest face accepted),
# so every photo's face is first brought to the same size: a large sharp photo and a small sharp one read alike,
# only blur relative to the face's own size lowers the value.
_SHARPNESS_SIZE = 48
_SHARPNESS_MAX_CROP = 8 * _SHARPNESS_SIZE  # bounds the work on huge photos


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from 5 landmarks, by a scaled-orthographic fit of a generic 3D face.

    The affine camera mapping the generic face's 5 points to the landmarks is solved by least squares and its two
    rows orthonormalised into a rotation (weak perspective: right for a face far from the camera compared with its
    depth, as in any portrait). Yaw < 0: the nose points to the image's left; pitch < 0: the chin is down; roll:
    the eye line's angle.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    proj, *_ = np.linalg.lstsq(_MODEL_3D, pts - pts.mean(axis=0), rcond=None)  # (3, 2): model -> image x, y
    r1 = proj[:, 0]
    r2 = proj[:, 1] - proj[:, 0] * (proj[:, 0] @ proj[:, 1]) / max(float(proj[:, 0] @ proj[:, 0]), 1e-12)
    n1, n2 = float(np.linalg.norm(r1)), float(np.linalg.norm(r2))
    if n1 < 1e-9 or n2 < 1e-9:  # all points on a line: no pose to speak of
        return 0.0, 0.0, 0.0
    r1, r2 = r1 / n1, r2 / n2
    r3 = np.cross(r1, r2)
    yaw = np.degrees(np.arcsin(np.clip(r1[2], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(-r2[2], r3[2]))
    eyes = pts[1] - pts[0]
    roll = np.degrees(np.arctan2(eyes[1], eyes[0]))
    return float(yaw), float(pitch), float(roll)


def sharpness(image_bgr: np.ndarray, landmarks: np.ndarray) -> float:
    """Variance of the Laplacian over the inner face, divided by the intensity variance there (so lighting and
    contrast cancel), on the face aligned to a 48 px ArcFace crop. Higher is sharper; dimensionless."""
    lmk = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix = estimate_alignment(lmk, ARCFACE_112)
    # Warp at (about) the face's own resolution, then area-average down, so a large photo is not aliased.
    native = round(ARCFACE_112.size * float(np.linalg.norm(lmk[1] - lmk[0])) / _TEMPLATE_EYE_DISTANCE)
    size = int(min(max(_SHARPNESS_SIZE, native), _SHARPNESS_MAX_CROP))
    # The template scales uniformly with the crop size, so the similarity to it does too.
    crop = warp_face(image_bgr, matrix * (size / ARCFACE_112.size), size, border_mode=cv2.BORDER_REPLICATE)
    if size != _SHARPNESS_SIZE:
        crop = cv2.resize(crop, (_SHARPNESS_SIZE, _SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    x0, y0, x1, y1 = (round(v * _SHARPNESS_SIZE) for v in _INNER_FACE)
    inner = (slice(y0, y1), slice(x0, x1))
    laplacian = cv2.Laplacian(gray, cv2.CV_32F)[inner]
    return float(laplacian.var() / max(float(gray[inner].var()), 1.0))


def inside_fraction(landmarks: np.ndarray, width: int, height: int) -> float:
    """Share of the inner face that lies inside a ``width`` x ``height`` photo (a 16 x 16 grid of it, mapped
    from the ArcFace crop back into the photo). The detector's box says less: YuNet clips it to the photo."""
    x0, y0, x1, y1 = _INNER_FACE
    steps = (np.arange(16) + 0.5) / 16
    grid = np.stack(np.meshgrid(x0 + (x1 - x0) * steps, y0 + (y1 - y0) * steps), axis=-1).reshape(-1, 2)
    matrix = estimate_alignment(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), ARCFACE_112)
    pts = transform_points(grid * ARCFACE_112.size, inverse_matrix(matrix))
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= width - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= height - 1)
    return float(inside.mean())


# ---- the judgement ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceProblem:
    """One reason the swap will suffer: a stable ``code``, ``poor`` or ``note``, and a one-line message."""

    code: str
    severity: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class SourceMeasures:
    """What was measured on the largest face (pixels, degrees; ``sharpness`` as :func:`sharpness`)."""

    faces: int
    eye_distance_px: float
    box_width_px: float
    box_height_px: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    sharpness: float
    inside_fraction: float  # share of the inner face inside the photo
    second_face_ratio: float | None  # the next largest face's size relative to the largest; None with one face

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = round(value, 3) if isinstance(value, float) else value
        return out


@dataclass(frozen=True)
class SourceQuality:
    """The judgement of one source photo: ``ok`` when no problem is ``poor``."""

    measures: SourceMeasures | None  # None when no face was found
    problems: tuple[SourceProblem, ...] = field(default_factory=tuple)

    @property
    def poor(self) -> tuple[SourceProblem, ...]:
        return tuple(p for p in self.problems if p.severity == POOR)

    @property
    def notes(self) -> tuple[SourceProblem, ...]:
        return tuple(p for p in self.problems if p.severity == NOTE)

    @property
    def ok(self) -> bool:
        return not self.poor

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(p.code for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_json() for p in self.problems],
                "measures": self.measures.to_json() if self.measures is not None else None}


def judge_source(image_bgr: np.ndarray, faces: list[Face]) -> SourceQuality:
    """Judge the largest of ``faces`` (the one a swap uses) as a source for a face swap."""
    if not faces:
        return SourceQuality(None, (SourceProblem("no-face", POOR, "no face found, so there is nothing to swap "
                                                  f"from; {FRONTAL_ADVICE}"),))
    ranked = sorted(faces, key=lambda f: f.area, reverse=True)
    face = ranked[0]
    lmk = face.landmarks.astype(np.float64)
    height, width = image_bgr.shape[:2]
    yaw, pitch, roll = head_pose(lmk)
    second = float(np.sqrt(ranked[1].area / face.area)) if len(ranked) > 1 and face.area > 0 else None
    m = SourceMeasures(
        faces=len(faces), eye_distance_px=float(np.linalg.norm(lmk[1] - lmk[0])),
        box_width_px=float(face.box[2] - face.box[0]), box_height_px=float(face.box[3] - face.box[1]),
        yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll, sharpness=sharpness(image_bgr, lmk),
        inside_fraction=inside_fraction(lmk, width, height), second_face_ratio=second)
    return SourceQuality(m, tuple(_problems(m)))


def _problems(m: SourceMeasures) -> list[SourceProblem]:
    out: list[SourceProblem] = []
    turn = abs(m.yaw_deg)
    if turn > YAW_POOR_DEG:
        out.append(SourceProblem("turned-head", POOR, f"head turned about {turn:.0f}° away from the camera, so the "
                                 f"hidden side of the face smears in the swap; {FRONTAL_ADVICE}"))
    elif turn > YAW_NOTE_DEG:
        out.append(SourceProblem("turned-head", NOTE, f"head a little turned (about {turn:.0f}°), so the far side "
                                 f"of the face loses detail in the swap; for the best result, {FRONTAL_ADVICE}"))
    if abs(m.pitch_deg) > PITCH_POOR_DEG:
        way = "up" if m.pitch_deg > 0 else "down"
        out.append(SourceProblem("tilted-head", POOR, f"head tilted {way} about {abs(m.pitch_deg):.0f}°, so "
                                 "eyes, nose and mouth are foreshortened and the swap distorts them; "
                                 + FRONTAL_ADVICE))
    if m.eye_distance_px < SMALL_FACE_POOR_PX:
        out.append(SourceProblem("small-face", POOR, f"face too small (eyes {m.eye_distance_px:.0f} px apart), so "
                                 "the swap has to upscale it into a blur; use a larger or closer photo, eyes 35 px or "
                                 "more apart"))
    elif m.eye_distance_px < SMALL_FACE_NOTE_PX:
        out.append(SourceProblem("small-face", NOTE, f"small face (eyes {m.eye_distance_px:.0f} px apart), so "
                                 "the swap upscales it and loses detail; a larger or closer photo gives a sharper "
                                 "swap"))
    if m.sharpness < BLURRY_POOR:
        out.append(SourceProblem("blurry", POOR, f"face blurred (sharpness {m.sharpness:.2f}, under "
                                 f"{BLURRY_POOR:.2f}), so the swap copies the blur; use a sharp, in-focus, "
                                 "well-lit photo"))
    if m.inside_fraction < CUT_POOR_INSIDE:
        out.append(SourceProblem("cut-off", POOR, "face cut by the photo's edge, so part of the face is missing "
                                 "from the swap; use a photo with the whole face inside the frame"))
    elif m.inside_fraction < CUT_NOTE_INSIDE:
        out.append(SourceProblem("cut-off", NOTE, "face touches the photo's edge, so the swap may miss the cut part; "
                                 "a photo with some margin around the face is safer"))
    if m.faces > 1:
        comparable = m.second_face_ratio is not None and m.second_face_ratio >= SECOND_FACE_COMPARABLE
        doubt = ("; another is nearly as large, so check the box is on the person you mean; a photo of one person "
                 "avoids the doubt") if comparable else ""
        out.append(SourceProblem("several-faces", NOTE, f"{m.faces} faces found, the largest is used{doubt}"))
    return out
