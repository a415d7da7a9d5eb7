"""BiSeNet face parsing: the ``79999_iter.pth`` layout, ONNX export parity, the parser and the face masks, on a
seeded fixture checkpoint (the real weights cannot be fetched here; nothing below measures parsing quality)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import pytest
import torch

from fixtures_bisenet import write_checkpoint, write_wrong_checkpoint
from swapwatch.engines.runtime import Engine, TensorSpec
from swapwatch.engines.swap import FACE_CLASSES, LABELS, LABEL_IDS, MOUTH_CLASSES, FaceParser, face_mask
from swapwatch.errors import ModelError
from swapwatch.export.bisenet import BiSeNet, export_bisenet_onnx, load_bisenet, parity_inputs
from swapwatch.export.onnx_export import check_parity


@pytest.fixture(scope="session")
def bisenet_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bisenet")


@pytest.fixture(scope="session")
def checkpoint(bisenet_dir) -> Path:
    return write_checkpoint(bisenet_dir / "79999_iter.pth", seed=0)


@pytest.fixture(scope="session")
def model(checkpoint) -> BiSeNet:
    return load_bisenet(checkpoint)


@pytest.fixture(scope="session")
def onnx_path(model, bisenet_dir) -> Path:
    return export_bisenet_onnx(model, bisenet_dir / "bisenet.onnx")


@pytest.fixture(scope="session")
def face_crops(face_photos) -> np.ndarray:
    """Two real face crops at 256 (a middle-of-the-frame crop of two shared photos)."""
    crops = []
    for path in face_photos[:2]:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        side = min(h, w)
        crops.append(cv2.resize(image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2], (256, 256)))
    return np.stack(crops)


# ---- checkpoint ----------------------------------------------------------------------------------


def test_checkpoint_loads_strictly(checkpoint, model):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    for key in ("cp.resnet.conv1.weight", "cp.resnet.layer4.1.bn2.running_var",
                "cp.resnet.layer2.0.downsample.0.weight",
                "cp.arm16.conv.conv.weight", "cp.arm32.bn_atten.bias", "cp.conv_avg.conv.weight",
                "cp.conv_head16.bn.running_mean", "ffm.convblk.conv.weight", "ffm.conv1.weight", "ffm.conv2.weight",
                "conv_out.conv.conv.weight", "conv_out.conv_out.weight", "conv_out16.conv_out.weight",
                "conv_out32.conv.bn.weight"):
        assert key in state, key
    assert tuple(state["conv_out.conv_out.weight"].shape) == (19, 256, 1, 1)
    assert tuple(state["ffm.convblk.conv.weight"].shape) == (256, 256, 1, 1)  # 128 res3b1 + 128 context
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training


def test_module_prefix_and_missing_counters_load(tmp_path, model):
    # What nn.DataParallel's state_dict looks like.
    prefixed = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, prefixed)
    loaded = load_bisenet(prefixed)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # Checkpoints from before BatchNorm counted batches have no num_batches_tracked; inference ignores them.
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    load_bisenet(tmp_path / "old.pth")


def test_wrong_architecture_names_keys(tmp_path, model):
    path = write_wrong_checkpoint(tmp_path / "other.pth")
    with pytest.raises(ModelError) as err:
        load_bisenet(path)
    message = str(err.value)
    assert "other.pth" in message and "missing keys (cp.resnet.conv1.weight" in message
    assert "unexpected keys (backbone.0.weight" in message
    # Right keys, wrong shapes (e.g. a parser trained for another number of classes).
    state = dict(model.state_dict())
    state["conv_out.conv_out.weight"] = torch.zeros(11, 256, 1, 1)
    torch.save(state, tmp_path / "eleven.pth")
    with pytest.raises(ModelError, match=r"shape mismatches \(conv_out.conv_out.weight: checkpoint \(11, 256, 1, 1\)"):
        load_bisenet(tmp_path / "eleven.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_unreadable_checkpoint(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(ModelError, match="bad.pth"):
        load_bisenet(tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="not found"):
        load_bisenet(tmp_path / "missing.pth")


def test_forward_contract(model):
    x = parity_inputs()[0][0]
    with torch.inference_mode():
        logits = model(torch.from_numpy(x))
    assert tuple(logits.shape) == (1, 19, 512, 512)
    assert torch.isfinite(logits).all() and 0.1 < float(logits.std()) < 100.0


# ---- ONNX ----------------------------------------------------------------------------------------


def test_onnx_parity(model, onnx_path):
    report = check_parity(model, onnx_path, parity_inputs())
    assert report.ok and report.worst_rel_error <= 1e-4, report.summary()


# ---- parser --------------------------------------------------------------------------------------


def test_parser_backends_agree(checkpoint, onnx_path, face_crops):
    from_pth = FaceParser.from_checkpoint(checkpoint, device="cpu")
    from_onnx = FaceParser.from_onnx(onnx_path, backend="onnxruntime", device="cpu")
    assert from_pth.input_size == from_onnx.input_size == 512 and from_onnx.fixed_batch is None
    a, b = from_pth.parse(face_crops), from_onnx.parse(face_crops)
    assert a.shape == b.shape == (2, 256, 256) and a.dtype == b.dtype == np.uint8
    assert int(a.max()) < len(LABELS)
    assert (a == b).mean() > 0.999  # argmax near-ties may flip on a handful of pixels
    masks = from_onnx.face_masks(face_crops, keep_mouth=True)
    assert masks.shape == (2, 256, 256) and masks.dtype == np.float32
    np.testing.assert_array_equal(masks, face_mask(b, keep_mouth=True))
    assert from_onnx.parse(face_crops[:0]).shape == (0, 256, 256)


def test_parser_preprocessing(checkpoint):
    parser = FaceParser.from_checkpoint(checkpoint, device="cpu")
    crop = np.zeros((1, 512, 512, 3), dtype=np.uint8)
    crop[..., 0] = 255  # pure blue in BGR
    blob = parser.preprocess(crop)
    assert blob.shape == (1, 3, 512, 512) and blob.dtype == np.float32
    # RGB channel order, ImageNet normalisation.
    np.testing.assert_allclose(blob[0, :, 0, 0], [(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225],
                               atol=1e-6)


class _HalfAndHalf(Engine):
    """A stand-in parsing graph with a fixed batch of 1 at 64x64: skin on the left half, mouth on the right."""

    backend = "stub"

    def __init__(self) -> None:
        self.calls = 0

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return [TensorSpec("image", (1, 3, 64, 64), np.dtype(np.float32))]

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return [TensorSpec("out", (1, 19, 64, 64), np.dtype(np.float32))]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["image"]
        assert x.shape == (1, 3, 64, 64)
        self.calls += 1
        logits = np.zeros((1, 19, 64, 64), dtype=np.float32)
        logits[:, LABEL_IDS["skin"], :, :32] = 1.0
        logits[:, LABEL_IDS["mouth"], :, 32:] = 1.0
        return {"out": logits}


def test_parser_loops_fixed_batch_and_resizes_nearest():
    engine = _HalfAndHalf()
    parser = FaceParser(engine)
    assert parser.input_size == 64 and parser.fixed_batch == 1
    labels = parser.parse(np.zeros((3, 100, 100, 3), dtype=np.uint8))
    assert engine.calls == 3 and labels.shape == (3, 100, 100)
    assert set(np.unique(labels)) == {LABEL_IDS["skin"], LABEL_IDS["mouth"]}  # nearest: no blended ids
    assert (labels[:, :, :50] == LABEL_IDS["skin"]).all() and (labels[:, :, 50:] == LABEL_IDS["mouth"]).all()
    with pytest.raises(ValueError, match="square"):
        parser.parse(np.zeros((1, 100, 80, 3), dtype=np.uint8))


# ---- masks ---------------------------------------------------------------------------------------


def test_label_map():
    assert len(LABELS) == 19 and LABELS[0] == "background" and LABELS[18] == "hat"
    names = ("skin", "nose", "mouth", "u_lip", "l_lip", "neck", "hair")
    assert [LABEL_IDS[n] for n in names] == [1, 10, 11, 12, 13, 14, 17]
    assert set(MOUTH_CLASSES) == {11, 12, 13} and set(MOUTH_CLASSES) <= set(FACE_CLASSES)


def test_face_mask_logic():
    labels = np.full((2, 6, 6), LABEL_IDS["background"], dtype=np.uint8)
    labels[:, 1:5, 1:5] = LABEL_IDS["skin"]
    labels[:, 1, 1] = LABEL_IDS["l_brow"]
    labels[:, 2, 2] = LABEL_IDS["r_eye"]
    labels[:, 2, 3] = LABEL_IDS["nose"]
    labels[:, 3, 2] = LABEL_IDS["u_lip"]
    labels[:, 3, 3] = LABEL_IDS["mouth"]
    labels[:, 4, 2] = LABEL_IDS["l_lip"]
    labels[:, 0, :] = LABEL_IDS["hair"]
    labels[:, 5, :] = LABEL_IDS["neck"]
    labels[:, 1:5, 0] = LABEL_IDS["l_ear"]

    full = face_mask(labels)
    assert full.dtype == np.float32 and full.shape == labels.shape
    expected = np.zeros((6, 6), dtype=np.float32)
    expected[1:5, 1:5] = 1.0
    np.testing.assert_array_equal(full, np.broadcast_to(expected, labels.shape))

    kept = face_mask(labels, keep_mouth=True)
    mouth = np.isin(labels, [LABEL_IDS["u_lip"], LABEL_IDS["mouth"], LABEL_IDS["l_lip"]])
    assert mouth.sum() == 6
    np.testing.assert_array_equal(kept[mouth], 0.0)
    np.testing.assert_array_equal(kept[~mouth], full[~mouth])
    np.testing.assert_array_equal(FaceParser.face_mask(labels), full)
