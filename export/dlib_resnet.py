"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch, read from and
written to dlib's own serialisation.

The network is ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``: a 7x7/2 convolution, test-time
batch norm (dlib's ``affine``), ReLU and a 3x3/2 max pool (the *stem*), then five *levels* of residual blocks
(dlib's ``alevel4`` .. ``alevel0``), a global average pool and a 256 -> 128 linear layer without bias. Feature
levels are numbered from the input side:

====== ================================ ======================
level  after                            shape (per 150x150 face)
====== ================================ ======================
0      the stem                         32 x 35 x 35
1      ``alevel4``: 3 blocks, 32        32 x 35 x 35
2      ``alevel3``: 1 down + 3, 64      64 x 17 x 17
3      ``alevel2``: 1 down + 2, 128     128 x 8 x 8
4      ``alevel1``: 1 down + 2, 256     256 x 4 x 4
5      ``alevel0``: 1 down, 256         256 x 2 x 2
====== ================================ ======================

Where a down block's two paths differ in size (dlib's ``add_prev`` of an 8x8 input: 3x3 from the stride-2
convolution, 4x4 from the 2x2 average pool), dlib adds them into a tensor of the larger size with the missing
rows, columns and channels taken as zero; :class:`DlibFaceResNet` does the same.

Input contract (:class:`DlibFaceResNet` and every :meth:`~DlibFaceResNet.truncated` part): ``(N, 3, 150, 150)``
float32, **RGB, 0..255** (a dlib face chip as it is, cast to float); the module normalises it as dlib's
``input_rgb_image_sized<150>`` does, ``(x - avg) / 256`` with the file's per-channel averages (122.782,
117.001, 104.298). Output of ``forward``: the ``(N, 128)`` descriptor exactly as dlib computes it, not
normalised (dlib compares descriptors by Euclidean distance, same person below 0.6:
:attr:`DlibFaceResNet.distance_threshold`).

The file format (dlib/serialize.h, dlib/dnn/core.h, layers.h, input.h, loss.h, cuda/tensor.h): integers are a
control byte (bit 7: negative, bits 0-3: byte count) then the magnitude in little-endian bytes; scalars of type
float/double are a ``(mantissa, exponent)`` pair of such integers (``float_details``); strings are a length then
the bytes; bools are ASCII ``'0'``/``'1'``; tensors are a version (2), four dimensions and little-endian IEEE
float32 data. The loss layer comes first; then each layer's version on the way down the network (a layer writes
its subnetwork before its own details), the input layer, and each layer's details plus dlib's training
bookkeeping (three flags, three tensors) on the way back up. Tags and skips write only a version. The reader
checks all of it against the architecture above, so a file of another network, a truncated file or one with
bytes left over is a :class:`~swapwatch.errors.ModelError` naming the file, the byte offset and the layer.
"""

from __future__ import annotations

import copy
import math
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swapwatch.errors import ModelError

WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INPUT_SIZE = 150
DESCRIPTOR_SIZE = 128
# dlib's input_rgb_image defaults, which the released file stores too.
DEFAULT_AVG_RGB = (122.782, 117.001, 104.298)
DEFAULT_MARGIN = 0.04
DISTANCE_THRESHOLD = 0.6
STEM_FILTERS = 32
# (filters, blocks, the first block halves the size) per level, from the input side: alevel4 .. alevel0.
LEVEL_SPECS: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
LEVELS = len(LEVEL_SPECS)

# dlib's name strings of each layer's serialisation.
_NAMES = {"con": "con_4", "affine": "affine_", "relu": "relu_", "max_pool": "max_pool_2", "avg_pool": "avg_pool_2",
          "add_prev": "add_prev_", "fc": "fc_2"}
_LOSS_NAME = "loss_metric_2"
_INPUT_NAME = "input_rgb_image_sized"
_CONV_MODE = 0  # dlib's layer_mode: affine_ over convolution channels
_FC_NO_BIAS = 1  # dlib's fc_bias_mode of fc_no_bias
_TENSOR_VERSION = 2
_ALIAS_VERSION = 1
_FLOAT_DIGITS = 24  # std::numeric_limits<float>::digits, what float_details uses for a float
_DOUBLE_DIGITS = 53
_INF, _NINF, _NAN = 32000, 32001, 32002  # float_details' special exponents


# ----------------------------------------------------------------------------------------------------------
# The typed in-memory form of a file.


@dataclass(frozen=True, eq=False)
class DlibTensor:
    """A dlib ``resizable_tensor``: dimensions (num_samples, k, nr, nc) and float32 data in that order."""

    shape: tuple[int, int, int, int]
    data: np.ndarray

    @classmethod
    def empty(cls) -> DlibTensor:
        return cls((0, 0, 0, 0), np.zeros(0, np.float32))


def _empty_tensors() -> tuple[DlibTensor, ...]:
    return (DlibTensor.empty(), DlibTensor.empty(), DlibTensor.empty())


@dataclass(frozen=True, eq=False)
class LayerState:
    """dlib's training bookkeeping around each layer (``add_layer``): three flags, then ``x_grad``,
    ``cached_output`` and ``params_grad`` (``grad_final`` for the layer on the input). Not used for inference;
    kept so that a file is written back as it was read."""

    setup_called: bool = True
    gradient_input_is_stale: bool = True
    output_disabled: bool = False  # set by dlib under an in-place layer (here: every layer under a ReLU)
    tensors: tuple[DlibTensor, ...] = field(default_factory=_empty_tensors)


@dataclass(frozen=True)
class Multipliers:
    """Learning-rate and weight-decay multipliers of con_/fc_ (double in the file; training only)."""

    learning_rate: float = 1.0
    weight_decay: float = 1.0
    bias_learning_rate: float = 1.0
    bias_weight_decay: float = 0.0


@dataclass(frozen=True, eq=False)
class Conv:
    """``con_``: ``weight`` (filters, channels, nr, nc) and ``bias`` (filters,), square kernel and stride."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int
    multipliers: Multipliers = Multipliers()


@dataclass(frozen=True, eq=False)
class Affine:
    """``affine_`` (dlib's test-time batch norm): ``gamma * x + beta`` per channel."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Pool:
    """``max_pool_`` / ``avg_pool_``: square window (0: the whole input), stride and padding."""

    kind: str
    window: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Relu:
    """``relu_`` (no parameters)."""


@dataclass(frozen=True)
class AddPrev:
    """``add_prev_``: adds a tagged earlier output (which tag is part of the type, not of the file)."""


@dataclass(frozen=True, eq=False)
class FullyConnected:
    """``fc_no_bias``: ``weight`` is (inputs, outputs), dlib's layout (output = x @ weight)."""

    weight: np.ndarray
    multipliers: Multipliers = Multipliers()


Details = Conv | Affine | Pool | Relu | AddPrev | FullyConnected


@dataclass(frozen=True, eq=False)
class DlibLayer:
    """One computational layer; ``name`` places it in :class:`DlibFaceResNet` (``levels.1.0.conv1`` is that
    module; parameter-free layers get names in the same scheme, such as ``levels.1.0.relu2``)."""

    name: str
    details: Details
    state: LayerState = field(default_factory=LayerState)


@dataclass(frozen=True, eq=False)
class DlibResNetFile:
    """A whole ``anet_type`` file: loss parameters, the input layer and the layers from the input side."""

    layers: tuple[DlibLayer, ...]
    avg_rgb: tuple[float, float, float] = DEFAULT_AVG_RGB
    margin: float = DEFAULT_MARGIN
    distance_threshold: float = DISTANCE_THRESHOLD
    # add_layer over the input: version 3 (the released file, current dlib) ends with sample_expansion_factor;
    # dlib still reads version 2, which does not.
    input_layer_version: int = 3
    sample_expansion_factor: int = 1


# ----------------------------------------------------------------------------------------------------------
# The architecture, as a list of slots from the input side (tags and skips included: they carry a version).


@dataclass(frozen=True)
class _Slot:
    kind: str  # a key of _NAMES, or "tag" / "skip"
    name: str = ""
    filters: int = 0
    channels: int = 0
    window: int = 0
    stride: int = 1
    padding: int = 0

    @property
    def computational(self) -> bool:
        return self.kind not in ("tag", "skip")


def _conv_padding(window: int, stride: int) -> int:
    """dlib's default padding for con_ and the pools: window/2 at stride 1, else none."""
    return window // 2 if stride == 1 else 0


def _block_slots(prefix: str, channels: int, filters: int, down: bool) -> list[_Slot]:
    """ares (relu<add_prev1<block<tag1>>>) or ares_down (relu<add_prev2<avg_pool<skip1<tag2<block<tag1>>>>>>)."""
    stride = 2 if down else 1
    slots = [_Slot("tag"),
             _Slot("con", f"{prefix}.conv1", filters, channels, 3, stride, _conv_padding(3, stride)),
             _Slot("affine", f"{prefix}.affine1", filters), _Slot("relu", f"{prefix}.relu1"),
             _Slot("con", f"{prefix}.conv2", filters, filters, 3, 1, 1),
             _Slot("affine", f"{prefix}.affine2", filters)]
    if down:
        slots += [_Slot("tag"), _Slot("skip"), _Slot("avg_pool", f"{prefix}.pool", window=2, stride=2)]
    return slots + [_Slot("add_prev", f"{prefix}.add"), _Slot("relu", f"{prefix}.relu2")]


def _skeleton() -> tuple[_Slot, ...]:
    slots = [_Slot("con", "stem.0", STEM_FILTERS, 3, 7, 2, 0), _Slot("affine", "stem.1", STEM_FILTERS),
             _Slot("relu", "stem.2"), _Slot("max_pool", "stem.3", window=3, stride=2)]
    channels = STEM_FILTERS
    for level, (filters, blocks, down) in enumerate(LEVEL_SPECS):
        for block in range(blocks):
            slots += _block_slots(f"levels.{level}.{block}", channels, filters, down and block == 0)
            channels = filters
    slots += [_Slot("avg_pool", "pool", window=0), _Slot("fc", "fc", DESCRIPTOR_SIZE, channels)]
    return tuple(slots)


SKELETON = _skeleton()
_LAYER_SLOTS = tuple(s for s in SKELETON if s.computational)


# The flag dlib sets on a layer whose output an in-place layer (a ReLU directly on top) overwrites, per layer.
_OUTPUT_DISABLED = tuple(i + 1 < len(SKELETON) and SKELETON[i + 1].kind == "relu"
                         for i, s in enumerate(SKELETON) if s.computational)


# ----------------------------------------------------------------------------------------------------------
# Reading.


class _Reader:
    """dlib's primitive encodings over a byte buffer; every failure is a ModelError naming file and offset."""

    def __init__(self, data: bytes | bytearray | memoryview, source: str) -> None:
        self.data = memoryview(data)
        self.source = source
        self.pos = 0
        self.where = "the file header"

    def fail(self, problem: str, at: int | None = None) -> ModelError:
        at = self.pos if at is None else at
        return ModelError(f"{self.source}: not dlib's face-recognition ResNet ({WEIGHTS_FILE} format): {problem} "
                          f"(byte {at} of {len(self.data)}, in {self.where})")

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.data) - self.pos:
            raise self.fail(f"file truncated: {what} needs {n} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self, what: str, *, max_bytes: int = 8, signed: bool = True) -> int:
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= max_bytes:
            raise self.fail(f"{what}: invalid integer control byte 0x{control:02x}", start)
        body = bytes(self.take(size, what))
        if size > 1 and body[-1] == 0:  # dlib always writes the shortest form
            raise self.fail(f"{what}: non-canonical integer encoding", start)
        value = int.from_bytes(body, "little")
        if control & 0x80:
            if not signed or value == 0:
                raise self.fail(f"{what}: negative value where dlib writes none", start)
            value = -value
        return value

    def expect_int(self, expected: int, what: str, *, max_bytes: int = 8) -> int:
        start = self.pos
        value = self.integer(what, max_bytes=max_bytes)
        if value != expected:
            raise self.fail(f"{what}: expected {expected}, found {value}", start)
        return value

    def scalar(self, what: str, digits: int) -> float:
        """A float_details pair (mantissa, then exponent) as dlib reads it into a float or a double."""
        start = self.pos
        mantissa = self.integer(f"{what} (mantissa)")
        exponent = self.integer(f"{what} (exponent)", max_bytes=2)
        if exponent >= _INF:
            raise self.fail(f"{what}: not a finite number", start)
        if digits == _FLOAT_DIGITS:  # dlib: ldexp((float)mantissa, exponent), in float
            with np.errstate(over="ignore", under="ignore"):
                value = float(np.ldexp(np.float32(mantissa), exponent))
        else:
            try:
                value = math.ldexp(float(mantissa), exponent)
            except OverflowError:
                value = math.inf
        if not math.isfinite(value):
            raise self.fail(f"{what}: {mantissa} * 2^{exponent} is out of range", start)
        return value

    def string(self, what: str) -> str:
        length = self.integer(f"{what} (length)", signed=False)
        return bytes(self.take(length, what)).decode("latin-1")

    def expect_name(self, expected: str) -> None:
        start = self.pos
        found = self.string(f"name {expected!r}")
        if found != expected:
            shown = found if len(found) <= 40 and found.isprintable() else f"{len(found)} bytes"
            raise self.fail(f"expected layer name {expected!r}, found {shown!r}", start)

    def boolean(self, what: str) -> bool:
        start = self.pos
        byte = self.take(1, what)[0]
        if byte not in (0x30, 0x31):
            raise self.fail(f"{what}: expected '0' or '1', found byte 0x{byte:02x}", start)
        return byte == 0x31

    def dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        shape = tuple(self.integer(f"{what} (dimension)") for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"{what}: negative dimension in {shape}", start)
        return shape  # type: ignore[return-value]

    def tensor(self, what: str, expected: tuple[int, int, int, int] | None = None) -> DlibTensor:
        self.expect_int(_TENSOR_VERSION, f"{what} (tensor version)", max_bytes=4)
        start = self.pos
        shape = self.dims(what)
        if expected is not None and shape != expected:
            raise self.fail(f"{what}: tensor shape mismatch: expected {expected}, found {shape}", start)
        count = math.prod(shape)
        raw = self.take(4 * count, f"{what} ({count} float32 values)")
        data = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if expected is not None and not np.isfinite(data).all():
            raise self.fail(f"{what}: NaN or inf among the weights", start)
        return DlibTensor(shape, data)

    def alias(self, what: str, expected: tuple[int, int, int, int]) -> None:
        """An alias_tensor (a view's shape into a layer's params), which must be ``expected``."""
        self.expect_int(_ALIAS_VERSION, f"{what} (alias version)", max_bytes=4)
        start = self.pos
        shape = self.dims(what)
        if shape != expected:
            raise self.fail(f"{what}: tensor shape mismatch: expected {expected}, found {shape}", start)

    def multipliers(self) -> Multipliers:
        return Multipliers(*(self.scalar(f"{n} multiplier", _DOUBLE_DIGITS) for n in
                             ("learning rate", "weight decay", "bias learning rate", "bias weight decay")))


def _read_conv(r: _Reader, slot: _Slot) -> Conv:
    f, c, k = slot.filters, slot.channels, slot.window
    params = r.tensor("con_ params", (f * c * k * k + f, 1, 1, 1))
    for what, expected in (("num_filters", f), ("nr", k), ("nc", k), ("stride_y", slot.stride),
                           ("stride_x", slot.stride), ("padding_y", slot.padding), ("padding_x", slot.padding)):
        r.expect_int(expected, f"con_ {what}")
    r.alias("con_ filters", (f, c, k, k))
    r.alias("con_ biases", (1, f, 1, 1))
    multipliers = r.multipliers()
    split = f * c * k * k
    return Conv(params.data[:split].reshape(f, c, k, k), params.data[split:].copy(), slot.stride, slot.padding,
                multipliers)


def _read_affine(r: _Reader, slot: _Slot) -> Affine:
    n = slot.filters
    params = r.tensor("affine_ params", (2 * n, 1, 1, 1))
    r.alias("affine_ gamma", (1, n, 1, 1))
    r.alias("affine_ beta", (1, n, 1, 1))
    r.expect_int(_CONV_MODE, "affine_ mode (CONV_MODE)", max_bytes=4)
    return Affine(params.data[:n].copy(), params.data[n:].copy())


def _read_pool(r: _Reader, slot: _Slot) -> Pool:
    for what, expected in (("nr", slot.window), ("nc", slot.window), ("stride_y", slot.stride),
                           ("stride_x", slot.stride), ("padding_y", slot.padding), ("padding_x", slot.padding)):
        r.expect_int(expected, f"{_NAMES[slot.kind]} {what}")
    return Pool(slot.kind.removesuffix("_pool"), slot.window, slot.stride, slot.padding)


def _read_fc(r: _Reader, slot: _Slot) -> FullyConnected:
    outputs, inputs = slot.filters, slot.channels
    r.expect_int(outputs, "fc_ num_outputs")
    r.expect_int(inputs, "fc_ num_inputs")
    params = r.tensor("fc_ params", (inputs, outputs, 1, 1))
    r.alias("fc_ weights", (inputs, outputs, 1, 1))
    r.alias("fc_ biases", (0, 0, 0, 0))
    r.expect_int(_FC_NO_BIAS, "fc_ bias mode (FC_NO_BIAS)", max_bytes=4)
    return FullyConnected(params.data.reshape(inputs, outputs), r.multipliers())


_READERS: dict[str, Callable[[_Reader, _Slot], Details]] = {
    "con": _read_conv, "affine": _read_affine, "max_pool": _read_pool, "avg_pool": _read_pool, "fc": _read_fc,
    "relu": lambda r, s: Relu(), "add_prev": lambda r, s: AddPrev(),
}


def _read_state(r: _Reader) -> LayerState:
    flags = [r.boolean(f"add_layer flag {i}") for i in range(3)]
    # The third is params_grad, or grad_final for the layer on the input.
    tensors = tuple(r.tensor(f"add_layer {n}") for n in ("x_grad", "cached_output", "params_grad"))
    return LayerState(*flags, tensors=tensors)


def _describe(slot: _Slot, index: int) -> str:
    return f"layer {index + 1} of {len(_LAYER_SLOTS)} ({_NAMES[slot.kind]}, {slot.name})"


def parse_dlib_resnet(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> DlibResNetFile:
    """The typed form of a serialised ``anet_type`` (``source`` names it in errors)."""
    r = _Reader(data, source)
    r.expect_int(1, "add_loss_layer version", max_bytes=4)
    r.expect_name(_LOSS_NAME)
    margin = r.scalar("loss_metric_ margin", _FLOAT_DIGITS)
    threshold = r.scalar("loss_metric_ distance threshold", _FLOAT_DIGITS)
    # On the way down: each layer's version, outermost first.
    input_version = 0
    for index in range(len(SKELETON) - 1, -1, -1):
        slot = SKELETON[index]
        r.where = f"the version of {slot.kind} {slot.name}".rstrip()
        if index == 0:
            start = r.pos
            input_version = r.integer("add_layer version (over the input)", max_bytes=4)
            if input_version not in (2, 3):
                raise r.fail(f"add_layer version over the input: expected 2 or 3, found {input_version}", start)
        else:
            expected = 2 if slot.computational else 1
            r.expect_int(expected, f"{'add_layer' if slot.computational else 'add_' + slot.kind + '_layer'} "
                                   f"version", max_bytes=4)
    r.where = "the input layer"
    r.expect_name(_INPUT_NAME)
    avg_rgb = tuple(r.scalar(f"average {c}", _FLOAT_DIGITS) for c in ("red", "green", "blue"))
    r.expect_int(INPUT_SIZE, "input rows")
    r.expect_int(INPUT_SIZE, "input columns")
    # On the way back up: each layer's details and bookkeeping, innermost first.
    layers = []
    expansion = 1
    for index, slot in enumerate(_LAYER_SLOTS):
        r.where = _describe(slot, index)
        r.expect_name(_NAMES[slot.kind])
        details = _READERS[slot.kind](r, slot)
        state = _read_state(r)
        if index == 0 and input_version == 3:
            expansion = r.integer("sample_expansion_factor", max_bytes=4, signed=False)
        layers.append(DlibLayer(slot.name, details, state))
    r.where = "the end of the file"
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} trailing bytes after the last layer")
    return DlibResNetFile(tuple(layers), avg_rgb, margin, threshold, input_version, expansion)  # type: ignore[arg-type]


def read_dlib_resnet(path: str | Path) -> DlibResNetFile:
    """Read and check a ``dlib_face_recognition_resnet_model_v1.dat``-format file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_dlib_resnet(data, str(path))


# ----------------------------------------------------------------------------------------------------------
# Writing.


def _float_details(value: float, digits: int) -> tuple[int, int]:
    """dlib's float_details of a finite ``value``: mantissa of ``digits`` bits, low zero bytes shifted off."""
    fraction, exponent = math.frexp(value)
    mantissa = int(fraction * (1 << digits))  # exact: the value has at most ``digits`` significant bits
    exponent -= digits
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return mantissa, exponent


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def integer(self, value: int) -> None:
        magnitude = abs(int(value))
        body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
        self.parts.append(bytes([len(body) | (0x80 if value < 0 else 0)]) + body)

    def scalar(self, value: float, digits: int) -> None:
        if not math.isfinite(value):
            raise ValueError(f"dlib files hold finite scalars here, got {value}")
        if digits == _FLOAT_DIGITS:
            value = float(np.float32(value))
        mantissa, exponent = _float_details(value, digits)
        self.integer(mantissa)
        self.integer(exponent)

    def string(self, text: str) -> None:
        raw = text.encode("latin-1")
        self.integer(len(raw))
        self.parts.append(raw)

    def boolean(self, flag: bool) -> None:
        self.parts.append(b"1" if flag else b"0")

    def tensor(self, shape: Sequence[int], data: np.ndarray) -> None:
        values = np.ascontiguousarray(data, dtype="<f4").reshape(-1)
        if values.size != math.prod(shape):
            raise ValueError(f"{values.size} values for a tensor of shape {tuple(shape)}")
        self.integer(_TENSOR_VERSION)
        for d in shape:
            self.integer(d)
        self.parts.append(values.tobytes())

    def alias(self, shape: Sequence[int]) -> None:
        self.integer(_ALIAS_VERSION)
        for d in shape:
            self.integer(d)

    def multipliers(self, m: Multipliers) -> None:
        for value in (m.learning_rate, m.weight_decay, m.bias_learning_rate, m.bias_weight_decay):
            self.scalar(value, _DOUBLE_DIGITS)


def _checked(array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"{what}: shape {array.shape}, the architecture needs {shape}")
    return array


def _write_details(w: _Writer, slot: _Slot, details: Details) -> None:
    w.string(_NAMES[slot.kind])
    if slot.kind == "con":
        assert isinstance(details, Conv)
        f, c, k = slot.filters, slot.channels, slot.window
        weight = _checked(details.weight, (f, c, k, k), slot.name)
        bias = _checked(details.bias, (f,), slot.name)
        w.tensor((f * c * k * k + f, 1, 1, 1), np.concatenate([weight.reshape(-1), bias]))
        for value in (f, k, k, slot.stride, slot.stride, slot.padding, slot.padding):
            w.integer(value)
        w.alias((f, c, k, k))
        w.alias((1, f, 1, 1))
        w.multipliers(details.multipliers)
    elif slot.kind == "affine":
        assert isinstance(details, Affine)
        n = slot.filters
        w.tensor((2 * n, 1, 1, 1), np.concatenate([_checked(details.gamma, (n,), slot.name),
                                                   _checked(details.beta, (n,), slot.name)]))
        w.alias((1, n, 1, 1))
        w.alias((1, n, 1, 1))
        w.integer(_CONV_MODE)
    elif slot.kind in ("max_pool", "avg_pool"):
        for value in (slot.window, slot.window, slot.stride, slot.stride, slot.padding, slot.padding):
            w.integer(value)
    elif slot.kind == "fc":
        assert isinstance(details, FullyConnected)
        outputs, inputs = slot.filters, slot.channels
        w.integer(outputs)
        w.integer(inputs)
        w.tensor((inputs, outputs, 1, 1), _checked(details.weight, (inputs, outputs), slot.name))
        w.alias((inputs, outputs, 1, 1))
        w.alias((0, 0, 0, 0))
        w.integer(_FC_NO_BIAS)
        w.multipliers(details.multipliers)


_KINDS: dict[str, tuple[type, ...]] = {"con": (Conv,), "affine": (Affine,), "max_pool": (Pool,),
                                       "avg_pool": (Pool,), "relu": (Relu,), "add_prev": (AddPrev,),
                                       "fc": (FullyConnected,)}


def serialize_dlib_resnet(net: DlibResNetFile) -> bytes:
    """dlib's bytes for ``net``: what ``dlib::serialize(anet_type)`` writes for the same weights."""
    if len(net.layers) != len(_LAYER_SLOTS):
        raise ValueError(f"{len(net.layers)} layers, the architecture has {len(_LAYER_SLOTS)}")
    if net.input_layer_version not in (2, 3):
        raise ValueError(f"input_layer_version must be 2 or 3, got {net.input_layer_version}")
    w = _Writer()
    w.integer(1)
    w.string(_LOSS_NAME)
    w.scalar(net.margin, _FLOAT_DIGITS)
    w.scalar(net.distance_threshold, _FLOAT_DIGITS)
    for index in range(len(SKELETON) - 1, -1, -1):
        slot = SKELETON[index]
        w.integer(net.input_layer_version if index == 0 else 2 if slot.computational else 1)
    w.string(_INPUT_NAME)
    for value in net.avg_rgb:
        w.scalar(value, _FLOAT_DIGITS)
    w.integer(INPUT_SIZE)
    w.integer(INPUT_SIZE)
    for index, (slot, layer) in enumerate(zip(_LAYER_SLOTS, net.layers)):
        if not isinstance(layer.details, _KINDS[slot.kind]):
            raise TypeError(f"{_describe(slot, index)}: got {type(layer.details).__name__}")
        _write_details(w, slot, layer.details)
        for flag in (layer.state.setup_called, layer.state.gradient_input_is_stale, layer.state.output_disabled):
            w.boolean(flag)
        for t in layer.state.tensors:
            w.tensor(t.shape, t.data)
        if index == 0 and net.input_layer_version == 3:
            w.integer(net.sample_expansion_factor)
    return b"".join(w.parts)


def write_dlib_resnet(source: DlibResNetFile | DlibFaceResNet, path: str | Path) -> Path:
    """Write ``source`` (a typed file or a :class:`DlibFaceResNet`'s weights) in dlib's format, atomically."""
    net = source if isinstance(source, DlibResNetFile) else dlib_file_from_module(source)
    data = serialize_dlib_resnet(net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------------
# The PyTorch network.


class _Normalise(nn.Module):
    """dlib's input_rgb_image: ``(x - avg) / 256`` per RGB channel, on 0..255 input."""

    def __init__(self, avg_rgb: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(np.float32(v)) for v in avg_rgb]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / 256.0  # exact scaling by a power of two, as dlib's float -> double -> float


class _Affine(nn.Module):
    """dlib's affine_ (a frozen batch norm): ``weight * x + bias`` per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _out_size(size: int, window: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - window) // stride + 1


def _pad_to(x: torch.Tensor, pads: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad (channels, rows, columns) at the end, as dlib's add_prev sees a smaller tensor."""
    channels, rows, columns = pads
    if not (channels or rows or columns):
        return x
    return F.pad(x, (0, columns, 0, rows, 0, channels))


class _Residual(nn.Module):
    """dlib's ares / ares_down: conv-affine-relu-conv-affine, plus the input (2x2-average-pooled when down),
    then ReLU. Sizes are static (150x150 input), so the padding of dlib's add_prev is fixed here."""

    def __init__(self, channels: int, filters: int, size: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        padding = _conv_padding(3, stride)
        self.down = down
        self.conv1 = nn.Conv2d(channels, filters, 3, stride, padding)
        self.affine1 = _Affine(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1)
        self.affine2 = _Affine(filters)
        main = _out_size(size, 3, stride, padding)
        skip = _out_size(size, 2, 2, 0) if down else size
        self.out_channels, self.out_size = max(filters, channels), max(main, skip)
        self._pad_main = (self.out_channels - filters, self.out_size - main, self.out_size - main)
        self._pad_skip = (self.out_channels - channels, self.out_size - skip, self.out_size - skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_pad_to(y, self._pad_main) + _pad_to(skip, self._pad_skip))


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE) or not x.is_floating_point():
        raise ValueError(f"dlib's face ResNet takes (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB 0..255 as floats, got "
                         f"{tuple(x.shape)} {x.dtype}")


def _check_level(level: int) -> int:
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= LEVELS:
        raise ValueError(f"level must be an int in 0..{LEVELS} (0: the stem, {LEVELS}: dlib's alevel0), got {level!r}")
    return level


class DlibFaceResNetTrunk(nn.Module):
    """The first layers of :class:`DlibFaceResNet` up to a feature level: same input contract, returns
    :meth:`DlibFaceResNet.features` at ``level``; holds only those layers' weights."""

    def __init__(self, normalise: nn.Module, stem: nn.Module, levels: Sequence[nn.Module]) -> None:
        super().__init__()
        self.normalise = normalise
        self.stem = stem
        self.levels = nn.ModuleList(levels)

    @property
    def level(self) -> int:
        return len(self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        x = self.stem(self.normalise(x))
        for level in self.levels:
            x = level(x)
        return x


class DlibFaceResNet(nn.Module):
    """dlib's face-recognition ResNet (see the module docstring for the input contract and the levels)."""

    def __init__(self, avg_rgb: Sequence[float] = DEFAULT_AVG_RGB, *, margin: float = DEFAULT_MARGIN,
                 distance_threshold: float = DISTANCE_THRESHOLD) -> None:
        super().__init__()
        self.margin = float(margin)
        self.distance_threshold = float(distance_threshold)
        self.normalise = _Normalise(avg_rgb)
        self.stem = nn.Sequential(nn.Conv2d(3, STEM_FILTERS, 7, 2, 0), _Affine(STEM_FILTERS), nn.ReLU(),
                                  nn.MaxPool2d(3, 2))
        size = _out_size(_out_size(INPUT_SIZE, 7, 2, 0), 3, 2, 0)
        channels = STEM_FILTERS
        levels = []
        for filters, blocks, down in LEVEL_SPECS:
            level = []
            for block in range(blocks):
                level.append(_Residual(channels, filters, size, down and block == 0))
                channels, size = level[-1].out_channels, level[-1].out_size
            levels.append(nn.Sequential(*level))
        self.levels = nn.ModuleList(levels)
        self.fc = nn.Linear(channels, DESCRIPTOR_SIZE, bias=False)

    def features(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The activation after the stem (``level`` 0) or after feature level 1..5 (dlib's alevel4..alevel0)."""
        _check_level(level)
        _check_input(x)
        x = self.stem(self.normalise(x))
        for block in self.levels[:level]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 128)`` descriptors of ``(N, 3, 150, 150)`` RGB 0..255 chips."""
        return self.fc(self.features(x, LEVELS).mean(dim=(2, 3)))

    def truncated(self, level: int) -> DlibFaceResNetTrunk:
        """A copy of the layers up to ``level`` (see :meth:`features`), with only their weights."""
        _check_level(level)
        return DlibFaceResNetTrunk(copy.deepcopy(self.normalise), copy.deepcopy(self.stem),
                                   [copy.deepcopy(m) for m in self.levels[:level]]).eval()

    def layer_modules(self) -> Iterator[tuple[_Slot, nn.Module | None]]:
        """(slot, module) for every computational layer of dlib's file in file order; None for parameter-free
        layers."""
        modules = dict(self.named_modules())
        for slot in _LAYER_SLOTS:
            yield slot, modules.get(slot.name) if slot.kind in ("con", "affine", "fc") else None


# ----------------------------------------------------------------------------------------------------------
# Between the typed form and the module.


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def model_from_dlib_file(net: DlibResNetFile) -> DlibFaceResNet:
    """A :class:`DlibFaceResNet` (eval mode) holding ``net``'s weights."""
    model = DlibFaceResNet(net.avg_rgb, margin=net.margin, distance_threshold=net.distance_threshold)
    with torch.no_grad():
        for (slot, module), layer in zip(model.layer_modules(), net.layers):
            d = layer.details
            if isinstance(d, Conv):
                module.weight.copy_(_as_tensor(d.weight))  # type: ignore[union-attr]
                module.bias.copy_(_as_tensor(d.bias))  # type: ignore[union-attr]
            elif isinstance(d, Affine):
                module.weight.copy_(_as_tensor(d.gamma))  # type: ignore[union-attr]
                module.bias.copy_(_as_tensor(d.beta))  # type: ignore[union-attr]
            elif isinstance(d, FullyConnected):
                module.weight.copy_(_as_tensor(d.weight).T)  # type: ignore[union-attr]
    return model.eval()


def dlib_file_from_module(model: DlibFaceResNet) -> DlibResNetFile:
    """The typed file of ``model``'s weights, with dlib's defaults for what the module does not hold
    (multipliers 1/1/1/0, empty bookkeeping tensors, the flags dlib sets on a trained, cleaned network)."""

    def array(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().copy()

    layers = []
    for index, (slot, module) in enumerate(model.layer_modules()):
        details: Details
        if slot.kind == "con":
            details = Conv(array(module.weight), array(module.bias), slot.stride, slot.padding)  # type: ignore
        elif slot.kind == "affine":
            details = Affine(array(module.weight), array(module.bias))  # type: ignore[union-attr]
        elif slot.kind == "fc":
            details = FullyConnected(array(module.weight).T.copy())  # type: ignore[union-attr]
        elif slot.kind in ("max_pool", "avg_pool"):
            details = Pool(slot.kind.removesuffix("_pool"), slot.window, slot.stride, slot.padding)
        else:
            details = Relu() if slot.kind == "relu" else AddPrev()
        state = LayerState(output_disabled=_OUTPUT_DISABLED[index])
        layers.append(DlibLayer(slot.name, details, state))
    avg = tuple(float(v) for v in model.normalise.mean.reshape(3).tolist())
    return DlibResNetFile(tuple(layers), avg, model.margin, model.distance_threshold)  # type: ignore[arg-type]


def load_dlib_resnet(path: str | Path) -> DlibFaceResNet:
    """Read ``path`` (dlib's serialisation, checked strictly) into a :class:`DlibFaceResNet` in eval mode."""
    return model_from_dlib_file(read_dlib_resnet(path))


def example_input(batch: int = 1, *, seed: int = 0) -> torch.Tensor:
    """Seeded ``(batch, 3, 150, 150)`` RGB 0..255 noise, the module's input contract."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, INPUT_SIZE, INPUT_SIZE), generator=gen).float()
