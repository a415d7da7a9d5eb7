"""Identity-independent swap evidence (engines/deepfake/evidence.py): torch = NumPy = ONNX, and the properties
each feature is for, on synthetic crops whose truth is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from swapwatch.engines.deepfake import EvidenceConfig, EvidenceFeatures, evidence_crops, flicker
from swapwatch.engines.deepfake.evidence import STAT_NAMES, evidence_numpy, evidence_regions, feature_names
from swapwatch.engines.swap import FeatherMask

SIZE = 128
CONFIG = EvidenceConfig(size=SIZE)
RATIOS = CONFIG.features


@pytest.fixture(scope="module")
def module():
    # One thread: these are small convolutions, and two threads on a busy 2-core machine spin for seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield EvidenceFeatures(CONFIG).eval()
    torch.set_num_threads(threads)


def _run(module: EvidenceFeatures, crops: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = module(torch.from_numpy(np.ascontiguousarray(crops, np.float32))).numpy()
    return {name: out[:, i] for i, name in enumerate(module.names)}


def _noise(rng: np.random.Generator, n: int = 1, sigma: float = 4.0, level: float = 120.0) -> np.ndarray:
    """(n, 3, S, S) grey crops with independent Gaussian noise everywhere."""
    return level + rng.normal(0.0, sigma, (n, 3, SIZE, SIZE))


def _textured(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """Smooth random shading and colour plus pixel noise, inside 30..220 (no clipping under the tests' changes)."""
    small = rng.uniform(60, 190, (n, 3, 8, 8))
    base = np.stack([np.stack([cv2.resize(c, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for c in img])
                     for img in small])
    return np.clip(base + rng.normal(0, 3.0, base.shape), 30, 220)


def _swap_mask() -> np.ndarray:
    """The classic swapper's feathered face mask drawn in the evidence crop (where a paste-back blends)."""
    return np.asarray(FeatherMask().face(CONFIG.template), np.float64)


def _paste(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    alpha = _swap_mask()
    return target * (1.0 - alpha) + source * alpha


def test_torch_matches_numpy(module):
    rng = np.random.default_rng(0)
    crops = np.concatenate([_textured(rng, 2), _paste(_noise(rng), _noise(rng, sigma=1.0) + 10)])
    got = _run(module, crops)
    ref = evidence_numpy(crops, CONFIG)
    for i, name in enumerate(module.names):
        np.testing.assert_allclose(got[name], ref[:, i], atol=2e-4 if name in RATIOS else 2e-3, err_msg=name)


def test_onnx_export_matches_torch(module, tmp_path):
    from swapwatch.export.onnx_export import Tolerance, check_parity, export_onnx, run_onnx

    path = export_onnx(module, (torch.zeros(1, 3, SIZE, SIZE),), tmp_path / "evidence.onnx", input_names=["crops"],
                       output_names=["evidence"], dynamic_axes={"crops": {0: "batch"}, "evidence": {0: "batch"}},
                       opset=17)
    rng = np.random.default_rng(1)
    sets = [(_textured(rng, 3).astype(np.float32),), (_noise(rng).astype(np.float32),)]
    check_parity(module, path, sets, tolerance=Tolerance(atol=1e-4, rtol=1e-5))
    # The log-ratios on their own scale (the raw means next to them are ~100x larger).
    got = run_onnx(path, sets)
    for (x,), (onnx_out,) in zip(sets, got):
        ref = evidence_numpy(x, CONFIG)
        np.testing.assert_allclose(onnx_out[:, :len(RATIOS)], ref[:, :len(RATIOS)], atol=2e-4)


def test_uniform_noise_gives_ratios_near_zero(module):
    got = _run(module, _noise(np.random.default_rng(2), n=4))
    for name in RATIOS:  # the seams compare narrow bands: more sampling spread
        assert np.all(np.abs(got[name]) < (0.15 if name.startswith("seam") else 0.1)), (name, got[name])


def test_global_brightness_and_contrast_change_little(module):
    rng = np.random.default_rng(3)
    crops = _paste(_textured(rng, 2), _textured(rng, 2))
    base = _run(module, crops)
    for changed in (crops + 15.0, (crops - 128.0) * 0.8 + 128.0, crops * 1.15 - 10):
        got = _run(module, changed)
        for name in RATIOS:
            np.testing.assert_allclose(got[name], base[name], atol=0.02, err_msg=name)


def test_a_smoothed_inner_face_lowers_detail_and_noise(module):
    """What a swapper's 128-256 px face does: less detail and noise inside the outline than around it."""
    rng = np.random.default_rng(4)
    real = _textured(rng, 3)
    smooth = np.stack([np.stack([cv2.GaussianBlur(c, (0, 0), 1.2) for c in img]) for img in real])
    real_f, fake_f = _run(module, real), _run(module, _paste(real, smooth))
    for name in ("hf", "noise", "chroma_noise"):
        assert np.all(fake_f[name] < real_f[name] - 0.5), (name, real_f[name], fake_f[name])


def test_a_pasted_face_with_other_noise_or_colour_leaves_a_seam(module):
    rng = np.random.default_rng(5)
    real = _noise(rng, n=3, sigma=4.0)
    quieter = _paste(real, _noise(rng, n=3, sigma=1.0))  # same colour, a quarter of the noise inside
    recoloured = _paste(real, _noise(rng, n=3, sigma=4.0) + np.array([-4.0, 6.0, 16.0])[None, :, None, None])
    base, noise_seam, colour_seam = _run(module, real), _run(module, quieter), _run(module, recoloured)
    assert np.all(noise_seam["seam_noise"] > base["seam_noise"] + 0.5), (base["seam_noise"], noise_seam["seam_noise"])
    assert np.all(noise_seam["noise"] < -0.8)
    assert np.all(colour_seam["seam"] > base["seam"] + 0.3), (base["seam"], colour_seam["seam"])
    assert np.all(colour_seam["seam_chroma"] > base["seam_chroma"] + 0.3)
    assert np.all(np.abs(colour_seam["noise"]) < 0.1)  # a colour step alone is not a noise difference


def test_batch_items_are_independent(module):
    rng = np.random.default_rng(6)
    crops = np.concatenate([_textured(rng, 2), _noise(rng, 2) * 0.5])
    together = _run(module, crops)
    for i in range(len(crops)):
        alone = _run(module, crops[i:i + 1])
        for name in module.names:
            np.testing.assert_allclose(alone[name][0], together[name][i], rtol=1e-5, atol=1e-4)


def test_regions_follow_the_template():
    signed, normal, emd = evidence_regions(CONFIG)
    assert signed.shape == (SIZE, SIZE) and normal.shape == (2, SIZE, SIZE)
    assert signed[SIZE // 2, SIZE // 2] < -0.5 and signed[0, 0] > 0.5  # inside at the centre, outside at a corner
    assert 0.25 * SIZE < emd < 0.3 * SIZE
    mask = _swap_mask()
    # The swap mask's feathered edge lies in the seam band (it is 1 inside the inner face, 0 in the ring).
    edge = (mask > 0.1) & (mask < 0.9)
    assert np.mean((signed[edge] >= CONFIG.seam[0]) & (signed[edge] < CONFIG.seam[1])) > 0.9
    assert mask[signed < CONFIG.inner].min() > 0.95 and mask[signed >= CONFIG.ring[0]].max() < 0.01


def test_feature_selection_and_names():
    config = EvidenceConfig(size=96, features=("noise", "seam"), stats=False)
    module = EvidenceFeatures(config)
    assert feature_names(config) == module.names == ("noise", "seam")
    x = _noise(np.random.default_rng(7), n=2)[:, :, :96, :96]
    with torch.inference_mode():
        out = module(torch.from_numpy(x.astype(np.float32))).numpy()
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, evidence_numpy(x, config), atol=2e-4)
    with pytest.raises(ValueError):
        EvidenceConfig(features=("nope",))


def test_flicker_sees_an_inner_face_that_moves_against_its_surroundings():
    rng = np.random.default_rng(8)
    t = 40
    ring = 100 + np.cumsum(rng.normal(0, 1.0, (t, 3)), axis=0)  # the scene's own slow changes
    steady = np.concatenate([ring + 12.0, ring], axis=1)  # the face moves with the head
    flickering = np.concatenate([ring + 12.0 + rng.normal(0, 2.0, (t, 3)), ring], axis=1)
    assert flicker(steady, STAT_NAMES) < -0.5
    assert flicker(flickering, STAT_NAMES) > 0.5
    assert np.isnan(flicker(steady[:2], STAT_NAMES))


def test_evidence_crops_reports_upsampling():
    from swapwatch.engines.faces import arcface_template

    frame = np.random.default_rng(9).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    small = arcface_template(112).points[0] * 0.6 + 200  # a ~70 px face: a 128 crop upsamples it
    large = arcface_template(112).points[0] * 4.0 + 50  # a ~450 px face: shrunk
    crops, scales = evidence_crops(frame, [small, large], CONFIG)
    assert crops.shape == (2, 3, SIZE, SIZE) and crops.dtype == np.float32
    assert scales[0] > 1.0 > scales[1]
