"""MediaPipe FaceMesh (``face_landmark.tflite``) read straight from its TFLite FlatBuffer into a torch module.

No TensorFlow runtime is involved: :func:`read_tflite` is a small bounds-checked reader of the parts of TFLite's
``schema.fbs`` a float graph needs (tensors, buffers, operators and their options), and :class:`TFLiteNet`
builds one ``nn.Module`` per operator from that list. The reader is our own rather than the ``tflite`` package's
generated classes so that the runtime module needs no extra dependency and every bad offset in a damaged file
becomes a :class:`ModelError` naming the file instead of an ``IndexError`` deep in generated code.

Layout: TFLite activations are NHWC; here rank-4 activations are NCHW (conv weights OHWI -> OIHW, depthwise
1HW(C*M) -> (C*M)1HW, NHWC constants and paddings permuted to match), so the modules run on torch's fast
paths and export to ONNX as plain Conv/PRelu/Add/MaxPool nodes.

FaceMesh (the 468-point model in mediapipe 0.10.21's wheel): input (N,3,192,192) RGB 0..255, scaled to [0,1]
inside (MediaPipe's FaceLandmarkCpu graph: ImageToTensorCalculator with output_tensor_float_range 0..1);
outputs landmarks (N,468,3) in pixels of the 192x192 input (x, y; z on the same scale, relative to the face's
centre) and the face-presence logit (N,1), which MediaPipe passes through a sigmoid and thresholds at 0.5.
"""

from __future__ import annotations

import copy
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swapwatch.errors import ModelError

FACEMESH_MEMBER = "mediapipe/modules/face_landmark/face_landmark.tflite"
FACEMESH_SIZE = 192
FACEMESH_LANDMARKS = 468

# TFLite's TensorType and BuiltinOperator enums (schema.fbs); operators not listed are named BUILTIN_<code>.
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
                7: "int16", 8: "complex64", 9: "int8", 10: "float64"}
_NUMPY_TYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "uint8": np.uint8,
                "int64": np.int64, "bool": np.bool_, "int16": np.int16, "int8": np.int8, "float64": np.float64}
BUILTIN_OPS = dict(enumerate((
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE",
    "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP", "L2_NORMALIZATION", "L2_POOL_2D",
    "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC", "LSH_PROJECTION", "LSTM", "MAX_POOL_2D", "MUL", "RELU",
    "RELU_N1_TO_1", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH",
    "CONCAT_EMBEDDINGS", "SKIP_GRAM", "CALL", "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "TRANSPOSE", "MEAN", "SUB",
    "DIV", "SQUEEZE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "BIDIRECTIONAL_SEQUENCE_RNN", "EXP",
    "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE", "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU", "MAXIMUM",
)))
_PADDINGS = {0: "SAME", 1: "VALID"}
_ACTIVATIONS = {0: None, 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

# Builtin options tables: (union type in BuiltinOptions, fields as (name, vtable slot, struct format, default)).
_POOL_FIELDS = (("padding", 0, "<b", 0), ("stride_w", 1, "<i", 0), ("stride_h", 2, "<i", 0),
                ("filter_w", 3, "<i", 0), ("filter_h", 4, "<i", 0), ("activation", 5, "<b", 0))
_OPTIONS: dict[str, tuple[int, tuple[tuple[str, int, str, int], ...]]] = {
    "CONV_2D": (1, (("padding", 0, "<b", 0), ("stride_w", 1, "<i", 0), ("stride_h", 2, "<i", 0),
                    ("activation", 3, "<b", 0), ("dilation_w", 4, "<i", 1), ("dilation_h", 5, "<i", 1))),
    "DEPTHWISE_CONV_2D": (2, (("padding", 0, "<b", 0), ("stride_w", 1, "<i", 0), ("stride_h", 2, "<i", 0),
                              ("depth_multiplier", 3, "<i", 0), ("activation", 4, "<b", 0),
                              ("dilation_w", 5, "<i", 1), ("dilation_h", 6, "<i", 1))),
    "AVERAGE_POOL_2D": (5, _POOL_FIELDS),
    "MAX_POOL_2D": (5, _POOL_FIELDS),
    "ADD": (11, (("activation", 0, "<b", 0),)),
    "RESHAPE": (17, ()),  # new_shape is a vector, read separately
    "MUL": (21, (("activation", 0, "<b", 0),)),
    "PAD": (22, ()),
}


# ----------------------------------------------------------------------------------------------------------
# The typed description.


@dataclass(frozen=True)
class Quantization:
    """Affine quantisation of a tensor: ``real = (q - zero_point) * scale``, per ``axis`` when several scales."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int


@dataclass(frozen=True)
class TensorDesc:
    """One tensor of the main subgraph; ``buffer`` 0 (TFLite's empty sentinel) means no constant data."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    quantization: Quantization | None


@dataclass(frozen=True)
class OperatorDesc:
    """One operator: its name (``CUSTOM:<code>`` for custom ops), tensor indices (-1: optional input left out)
    and decoded builtin options (padding/activation as names)."""

    index: int
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Mapping[str, Any]


@dataclass(frozen=True)
class TFLiteModel:
    """The main subgraph of a ``.tflite`` file, as read by :func:`read_tflite`."""

    path: Path
    version: int
    description: str
    tensors: tuple[TensorDesc, ...]
    buffers: tuple[bytes, ...]
    operators: tuple[OperatorDesc, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    n_subgraphs: int = 1

    def error(self, message: str) -> ModelError:
        return ModelError(f"{self.path}: {message}")

    def tensor(self, index: int) -> TensorDesc:
        if not 0 <= index < len(self.tensors):
            raise self.error(f"tensor index {index} out of range ({len(self.tensors)} tensors)")
        return self.tensors[index]

    def array(self, index: int) -> np.ndarray | None:
        """The constant data of tensor ``index`` in its stored type and shape (a copy), or None for activations."""
        t = self.tensor(index)
        data = self.buffers[t.buffer]
        if not data:
            return None
        if t.dtype not in _NUMPY_TYPES:
            raise self.error(f"tensor {t.name!r} has unsupported constant type {t.dtype}")
        dtype = np.dtype(_NUMPY_TYPES[t.dtype]).newbyteorder("<")
        expected = math.prod(t.shape) * dtype.itemsize
        if len(data) != expected:
            raise self.error(f"tensor {t.name!r} shape {list(t.shape)} {t.dtype} needs {expected} bytes, its buffer "
                             f"has {len(data)}")
        return np.frombuffer(data, dtype).reshape(t.shape).astype(dtype.newbyteorder("="))

    def dequantized(self, index: int) -> np.ndarray | None:
        """The constant of tensor ``index`` as float32: float16 widened, int8/uint8/int16/int32 dequantised with
        its (per-axis) scales and zero points; None for activations."""
        t = self.tensor(index)
        a = self.array(index)
        if a is None or t.dtype in ("float32", "float16", "float64"):
            return None if a is None else a.astype(np.float32)
        q = t.quantization
        if t.dtype not in ("int8", "uint8", "int16", "int32") or q is None:
            raise self.error(f"tensor {t.name!r} ({t.dtype}) has no quantisation to dequantise with")
        scale, zero = np.asarray(q.scale, np.float64), np.asarray(q.zero_point or (0,), np.float64)
        if scale.size > 1:  # per-axis: broadcast along the quantised dimension
            if not 0 <= q.axis < a.ndim or a.shape[q.axis] != scale.size:
                raise self.error(f"tensor {t.name!r}: {scale.size} scales do not match axis {q.axis} of "
                                 f"shape {list(t.shape)}")
            bshape = [1] * a.ndim
            bshape[q.axis] = scale.size
            scale = scale.reshape(bshape)
            zero = zero.reshape(bshape) if zero.size > 1 else zero
        return ((a.astype(np.float64) - zero) * scale).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# FlatBuffer reading.


class _Reader:
    """Little-endian reads from the file's bytes; any read outside them is a ModelError naming the file."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path

    def error(self, message: str) -> ModelError:
        return ModelError(f"{self.path}: corrupt or truncated TFLite file ({message})")

    def read(self, fmt: str, at: int) -> Any:
        if at < 0 or at + struct.calcsize(fmt) > len(self.data):
            raise self.error(f"read of {fmt!r} at offset {at} outside the {len(self.data)}-byte file")
        return struct.unpack_from(fmt, self.data, at)[0]

    def table(self, at: int) -> _Table:
        vtable = at - self.read("<i", at)
        size = self.read("<H", vtable)
        if size < 4 or size % 2:
            raise self.error(f"bad vtable size {size} at offset {vtable}")
        self.read(f"<{size}s", vtable)  # the whole vtable must lie inside the file
        return _Table(self, at, vtable, size)


@dataclass(frozen=True)
class _Table:
    """A FlatBuffer table; fields are addressed by their vtable slot (declaration order in schema.fbs, a union
    taking two slots: its type, then its value)."""

    r: _Reader
    pos: int
    vtable: int
    vtable_size: int

    def _field(self, slot: int) -> int:
        entry = 4 + 2 * slot
        if entry + 2 > self.vtable_size:
            return 0
        offset = self.r.read("<H", self.vtable + entry)
        return self.pos + offset if offset else 0

    def scalar(self, slot: int, fmt: str, default: float = 0) -> Any:
        at = self._field(slot)
        return self.r.read(fmt, at) if at else default

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return self.r.table(at + self.r.read("<I", at)) if at else None

    def _vector(self, slot: int, item_size: int) -> tuple[int, int]:
        at = self._field(slot)
        if not at:
            return 0, 0
        start = at + self.r.read("<I", at)
        count = self.r.read("<I", start)
        if start + 4 + count * item_size > len(self.r.data):
            raise self.r.error(f"vector of {count} items at offset {start} runs past the end of the file")
        return start + 4, count

    def scalars(self, slot: int, fmt: str) -> tuple:
        start, count = self._vector(slot, struct.calcsize("<" + fmt))
        return struct.unpack_from(f"<{count}{fmt}", self.r.data, start) if count else ()

    def bytes(self, slot: int) -> bytes:
        start, count = self._vector(slot, 1)
        return bytes(self.r.data[start:start + count])

    def string(self, slot: int) -> str:
        return self.bytes(slot).decode("utf-8", errors="replace")

    def tables(self, slot: int) -> list[_Table]:
        start, count = self._vector(slot, 4)
        return [self.r.table(start + 4 * i + self.r.read("<I", start + 4 * i)) for i in range(count)]


def read_tflite(path: str | Path) -> TFLiteModel:
    """Read a ``.tflite`` file's main subgraph: tensors, constant buffers and operators with decoded options.

    Raises :class:`ModelError` naming the path for a missing or unreadable file, a file that is not a TFLite
    FlatBuffer, or offsets, indices and sizes that do not fit the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read TFLite model {path}: {exc.strerror or exc}") from exc
    # TFLite files carry the FlatBuffer file identifier "TFL3" right after the root offset.
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path} is not a TFLite model (no 'TFL3' FlatBuffer identifier)")
    r = _Reader(data, path)
    root = r.table(r.read("<I", 0))
    version = root.scalar(0, "<I")
    if version != 3:
        raise ModelError(f"{path}: TFLite schema version {version}, expected 3")
    opcodes = [_opcode_name(t) for t in root.tables(1)]
    subgraphs = root.tables(2)
    if not subgraphs:
        raise ModelError(f"{path}: the model has no subgraph")
    buffers = tuple(_buffer_bytes(r, t) for t in root.tables(4))
    main = subgraphs[0]  # other subgraphs are only reached through control-flow ops, which are not supported
    tensors = tuple(_tensor(i, t) for i, t in enumerate(main.tables(0)))
    for t in tensors:
        if t.buffer >= len(buffers):
            raise ModelError(f"{path}: tensor {t.name!r} refers to buffer {t.buffer} of {len(buffers)}")

    def indices(values: Sequence[int], what: str) -> tuple[int, ...]:
        bad = [i for i in values if not -1 <= i < len(tensors)]
        if bad:
            raise ModelError(f"{path}: {what} refers to tensor {bad[0]} of {len(tensors)}")
        return tuple(values)

    operators = []
    for i, t in enumerate(main.tables(3)):
        code = t.scalar(0, "<I")
        if code >= len(opcodes):
            raise ModelError(f"{path}: operator {i} uses opcode {code} of {len(opcodes)}")
        op = opcodes[code]
        operators.append(OperatorDesc(i, op, indices(t.scalars(1, "i"), f"operator {i} ({op})"),
                                      indices(t.scalars(2, "i"), f"operator {i} ({op})"),
                                      _options(r, op, i, t)))
    return TFLiteModel(path, version, root.string(3), tensors, buffers, tuple(operators),
                       indices(main.scalars(1, "i"), "the graph's inputs"),
                       indices(main.scalars(2, "i"), "the graph's outputs"), len(subgraphs))


def _opcode_name(t: _Table) -> str:
    # Builtin codes above 127 live in `builtin_code`; older files only fill the int8 `deprecated_builtin_code`.
    code = max(t.scalar(0, "<b"), t.scalar(3, "<i"))
    if code == 32:
        return f"CUSTOM:{t.string(1)}"
    return BUILTIN_OPS.get(code, f"BUILTIN_{code}")


def _buffer_bytes(r: _Reader, t: _Table) -> bytes:
    data = t.bytes(0)
    offset, size = t.scalar(1, "<Q"), t.scalar(2, "<Q")
    if offset > 1:  # models over 2 GB keep buffers after the FlatBuffer, addressed by file offset
        if offset + size > len(r.data):
            raise r.error(f"buffer at offset {offset} of {size} bytes runs past the end of the file")
        data = bytes(r.data[offset:offset + size])
    return data


def _tensor(index: int, t: _Table) -> TensorDesc:
    code = t.scalar(1, "<b")
    q = t.table(4)
    quant = None
    if q is not None and (scale := q.scalars(2, "f")):
        quant = Quantization(tuple(scale), tuple(q.scalars(3, "q")), q.scalar(6, "<i"))
    return TensorDesc(index, t.string(3), tuple(t.scalars(0, "i")), TENSOR_TYPES.get(code, f"type{code}"),
                      t.scalar(2, "<I"), quant)


def _options(r: _Reader, op: str, index: int, t: _Table) -> dict[str, Any]:
    if op not in _OPTIONS:
        return {}
    union_type, fields = _OPTIONS[op]
    found = t.scalar(3, "<B")
    table = t.table(4)
    if table is not None and found != union_type:
        raise r.error(f"operator {index} ({op}) carries options of type {found}, expected {union_type}")
    options: dict[str, Any] = {}
    for name, slot, fmt, default in fields:
        options[name] = table.scalar(slot, fmt, default) if table is not None else default
    if "padding" in options:
        options["padding"] = _PADDINGS.get(options["padding"], f"padding{options['padding']}")
    if "activation" in options:
        options["activation"] = _ACTIVATIONS.get(options["activation"], f"activation{options['activation']}")
    if op == "RESHAPE" and table is not None:
        options["new_shape"] = tuple(table.scalars(0, "i"))
    return options


# ----------------------------------------------------------------------------------------------------------
# One module per operator. Rank-4 activations are NCHW; other ranks keep TFLite's layout.


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation == "RELU":
        return F.relu(x)
    if activation == "RELU6":
        return torch.clamp(x, 0.0, 6.0)
    if activation == "RELU_N1_TO_1":
        return torch.clamp(x, -1.0, 1.0)
    if activation == "LOGISTIC":
        return torch.sigmoid(x)
    return torch.tanh(x)  # "TANH"; anything else is refused when the graph is built


def _pad_symmetric(pads: tuple[int, int, int, int]) -> bool:
    top, bottom, left, right = pads
    return top == bottom and left == right


class _Conv(nn.Module):
    """CONV_2D / DEPTHWISE_CONV_2D with TFLite's (possibly asymmetric) SAME padding and fused activation."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: tuple[int, int], dilation: tuple[int, int],
                 pads: tuple[int, int, int, int], groups: int, activation: str | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight)))
        self.bias = nn.Parameter(torch.from_numpy(np.ascontiguousarray(bias)))
        self.stride, self.dilation, self.groups, self.activation = stride, dilation, groups, activation
        # Symmetric padding goes to the conv itself; TFLite's SAME puts the odd pixel after, which needs F.pad.
        top, bottom, left, right = pads
        self.padding = (top, left) if _pad_symmetric(pads) else (0, 0)
        self.pad = None if _pad_symmetric(pads) else (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return _activate(y, self.activation)


class _MaxPool(nn.Module):
    """MAX_POOL_2D; SAME padding never wins the max (padded with -inf)."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int],
                 activation: str | None) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        top, bottom, left, right = pads
        inline = _pad_symmetric(pads) and 2 * top <= kernel[0] and 2 * left <= kernel[1]  # torch's own limit
        self.padding = (top, left) if inline else (0, 0)
        self.pad = None if inline else (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad, value=float("-inf"))
        return _activate(F.max_pool2d(x, self.kernel, self.stride, self.padding), self.activation)


class _PReLU(nn.Module):
    """PRELU: ``x if x >= 0 else alpha * x``; per-channel alphas use torch's PReLU, others broadcast."""

    def __init__(self, alpha: torch.Tensor) -> None:
        super().__init__()
        # F.prelu's weight runs along dim 1, the channel dim of NCHW activations only.
        self.per_channel = alpha.ndim == 4 and alpha.numel() == alpha.shape[1]
        self.alpha = nn.Parameter(alpha.reshape(-1) if self.per_channel else alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return F.prelu(x, self.alpha)
        return torch.where(x >= 0, x, x * self.alpha)


class _Binary(nn.Module):
    """ADD / MUL of two activations, or of an activation and a constant (kept as a buffer), with activation."""

    def __init__(self, op: str, constant: torch.Tensor | None, constant_first: bool, activation: str | None) -> None:
        super().__init__()
        self.op, self.constant_first, self.activation = op, constant_first, activation
        self.register_buffer("constant", constant)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if self.constant is not None:
            a, b = (self.constant, a) if self.constant_first else (a, self.constant)
        y = a + b if self.op == "ADD" else a * b
        return _activate(y, self.activation)


class _Pad(nn.Module):
    """PAD with zeros; ``pad`` is already in F.pad's order for the torch layout."""

    def __init__(self, pad: tuple[int, ...]) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class _Reshape(nn.Module):
    """RESHAPE in TFLite's (NHWC) element order; the batch dimension follows the input."""

    def __init__(self, tail: tuple[int, ...], in_rank: int, out_rank: int) -> None:
        super().__init__()
        self.tail, self.in_rank, self.out_rank = tail, in_rank, out_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_rank == 4:
            x = x.permute(0, 2, 3, 1)
        y = x.reshape((x.shape[0],) + self.tail)
        return y.permute(0, 3, 1, 2) if self.out_rank == 4 else y


class _Activation(nn.Module):
    """RELU, RELU6, RELU_N1_TO_1, LOGISTIC, TANH."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(x, self.kind)


# ----------------------------------------------------------------------------------------------------------
# Building the op list.


@dataclass(frozen=True)
class Layer:
    """One computing operator of the graph (constant DEQUANTIZEs are folded away): ``index`` counts these,
    ``op_index`` is the operator's place in the file; ``name`` and ``shape`` are its output tensor's, the shape
    in the torch layout (NCHW for rank 4, batch 1 as stored)."""

    index: int
    op_index: int
    op: str
    name: str
    inputs: tuple[int, ...]
    output: int
    shape: tuple[int, ...]


def _torch_shape(shape: Sequence[int]) -> tuple[int, ...]:
    s = tuple(shape)
    return (s[0], s[3], s[1], s[2]) if len(s) == 4 else s


def _to_torch_layout(a: np.ndarray, rank: int) -> torch.Tensor:
    """A constant that broadcasts against a rank-``rank`` NHWC activation, made to broadcast against its torch
    layout (rank 4: left-padded to 4 dims, then NHWC -> NCHW)."""
    if rank == 4 and a.ndim > 0:
        a = a.reshape((1,) * (4 - a.ndim) + a.shape).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))


def _same_or_valid(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(pad before, pad after, output size) of one spatial dimension under TFLite's padding rules."""
    extent = (kernel - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + extent - size, 0)
        return total // 2, total - total // 2, out  # the odd pixel goes after, as in TensorFlow
    return 0, 0, (size - extent) // stride + 1


class _Builder:
    """Turns a :class:`TFLiteModel`'s operators into modules, checking every shape against the file."""

    def __init__(self, model: TFLiteModel) -> None:
        self.model = model
        self.constants: dict[int, np.ndarray] = {}  # float32, from DEQUANTIZE ops folded at load
        self.available: set[int] = set()
        self.modules: list[nn.Module] = []
        self.layers: list[Layer] = []

    def fail(self, op: OperatorDesc, message: str) -> ModelError:
        out = self.model.tensors[op.outputs[0]].name if op.outputs else "?"
        return self.model.error(f"operator {op.index} {op.op} (output {out!r}): {message}")

    def shape(self, index: int) -> tuple[int, ...]:
        return self.model.tensor(index).shape

    def constant(self, op: OperatorDesc, index: int, what: str) -> np.ndarray:
        if index in self.constants:
            return self.constants[index]
        t = self.model.tensor(index)
        if t.dtype not in ("float32", "float16"):
            # int8 weights read directly by a float op are TFLite's dynamic-range ("hybrid") kernels, whose
            # on-the-fly activation quantisation this module would not reproduce.
            raise self.fail(op, f"{what} {t.name!r} is {t.dtype} without a DEQUANTIZE (hybrid kernels "
                                f"are not supported)")
        a = self.model.dequantized(index)
        if a is None:
            raise self.fail(op, f"{what} {t.name!r} must be a constant")
        return a

    def activation(self, op: OperatorDesc, index: int) -> tuple[int, ...]:
        t = self.model.tensor(index)
        if index not in self.available:
            raise self.fail(op, f"input {t.name!r} is neither the graph input nor an earlier output")
        if t.dtype != "float32":
            raise self.fail(op, f"input {t.name!r} is {t.dtype}; only float32 activations are supported")
        return t.shape

    def nhwc_activation(self, op: OperatorDesc, index: int) -> tuple[int, int, int, int]:
        """:meth:`activation`, which must be a 4-D NHWC image (the input of a convolution or a pool)."""
        shape = self.activation(op, index)
        if len(shape) != 4:
            raise self.fail(op, f"input shape {list(shape)} is not NHWC")
        return shape  # type: ignore[return-value]

    def build(self) -> tuple[list[nn.Module], list[Layer]]:
        m = self.model
        if len(m.inputs) != 1:
            raise m.error(f"{len(m.inputs)} graph inputs; one is supported")
        self.available.add(m.inputs[0])
        for op in m.operators:
            if len(op.outputs) != 1:
                raise self.fail(op, f"{len(op.outputs)} outputs; one is supported")
            if op.op == "DEQUANTIZE":
                self._dequantize(op)
                continue
            handler = _HANDLERS.get(op.op)
            if handler is None:
                raise self.fail(op, f"unsupported operator (supported: {', '.join(SUPPORTED_OPS)})")
            activation = op.options.get("activation")
            if activation is not None and activation not in ("RELU", "RELU6", "RELU_N1_TO_1", "TANH"):
                raise self.fail(op, f"unsupported fused activation {activation}")
            module, inputs = handler(self, op)
            out = op.outputs[0]
            if m.tensors[out].dtype != "float32":
                raise self.fail(op, f"output is {m.tensors[out].dtype}; only float32 is supported")
            self.modules.append(module)
            self.layers.append(Layer(len(self.layers), op.index, op.op, m.tensors[out].name, tuple(inputs), out,
                                     _torch_shape(m.tensors[out].shape)))
            self.available.add(out)
        missing = [m.tensors[i].name for i in m.outputs if i not in self.available]
        if missing:
            raise m.error(f"graph outputs {missing} are not computed by any supported operator")
        return self.modules, self.layers

    def _dequantize(self, op: OperatorDesc) -> None:
        src = op.inputs[0]
        value = self.model.dequantized(src)
        if value is None:
            raise self.fail(op, "dequantising an activation is not supported (only constant weights)")
        if value.shape != self.shape(op.outputs[0]):
            raise self.fail(op, f"shape {list(value.shape)} vs {list(self.shape(op.outputs[0]))} declared")
        self.constants[op.outputs[0]] = value

    def check_output(self, op: OperatorDesc, computed: Sequence[int]) -> None:
        declared = self.shape(op.outputs[0])
        if tuple(computed) != tuple(declared):
            raise self.fail(op, f"computed output shape {list(computed)} but the file declares {list(declared)}")


def _conv(b: _Builder, op: OperatorDesc) -> tuple[nn.Module, list[int]]:
    x = op.inputs[0]
    n, h, w, c = b.nhwc_activation(op, x)
    weight = b.constant(op, op.inputs[1], "weight")
    depthwise = op.op == "DEPTHWISE_CONV_2D"
    if weight.ndim != 4:
        raise b.fail(op, f"weight shape {list(weight.shape)} is not 4-D")
    if depthwise:  # weight 1 x KH x KW x (C*M) -> (C*M) x 1 x KH x KW with groups C
        multiplier = op.options["depth_multiplier"] or weight.shape[3] // max(c, 1)
        if weight.shape[0] != 1 or weight.shape[3] != c * multiplier:
            raise b.fail(op, f"depthwise weight {list(weight.shape)} does not fit {c} channels x {multiplier}")
        torch_weight, groups, out_c = weight.transpose(3, 0, 1, 2), c, c * multiplier
    else:  # OHWI -> OIHW
        if weight.shape[3] != c:
            raise b.fail(op, f"weight {list(weight.shape)} expects {weight.shape[3]} input channels, input has {c}")
        torch_weight, groups, out_c = weight.transpose(0, 3, 1, 2), 1, weight.shape[0]
    kh, kw = torch_weight.shape[2:]
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    bias = b.constant(op, op.inputs[2], "bias") if has_bias else np.zeros(out_c, np.float32)
    if bias.shape != (out_c,):
        raise b.fail(op, f"bias shape {list(bias.shape)} for {out_c} output channels")
    o = op.options
    if min(o["stride_h"], o["stride_w"], o["dilation_h"], o["dilation_w"]) < 1:
        raise b.fail(op, f"bad strides/dilations {o}")
    if o["padding"] not in ("SAME", "VALID"):
        raise b.fail(op, f"unknown padding {o['padding']}")
    top, bottom, oh = _same_or_valid(h, kh, o["stride_h"], o["dilation_h"], o["padding"])
    left, right, ow = _same_or_valid(w, kw, o["stride_w"], o["dilation_w"], o["padding"])
    b.check_output(op, (n, oh, ow, out_c))
    module = _Conv(torch_weight, bias, (o["stride_h"], o["stride_w"]), (o["dilation_h"], o["dilation_w"]),
                   (top, bottom, left, right), groups, o["activation"])
    return module, [x]


def _max_pool(b: _Builder, op: OperatorDesc) -> tuple[nn.Module, list[int]]:
    x = op.inputs[0]
    n, h, w, c = b.nhwc_activation(op, x)
    o = op.options
    if min(o["stride_h"], o["stride_w"], o["filter_h"], o["filter_w"]) < 1 or o["padding"] not in ("SAME", "VALID"):
        raise b.fail(op, f"bad pooling options {o}")
    top, bottom, oh = _same_or_valid(h, o["filter_h"], o["stride_h"], 1, o["padding"])
    left, right, ow = _same_or_valid(w, o["filter_w"], o["stride_w"], 1, o["padding"])
    b.check_output(op, (n, oh, ow, c))
    module = _MaxPool((o["filter_h"], o["filter_w"]), (o["stride_h"], o["stride_w"]), (top, bottom, left, right),
                      o["activation"])
    return module, [x]


def _prelu(b: _Builder, op: OperatorDesc) -> tuple[nn.Module, list[int]]:
    x = op.inputs[0]
    shape = b.activation(op, x)
    alpha = b.constant(op, op.inputs[1], "alpha")
    try:
        out = np.broadcast_shapes(shape, alpha.shape)
    except ValueError:
        raise b.fail(op, f"alpha {list(alpha.shape)} does not broadcast to {list(shape)}") from None
    b.check_output(op, out)
    return _PReLU(_to_torch_layout(alpha, len(shape))), [x]


def _binary(b: _Builder, op: OperatorDesc) -> tuple[nn.Module, list[int]]:
    if len(op.inputs) != 2:
        raise b.fail(op, f"{len(op.inputs)} inputs, expected 2")
    is_const = [i in b.constants or bool(b.model.buffers[b.model.tensor(i).buffer]) for i in op.inputs]
    if all(is_const):
        raise b.fail(op, "both inputs are constants")
    shapes = [b.shape(i) if c else b.activation(op, i) for i, c in zip(op.inputs, is_const)]
    try:
        out = np.broadcast_shapes(*shapes)
    except ValueError:
        raise b.fail(op, f"input shapes {[list(s) for s in shapes]} do not broadcast") from None
    b.check_output(op, out)
    rank = len(out)
    if any(is_const):
        k = is_const.index(True)
        constant = _to_torch_layout(b.constant(op, op.inputs[k], "operand"), rank)
        return _Binary(op.op, constant, k == 0, op.options["activation"]), [op.inputs[1 - k]]
    if any(len(s) != rank for s in shapes) and rank == 4:
        # NHWC broadcasting of a lower-rank activation against a rank-4 one has no direct NCHW equivalent.
        raise b.fail(op, f"mixed-rank activations {[list(s) for s in shapes]}")
    return _Binary(op.op, None, False, op.options["activation"]), list(op.inputs)


def _pad(b: _Builder, op: OperatorDesc) -> tuple[nn.Module, list[int]]:
    x = op.inputs[0]
    shape = b.activation(op, x)
    raw = b.model.array(op.inputs[1]) if len(op.inputs) > 1 else None
    if raw is None or raw.shape != (len(shape), 2) or raw.dtype.kind != "i":
        raise b.fail(op, "paddings must be a constant integer [rank, 2] tensor")
    pads = raw.astype(np.int64)
    if (pads < 0).any():
        raise b.fail(op, f"negative paddings {pads.tolist()}")
    b.check_output(op, [int(s + p0 + p1) for s, (p0, p1) in zip(shape, pads)])
    # Torch layout: rank 4 is N,C,H,W = NHWC dims 0,3,1,2. F.pad lists the last dimension first.
    order = (0, 3, 1, 2) if len(shape) == 4 else tuple(range(len(shape)))
    if pads[0].any():
        raise b.fail(op, "padding the batch dimension is not supported")
    flat = tuple(int(v) for d in reversed(order[1:]) for v in pads[d])
    return _Pad(flat), [x]


def _reshape(b: _Builder, op: OperatorDesc) -> tuple[nn.Module, list[int]]:
    x = op.inputs[0]
    shape = b.activation(op, x)
    declared = b.shape(op.outputs[0])
    if len(op.inputs) > 1 and op.inputs[1] >= 0:
        target = b.model.array(op.inputs[1])
        if target is None:
            raise b.fail(op, "a computed target shape is not supported (only a constant one)")
        target = tuple(int(v) for v in target.reshape(-1))
    else:
        target = tuple(op.options.get("new_shape", declared))
    if target.count(-1) > 1 or len(target) != len(declared) or any(
            t not in (-1, d) for t, d in zip(target, declared)):
        raise b.fail(op, f"target shape {list(target)} disagrees with the declared output {list(declared)}")
    if math.prod(declared) != math.prod(shape) or not declared or declared[0] != shape[0]:
        raise b.fail(op, f"cannot reshape {list(shape)} to {list(declared)} keeping the batch dimension")
    return _Reshape(tuple(declared[1:]), len(shape), len(declared)), [x]


def _elementwise(b: _Builder, op: OperatorDesc) -> tuple[nn.Module, list[int]]:
    x = op.inputs[0]
    b.check_output(op, b.activation(op, x))
    return _Activation(op.op), [x]


_HANDLERS: dict[str, Callable[[_Builder, OperatorDesc], tuple[nn.Module, list[int]]]] = {
    "ADD": _binary, "MUL": _binary, "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv, "MAX_POOL_2D": _max_pool,
    "PAD": _pad, "PRELU": _prelu, "RESHAPE": _reshape, "RELU": _elementwise, "RELU6": _elementwise,
    "RELU_N1_TO_1": _elementwise, "LOGISTIC": _elementwise, "TANH": _elementwise,
}
SUPPORTED_OPS = tuple(sorted({*_HANDLERS, "DEQUANTIZE"}))


# ----------------------------------------------------------------------------------------------------------
# Running the op list.


class _Program(nn.Module):
    """A straight-line program over tensor ids: each op reads some ids and writes one; ids are freed after
    their last read so that deep graphs at large batches keep only live activations."""

    def __init__(self, ops: Sequence[nn.Module], layers: Sequence[Layer], input_index: int, scale: float,
                 targets: Sequence[int]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.reads = [layer.inputs for layer in layers]
        self.writes = [layer.output for layer in layers]
        self.input_index, self.scale, self.targets = input_index, scale, tuple(targets)
        last: dict[int, int] = {}
        for step, reads in enumerate(self.reads):
            for i in reads:
                last[i] = step
        self.frees = [tuple(i for i in set(reads) if last[i] == step and i not in self.targets)
                      for step, reads in enumerate(self.reads)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim == 4:  # NHWC in memory, like TFLite: oneDNN's convs skip reorders (2.3x faster on one thread)
            x = x.contiguous(memory_format=torch.channels_last)
        env = {self.input_index: x * self.scale if self.scale != 1.0 else x}
        for op, reads, write, frees in zip(self.ops, self.reads, self.writes, self.frees):
            env[write] = op(*(env[i] for i in reads))
            for i in frees:
                del env[i]
        return [env[t] for t in self.targets]


class _Prefix(nn.Module):
    """The ops needed for one layer's activation (see :meth:`TFLiteNet.truncated`); returns that tensor."""

    def __init__(self, program: _Program) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)[0]


class TFLiteNet(nn.Module):
    """A single-input float TFLite graph as a torch module (ops in :data:`SUPPORTED_OPS`).

    Input: the model's input in NCHW (float32), multiplied by ``input_scale`` first. Returns the graph's outputs
    in file order, rank-4 ones NCHW. Every shape the file declares is checked when the module is built.
    """

    def __init__(self, model: TFLiteModel, *, input_scale: float = 1.0) -> None:
        super().__init__()
        ops, layers = _Builder(model).build()
        self.source = str(model.path)
        self.input_name = model.tensors[model.inputs[0]].name
        self.input_shape = _torch_shape(model.tensors[model.inputs[0]].shape)
        self.layers: tuple[Layer, ...] = tuple(layers)
        self.output_indices = tuple(model.outputs)
        self.body = _Program(ops, layers, model.inputs[0], input_scale, model.outputs)
        self.to(memory_format=torch.channels_last)  # 4-D weights, to match the channels-last activations
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> TFLiteNet:
        return cls(read_tflite(path), **kwargs)

    def check_input(self, x: torch.Tensor) -> None:
        """A ModelError naming the file and input tensor when ``x`` is not (N, *input_shape[1:])."""
        if x.ndim != len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape[1:]:
            raise ModelError(f"{self.source}: input {self.input_name!r} expects (N, "
                             f"{', '.join(map(str, self.input_shape[1:]))}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_input(x)
        return tuple(self.body(x))

    def layer(self, key: int | str) -> Layer:
        """A layer by index (negative counts from the end) or by its output tensor's name."""
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise ModelError(f"{self.source}: no layer outputs a tensor named {key!r}")
        if not -len(self.layers) <= key < len(self.layers):
            raise ModelError(f"{self.source}: layer {key} out of range ({len(self.layers)} layers)")
        return self.layers[key]

    def _program(self, targets: Sequence[Layer]) -> _Program:
        """The layers ``targets`` depend on, in order, sharing this module's op modules."""
        needed = {t.output for t in targets}
        keep: list[int] = []
        for layer in reversed(self.layers[:max(t.index for t in targets) + 1]):
            if layer.output in needed:
                keep.append(layer.index)
                needed.update(layer.inputs)
        keep.reverse()
        return _Program([self.body.ops[i] for i in keep], [self.layers[i] for i in keep], self.body.input_index,
                        self.body.scale, [t.output for t in targets])

    def features(self, x: torch.Tensor, layer: int | str | Sequence[int | str]) -> torch.Tensor | list[torch.Tensor]:
        """The activation of one layer (index or output tensor name, e.g. ``'p_re_lu_15'``), or a list of them for
        a sequence of layers (one pass); NCHW for rank 4. Only the ops they depend on run."""
        self.check_input(x)
        if isinstance(layer, (int, str)):
            return self._program([self.layer(layer)])(x)[0]
        return self._program([self.layer(k) for k in layer])(x)

    def truncated(self, k: int) -> nn.Module:
        """A standalone module (its own copy of the weights) of the first ``k`` layers, returning layer
        ``k - 1``'s activation; layers among the first k that it does not depend on (another branch) are left
        out. Same input contract as this module."""
        if not 1 <= k <= len(self.layers):
            raise ValueError(f"k must lie in 1..{len(self.layers)}, got {k}")
        with torch.inference_mode(False):  # a copy made under inference_mode would hold read-only tensors
            return _Prefix(copy.deepcopy(self._program([self.layers[k - 1]]))).eval()


class FaceMeshNet(TFLiteNet):
    """MediaPipe's 468-point FaceMesh model.

    Input (N,3,192,192) float32 RGB 0..255 (scaled to [0,1] inside, as MediaPipe feeds it). Returns
    ``(landmarks (N,468,3), face_logit (N,1))``: x, y in pixels of the 192x192 input, z on the same scale;
    ``torch.sigmoid(face_logit)`` is MediaPipe's face-presence score (it keeps a face above 0.5).
    """

    def __init__(self, model: TFLiteModel) -> None:
        super().__init__(model, input_scale=1.0 / 255.0)
        if self.input_shape != (1, 3, FACEMESH_SIZE, FACEMESH_SIZE):
            raise model.error(f"input {self.input_name!r} has shape {list(self.input_shape)}, FaceMesh takes "
                              f"[1, 3, {FACEMESH_SIZE}, {FACEMESH_SIZE}] (NCHW)")
        sizes = [math.prod(model.tensors[i].shape) for i in model.outputs]
        if sizes != [FACEMESH_LANDMARKS * 3, 1]:
            names = [model.tensors[i].name for i in model.outputs]
            raise model.error(f"outputs {names} have {sizes} values, FaceMesh has {FACEMESH_LANDMARKS * 3} and 1")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        landmarks, flag = super().forward(x)
        return landmarks.reshape(-1, FACEMESH_LANDMARKS, 3), flag.reshape(-1, 1)


def load_facemesh(path: str | Path) -> FaceMeshNet:
    """:class:`FaceMeshNet` from a ``face_landmark.tflite`` file (e.g. the ``mediapipe-facemesh`` registry
    entry), in eval mode."""
    return FaceMeshNet(read_tflite(path))
