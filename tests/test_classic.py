"""The weight-free classic swapper end to end on the shared photos and a clip frame: YuNet landmarks ->
align -> generate -> paste_back."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from swapwatch.engines.faces import align_face, warp_back
from swapwatch.engines.swap import ClassicSwapper, SourceIdentity, Swapper, paste_back

SOURCE = "max_Chris.jpeg"
SOURCE_FOR_SOURCE = "max_Luciano.png"  # the source photo as a target gets another identity


@pytest.fixture(scope="module")
def swapper() -> ClassicSwapper:
    return ClassicSwapper()


def _first_frame(path: Path, index: int = 0) -> np.ndarray:
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="bgr24")
    raise AssertionError(f"{path.name} has fewer than {index + 1} frames")


@pytest.fixture(scope="module")
def targets(face_photos, clips) -> dict[str, np.ndarray]:
    """The five photos and a frame of a GRID talking-head clip (PyAV decode)."""
    out = {p.name: cv2.imread(str(p)) for p in face_photos}
    grid = [c for c in clips if c.name.startswith("grid_")]
    assert grid, "no GRID clip in the shared assets"
    out[grid[0].name + "#30"] = _first_frame(grid[0], 30)
    return out


@pytest.fixture(scope="module")
def sources(targets, detector, swapper) -> dict[str, SourceIdentity]:
    out = {}
    for name in (SOURCE, SOURCE_FOR_SOURCE):
        image = targets[name]
        out[name] = swapper.prepare_source(image, detector.detect(image)[0])
    return out


def _swap(frame, face, swapper, source):
    aligned = align_face(frame, face.landmarks, swapper.template)
    crop = swapper.generate(aligned.crop[None], [source])[0]
    return paste_back(frame, crop, aligned.matrix, swapper.mask), aligned


@pytest.fixture(scope="module")
def swaps(targets, sources, detector, swapper):
    """name -> (target frame, its face, swapped frame, aligned target)."""
    out = {}
    for name, frame in targets.items():
        faces = detector.detect(frame)
        assert len(faces) == 1, name
        source = sources[SOURCE_FOR_SOURCE if name == SOURCE else SOURCE]
        swapped, aligned = _swap(frame, faces[0], swapper, source)
        out[name] = (frame, faces[0], swapped, aligned)
    return out


def test_swapper_contract(swapper, sources):
    assert isinstance(swapper, Swapper)
    assert swapper.name == "classic" and swapper.learned is False
    assert swapper.template.size == 256
    src = sources[SOURCE]
    assert src.swapper == "classic" and src.embedding is None
    assert src.crop.shape == (256, 256, 3) and src.crop.dtype == np.uint8
    assert swapper.mask.shape == (256, 256)


def test_swap_changes_the_face_and_nothing_outside_the_mask(swaps, swapper):
    # Measured: 16-25 levels mean absolute difference inside the face (mask >= 0.5) over the six targets,
    # 6-11 over the whole detector box; "swapping" each target with its own crop gives 0.7-4.8 inside.
    for name, (frame, face, swapped, aligned) in swaps.items():
        alpha = warp_back(swapper.mask, aligned.matrix, frame.shape)[0]
        inside = alpha >= 0.5
        diff = np.abs(swapped.astype(np.int16) - frame).mean(axis=2)
        assert diff[inside].mean() > 8.0, name
        x1, y1, x2, y2 = np.clip(np.round(face.box).astype(int), 0, None)
        assert diff[y1:y2, x1:x2].mean() > 4.0, name
        outside = alpha == 0
        assert np.array_equal(swapped[outside], frame[outside]), name


def test_swapped_face_is_detected_where_the_target_was(swaps, detector):
    # Measured over the six targets: landmarks move by 0.04-0.16 inter-ocular distances on average and
    # 0.31 at most (the far eye of the turned head in the Intel frame, where a frontal source face lands on
    # a three-quarter view).
    for name, (frame, face, swapped, _) in swaps.items():
        after = detector.detect(swapped)
        assert len(after) == 1, name
        iod = float(np.linalg.norm(face.landmarks[0] - face.landmarks[1]))
        moved = np.linalg.norm(after[0].landmarks - face.landmarks, axis=1) / iod
        assert moved.mean() < 0.2 and moved.max() < 0.4, f"{name}: landmarks moved {np.round(moved, 2)} IODs"


def test_batched_generate_equals_per_face(swaps, sources, swapper):
    names = list(swaps)
    crops = np.stack([swaps[n][3].crop for n in names])
    srcs = [sources[SOURCE] if i % 2 else sources[SOURCE_FOR_SOURCE] for i in range(len(names))]
    batch = swapper.generate(crops, srcs)
    assert batch.shape == crops.shape and batch.dtype == np.uint8
    for i, name in enumerate(names):
        np.testing.assert_array_equal(batch[i], swapper.generate(crops[i:i + 1], [srcs[i]])[0], err_msg=name)


def test_hand_built_source_and_options(swaps, sources, swapper):
    crop = swaps[SOURCE][3].crop[None]
    prepared = sources[SOURCE_FOR_SOURCE]
    bare = SourceIdentity(swapper="classic", embedding=None, crop=prepared.crop)  # no cached LAB
    np.testing.assert_array_equal(swapper.generate(crop, [bare]), swapper.generate(crop, [prepared]))
    # keep_mouth: the mouth's centre is the target's; without it, the source's.
    pts = swapper.template.points[0]
    mx, my = np.round(pts[3:5].mean(0)).astype(int)
    kept = swapper.generate(crop, [prepared])[0]
    np.testing.assert_allclose(kept[my, mx], crop[0, my, mx], atol=2)
    plain = ClassicSwapper(keep_mouth=False, shading=0.0)
    assert np.abs(plain.generate(crop, [prepared])[0, my, mx].astype(int) - crop[0, my, mx]).max() > 5
    assert swapper.generate(np.zeros((0, 256, 256, 3), np.uint8), []).shape == (0, 256, 256, 3)
    with pytest.raises(ValueError):
        swapper.generate(crop, [prepared, prepared])
    with pytest.raises(ValueError):
        swapper.generate(crop[:, :128], [prepared])
    with pytest.raises(ValueError):
        swapper.generate(crop, [SourceIdentity(swapper="simswap", embedding=np.ones(512), crop=None)])


def _around(image: np.ndarray, box: np.ndarray, size: int = 320) -> np.ndarray:
    """A size x size view of the square 1.8 box-sizes wide around ``box``."""
    x1, y1, x2, y2 = box
    k = size / (1.8 * max(x2 - x1, y2 - y1))
    m = np.array([[k, 0, size / 2 - k * (x1 + x2) / 2], [0, k, size / 2 - k * (y1 + y2) / 2]])
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def test_write_side_by_side_png(swaps, targets, detector, tmp_path_factory):
    """target | source photo | swapped, around the face, for a person to look at."""
    name = next(n for n in swaps if n.startswith("grid_"))
    frame, face, swapped, _ = swaps[name]
    source = targets[SOURCE]
    tiles = [_around(frame, face.box), _around(source, detector.detect(source)[0].box), _around(swapped, face.box)]
    out = tmp_path_factory.mktemp("classic") / "classic_side_by_side.png"
    assert cv2.imwrite(str(out), np.hstack(tiles))
    print(f"\nclassic swap side by side (target | source | swapped): {out}")
