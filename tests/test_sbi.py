"""Self-blended images: changes stay near the face, the mask is a weight in [0, 1], draws are seeded, and one
parameter draw gives the same fake on every frame of a clip (it follows the face)."""

from __future__ import annotations

import numpy as np
import pytest

from swapwatch.engines.deepfake import BLEND_RATIOS, SBIParams, SelfBlender, jpeg
from swapwatch.engines.faces import ARCFACE_112


def _scene(seed: int = 0, offset=(150.0, 90.0), scale: float = 1.2):
    """A textured 320x400 image and 5 face landmarks (the ArcFace layout placed at ``offset``)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)
    import cv2

    image = cv2.resize(base, (400, 320), interpolation=cv2.INTER_CUBIC)
    landmarks = ARCFACE_112.points[0] * scale + np.asarray(offset)
    return image, landmarks


def test_output_differs_only_near_the_face():
    image, lmk = _scene()
    blender = SelfBlender()
    rng = np.random.default_rng(3)
    for _ in range(8):
        params = SBIParams.draw(rng)
        result = blender(image, lmk, params, compress=False)
        changed = np.any(result.image != result.real, axis=2)
        assert changed.any(), "the blend changed nothing"
        assert not changed[result.mask == 0].any(), "pixels outside the mask differ from the real counterpart"
        if params.colour_on_source and params.freq_on_source:  # the target is the input itself
            np.testing.assert_array_equal(result.real, image)
        # The mask stays within the face: the landmarks' box grown by one eye-to-mouth distance each way.
        ys, xs = np.nonzero(result.mask)
        unit = np.linalg.norm(lmk[3:].mean(0) - lmk[:2].mean(0))
        lo, hi = lmk.min(0) - 1.0 * unit, lmk.max(0) + 1.0 * unit
        assert xs.min() >= lo[0] and xs.max() <= hi[0] and ys.min() >= lo[1] and ys.max() <= hi[1]


def test_mask_is_a_weight_in_unit_range_scaled_by_the_ratio():
    image, lmk = _scene()
    blender = SelfBlender()
    rng = np.random.default_rng(5)
    for _ in range(12):
        params = SBIParams.draw(rng)
        assert params.ratio in BLEND_RATIOS
        assert 40 <= params.jpeg_quality <= 100
        mask = blender.mask(image.shape[:2], lmk, params)
        assert mask.dtype == np.float32 and mask.shape == image.shape[:2]
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        assert mask.max() == pytest.approx(params.ratio, abs=0.02)
        # Landmarks sit inside the blended region (nose tip at least half the peak weight).
        nose = np.round(lmk[2]).astype(int)
        assert mask[nose[1], nose[0]] >= 0.5 * params.ratio


def test_same_seed_same_result_and_other_seeds_differ():
    image, lmk = _scene()
    a = SelfBlender()(image, lmk, np.random.default_rng(42))
    b = SelfBlender()(image, lmk, np.random.default_rng(42))
    c = SelfBlender()(image, lmk, np.random.default_rng(43))
    assert a.params == b.params
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.params != c.params and not np.array_equal(a.image, c.image)


def test_one_draw_follows_the_face_through_a_clip():
    """The same params on a moved face: the mask moves with it (temporally consistent fakes)."""
    image, lmk = _scene(offset=(120.0, 80.0))
    blender = SelfBlender()
    params = SBIParams.draw(np.random.default_rng(9))
    m1 = blender.mask(image.shape[:2], lmk, params)
    m2 = blender.mask(image.shape[:2], lmk + np.array([17.0, 9.0]), params)
    np.testing.assert_allclose(m2[9:, 17:], m1[:-9, :-17], atol=2e-3)


def test_jpeg_step_and_input_checks():
    image, lmk = _scene()
    params = SBIParams.draw(np.random.default_rng(1))
    raw = SelfBlender()(image, lmk, params, compress=False)
    compressed = SelfBlender()(image, lmk, params)
    np.testing.assert_array_equal(compressed.image, jpeg(raw.image, params.jpeg_quality))
    np.testing.assert_array_equal(compressed.real, jpeg(raw.real, params.jpeg_quality))
    with pytest.raises(ValueError):
        SelfBlender()(image.astype(np.float32), lmk, params)


def test_top_cut_moves_the_masks_top_and_leaves_other_draws_alone():
    """SBIConfig.top_cut: the other parameters are drawn as without it (old runs reproduce), and the mask's top
    edge lies lower the lower the cut (0: just above the eyes, 1: the outline's top)."""
    from dataclasses import replace

    from swapwatch.engines.deepfake import SBIConfig

    plain = SBIParams.draw(np.random.default_rng(4))
    cut = SBIParams.draw(np.random.default_rng(4), SBIConfig(top_cut=(0.0, 1.0)))
    assert plain.top is None and 0.0 <= cut.top <= 1.0
    assert replace(cut, top=None) == plain
    image, lmk = _scene()
    blender = SelfBlender()
    flat = replace(plain, elastic_amplitude=0.0, stretch=(1.0, 1.0), ratio=1.0)
    tops = []
    for top in (0.0, 0.5, 1.0):
        mask = blender.mask(image.shape[:2], lmk, replace(flat, top=top))
        tops.append(int(np.nonzero(mask.max(axis=1) > 0.5)[0].min()))  # first row of the mask's core
    eye_y = lmk[:2, 1].mean()
    assert tops[0] > tops[1] > tops[2], tops
    assert tops[0] < eye_y  # even the lowest cut keeps the eyes inside
    full = blender.mask(image.shape[:2], lmk, replace(flat, inner_mask=False))
    assert abs(int(np.nonzero(full.max(axis=1) > 0.5)[0].min()) - tops[2]) <= 1  # 1: the outline's own top
