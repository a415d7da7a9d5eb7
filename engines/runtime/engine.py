"""One interface for running a model, whatever runtime executes it.

An :class:`Engine` is loaded once and then called with a mapping of named input arrays. Inputs may be
NumPy arrays (host) or torch tensors (host or device); outputs come back in the same kind as the inputs,
so a caller that keeps frames on the GPU gets GPU tensors back.
"""

from __future__ import annotations

import abc
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from swapwatch.errors import BackendUnavailable, ModelError

Array = Any  # np.ndarray or torch.Tensor; kept loose so torch stays an optional import here
Dim = Union[int, str, None]

# Order of preference for automatic backend choice (the design: TensorRT, ONNX Runtime, PyTorch).
BACKENDS = ("tensorrt", "onnxruntime", "torch")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (symbolic dims as strings or None) and NumPy dtype of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}]:{np.dtype(self.dtype).name}"


class Engine(abc.ABC):
    """A loaded model: input/output specs and a ``run`` on named tensors.

    Backends set ``_inputs`` and ``_outputs`` when they load the model.
    """

    backend: str = "?"
    _inputs: Sequence[TensorSpec]
    _outputs: Sequence[TensorSpec]

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return self._outputs

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model. ``feeds`` maps every input name to an array; returns every output by name."""

    @property
    def device(self) -> str:
        return "cpu"

    def _check_feeds(self, feeds: Mapping[str, Array]) -> None:
        expected = {spec.name for spec in self.inputs}
        missing = expected - set(feeds)
        extra = set(feeds) - expected
        if missing or extra:
            raise ValueError(
                f"{self.backend} engine expects inputs {sorted(expected)}, got {sorted(feeds)}"
                + (f" (missing {sorted(missing)})" if missing else "")
                + (f" (unexpected {sorted(extra)})" if extra else "")
            )

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"<{type(self).__name__} {self.backend}/{self.device} ({ins}) -> ({outs})>"


def fixed_batch(spec: TensorSpec) -> int | None:
    """The batch size a graph input is pinned to, or None when its batch dim is dynamic."""
    dim = spec.shape[0] if spec.shape else None
    return dim if isinstance(dim, int) and dim > 0 else None


def run_batched(engine: Engine, feeds: Mapping[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """``engine.run`` on NumPy feeds sharing a leading batch dim, in chunks of ``batch`` when the graph's batch
    is fixed (``None``: one call). A short last chunk is padded by repeating its last row, then trimmed."""
    n = len(next(iter(feeds.values())))
    if batch is None or batch == n:
        return {k: np.asarray(v) for k, v in engine.run(feeds).items()}
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        chunk = {k: v[start:start + batch] for k, v in feeds.items()}
        short = batch - len(next(iter(chunk.values())))
        if short:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in chunk.items()}
        for name, out in engine.run(chunk).items():
            parts.setdefault(name, []).append(np.asarray(out)[: batch - short])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def backend_available(name: str) -> bool:
    """Whether a backend's runtime can be imported here (and, for TensorRT, a CUDA device exists)."""
    if name == "onnxruntime":
        return importlib.util.find_spec("onnxruntime") is not None
    if name == "torch":
        return importlib.util.find_spec("torch") is not None
    if name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return False
        import torch

        return torch.cuda.is_available()
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def available_backends() -> list[str]:
    return [b for b in BACKENDS if backend_available(b)]


def choose_backend(requested: str = "auto", *, for_file: Path | None = None) -> str:
    """Resolve ``auto`` to the best backend present, or check that an explicit one is usable.

    ``SWAPWATCH_BACKEND`` overrides ``auto``. ``torch`` cannot run an ONNX file, so for an ``.onnx`` model
    ``auto`` picks among TensorRT and ONNX Runtime only.
    """
    if requested == "auto":
        requested = os.environ.get("SWAPWATCH_BACKEND", "auto")
    if requested != "auto":
        if requested not in BACKENDS:
            raise BackendUnavailable(f"unknown backend {requested!r}; choose from auto, {', '.join(BACKENDS)}")
        if not backend_available(requested):
            raise BackendUnavailable(f"backend {requested!r} is not available here (installed: "
                                     f"{', '.join(available_backends()) or 'none'})")
        return requested
    candidates = [b for b in BACKENDS if not (for_file is not None and b == "torch")]
    for name in candidates:
        if backend_available(name):
            return name
    raise BackendUnavailable("no inference backend is installed (install onnxruntime or torch)")


def load_onnx_engine(path: str | Path, backend: str = "auto", *, device: str = "auto",
                     precision: str = "fp32") -> Engine:
    """Load an ONNX model file with the chosen backend (TensorRT or ONNX Runtime)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    name = choose_backend(backend, for_file=path)
    if name == "tensorrt":
        from swapwatch.engines.runtime.trt_backend import TensorRTEngine

        return TensorRTEngine.from_onnx(path, precision=precision)
    if name == "onnxruntime":
        from swapwatch.engines.runtime.ort_backend import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, device=device)
    raise BackendUnavailable(f"backend {name!r} cannot run an ONNX file; use onnxruntime or tensorrt")
