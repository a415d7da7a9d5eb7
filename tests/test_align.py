"""Five-point alignment: Umeyama, the crop templates, parity with InsightFace, and the torch warps."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from swapwatch.engines.faces import (
    ARCFACE_112,
    FFHQ_512,
    INSWAPPER_128,
    SIMSWAP_224,
    TEMPLATES,
    AlignedFace,
    CropTemplate,
    affine_grid_for,
    align_face,
    estimate_alignment,
    inverse_matrix,
    template_errors,
    transform_points,
    umeyama_similarity,
    warp_back,
    warp_back_batch_torch,
    warp_batch_torch,
    warp_face,
)


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    scale = float(np.exp(rng.uniform(np.log(0.1), np.log(5.0))))
    angle = float(rng.uniform(-np.pi, np.pi))
    c, s = np.cos(angle), np.sin(angle)
    tx, ty = rng.uniform(-300, 300, size=2)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


@pytest.fixture(scope="module")
def t1_faces(t1_jpg, yunet_onnx):
    """The t1.jpg group photo and YuNet's 5 landmarks (float64) for each of its faces."""
    if not yunet_onnx.is_file():
        pytest.skip(f"{yunet_onnx} missing")
    image = cv2.imread(str(t1_jpg))
    det = cv2.FaceDetectorYN.create(str(yunet_onnx), "", (image.shape[1], image.shape[0]))
    _, rows = det.detect(image)
    assert rows is not None and len(rows) >= 5
    landmarks = [r[4:14].reshape(5, 2).astype(np.float64) for r in rows]
    boxes = [r[:4] for r in rows]
    # YuNet's order is the image-left eye first, as swapwatch's LANDMARK_NAMES expects.
    assert all(lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0] for lm in landmarks)
    return image, landmarks, boxes


# ---- Umeyama --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_umeyama_recovers_exact_similarity(seed):
    rng = np.random.default_rng(seed)
    m = random_similarity(rng)
    src = rng.uniform(0, 500, size=(int(rng.integers(2, 20)), 2))
    est = umeyama_similarity(src, transform_points(src, m))
    assert est.dtype == np.float64 and est.shape == (2, 3)
    np.testing.assert_allclose(est, m, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_is_the_least_squares_similarity_under_noise(seed):
    # [[a, -b, tx], [b, a, ty]] is linear in (a, b, tx, ty) and spans exactly the reflection-free similarities,
    # so an ordinary linear least-squares solve gives the reference optimum.
    rng = np.random.default_rng(100 + seed)
    m = random_similarity(rng)
    src = rng.uniform(0, 200, size=(12, 2))
    dst = transform_points(src, m) + rng.normal(0, 3.0, size=src.shape)
    x, y = src[:, 0], src[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    reference = np.array([[a, -b, tx], [b, a, ty]])
    est = umeyama_similarity(src, dst)
    np.testing.assert_allclose(est, reference, atol=1e-9, rtol=1e-9)
    sse = ((transform_points(src, est) - dst) ** 2).sum()
    assert sse <= ((transform_points(src, m) - dst) ** 2).sum()  # no worse than the true transform


def test_umeyama_excludes_reflection_and_rejects_degenerate_input():
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 100, size=(5, 2))
    mirrored = src * np.array([-1.0, 1.0])
    est = umeyama_similarity(src, mirrored)
    assert np.linalg.det(est[:, :2]) > 0
    with pytest.raises(ValueError):
        umeyama_similarity(np.ones((5, 2)), src)
    with pytest.raises(ValueError):
        umeyama_similarity(src[:, :1], src[:, :1])


# ---- templates ------------------------------------------------------------------------------------


def test_template_values_and_provenance():
    arcface = [
        [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]
    ]
    np.testing.assert_allclose(ARCFACE_112.points[0], arcface, atol=1e-5)
    np.testing.assert_allclose(INSWAPPER_128.points[0], np.array(arcface) + [8.0, 0.0], atol=1e-5)
    assert SIMSWAP_224.points.shape == (5, 5, 2)
    np.testing.assert_allclose(SIMSWAP_224.points[2, 0], [79.46, 102.276], atol=1e-4)  # frontal left eye x2
    np.testing.assert_allclose(FFHQ_512.points[0, 0], [192.98138, 239.94708])
    assert (ARCFACE_112.size, INSWAPPER_128.size, SIMSWAP_224.size, FFHQ_512.size) == (112, 128, 224, 512)
    assert set(TEMPLATES) == {"arcface_112", "inswapper_128", "simswap_224", "ffhq_512"}
    with pytest.raises(ValueError):
        ARCFACE_112.points[0, 0, 0] = 0.0  # read-only
    with pytest.raises(ValueError):
        CropTemplate("bad", 112, np.zeros((4, 2)))


@pytest.mark.parametrize("template", [ARCFACE_112, INSWAPPER_128, SIMSWAP_224, FFHQ_512], ids=lambda t: t.name)
def test_each_template_maps_its_own_points_to_themselves(template):
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for k, points in enumerate(template.points):
        mats, errors = template_errors(points, template)
        assert int(np.argmin(errors)) == k and errors[k] < 1e-9
        np.testing.assert_allclose(estimate_alignment(points, template), identity, atol=1e-9)
        np.testing.assert_allclose(transform_points(points, mats[k]), points, atol=1e-9)


@pytest.mark.parametrize("pose", range(5))
def test_simswap_picks_the_lowest_error_pose(pose):
    rng = np.random.default_rng(pose)
    m = random_similarity(rng)
    # A face in pose `pose` somewhere in an image: the template's points mapped out of the crop.
    landmarks = transform_points(SIMSWAP_224.points[pose], inverse_matrix(m)) + rng.normal(0, 0.05, (5, 2))
    aligned_index = align_face(np.zeros((8, 8, 3), np.uint8), landmarks, SIMSWAP_224).template_index
    assert aligned_index == pose
    np.testing.assert_allclose(estimate_alignment(landmarks, SIMSWAP_224), m, rtol=1e-2, atol=0.5)


# ---- parity with InsightFace ----------------------------------------------------------------------


def insightface_estimate_norm(landmarks: np.ndarray, size: int) -> np.ndarray:
    from insightface.utils import face_align

    with warnings.catch_warnings():  # scikit-image >= 0.26 deprecates SimilarityTransform.estimate
        warnings.simplefilter("ignore")
        return face_align.estimate_norm(landmarks, size)


INSIGHTFACE_CASES = pytest.mark.parametrize(
    "template,size", [(ARCFACE_112, 112), (INSWAPPER_128, 128)], ids=["arcface", "inswapper"]
)


@INSIGHTFACE_CASES
def test_matrices_match_insightface_estimate_norm(t1_faces, template, size):
    from insightface.utils import face_align
    from skimage.transform import SimilarityTransform

    # The template is InsightFace's float32 points, exactly.
    theirs_dst = face_align.arcface_dst * (float(size) / (112.0 if size % 112 == 0 else 128.0))
    theirs_dst[:, 0] += 0.0 if size % 112 == 0 else 8.0 * size / 128.0
    np.testing.assert_array_equal(template.points[0], theirs_dst.astype(np.float64))

    _, landmarks, _ = t1_faces
    for lmk in landmarks:
        ours = estimate_alignment(lmk, template)
        # estimate_norm averages the float32 template in float32, which moves its translation by up to
        # ~5e-6 px: agreement is to that rounding ...
        np.testing.assert_allclose(ours, insightface_estimate_norm(lmk, size), atol=1e-5, rtol=0)
        np.testing.assert_allclose(ours[:, :2], insightface_estimate_norm(lmk, size)[:, :2], atol=1e-6, rtol=0)
        # ... and to 1e-9 against the same Umeyama in float64 throughout.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tform = SimilarityTransform()
            assert tform.estimate(lmk, theirs_dst.astype(np.float64))
        np.testing.assert_allclose(ours, tform.params[:2], atol=1e-9, rtol=0)


@INSIGHTFACE_CASES
def test_crops_match_insightface_norm_crop(t1_faces, template, size):
    from insightface.utils import face_align

    image, landmarks, _ = t1_faces
    for lmk in landmarks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = face_align.norm_crop(image, lmk, size)
        aligned = align_face(image, lmk, template)
        assert isinstance(aligned, AlignedFace) and aligned.template == template.name
        assert aligned.crop.shape == theirs.shape == (size, size, 3)
        diff = np.abs(aligned.crop.astype(np.int16) - theirs.astype(np.int16))
        # Sub-1e-5 matrix differences can flip OpenCV's fixed-point bilinear rounding on a few pixels.
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# ---- warp and inverse warp ------------------------------------------------------------------------


def test_warp_back_is_exact_for_an_integer_shift():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    m = np.array([[1.0, 0.0, -10.0], [0.0, 1.0, -7.0]])
    crop = warp_face(image, m, (30, 40))
    np.testing.assert_array_equal(crop, image[7:37, 10:50])
    back, mask = warp_back(crop, m, image.shape)
    assert back.shape == image.shape and mask.shape == image.shape[:2] and mask.dtype == np.float32
    np.testing.assert_array_equal(back[7:37, 10:50], image[7:37, 10:50])
    assert mask[7:37, 10:50].min() == 1.0 and mask.sum() == 30 * 40
    full = np.append(m, [[0.0, 0.0, 1.0]], axis=0)
    np.testing.assert_allclose(inverse_matrix(m) @ full, np.eye(3)[:2], atol=1e-12)


# Measured on t1.jpg's six faces: mean absolute error 0.3-1.1 grey levels for the upsampling crops
# (simswap_224, ffhq_512) and 1.2-1.9 for the downsampling ones (arcface_112, inswapper_128: detail below the
# crop's resolution is gone), inside the face box where the mask is 1.
@pytest.mark.parametrize(
    "template,bound",
    [(ARCFACE_112, 2.5), (INSWAPPER_128, 2.5), (SIMSWAP_224, 1.5), (FFHQ_512, 1.0)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_warp_then_warp_back_reproduces_the_face(t1_faces, template, bound):
    image, landmarks, boxes = t1_faces
    for lmk, (x, y, w, h) in zip(landmarks, boxes):
        aligned = align_face(image, lmk, template)
        back, mask = warp_back(aligned.crop, aligned.matrix, image.shape)
        inside = cv2.erode((mask >= 1.0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        region = np.zeros_like(inside)
        region[int(y) : int(y + h), int(x) : int(x + w)] = True
        region &= inside
        assert region.sum() > 0.5 * w * h
        err = np.abs(back.astype(np.float64) - image)[region]
        assert err.mean() < bound, (template.name, err.mean())
        assert mask.min() >= 0.0 and mask.max() <= 1.0 and (mask == 0).mean() > 0.5


def test_border_reflect_avoids_black_corners():
    image = np.full((50, 50, 3), 200, np.uint8)
    m = np.array([[1.0, 0.0, 30.0], [0.0, 1.0, 30.0]])  # the crop hangs over the image's top-left corner
    assert warp_face(image, m, 64)[:10, :10].max() == 0
    assert warp_face(image, m, 64, border_mode=cv2.BORDER_REFLECT)[:10, :10].min() == 200


# ---- torch warps ----------------------------------------------------------------------------------


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


@pytest.mark.parametrize("template", [ARCFACE_112, SIMSWAP_224, FFHQ_512], ids=lambda t: t.name)
def test_torch_warp_matches_cv2(t1_faces, template):
    image, landmarks, _ = t1_faces
    mats = np.stack([estimate_alignment(lmk, template) for lmk in landmarks])
    batch = to_tensor(image)[None].expand(len(mats), -1, -1, -1)
    crops = warp_batch_torch(batch, mats, template.size)
    assert crops.shape == (len(mats), 3, template.size, template.size)
    inner = slice(2, -2)  # the outermost pixels depend on border handling, not on the mapping
    for m, crop in zip(mats, crops):
        got = crop.permute(1, 2, 0).numpy()
        ref_f = cv2.warpAffine(image.astype(np.float32), m, (template.size, template.size))
        ref_u8 = cv2.warpAffine(image, m, (template.size, template.size)).astype(np.float32)
        # Same sampling positions: against OpenCV's float path the differences are float rounding
        # (measured max 0.013 grey levels); its uint8 path rounds to integers (max 0.5, plus OpenCV's
        # 1/32-px grid).
        assert np.abs(got - ref_f)[inner, inner].max() < 0.05
        assert np.abs(got - ref_u8)[inner, inner].mean() < 0.3
        assert np.abs(got - ref_u8)[inner, inner].max() <= 1.0


def test_torch_warp_back_matches_cv2(t1_faces):
    image, landmarks, _ = t1_faces
    h, w = image.shape[:2]
    mats = np.stack([estimate_alignment(lmk, SIMSWAP_224) for lmk in landmarks[:3]])
    crops_np = [warp_face(image, m, 224).astype(np.float32) for m in mats]
    crops = torch.stack([to_tensor(c) for c in crops_np])
    back, masks = warp_back_batch_torch(crops, torch.from_numpy(mats), (h, w))
    assert back.shape == (3, 3, h, w) and masks.shape == (3, 1, h, w)
    for m, crop, b, mk in zip(mats, crops_np, back, masks):
        ref, ref_mask = warp_back(crop, m, image.shape)
        got_mask = mk[0].numpy()
        # Compare where both masks are fully valid; the fractional rim differs by OpenCV's 1/32-px grid.
        valid = (ref_mask >= 1.0) & (got_mask >= 1.0 - 1e-6)
        assert valid.sum() > 0.95 * (ref_mask >= 1.0).sum()
        assert np.abs(b.permute(1, 2, 0).numpy() - ref)[valid].max() < 0.05
        assert np.abs(got_mask - ref_mask).max() < 0.05


def test_torch_warp_round_trip_and_shared_matrix():
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.uniform(0, 1, size=(2, 3, 40, 50)).astype(np.float32))
    m = np.array([[1.0, 0.0, -5.0], [0.0, 1.0, -4.0]])  # integer shift: sampling hits pixel centres exactly
    crops = warp_batch_torch(images, m, (20, 30))
    torch.testing.assert_close(crops, images[:, :, 4:24, 5:35], atol=1e-5, rtol=0)
    back, mask = warp_back_batch_torch(crops, m, (40, 50))
    torch.testing.assert_close(back[:, :, 4:24, 5:35], images[:, :, 4:24, 5:35], atol=1e-5, rtol=0)
    assert float(mask.sum()) == pytest.approx(2 * 20 * 30, abs=1e-3)
    grid = affine_grid_for(np.stack([m, m]), (40, 50), (20, 30))
    assert grid.shape == (2, 20, 30, 2)
    torch.testing.assert_close(torch.nn.functional.grid_sample(images, grid, align_corners=False), crops)
    with pytest.raises(ValueError):
        warp_batch_torch(images.to(torch.uint8), m, 20)
