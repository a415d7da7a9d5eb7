"""The device path (engines/swap/device_path.py) on torch CPU against the CPU path (SwapPipeline) on real frames.

Tolerance. Measured on the first GRID frames at 360x288, 640x512 and 720x288 (one and two faces):

- classic swapper, labelled: max difference 2 levels (on 0.001% of pixels of one frame), elsewhere 0 or 1;
  1.4-1.7% of pixels differ by 1 level. Without the labeller: max 1, on 0.015-0.04% of pixels.
- SimSwap fixture (torch generator, Lab colour match), labelled: max 2; 5.6-5.9% of pixels by 1 level,
  0.04% by 2 (OpenCV 5.0.0 and 5.1.0, since the watermark adds whole levels; 0.11% with OpenCV 5.1 before).
  Unlabelled: 4.3% by 1, 0.002% by 2.

Where it comes from: interpolation arithmetic, not logic. cv2.warpAffine quantises sample positions to 1/32
pixel and uses fixed-point weights on uint8 images, grid_sample interpolates in float32, so a crop or pasted
pixel on a strong edge can round the other way (the mask edges are where two such roundings can add up to
2). The watermark: OpenCV's INTER_AREA luma grid rounds exact .5 ties either way depending on its float32
accumulation order, which the device's matrix products do not reproduce, so a few dozen of its 6912 cells
differ by one level and the texture-masked amplitude around them by a fraction of a level: 1 level on ~1.5%
of pixels, watermark score unchanged to 0.1. SimSwap: OpenCV's float Lab uses spline tables for gamma and
cube root (0.33 Lab units from the formulas), and the colour transfer spreads that over the face.
These roundings move with the OpenCV build, so the assertions bound them rather than pin one build's count:
max <= 3 levels (one over the worst case), >= 99.8% of pixels within 1 and a mean difference <= 0.1 level,
which any logic error (a face region off by many levels) breaks. Run with OpenCV 5.0.0 and 5.1.0.
No timing assertions.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from swapwatch.engines.bench import STAGES
from swapwatch.engines.swap import (
    ClassicSwapper, DEVICE_PATH_STAGES, DeviceFramePath, DevicePathConfig, FaceJob, FrameJob, SwapPipeline,
    SyntheticLabeller, Watermarker, bgr_to_lab_torch, fp16_check, from_lab, lab_to_bgr_torch, match_colour,
    match_colour_torch, to_lab,
)

# The same tests run the CUDA path where a GPU is present (pinned buffers, copy stream, events: untested here).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MAX_LEVELS = 3  # measured 2
# Share of pixels within 1 level; measured >= 99.957% (OpenCV 5.0.0 and 5.1.0). A logic error (a wrong colour
# space, mask or warp) moves a whole face region, several % of a frame's pixels, by many levels.
WITHIN_ONE = 0.998
MEAN_LEVELS = 0.1  # mean |difference| over pixels and channels; measured <= 0.023


def parity(cpu: np.ndarray, dev: np.ndarray) -> tuple[int, float, float]:
    """(max difference over pixels and channels, share of pixels within 1 level, mean difference)."""
    assert cpu.shape == dev.shape and dev.dtype == np.uint8
    diff = np.abs(cpu.astype(np.int16) - dev.astype(np.int16))
    worst = diff.max(axis=2)
    return int(worst.max()), float((worst <= 1).mean()), float(diff.mean())


def assert_parity(cpu: np.ndarray, dev: np.ndarray) -> None:
    worst, within, mean = parity(cpu, dev)
    assert worst <= MAX_LEVELS and within >= WITHIN_ONE and mean <= MEAN_LEVELS, (worst, within, mean)


@pytest.fixture(scope="module")
def grid_frames(clips) -> list[np.ndarray]:
    clip = next(p for p in clips if p.suffix == ".mpg")
    with av.open(str(clip)) as container:
        return [f.to_ndarray(format="bgr24") for _, f in zip(range(3), container.decode(video=0))]


@pytest.fixture(scope="module")
def source_photo(face_photos) -> np.ndarray:
    return cv2.imread(str(face_photos[0]))


@pytest.fixture(scope="module")
def classic(detector, source_photo):
    """(swapper, CPU pipeline with its source, labeller)."""
    swapper = ClassicSwapper()
    labeller = SyntheticLabeller()
    pipe = SwapPipeline(detector, swapper, labeller=labeller)
    pipe.add_source(source_photo)
    return swapper, pipe, labeller


def cpu_and_job(pipe: SwapPipeline, detector, frame: np.ndarray) -> tuple[np.ndarray, FrameJob]:
    """The CPU path's output for the detector's faces (SwapPipeline.process without the tracker), and the
    same faces as a device-path job."""
    plan = pipe.plan(frame, detector.detect(frame))
    assert plan.crops is not None, "no face found in a test frame"
    out = pipe.paste(plan, pipe.swapper.generate(plan.crops, plan.sources))
    if pipe.labeller is not None:
        out = pipe.labeller(out)
    return out, FrameJob.from_plan(plan)


# ---- parity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_classic_parity_with_two_frame_sizes_in_one_batch(classic, detector, grid_frames, device):
    swapper, pipe, labeller = classic
    large = cv2.resize(grid_frames[2], (640, 512), interpolation=cv2.INTER_LINEAR)
    frames = [grid_frames[0], large, grid_frames[1]]  # sizes interleaved: grouped by size inside
    refs, jobs = zip(*(cpu_and_job(pipe, detector, f) for f in frames))
    path = DeviceFramePath(swapper, labeller=labeller, masks=pipe.masks, config=DevicePathConfig(device=device))
    result = path.process(jobs)
    assert [f.shape for f in result.frames] == [f.shape for f in frames]
    assert result.swapped == [1, 1, 1]
    for frame, ref, dev in zip(frames, refs, result.frames):
        assert_parity(ref, dev)
        # The swap did something: the face area changed well beyond the watermark's few levels.
        assert (np.abs(dev.astype(np.int16) - frame).max(axis=2) > 12).mean() > 0.01
    # classic is NumPy-only: one download of the crops and one upload of the result for the whole batch.
    assert result.host_round_trips == 1 and path.host_round_trips == 1
    assert result.precision == "fp32"
    assert tuple(result.timings) == DEVICE_PATH_STAGES and set(DEVICE_PATH_STAGES) <= set(STAGES)
    assert all(v >= 0.0 for v in result.timings.values())
    assert set(result.per_frame()) == set(DEVICE_PATH_STAGES)


@pytest.mark.parametrize("device", DEVICES)
def test_several_faces_per_frame_and_uneven_counts_in_a_size_group(classic, detector, grid_frames, device):
    """Two faces side by side (pasted one after the other) and, at the same size, a frame with one face: the
    stacked crop grids leave an empty slot for it."""
    swapper, pipe, labeller = classic
    two = np.concatenate([grid_frames[0], cv2.flip(grid_frames[1], 1)], axis=1)
    one = np.concatenate([grid_frames[2], np.zeros_like(grid_frames[2])], axis=1)
    refs, jobs = zip(*(cpu_and_job(pipe, detector, f) for f in (two, one)))
    assert [len(j.faces) for j in jobs] == [2, 1]
    result = DeviceFramePath(swapper, labeller=labeller, masks=pipe.masks,
                             config=DevicePathConfig(device=device)).process(jobs)
    assert result.swapped == [2, 1]
    for ref, dev in zip(refs, result.frames):
        assert_parity(ref, dev)


@pytest.mark.parametrize("device", DEVICES)
def test_labels_on_the_device_output(classic, detector, grid_frames, device):
    """Watermark found by the CPU detector with its payload; the badge is there, as the CPU path draws it."""
    swapper, pipe, labeller = classic
    ref, job = cpu_and_job(pipe, detector, grid_frames[0])
    dev = DeviceFramePath(swapper, labeller=labeller, masks=pipe.masks,
                          config=DevicePathConfig(device=device)).process([job]).frames[0]
    found = Watermarker(labeller.config.watermark).detect(dev)
    assert found.found and found.payload_ok, found
    h, w = dev.shape[:2]
    x1, y1, x2, y2 = labeller.label.badge_box(w, h)
    badge, raw = dev[y1:y2, x1:x2].astype(np.int16), grid_frames[0][y1:y2, x1:x2].astype(np.int16)
    assert np.abs(badge - ref[y1:y2, x1:x2]).max() <= 1  # the badge corner is away from the face
    assert np.abs(badge - raw).mean() > 40  # dark box, red bar, white text over the frame


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(16, 16), (100, 60), (120, 90)])
def test_tiny_frames_are_labelled_as_the_cpu_path_does(classic, size, device):
    """Below the watermark's grid the device path labels as SyntheticLabeller does (badge cut to the frame,
    no watermark) instead of failing on every frame."""
    swapper, pipe, labeller = classic
    frame = cv2.resize(np.full((288, 360, 3), 90, np.uint8), size)
    dev = DeviceFramePath(swapper, labeller=labeller, masks=pipe.masks,
                          config=DevicePathConfig(device=device)).process([FrameJob(frame)])
    worst, within, _ = parity(labeller(frame), dev.frames[0])
    assert worst <= 1 and within == 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_frames_without_faces(classic, grid_frames, device):
    """Labelled as the server labels every frame in swap mode; untouched (never uploaded) with
    label_unswapped=False, as SwapPipeline.process returns them; untouched without a labeller."""
    swapper, pipe, labeller = classic
    frame = grid_frames[1]
    cpu_labelled = labeller(frame)
    dev = DeviceFramePath(swapper, labeller=labeller, masks=pipe.masks,
                          config=DevicePathConfig(device=device)).process([FrameJob(frame)])
    assert dev.swapped == [0] and dev.host_round_trips == 0
    worst, within, _ = parity(cpu_labelled, dev.frames[0])
    assert worst <= 1 and within == 1.0
    assert Watermarker().detect(dev.frames[0]).found
    off = DeviceFramePath(swapper, labeller=labeller,
                          config=DevicePathConfig(device=device, label_unswapped=False)).process([FrameJob(frame)])
    assert np.array_equal(off.frames[0], frame) and off.frames[0] is not frame
    bare = DeviceFramePath(swapper, config=DevicePathConfig(device=device)).process([FrameJob(frame)])
    assert np.array_equal(bare.frames[0], frame)


@pytest.mark.parametrize("device", DEVICES)
def test_unlabelled_paste_parity(classic, detector, grid_frames, device):
    """Swap and paste alone (no labeller): the same tolerance holds without the watermark's rounding."""
    swapper, pipe, _ = classic
    bare = SwapPipeline(detector, swapper)
    bare.sources = pipe.sources
    ref, job = cpu_and_job(bare, detector, grid_frames[2])
    dev = DeviceFramePath(swapper, masks=bare.masks, config=DevicePathConfig(device=device)).process([job])
    assert_parity(ref, dev.frames[0])
    # Outside the pasted faces' rectangles the frame is bit-identical.
    changed = np.abs(dev.frames[0].astype(np.int16) - grid_frames[2]).max(axis=2) > 0
    _, xs = np.nonzero(changed)
    box = job.faces[0].landmarks
    assert xs.min() < box[:, 0].min() < box[:, 0].max() < xs.max()
    assert changed.mean() < 0.5


# ---- a torch generator: SimSwap fixture -----------------------------------------------------------------


@pytest.fixture(scope="module")
def simswap():
    """SimSwap 224 from seeded random modules (tests/fixtures_simswap.randomize_), eager torch on CPU, with a
    shallow ArcFace (the identity is computed once per source and is not what this tests)."""
    from fixtures_simswap import randomize_

    from swapwatch.engines.swap import SimSwapSwapper
    from swapwatch.export.arcface import ResNet
    from swapwatch.export.simswap import SimSwapGenerator

    generator = randomize_(SimSwapGenerator(224), 224).eval()
    arcface = randomize_(ResNet(layers=(1, 1, 1, 1)), 7).eval()
    return SimSwapSwapper.from_modules(generator, arcface, device="cpu"), generator


def test_simswap_parity_on_the_device_generator(simswap, detector, source_photo, grid_frames):
    """The generator runs on the device tensors (no host round trip); the Lab colour match is the torch port."""
    swapper, _ = simswap
    labeller = SyntheticLabeller()
    pipe = SwapPipeline(detector, swapper, labeller=labeller)  # colour_match on: SimSwap is learned
    pipe.add_source(source_photo)
    ref, job = cpu_and_job(pipe, detector, grid_frames[0])
    path = DeviceFramePath(swapper, labeller=labeller, masks=pipe.masks, config=DevicePathConfig(device="cpu"))
    assert path.generator is not None
    result = path.process([job])
    assert result.host_round_trips == 0 and result.swapped == [1]
    assert_parity(ref, result.frames[0])
    assert Watermarker().detect(result.frames[0]).found


def test_fp16_check_on_the_generator(simswap, detector, grid_frames):
    swapper, generator = simswap
    from swapwatch.engines.faces import align_face

    face = detector.detect(grid_frames[0])[0]
    crop = align_face(grid_frames[0], face.landmarks, swapper.template).crop
    # The generator is fully convolutional: a 112 crop keeps CPU bfloat16 (slow there) to a few seconds.
    crop = cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA)
    target = torch.from_numpy(np.ascontiguousarray(crop[..., ::-1].transpose(2, 0, 1)))[None].float() / 255.0
    latent = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)), dim=1)
    report = fp16_check(generator, (target, latent))
    assert np.isfinite(report.max_abs_err) and np.isfinite(report.mean_abs_err)
    assert 0.0 < report.mean_abs_err <= report.max_abs_err
    assert report.diff_image.shape == (112, 3 * 112, 3) and report.diff_image.dtype == np.uint8
    assert report.dtype == "bfloat16" and report.device == "cpu" and "CPU" in report.reason
    assert report.passed == (report.max_abs_err <= report.tolerance and report.mean_abs_err <= report.mean_tolerance)
    assert set(report.to_json()) >= {"max_abs_err", "mean_abs_err", "passed", "dtype"}


def test_fp16_check_refuses_a_model_that_loses_precision():
    class Cancels(torch.nn.Module):  # x + 256 - 256: bfloat16/float16 keep too few bits near 256
        def forward(self, x):
            return (x + 256.0) - 256.0

    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    report = fp16_check(Cancels(), (x,), mode="half")
    assert not report.passed and report.max_abs_err > report.tolerance and "over tolerance" in report.reason
    assert report.diff_image.shape == (16, 48, 3)


def test_reduced_precision_stays_off_on_cpu(classic):
    swapper, _, _ = classic
    path = DeviceFramePath(swapper, config=DevicePathConfig(device="cpu", precision="fp16"))
    assert path.precision == "fp32" and "CUDA-only" in path.precision_note
    with pytest.raises(ValueError, match="precision"):
        DevicePathConfig(precision="int8")


# ---- the Lab port ---------------------------------------------------------------------------------------


def test_lab_port_matches_opencv():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    refs = cv2.GaussianBlur(rng.integers(0, 256, (96, 48, 3), dtype=np.uint8), (0, 0), 2).reshape(2, 48, 48, 3)

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()

    def to_np(t: torch.Tensor) -> np.ndarray:
        return t.permute(0, 2, 3, 1).numpy()

    lab = to_lab(crops)
    # OpenCV's float Lab uses spline tables for gamma and cube root: measured 0.33 units at most.
    assert np.abs(to_np(bgr_to_lab_torch(to_t(crops))) - lab).max() < 0.5
    back = to_np(lab_to_bgr_torch(torch.from_numpy(lab).permute(0, 3, 1, 2)))
    assert np.abs(back - from_lab(lab)).max() <= 1
    mask = np.zeros((48, 48), np.float32)
    cv2.circle(mask, (24, 24), 18, 1.0, -1)
    ours = to_np(match_colour_torch(to_t(crops), to_t(refs), torch.from_numpy(mask)[None, None].expand(2, 1, -1, -1)))
    assert np.abs(ours - match_colour(crops, refs, mask)).max() <= 1


def test_faces_need_a_source(classic, grid_frames):
    swapper, _, _ = classic
    job = FrameJob(grid_frames[0], [FaceJob(np.zeros((5, 2)), None)])
    with pytest.raises(ValueError, match="source"):
        DeviceFramePath(swapper, config=DevicePathConfig(device="cpu")).process([job])
