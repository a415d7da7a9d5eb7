"""MediaPipe FaceMesh read from its TFLite file into torch: parity with the TFLite interpreter (LiteRT) on real
faces and noise, layer by layer, ONNX export of truncated prefixes, strict loading of damaged files, and small
synthetic graphs for the ops and padding cases FaceMesh itself does not exercise.

The model comes out of the mediapipe wheel in .cache/wheels (downloaded by tests/run.sh, never installed); the
reference is ai-edge-litert's interpreter (the dev extra)."""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch
from swapwatch.engines.runtime import registry as reg
from swapwatch.export.mediapipe_facemesh import (
    FACEMESH_LANDMARKS,
    FACEMESH_SIZE,
    FaceMeshNet,
    TFLiteNet,
    load_facemesh,
    read_tflite,
)
from swapwatch.export.onnx_export import check_parity, export_onnx

from swapwatch.errors import ModelError

WHEEL_DIR = Path(os.environ.get("SWAPWATCH_TEST_WHEELS", Path(__file__).resolve().parents[1] / ".cache" / "wheels"))
ENTRY = reg.get_entry("mediapipe-facemesh")

# Measured on the four test images (torch 2.13 CPU, ai-edge-litert 2.3.0; single images and a batch of four):
# landmarks within 1.2e-4 px of LiteRT, with its XNNPACK delegate or its builtin kernels, face logit within
# 2.7e-5, every intermediate activation within 1.4e-6 of its own scale. The bounds leave 7-14x margin; putting
# SAME padding's odd pixel on the wrong side, for one, fails all three.
LANDMARK_ATOL_PX = 1e-3
FLAG_ATOL = 2e-4
LAYER_RTOL = 2e-5
# FaceMesh topology: upper eyelids, nose tip, upper lip, chin; eye corners on the image's left and right.
EYELIDS, NOSE_TIP, UPPER_LIP, CHIN, EYE_CORNERS = (159, 386), 1, 13, 152, (33, 263)


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facemesh_file(tmp_path_factory) -> Path:
    """face_landmark.tflite from the pinned wheel, checked against the registry's sha256."""
    mf = ENTRY.files[0]
    wheel = WHEEL_DIR / mf.source.wheel_filename
    if not wheel.is_file():
        pytest.skip(f"{wheel} missing: run `pip download --no-deps -d {WHEEL_DIR} mediapipe==0.10.21 "
                    "--python-version 3.11 --only-binary=:all: --platform manylinux_2_28_x86_64`")
    out = tmp_path_factory.mktemp("facemesh") / mf.filename
    with zipfile.ZipFile(wheel) as zf:
        out.write_bytes(zf.read(mf.source.member))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == mf.sha256
    return out


@pytest.fixture(scope="module")
def litert() -> ModuleType:
    """The interpreter module: LiteRT (ai-edge-litert), else the older tflite-runtime."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("no TFLite interpreter installed: pip install ai-edge-litert (part of the dev extra)")


@pytest.fixture(scope="module")
def net(facemesh_file) -> FaceMeshNet:
    return load_facemesh(facemesh_file)


def square_crop(image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    """An RGB 192x192 crop of a square 1.5x the detected box (about MediaPipe's face ROI), edges replicated."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    scale = FACEMESH_SIZE / (1.5 * max(x2 - x1, y2 - y1))
    half = FACEMESH_SIZE / 2
    m = np.array([[scale, 0, half - scale * (x1 + x2) / 2], [0, scale, half - scale * (y1 + y2) / 2]], np.float32)
    crop = cv2.warpAffine(image_bgr, m, (FACEMESH_SIZE, FACEMESH_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def faces(shared_assets, detector) -> dict[str, np.ndarray]:
    """RGB 192x192 face crops of two shared photos and insightface's packaged Tom Hanks."""
    import insightface

    paths = {"max_Bryan": shared_assets / "faces" / "max_Bryan.png",
             "max_Chris": shared_assets / "faces" / "max_Chris.jpeg",
             "Tom_Hanks": Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"}
    crops = {}
    for name, path in paths.items():
        image = cv2.imread(str(path))
        assert image is not None, f"cannot read {path}"
        found = detector.detect(image)
        assert found, f"no face found in {path}"
        crops[name] = square_crop(image, max(found, key=lambda f: f.score).box)
    return crops


@pytest.fixture(scope="module")
def images(faces) -> dict[str, np.ndarray]:
    noise = np.random.default_rng(0).integers(0, 256, (FACEMESH_SIZE, FACEMESH_SIZE, 3), dtype=np.uint8)
    return {**faces, "noise": noise}


def to_nchw(images_rgb: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images_rgb).astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def to_tflite_layout(t: torch.Tensor) -> np.ndarray:
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).detach().numpy()


def interpreter(litert: ModuleType, model: Path | bytes, *, builtin: bool = False):
    """An allocated interpreter; ``builtin``: TFLite's own kernels with every tensor kept (the default XNNPACK
    delegate fuses the graph and keeps no intermediate tensors)."""
    kwargs: dict = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    if builtin:
        kwargs.update(experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                      experimental_preserve_all_tensors=True)
    with warnings.catch_warnings():  # preserve_all_tensors warns that it is for debugging
        warnings.simplefilter("ignore")
        it = litert.Interpreter(**kwargs)
    it.allocate_tensors()
    return it


def invoke(it, x_nhwc: np.ndarray) -> list[np.ndarray]:
    it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(x_nhwc, np.float32))
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def tensors_by_name(it) -> dict[str, np.ndarray]:
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_tensor_details()}


# -- the file and its description ---------------------------------------------------------------------------


def test_reader_agrees_with_the_interpreter(facemesh_file, litert):
    model = read_tflite(facemesh_file)
    it = interpreter(litert, facemesh_file, builtin=True)
    details = it.get_tensor_details()[:len(model.tensors)]  # the interpreter appends its scratch tensors
    assert [(t.name, t.shape, t.dtype) for t in model.tensors] == [
        (d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name) for d in details]
    assert [o.op for o in model.operators] == [o["op_name"] for o in it._get_ops_details()]
    assert model.inputs == (it.get_input_details()[0]["index"],)
    assert model.outputs == tuple(d["index"] for d in it.get_output_details())
    assert Counter(o.op for o in model.operators) == {"DEQUANTIZE": 113, "CONV_2D": 25, "PRELU": 23,
                                                      "DEPTHWISE_CONV_2D": 20, "ADD": 20, "MAX_POOL_2D": 6, "PAD": 3}
    # Every float16 weight widens to exactly what the interpreter's DEQUANTIZE ops produce.
    invoke(it, np.zeros((1, FACEMESH_SIZE, FACEMESH_SIZE, 3), np.float32))
    for op in model.operators:
        if op.op == "DEQUANTIZE":
            assert model.tensors[op.inputs[0]].dtype == "float16"
            np.testing.assert_array_equal(model.dequantized(op.inputs[0]), it.get_tensor(op.outputs[0]))


def test_module_layout(net):
    assert len(net.layers) == 97  # the 210 operators less the 113 constant DEQUANTIZEs folded at load
    assert net.input_shape == (1, 3, FACEMESH_SIZE, FACEMESH_SIZE) and not net.training
    assert sum(p.numel() for p in net.parameters()) == 604_685
    assert (net.layers[0].op, net.layers[0].name, net.layers[0].shape) == ("CONV_2D", "conv2d_1", (1, 16, 96, 96))


# -- parity with the interpreter ----------------------------------------------------------------------------


@pytest.mark.parametrize("builtin", [False, True], ids=["xnnpack", "builtin-kernels"])
def test_landmarks_and_face_flag_match_the_interpreter(net, litert, facemesh_file, images, builtin):
    it = interpreter(litert, facemesh_file, builtin=builtin)
    with torch.inference_mode():  # all images in one batch: batching must not change a face's result
        landmarks, logits = net(to_nchw(list(images.values())))
    assert landmarks.shape == (len(images), FACEMESH_LANDMARKS, 3) and logits.shape == (len(images), 1)
    for i, (name, image) in enumerate(images.items()):
        # The graph's own input: RGB in [0, 1] (MediaPipe's ImageToTensorCalculator, float range 0..1).
        ref_landmarks, ref_logit = invoke(it, image[None].astype(np.float32) / 255.0)
        lm_err = np.abs(landmarks[i].numpy() - ref_landmarks.reshape(FACEMESH_LANDMARKS, 3)).max()
        flag_err = abs(float(logits[i, 0]) - float(ref_logit.reshape(())))
        print(f"{name}: landmarks max abs {lm_err:.2e} px, face logit {float(ref_logit.reshape(())):.3f} "
              f"diff {flag_err:.2e}")
        assert lm_err <= LANDMARK_ATOL_PX, name
        assert flag_err <= FLAG_ATOL, name


def test_every_intermediate_activation_matches(net, litert, facemesh_file, images):
    it = interpreter(litert, facemesh_file, builtin=True)
    worst = 0.0
    for name, image in images.items():
        invoke(it, image[None].astype(np.float32) / 255.0)
        reference = tensors_by_name(it)
        x = to_nchw([image])
        with torch.inference_mode():  # every layer in one pass
            activations = net.features(x, [layer.index for layer in net.layers])
        for layer, activation in zip(net.layers, activations):
            ref, got = reference[layer.name], to_tflite_layout(activation)
            assert got.shape == ref.shape, (name, layer.name)
            rel = float(np.abs(got - ref).max()) / max(float(np.abs(ref).max()), 1e-12)
            assert rel <= LAYER_RTOL, f"{name} {layer.index} {layer.op} {layer.name}: relative error {rel:.2e}"
            worst = max(worst, rel)
    print(f"worst intermediate relative error {worst:.2e}")


def test_landmarks_land_on_the_face(net, images):
    with torch.inference_mode():
        landmarks, logits = net(to_nchw(list(images.values())))
    scores = torch.sigmoid(logits[:, 0]).numpy()
    for i, name in enumerate(images):
        lm = landmarks[i].numpy()
        if name == "noise":
            assert scores[i] < 0.01, f"noise scored {scores[i]:.3f}"
            continue
        assert scores[i] > 0.99, f"{name} scored {scores[i]:.3f}"
        centre, span = lm[:, :2].mean(0), np.ptp(lm[:, :2], axis=0)
        assert ((48 <= centre) & (centre <= 144)).all(), f"{name}: landmarks centred at {centre}"
        assert (span > 60).all() and (span < FACEMESH_SIZE).all(), f"{name}: landmarks span {span}"
        y = lm[:, 1]
        assert max(y[list(EYELIDS)]) < y[NOSE_TIP] < y[UPPER_LIP] < y[CHIN], name
        assert lm[EYE_CORNERS[0], 0] < lm[EYE_CORNERS[1], 0], name


# -- features, truncation, ONNX ------------------------------------------------------------------------------


def test_features_and_truncated_prefixes(net, faces):
    x = to_nchw(list(faces.values()))
    with torch.inference_mode():
        landmarks, _ = net(x)
        by_name = net.features(x, "p_re_lu_15")
        layer = net.layer("p_re_lu_15")
        assert torch.equal(by_name, net.features(x, layer.index))
        assert by_name.shape == (len(faces), *layer.shape[1:])
        last = net.features(x, -1)  # conv2d_21: the landmarks, NCHW (N, 1404, 1, 1)
        assert torch.equal(last.reshape(len(faces), FACEMESH_LANDMARKS, 3), landmarks)
        assert all(torch.equal(a, b) for a, b in zip(net.features(x, ["p_re_lu_15", -1]), (by_name, last)))
    prefix = net.truncated(layer.index + 1)
    with torch.inference_mode():
        assert torch.equal(prefix(x), by_name)
    params = sum(p.numel() for p in prefix.parameters())
    assert 0 < params < sum(p.numel() for p in net.parameters())
    # The whole op list truncated at the landmark head leaves the face-flag branch out.
    assert sum(p.numel() for p in net.truncated(len(net.layers)).parameters()) == 580_908
    # A prefix owns its weights: changing them leaves the full model alone.
    with torch.no_grad():
        next(prefix.parameters()).zero_()
        assert torch.equal(net.features(x, layer.index), by_name)


def test_bad_layers_and_inputs_are_refused(net, facemesh_file):
    x = torch.zeros(1, 3, FACEMESH_SIZE, FACEMESH_SIZE)
    with pytest.raises(ModelError, match="no layer outputs a tensor named 'nope'"):
        net.features(x, "nope")
    with pytest.raises(ModelError, match="layer 97 out of range"):
        net.features(x, 97)
    with pytest.raises(ValueError, match="k must lie in 1..97"):
        net.truncated(0)
    with pytest.raises(ModelError, match=rf"{facemesh_file}.*'input_1' expects \(N, 3, 192, 192\)"):
        net(torch.zeros(1, 3, 128, 128))


def test_onnx_export_of_a_truncated_prefix_and_the_whole_model(net, images, tmp_path):
    batch = to_nchw(list(images.values())).numpy()
    sets = [(batch[:1],), (batch,)]
    prefix = net.truncated(net.layer("p_re_lu_5").index + 1)
    path = export_onnx(prefix, (torch.from_numpy(batch[:1]),), tmp_path / "prefix.onnx", input_names=["image"],
                       output_names=["features"], dynamic_axes={"image": {0: "n"}, "features": {0: "n"}})
    print(check_parity(prefix, path, sets).summary())
    path = export_onnx(net, (torch.from_numpy(batch[:1]),), tmp_path / "facemesh.onnx", input_names=["image"],
                       output_names=["landmarks", "face_logit"],
                       dynamic_axes={"image": {0: "n"}, "landmarks": {0: "n"}, "face_logit": {0: "n"}})
    print(check_parity(net, path, sets).summary())


# -- the registry entry --------------------------------------------------------------------------------------


def test_registry_entry_fetches_the_pinned_member(facemesh_file, monkeypatch):
    assert ENTRY.licence == "Apache-2.0" and not ENTRY.user_provided
    # conftest's mirror includes the wheel folder: the member comes out of the local wheel, no network.
    monkeypatch.setenv("SWAPWATCH_PYPI_INDEX", "http://127.0.0.1:9/simple")
    path = reg.ensure_model(ENTRY.name, progress=False)[ENTRY.files[0].filename]
    assert [r.status for r in reg.verify(ENTRY.name)] == ["ok"]
    assert len(load_facemesh(path).layers) == 97


# -- strict loading ------------------------------------------------------------------------------------------


def test_missing_empty_or_foreign_files_are_model_errors(tmp_path):
    missing = tmp_path / "missing.tflite"
    with pytest.raises(ModelError, match=f"cannot read TFLite model {missing}"):
        read_tflite(missing)
    for name, data in (("empty.tflite", b""), ("onnx.tflite", b"\x08\x07\x12\x07pytorch" + bytes(64))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError, match=f"{tmp_path / name} is not a TFLite model"):
            read_tflite(tmp_path / name)


@pytest.mark.parametrize("keep", [8, 100, 4096, 0.5, -1000])
def test_truncated_copies_are_model_errors(facemesh_file, tmp_path, keep):
    data = facemesh_file.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path = tmp_path / "truncated.tflite"
    path.write_bytes(data[:size])
    with pytest.raises(ModelError, match=f"{path}: corrupt or truncated TFLite file"):
        load_facemesh(path)


def test_corrupted_tables_fail_only_as_model_errors(facemesh_file, tmp_path):
    """Random bytes overwritten where the converter put the tables (after the weight buffers): the file either
    still loads (a harmless byte) or fails with a ModelError naming it, never with another exception."""
    data = facemesh_file.read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "corrupt.tflite"
    outcomes = Counter()
    for _ in range(40):
        damaged = bytearray(data)
        for pos in rng.integers(len(data) - 30_000, len(data), 4):
            damaged[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(damaged))
        try:
            load_facemesh(path)
            outcomes["loaded"] += 1
        except ModelError as exc:
            assert str(path) in str(exc)
            outcomes["ModelError"] += 1
    assert outcomes["ModelError"] >= 20, outcomes


# -- synthetic graphs: the ops and padding cases FaceMesh does not use ------------------------------------------


_TYPES = {"float32": 0, "float16": 1, "int32": 2, "int8": 9}
_CODES = {"ADD": 0, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "DEQUANTIZE": 6, "LOGISTIC": 14, "MAX_POOL_2D": 17,
          "MUL": 18, "RELU6": 21, "RESHAPE": 22, "SOFTMAX": 25, "PAD": 34, "PRELU": 54}
_ENUMS = {"SAME": 0, "VALID": 1, "RELU": 1, "RELU6": 3}
# Options tables from TFLite's schema.fbs, written independently of the reader: union type, field -> (slot, kind).
_OPTION_TABLES = {
    "CONV_2D": (1, {"padding": (0, "b"), "stride_w": (1, "i"), "stride_h": (2, "i"), "activation": (3, "b"),
                    "dilation_w": (4, "i"), "dilation_h": (5, "i")}),
    "DEPTHWISE_CONV_2D": (2, {"padding": (0, "b"), "stride_w": (1, "i"), "stride_h": (2, "i"),
                              "depth_multiplier": (3, "i"), "activation": (4, "b"), "dilation_w": (5, "i"),
                              "dilation_h": (6, "i")}),
    "MAX_POOL_2D": (5, {"padding": (0, "b"), "stride_w": (1, "i"), "stride_h": (2, "i"), "filter_w": (3, "i"),
                        "filter_h": (4, "i"), "activation": (5, "b")}),
    "ADD": (11, {"activation": (0, "b")}),
    "MUL": (21, {"activation": (0, "b")}),
    "RESHAPE": (17, {}),
    "SOFTMAX": (9, {"beta": (0, "f")}),
}


def build_tflite(tensors: list[dict], operators: list[dict], inputs: list[int], outputs: list[int]) -> bytes:
    """A TFLite FlatBuffer: ``tensors`` as dicts name/shape/dtype[/data][/quant (scales, zero points, axis)],
    ``operators`` as dicts op/inputs/outputs[/options]."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def vector(values, prepend, width: int, align: int | None = None):
        b.StartVector(width, len(values), align or width)
        for v in reversed(values):
            prepend(v)
        return b.EndVector()

    def ints(values, width: int = 4):
        return vector([int(v) for v in values], b.PrependInt32 if width == 4 else b.PrependInt64, width)

    def offsets(values):
        return vector(values, b.PrependUOffsetTRelative, 4)

    datas, buffer_of = [b""], []
    for t in tensors:
        buffer_of.append(len(datas) if t.get("data") is not None else 0)
        if t.get("data") is not None:
            datas.append(np.ascontiguousarray(t["data"], np.dtype(t["dtype"]).newbyteorder("<")).tobytes())
    buffers = []
    for data in datas:
        vec = vector(list(data), b.PrependUint8, 1, 16) if data else None
        b.StartObject(3)
        if vec is not None:
            b.PrependUOffsetTRelativeSlot(0, vec, 0)
        buffers.append(b.EndObject())
    table_of_tensors = []
    for t, buf in zip(tensors, buffer_of):
        shape, name, quant = ints(t["shape"]), b.CreateString(t["name"]), None
        if t.get("quant"):
            scales, zero_points, axis = t["quant"]
            scale_vec, zero_vec = vector([float(s) for s in scales], b.PrependFloat32, 4), ints(zero_points, 8)
            b.StartObject(7)
            b.PrependUOffsetTRelativeSlot(2, scale_vec, 0)
            b.PrependUOffsetTRelativeSlot(3, zero_vec, 0)
            b.PrependInt32Slot(6, axis, 0)
            quant = b.EndObject()
        b.StartObject(8)
        b.PrependUOffsetTRelativeSlot(0, shape, 0)
        b.PrependInt8Slot(1, _TYPES[t["dtype"]], 0)
        b.PrependUint32Slot(2, buf, 0)
        b.PrependUOffsetTRelativeSlot(3, name, 0)
        if quant is not None:
            b.PrependUOffsetTRelativeSlot(4, quant, 0)
        table_of_tensors.append(b.EndObject())
    names = sorted({o["op"] for o in operators})
    table_of_ops = []
    for o in operators:
        ins, outs, options = ints(o["inputs"]), ints(o["outputs"]), None
        if o["op"] in _OPTION_TABLES:
            union, fields = _OPTION_TABLES[o["op"]]
            values = dict(o.get("options", {}))
            new_shape = ints(values.pop("new_shape")) if "new_shape" in values else None
            b.StartObject(8)
            if new_shape is not None:
                b.PrependUOffsetTRelativeSlot(0, new_shape, 0)
            for key, value in values.items():
                slot, kind = fields[key]
                prepend = {"b": b.PrependInt8Slot, "i": b.PrependInt32Slot, "f": b.PrependFloat32Slot}[kind]
                prepend(slot, _ENUMS.get(value, value) if isinstance(value, str) else value, -99)
            options = b.EndObject()
        b.StartObject(5)
        b.PrependUint32Slot(0, names.index(o["op"]), 0)
        b.PrependUOffsetTRelativeSlot(1, ins, 0)
        b.PrependUOffsetTRelativeSlot(2, outs, 0)
        if options is not None:
            b.PrependUint8Slot(3, union, 0)
            b.PrependUOffsetTRelativeSlot(4, options, 0)
        table_of_ops.append(b.EndObject())
    tensor_vec, in_vec, out_vec, op_vec = offsets(table_of_tensors), ints(inputs), ints(outputs), offsets(table_of_ops)
    b.StartObject(5)
    for slot, vec in enumerate((tensor_vec, in_vec, out_vec, op_vec)):
        b.PrependUOffsetTRelativeSlot(slot, vec, 0)
    subgraph = b.EndObject()
    codes = []
    for n in names:
        b.StartObject(4)
        b.PrependInt8Slot(0, _CODES[n], -1)
        b.PrependInt32Slot(2, 1, 0)
        b.PrependInt32Slot(3, _CODES[n], -1)
        codes.append(b.EndObject())
    code_vec, graph_vec, buffer_vec = offsets(codes), offsets([subgraph]), offsets(buffers)
    description = b.CreateString("synthetic")
    b.StartObject(5)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, code_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, graph_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, description, 0)
    b.PrependUOffsetTRelativeSlot(4, buffer_vec, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


class Graph:
    """Tensors and operators for :func:`build_tflite`, added one by one."""

    def __init__(self) -> None:
        self.tensors: list[dict] = []
        self.operators: list[dict] = []
        self.rng = np.random.default_rng(1)

    def tensor(self, name: str, shape: list[int], dtype: str = "float32", data=None, quant=None) -> int:
        self.tensors.append({"name": name, "shape": shape, "dtype": dtype, "data": data, "quant": quant})
        return len(self.tensors) - 1

    def weights(self, name: str, shape: list[int], scale: float = 1.0) -> int:
        return self.tensor(name, shape, data=(self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op: str, inputs: list[int], outputs: list[int], **options) -> None:
        self.operators.append({"op": op, "inputs": inputs, "outputs": outputs, "options": options})

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> bytes:
        content = build_tflite(self.tensors, self.operators, inputs, outputs)
        path.write_bytes(content)
        return content


def test_synthetic_graph_matches_the_interpreter(litert, tmp_path):
    """Asymmetric SAME padding on odd sizes (conv and -inf max pool), VALID with dilation and a depth
    multiplier, fused RELU/RELU6, int8 per-channel and float16 weights through DEQUANTIZE, PRELU, ADD of a
    constant, MUL of activations, spatial and channel PAD, RESHAPE in and out of 4-D, RELU6 and LOGISTIC."""
    g = Graph()
    x = g.tensor("x", [1, 10, 11, 3])
    scales = g.rng.uniform(0.005, 0.02, 8)
    w_q = g.tensor("conv/w_int8", [8, 3, 3, 3], "int8", g.rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8),
                   (scales.tolist(), [0] * 8, 0))
    b16 = g.tensor("conv/b16", [8], "float16", g.rng.standard_normal(8).astype(np.float16))
    w, b32 = g.tensor("conv/w", [8, 3, 3, 3]), g.tensor("conv/b", [8])
    g.op("DEQUANTIZE", [w_q], [w])
    g.op("DEQUANTIZE", [b16], [b32])
    conv = g.tensor("conv", [1, 5, 6, 8])
    g.op("CONV_2D", [x, w, b32], [conv], padding="SAME", stride_w=2, stride_h=2, activation="RELU6")
    pool = g.tensor("pool", [1, 3, 3, 8])
    g.op("MAX_POOL_2D", [conv], [pool], padding="SAME", stride_w=2, stride_h=2, filter_w=3, filter_h=3)
    prelu = g.tensor("prelu", [1, 3, 3, 8])
    g.op("PRELU", [pool, g.weights("prelu/alpha", [1, 1, 8], 0.2)], [prelu])
    add = g.tensor("add", [1, 3, 3, 8])
    g.op("ADD", [g.weights("add/const", [8]), prelu], [add], activation="RELU")
    mul = g.tensor("mul", [1, 3, 3, 8])
    g.op("MUL", [add, prelu], [mul])
    pad = g.tensor("pad", [1, 4, 5, 16])
    g.op("PAD", [mul, g.tensor("pad/paddings", [4, 2], "int32", np.array([[0, 0], [1, 0], [0, 2], [0, 8]]))], [pad])
    dw = g.tensor("dw", [1, 2, 1, 32])
    g.op("DEPTHWISE_CONV_2D", [pad, g.weights("dw/w", [1, 3, 3, 32]), g.weights("dw/b", [32])], [dw],
         padding="VALID", stride_w=1, stride_h=1, depth_multiplier=2, dilation_w=2, dilation_h=1)
    relu6 = g.tensor("relu6", [1, 2, 1, 32])
    g.op("RELU6", [dw], [relu6])
    flat = g.tensor("flat", [1, 320])
    g.op("RESHAPE", [pad, g.tensor("flat/shape", [2], "int32", np.array([1, -1]))], [flat], new_shape=[1, -1])
    logistic = g.tensor("logistic", [1, 320])
    g.op("LOGISTIC", [flat], [logistic])
    back = g.tensor("back", [1, 2, 4, 40])
    g.op("RESHAPE", [logistic], [back], new_shape=[1, 2, 4, 40])
    content = g.write(tmp_path / "synthetic.tflite", [x], [relu6, back])

    net = TFLiteNet.from_file(tmp_path / "synthetic.tflite")
    assert [layer.op for layer in net.layers] == [o["op"] for o in g.operators[2:]]
    it = interpreter(litert, content, builtin=True)
    assert [o.op for o in read_tflite(tmp_path / "synthetic.tflite").operators] == [
        o["op_name"] for o in it._get_ops_details()]
    x_nhwc = (g.rng.standard_normal((1, 10, 11, 3)) * 3).astype(np.float32)
    ref_outputs = invoke(it, x_nhwc)
    reference = tensors_by_name(it)
    x_nchw = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    with torch.inference_mode():
        outputs = net(torch.cat([x_nchw, x_nchw]))  # a batch of two: the batch dimension follows the input
        for got, ref in zip(outputs, ref_outputs):
            np.testing.assert_allclose(to_tflite_layout(got)[1:], ref, rtol=0, atol=2e-5)
        for layer in net.layers:
            got = to_tflite_layout(net.features(x_nchw, layer.name))
            np.testing.assert_allclose(got, reference[layer.name], rtol=0, atol=2e-5, err_msg=layer.name)


def _one_conv(tmp_path: Path, *, declared: list[int], weight_dtype: str = "float32", extra: str | None = None):
    g = Graph()
    x = g.tensor("x", [1, 8, 8, 3])
    if weight_dtype == "int8":
        w = g.tensor("conv/w", [4, 3, 3, 3], "int8", np.ones((4, 3, 3, 3), np.int8), ([0.1], [0], 0))
    else:
        w = g.weights("conv/w", [4, 3, 3, 3])
    y = g.tensor("conv", declared)
    g.op("CONV_2D", [x, w, g.weights("conv/b", [4])], [y], padding="SAME", stride_w=1, stride_h=1)
    if extra:
        z = g.tensor("probs", declared)
        g.op(extra, [y], [z], beta=1.0)
        y = z
    g.write(tmp_path / "graph.tflite", [x], [y])
    return tmp_path / "graph.tflite"


def test_unsupported_operators_and_shape_mismatches_are_named(tmp_path):
    path = _one_conv(tmp_path, declared=[1, 8, 8, 4], extra="SOFTMAX")
    with pytest.raises(ModelError, match=rf"{path}: operator 1 SOFTMAX \(output 'probs'\): unsupported operator"):
        TFLiteNet.from_file(path)
    path = _one_conv(tmp_path, declared=[1, 8, 7, 4])
    with pytest.raises(ModelError, match=rf"{path}: operator 0 CONV_2D \(output 'conv'\): computed output shape "
                                         r"\[1, 8, 8, 4\] but the file declares \[1, 8, 7, 4\]"):
        TFLiteNet.from_file(path)
    path = _one_conv(tmp_path, declared=[1, 8, 8, 4], weight_dtype="int8")
    with pytest.raises(ModelError, match=r"weight 'conv/w' is int8 without a DEQUANTIZE"):
        TFLiteNet.from_file(path)
    path = _one_conv(tmp_path, declared=[1, 8, 8, 4])
    assert len(TFLiteNet.from_file(path).layers) == 1
    with pytest.raises(ModelError, match=rf"{path}: input 'x' has shape \[1, 3, 8, 8\], FaceMesh takes"):
        load_facemesh(path)
