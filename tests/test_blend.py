"""Masks, paste-back, colour matching and Poisson paste on real photos with YuNet landmarks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from swapwatch.engines.faces import (
    ARCFACE_112, FFHQ_512, INSWAPPER_128, SIMSWAP_224, align_face, estimate_alignment, ffhq_template,
    transform_points, warp_back,
)
from swapwatch.engines.swap import (
    FeatherMask, colour_support, face_outline, lab_stats, match_colour, paste_back, paste_roi, poisson_paste, to_lab,
)

TEMPLATE = ffhq_template(256)


@pytest.fixture(scope="module")
def photos(face_photos, detector) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each shared photo and its (only) face's 5 landmarks."""
    out = {}
    for path in face_photos:
        image = cv2.imread(str(path))
        faces = detector.detect(image)
        assert len(faces) == 1, path.name
        out[path.name] = (image, faces[0].landmarks.astype(np.float64))
    return out


@pytest.fixture(scope="module")
def masks() -> FeatherMask:
    return FeatherMask()


def _warped_mask(mask: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return warp_back(mask, matrix, shape)[0]


def _reference_paste(frame, crop, matrix, mask) -> np.ndarray:
    """Full-frame paste with align.warp_back, in float64: what paste_back's ROI path must reproduce."""
    warped = cv2.warpAffine(crop, cv2.invertAffineTransform(matrix), (frame.shape[1], frame.shape[0]),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = _warped_mask(mask, matrix, frame.shape)[..., None].astype(np.float64)
    return np.rint(alpha * warped + (1 - alpha) * frame).astype(np.uint8)


# ---- FeatherMask ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template, size", [(TEMPLATE, 256), (FFHQ_512, 512), (SIMSWAP_224, 224),
                                            (ARCFACE_112, 112), (INSWAPPER_128, 128), (FFHQ_512, 128)])
def test_face_mask_shape_range_centre_corners(masks, template, size):
    mask = masks.face(template, size)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    pts = template.points[template.num_templates // 2] * size / template.size
    centre = (pts[0:2].mean(0) + pts[3:5].mean(0)) / 2  # between the eyes and the mouth
    assert mask[int(round(centre[1])), int(round(centre[0]))] == 1.0
    for y, x in [(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)]:
        assert mask[y, x] == 0.0
    # The eyes and the nose are fully inside the face, the mouth corners (nearer the cheek edge) nearly.
    values = [mask[y, x] for x, y in np.round(pts).astype(int)]
    assert values[:3] == [1.0, 1.0, 1.0] and min(values[3:]) >= 0.9


@pytest.mark.parametrize("template", [TEMPLATE, SIMSWAP_224, INSWAPPER_128])
def test_face_mask_is_smooth_and_stays_inside_the_outline(masks, template):
    size = template.size
    mask = masks.face(template)
    pts = template.points[template.num_templates // 2]
    scale = float(np.linalg.norm(pts[3:5].mean(0) - pts[0:2].mean(0)))
    sigma = masks.feather * scale
    # A Gaussian-blurred edge rises at most 1 / (sigma sqrt(2 pi)) per pixel; 15% slack for the AA fill.
    steepest = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert steepest <= 1.15 / (sigma * np.sqrt(2 * np.pi))
    # Support: the outline grown by what the 3-sigma blur reaches past the erosion (+2 px of rounding).
    grow = int(np.ceil(max(3 * sigma - masks.erode * scale, 0))) + 2
    outline = np.zeros((size, size), np.uint8)
    cv2.fillPoly(outline, [np.round(face_outline(template)).astype(np.int32)], 1)
    grown = cv2.dilate(outline, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
    assert np.all(mask[grown == 0] == 0.0)
    # ... and still covers most of the face inside it.
    assert (mask >= 0.5).sum() > 0.6 * outline.sum()


def test_face_mask_is_cached_per_instance_and_read_only(masks):
    a = masks.face(TEMPLATE)
    assert masks.face(TEMPLATE) is a and masks(TEMPLATE, 256) is a
    assert masks.face(TEMPLATE, 128) is not a and masks.face(TEMPLATE, 128).shape == (128, 128)
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    other = FeatherMask()
    assert other.face(TEMPLATE) is not a
    np.testing.assert_array_equal(other.face(TEMPLATE), a)
    # Multi-pose templates: one mask per pose.
    assert not np.array_equal(masks.face(SIMSWAP_224, index=0), masks.face(SIMSWAP_224, index=2))
    with pytest.raises(ValueError):
        masks.face(SIMSWAP_224, index=5)


def test_mouth_region_and_face_without_mouth(masks):
    size = TEMPLATE.size
    mouth = masks.mouth_region(size, TEMPLATE)
    pts = TEMPLATE.points[0]
    mx, my = np.round(pts[3:5].mean(0)).astype(int)
    assert mouth[my, mx] == 1.0
    for x, y in np.round(pts[:3]).astype(int):  # eyes and nose tip are not mouth
        assert mouth[y, x] == 0.0
    kept = masks.face(TEMPLATE, keep_mouth=True)
    face = masks.face(TEMPLATE)
    np.testing.assert_allclose(kept, face * (1 - mouth), atol=1e-6)
    assert kept[my, mx] == 0.0 and np.all(kept <= face)


# ---- paste_back -----------------------------------------------------------------------------------


def test_paste_back_leaves_everything_outside_the_mask_bit_identical(photos, masks):
    rng = np.random.default_rng(0)
    mask = masks.face(TEMPLATE)
    for name, (image, landmarks) in photos.items():
        matrix = estimate_alignment(landmarks, TEMPLATE)
        crop = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # anything: noise changes every pixel
        out = paste_back(image, crop, matrix, mask)
        support = _warped_mask(mask, matrix, image.shape) > 0
        assert np.array_equal(out[~support], image[~support]), name
        assert (out[support] != image[support]).mean() > 0.5, name
        assert out.dtype == np.uint8 and out.shape == image.shape
        # Only the ROI rectangle is touched.
        x0, y0, x1, y1 = paste_roi(mask, matrix, image.shape[:2])
        changed = np.argwhere(np.any(out != image, axis=2))
        assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y1
        assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1


def test_self_paste_changes_the_face_only_by_interpolation(photos, masks):
    # The frame's own aligned crop pasted back: the only change is bilinear there-and-back. Crop sizes are
    # chosen so each face is upsampled 1.5x (no detail lost to downsampling): measured mean 0.6-2.0 and
    # 99th percentile 4-14 levels over the five photos.
    for name, (image, landmarks) in photos.items():
        scale = np.hypot(*estimate_alignment(landmarks, TEMPLATE)[0, :2])
        template = ffhq_template(int(round(256 * 1.5 / scale / 2)) * 2)
        aligned = align_face(image, landmarks, template)
        mask = masks.face(template)
        out = paste_back(image, aligned.crop, aligned.matrix, mask)
        inside = _warped_mask(mask, aligned.matrix, image.shape) > 0
        diff = np.abs(out.astype(np.int16) - image)[inside]
        assert diff.mean() < 2.5, name
        assert np.percentile(diff, 99) < 20, name


def test_roi_paste_equals_full_frame_paste(photos, masks):
    rng = np.random.default_rng(1)
    mask = masks.face(TEMPLATE)
    for name, (image, landmarks) in photos.items():
        matrix = estimate_alignment(landmarks, TEMPLATE)
        crop = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (5, 5), 0)
        out = paste_back(image, crop, matrix, mask)
        ref = _reference_paste(image, crop, matrix, mask)
        assert np.abs(out.astype(np.int16) - ref).max() <= 1, name


def test_paste_back_out_buffer_in_place_and_frame_edges(photos, masks):
    image, landmarks = photos["max_Luciano.png"]
    mask = masks.face(TEMPLATE)
    aligned = align_face(image, landmarks, TEMPLATE)
    crop = 255 - aligned.crop
    expected = paste_back(image, crop, aligned.matrix, mask)
    buf = np.zeros_like(image)
    assert paste_back(image, crop, aligned.matrix, mask, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)
    inplace = image.copy()
    assert paste_back(inplace, crop, aligned.matrix, mask, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, expected)
    # A face cut by the frame's edge (left half of the image) and one entirely outside it.
    cut = np.ascontiguousarray(image[:, : int(landmarks[:, 0].mean())])
    out = paste_back(cut, crop, aligned.matrix, mask)
    support = _warped_mask(mask, aligned.matrix, cut.shape) > 0
    assert support.any() and np.array_equal(out[~support], cut[~support])
    assert np.abs(out.astype(np.int16) - _reference_paste(cut, crop, aligned.matrix, mask)).max() <= 1
    away = aligned.matrix.copy()
    away[:, 2] += 5000
    np.testing.assert_array_equal(paste_back(image, crop, away, mask), image)
    with pytest.raises(ValueError):
        paste_back(image, crop, aligned.matrix, mask[:100])


# ---- match_colour ---------------------------------------------------------------------------------


def test_match_colour_moves_lab_statistics_to_the_reference(photos, masks):
    # Tolerance: uint8 rounding and gamut clipping of the result. Means within 1.0 LAB unit, standard
    # deviations within 8% (measured: at most 0.16 and 1.2%).
    mask = masks.face(TEMPLATE)
    support = colour_support(mask)
    crops = {n: align_face(img, lm, TEMPLATE).crop for n, (img, lm) in photos.items()}
    pairs = [("max_Chris.jpeg", "max_Luciano.png"), ("max_Luciano.png", "intel_headpose_female_frame0.png"),
             ("intel_headpose_female_frame0.png", "max_Bryan.png"), ("max_Bryan.png", "max_Chris.jpeg")]
    for src_name, ref_name in pairs:
        src, ref = crops[src_name], crops[ref_name]
        out = match_colour(src, ref, mask)
        assert out.shape == src.shape and out.dtype == np.uint8
        mean_o, std_o = lab_stats(to_lab(out), support)
        mean_r, std_r = lab_stats(to_lab(ref), support)
        mean_s, _ = lab_stats(to_lab(src), support)
        np.testing.assert_allclose(mean_o, mean_r, atol=1.0, err_msg=f"{src_name} -> {ref_name}")
        np.testing.assert_allclose(std_o, std_r, rtol=0.08, atol=0.3, err_msg=f"{src_name} -> {ref_name}")
        assert np.abs(mean_s - mean_r).max() > 3  # the pair really differed before
    # Batched == one at a time.
    names = [p[0] for p in pairs]
    batch = match_colour(np.stack([crops[a] for a, _ in pairs]), np.stack([crops[b] for _, b in pairs]), mask)
    for i, (a, b) in enumerate(pairs):
        np.testing.assert_array_equal(batch[i], match_colour(crops[a], crops[b], mask), err_msg=names[i])


def test_match_colour_to_a_black_and_white_reference_removes_colour(photos, masks):
    mask = masks.face(TEMPLATE)
    src = align_face(*photos["max_Chris.jpeg"], TEMPLATE).crop
    grey = cv2.cvtColor(cv2.cvtColor(align_face(*photos["max_Luciano.png"], TEMPLATE).crop,
                                     cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    out = match_colour(src, grey, mask)
    inside = colour_support(mask).astype(bool)
    spread = out[inside].astype(np.int16)
    assert np.abs(spread - spread.mean(axis=1, keepdims=True)).max() <= 3  # B, G and R agree: grey


def test_match_colour_rejects_bad_input(masks):
    mask = masks.face(TEMPLATE)
    crop = np.zeros((256, 256, 3), np.uint8)
    with pytest.raises(ValueError):
        match_colour(crop, crop[:128], mask)
    with pytest.raises(ValueError):
        match_colour(crop, crop, np.zeros((256, 256), np.float32))


# ---- poisson_paste --------------------------------------------------------------------------------


def test_poisson_paste_respects_the_roi_and_blends(photos, masks):
    image, landmarks = photos["max_Luciano.png"]
    source, src_lm = photos["max_Chris.jpeg"]
    mask = masks.face(TEMPLATE)
    target = align_face(image, landmarks, TEMPLATE)
    crop = align_face(source, src_lm, TEMPLATE).crop
    out = poisson_paste(image, crop, target.matrix, mask)
    support = _warped_mask(mask, target.matrix, image.shape) > 0
    assert np.array_equal(out[~support], image[~support])
    alpha = paste_back(image, crop, target.matrix, mask)
    inner = _warped_mask(mask, target.matrix, image.shape) >= 0.99
    # The clone changes the face, and differently from the alpha paste (it takes the frame's colours).
    assert np.abs(out[inner].astype(np.int16) - image[inner]).mean() > 5
    assert np.abs(out[inner].astype(np.int16) - alpha[inner]).mean() > 2
    # This face is away from the border, so the clone (not the fallback) ran.
    x0, y0, x1, y1 = paste_roi(mask, target.matrix, image.shape[:2])
    assert x0 > 0 and y0 > 0 and x1 < image.shape[1] and y1 < image.shape[0]


def test_poisson_paste_at_the_frame_border_falls_back_to_alpha(photos, masks):
    image, landmarks = photos["max_Luciano.png"]
    mask = masks.face(TEMPLATE)
    crop = 255 - align_face(image, landmarks, TEMPLATE).crop
    # Cut the frame through the face: its rectangle now touches the right border.
    cut = np.ascontiguousarray(image[:, : int(landmarks[2, 0])])
    matrix = estimate_alignment(landmarks, TEMPLATE)
    out = poisson_paste(cut, crop, matrix, mask)
    np.testing.assert_array_equal(out, paste_back(cut, crop, matrix, mask))
    support = _warped_mask(mask, matrix, cut.shape) > 0
    assert np.array_equal(out[~support], cut[~support]) and (out != cut).any()
    # In place works too.
    buf = cut.copy()
    assert poisson_paste(buf, crop, matrix, mask, out=buf) is buf
    np.testing.assert_array_equal(buf, out)


def test_roi_follows_the_face(photos, masks):
    image, landmarks = photos["ed_walsh_1911_pd.jpg"]
    mask = masks.face(TEMPLATE)
    matrix = estimate_alignment(landmarks, TEMPLATE)
    x0, y0, x1, y1 = paste_roi(mask, matrix, image.shape[:2])
    face_pts = transform_points(face_outline(TEMPLATE), cv2.invertAffineTransform(matrix))
    # The rectangle holds the whole face outline and is not much larger than it.
    assert x0 <= face_pts[:, 0].min() and x1 >= face_pts[:, 0].max()
    assert y0 <= face_pts[:, 1].min() and y1 >= face_pts[:, 1].max()
    assert (x1 - x0) * (y1 - y0) < 1.5 * np.ptp(face_pts[:, 0]) * np.ptp(face_pts[:, 1])
    assert (x1 - x0) * (y1 - y0) < 0.25 * image.shape[0] * image.shape[1]
