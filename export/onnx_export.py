"""Export any ``nn.Module`` to ONNX (atomically) and check the graph against PyTorch with ONNX Runtime.

Exporter choice, measured with torch 2.13 on the MTCNN nets: both exporters produce correct graphs, but the
classic TorchScript exporter (``dynamo=False``) is the default here because

- it emits the requested opset directly; the dynamo exporter only has translations for opset >= 18 and
  reaches 17 through ONNX's version converter, which is not defined for every op (Pad, Reduce* and Resize
  changed signature at 18, and our generators use reflect padding and instance norm);
- it takes ``dynamic_axes`` with our own dimension names as they are, where the dynamo exporter wants
  ``dynamic_shapes`` and warns that converted ``dynamic_axes`` may fail with "Constraints violated";
- it is about 30x faster (0.15 s vs 4.4 s for PNet), which matters for tests and first-run exports.

The dynamo exporter stays one keyword away (``dynamo=True``) for models the TorchScript tracer cannot handle,
and for the day torch drops the classic exporter.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from swapwatch.errors import ModelError

if TYPE_CHECKING:  # numpy is imported where it is used, so that the CLI's parser reads the tolerances
    import numpy as np  # without importing it

DEFAULT_OPSET = 17
T = TypeVar("T")


def retry_spurious_ast_error(call: Callable[[], T], *, attempts: int = 3) -> T:
    """``call()``, run again when CPython 3.11's AST constructor raises its spurious "recursion depth
    mismatch" SystemError (python/cpython#106905), which the dynamo exporter can meet while onnxscript parses
    the sources of its op translations (seen about once in many test-suite runs). Exports are deterministic,
    so a second run is the same export; any other error is raised at once."""
    for attempt in range(attempts):
        try:
            return call()
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == attempts - 1:
                raise
    raise ValueError("attempts must be >= 1")


def export_onnx(module, example_inputs: tuple, path: str | Path, *, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
                opset: int = DEFAULT_OPSET, dynamo: bool = False) -> Path:
    """Export ``module`` (in eval mode) to ``path`` and return the path.

    The graph is written to a temporary file beside ``path`` and renamed over it only once the export and an
    ``onnx.checker`` pass succeeded, so a crash never leaves a truncated model where a loader would find it.
    """
    import onnx
    import torch

    path = Path(path)
    module = module.eval()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot write an ONNX file in {path.parent}: {exc.strerror or exc}") from exc
    # Same folder (so the rename is atomic), a name no concurrent exporter uses, and created by the exporter
    # itself so the file gets the usual umask permissions (mkstemp would make it owner-only).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    kwargs = dict(input_names=list(input_names), output_names=list(output_names),
                  dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()} or None,
                  opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs["external_data"] = False  # one self-contained file, so the rename below is atomic
    try:
        # The exporters print progress and deprecation notices; keep them out of the CLI's output.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            retry_spurious_ast_error(lambda: torch.onnx.export(module, tuple(example_inputs), str(tmp), **kwargs))
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export of {type(module).__name__} to {path} failed: {exc}") from exc
    return path


# -- parity: what to compare (check_parity, compare_outputs) apart from how close is close enough (Tolerance) --

# Defaults for fp32 graphs against PyTorch, measured on the test fixtures of every export (tests/test_parity.py
# checks both sides of the line on ArcFace and SimSwap). Correct graphs: relative error (max|got - ref| / max|ref|)
# 1e-7..1.1e-5 (EfficientNet-B4) and 1.7e-5 for a released 101-layer ArcFace, row cosine 1 - 1e-10 or closer.
# One BatchNorm's running statistics changed (variance x1.2 or mean + 0.1 sd) or one conv's weights x1.05:
# relative error 5.9e-3..6e-1 in at least one output, cosine 1 - 5e-5 (ArcFace) to 1 - 8e-2. Hence rtol 1e-3
# (60x over the worst correct figure, 6x under the mildest bug) and a cosine floor 1 - 1e-5 for embeddings and
# features.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-3
DEFAULT_MIN_COSINE = 0.99999


@dataclass(frozen=True)
class Tolerance:
    """How close a candidate's outputs must be to the reference's, for every output over all input sets.

    An output passes when its shape matches, all its values are finite, ``max|got - ref| <= atol + rtol *
    max|ref|`` (the error against the output's own scale: a correct graph passes whether its values are near 1
    or near 1e5, and zeros in the reference cannot blow the ratio up as an element-wise relative error does),
    and, where ``min_cosine`` is set, every row's (first axis) cosine similarity is at least ``min_cosine`` for
    the outputs ``cosine_outputs`` names (all when None): the test that suits embeddings and features, whose
    direction is what is used.
    """

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    min_cosine: float | None = None
    cosine_outputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not (self.atol >= 0.0 and self.rtol >= 0.0):  # written so that NaN is refused too
            raise ValueError(f"atol and rtol must be >= 0, got {self.atol} and {self.rtol}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must lie in [-1, 1], got {self.min_cosine}")

    def limit(self, scale: float) -> float:
        """Largest allowed absolute error for an output whose largest reference magnitude is ``scale``."""
        return self.atol + self.rtol * scale

    def wants_cosine(self, name: str) -> bool:
        # Names a graph lacks are ignored, so one tolerance serves a detector's scorer and head graphs.
        return self.min_cosine is not None and (self.cosine_outputs is None or name in self.cosine_outputs)

    def override(self, *, atol: float | None = None, rtol: float | None = None,
                 min_cosine: float | None = None) -> Tolerance:
        """This tolerance with the given (not None) fields replaced: command-line flags over a target's default."""
        changes = {k: v for k, v in (("atol", atol), ("rtol", rtol), ("min_cosine", min_cosine)) if v is not None}
        return replace(self, **changes)

    def describe(self) -> str:
        text = f"atol {self.atol:g} + rtol {self.rtol:g} x max|ref|"
        if self.min_cosine is not None:
            where = "" if self.cosine_outputs is None else f" ({', '.join(self.cosine_outputs)})"
            text += f", cosine >= {self.min_cosine:g}{where}"
        return text

    def to_json(self) -> dict[str, Any]:
        cosine = None if self.cosine_outputs is None else list(self.cosine_outputs)
        return {"atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine, "cosine_outputs": cosine}


# Outputs that are embeddings (SimSwap's ArcFace: all of them) or a detector's per-frame features (its scorer's
# ``features``; the logits and the head's graph get the relative test only).
EMBEDDING_TOLERANCE = Tolerance(min_cosine=DEFAULT_MIN_COSINE)
DETECTOR_TOLERANCE = Tolerance(min_cosine=DEFAULT_MIN_COSINE, cosine_outputs=("features",))


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (first axis, the rest flattened; one row for 0-d/1-d arrays), in float64.
    Two zero rows agree (1); a zero row against a non-zero one does not (0)."""
    import numpy as np

    def rows(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, np.float64).reshape(len(a) if np.ndim(a) > 1 else 1, -1)

    a, b = rows(reference), rows(candidate)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norms > 0, np.einsum("ij,ij->i", a, b) / norms, np.where(both_zero, 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)


@dataclass
class OutputParity:
    """One output's agreement with its reference, accumulated over input sets."""

    name: str
    max_abs_error: float = 0.0
    scale: float = 0.0  # max|ref|, the output's own scale
    cosine: float | None = None  # the lowest row cosine similarity, kept only where the tolerance asks for it
    finite: bool = True
    shape_error: str | None = None

    @property
    def rel_error(self) -> float:
        """``max_abs_error`` in units of the output's scale."""
        if self.scale > 0.0:
            return self.max_abs_error / self.scale
        return 0.0 if self.max_abs_error == 0.0 else math.inf

    def add(self, reference: np.ndarray, candidate: np.ndarray, *, cosine: bool) -> None:
        import numpy as np

        ref, got = np.asarray(reference, np.float32), np.asarray(candidate, np.float32)
        if ref.shape != got.shape:
            self.shape_error = self.shape_error or f"shape {got.shape} vs {ref.shape} in the reference"
            return
        if not ref.size:
            return
        # Checked explicitly: a NaN compares as "not above" any limit, and an inf reference would make the
        # limit itself infinite.
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            self.finite = False
            return
        self.max_abs_error = max(self.max_abs_error, float(np.max(np.abs(got - ref))))
        self.scale = max(self.scale, float(np.max(np.abs(ref))))
        if cosine:
            low = float(row_cosines(ref, got).min())
            self.cosine = low if self.cosine is None else min(self.cosine, low)

    def failures(self, tolerance: Tolerance) -> list[str]:
        """Which criteria this output fails, one phrase each (empty when it passes)."""
        if self.shape_error is not None:
            return [f"{self.name}: {self.shape_error}"]
        if not self.finite:
            return [f"{self.name}: NaN or inf"]
        failed = []
        limit = tolerance.limit(self.scale)
        if not self.max_abs_error <= limit:
            failed.append(f"{self.name}: max abs error {self.max_abs_error:.2e} > {limit:.2e} (relative error "
                          f"{self.rel_error:.2e} of max|ref| {self.scale:.2e})")
        if tolerance.wants_cosine(self.name) and self.cosine is not None and not self.cosine >= tolerance.min_cosine:
            failed.append(f"{self.name}: cosine {self.cosine:.7f} < {tolerance.min_cosine:g}")
        return failed

    def to_json(self) -> dict[str, Any]:
        rel = self.rel_error if math.isfinite(self.rel_error) else None  # an all-zero reference; JSON has no inf
        figures: dict[str, Any] = {"max_abs_error": self.max_abs_error, "rel_error": rel, "scale": self.scale}
        if self.cosine is not None:
            figures["cosine"] = self.cosine
        return figures


def describe_output(name: str, figures: Mapping[str, Any]) -> str:
    """``name max abs E rel R [cos C]`` from :meth:`OutputParity.to_json` figures."""
    rel = figures["rel_error"]
    text = f"{name} max abs {figures['max_abs_error']:.2e} rel {'n/a' if rel is None else format(rel, '.2e')}"
    return text + (f" cos {figures['cosine']:.7f}" if figures.get("cosine") is not None else "")


@dataclass
class ParityReport:
    """Per-output agreement of a candidate (an ONNX graph, an fp16 graph, a TensorRT engine) with a reference
    (PyTorch, the fp32 graph) over ``n_sets`` input sets, judged by ``tolerance``."""

    label: str  # what was compared with what, e.g. "arcface.onnx vs PyTorch"
    tolerance: Tolerance
    outputs: dict[str, OutputParity]
    n_sets: int = 0

    @classmethod
    def start(cls, label: str, names: Sequence[str], tolerance: Tolerance) -> ParityReport:
        return cls(label, tolerance, {name: OutputParity(name) for name in names})

    def add_set(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> None:
        """Fold one input set's outputs (in ``outputs`` order) into the figures."""
        if not len(reference) == len(candidate) == len(self.outputs):
            raise ModelError(f"{self.label}: {len(candidate)} outputs against {len(reference)} in the reference "
                             f"({len(self.outputs)} expected)")
        for (name, output), ref, got in zip(self.outputs.items(), reference, candidate):
            output.add(ref, got, cosine=self.tolerance.wants_cosine(name))
        self.n_sets += 1

    @property
    def max_abs_error(self) -> dict[str, float]:
        return {name: o.max_abs_error for name, o in self.outputs.items()}

    @property
    def worst(self) -> float:
        """Largest absolute error over all outputs (inf where one was not finite or had the wrong shape)."""
        return max((o.max_abs_error if o.finite and o.shape_error is None else math.inf
                    for o in self.outputs.values()), default=0.0)

    @property
    def worst_rel_error(self) -> float:
        return max((o.rel_error if o.finite and o.shape_error is None else math.inf
                    for o in self.outputs.values()), default=0.0)

    def failures(self) -> list[str]:
        return [f for o in self.outputs.values() for f in o.failures(self.tolerance)]

    @property
    def ok(self) -> bool:
        return not self.failures()

    def details(self) -> str:
        """The verdict (with the failed criteria), every output's figures, and the tolerance."""
        failed = self.failures()
        verdict = f"FAIL ({'; '.join(failed)})" if failed else "ok"
        figures = ", ".join(describe_output(name, o.to_json()) for name, o in self.outputs.items())
        return f"{verdict}; {figures} ({self.n_sets} input sets; {self.tolerance.describe()})"

    def summary(self) -> str:
        """One line: what was compared, then :meth:`details`."""
        return f"{self.label}: {self.details()}"

    def to_json(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance.to_json(), "input_sets": self.n_sets,
                "outputs": {name: o.to_json() for name, o in self.outputs.items()}}


def compare_outputs(reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]], *,
                    names: Sequence[str], tolerance: Tolerance, label: str) -> ParityReport:
    """Outputs of one runtime against another's on the same input sets (e.g. fp16 vs fp32 graph), judged by
    ``tolerance``; the caller decides what a failure means (see :attr:`ParityReport.ok`)."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} candidate output sets for {len(reference)} reference sets")
    report = ParityReport.start(label, names, tolerance)
    for ref_set, got_set in zip(reference, candidate):
        report.add_set(ref_set, got_set)
    return report


def check_parity(module, onnx_path: str | Path, input_sets: Sequence[tuple[np.ndarray, ...]], *,
                 tolerance: Tolerance = Tolerance()) -> ParityReport:
    """Run ``module`` and the ONNX graph (ONNX Runtime, CPU) on each input set and compare every output.

    Raises :class:`ModelError` when any output fails ``tolerance`` (see :class:`Tolerance`; a different
    shape or a NaN fails too); returns the report otherwise.
    """
    import numpy as np
    import torch

    onnx_path = Path(onnx_path)
    if not input_sets:
        raise ValueError("check_parity needs at least one input set")
    session = cpu_session(onnx_path)
    in_names = [i.name for i in session.get_inputs()]
    report = ParityReport.start(f"{onnx_path.name} vs PyTorch", [o.name for o in session.get_outputs()], tolerance)
    module = module.eval()
    for inputs in input_sets:
        arrays = [np.ascontiguousarray(a) for a in inputs]
        if len(arrays) != len(in_names):
            raise ValueError(f"{onnx_path.name} takes {len(in_names)} inputs, an input set has {len(arrays)}")
        with torch.inference_mode():
            expected = module(*(torch.from_numpy(a.copy()) for a in arrays))
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        actual = session.run(None, dict(zip(in_names, arrays)))
        report.add_set([t.detach().cpu().float().numpy() for t in expected], actual)
    if not report.ok:
        raise ModelError(f"parity check failed: {report.summary()}")
    return report


def parity_json(reports: Mapping[str, ParityReport]) -> dict[str, Any]:
    """The parity entries of a ``detector.json``: ``parity_max_abs_error`` (graph -> worst abs error; what
    folders written before the per-output figures carry, and still read) and ``parity`` (graph -> figures)."""
    return {"parity_max_abs_error": {graph: r.worst for graph, r in reports.items()},
            "parity": {graph: r.to_json() for graph, r in reports.items()}}


def describe_parity(meta: Mapping[str, Any]) -> str:
    """One line of a ``detector.json``'s parity figures, from ``parity`` or, in older folders, from
    ``parity_max_abs_error``."""
    if meta.get("parity"):
        return "; ".join(f"{graph}: " + ", ".join(describe_output(name, figures)
                                                  for name, figures in entry["outputs"].items())
                         for graph, entry in meta["parity"].items())
    return ", ".join(f"{graph}: max abs {err:.2e}" for graph, err in meta["parity_max_abs_error"].items())


def read_onnx_graph(path: str | Path, *, external_data: bool = True):
    """The graph of an ONNX file, for reading its nodes or weights; a file that does not parse (protobuf decode
    errors, missing external data) is a :class:`ModelError` naming it."""
    import onnx

    path = Path(path)
    try:
        return onnx.load(str(path), load_external_data=external_data).graph
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a readable ONNX graph"
        raise ModelError(f"cannot read ONNX graph {path.name}: {exc}") from exc


def save_onnx_atomically(model, path: Path) -> None:
    """Write an in-memory ONNX model beside ``path`` and rename it into place."""
    import onnx

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- fp16 variants -------------------------------------------------------------------------------------------


def write_fp16_onnx(source: str | Path, destination: str | Path) -> Path:
    """Convert an fp32 graph to fp16 weights and activations, keeping fp32 inputs and outputs.

    Uses the converter that ships inside onnxruntime (``onnxruntime.transformers.float16``), which keeps the
    inputs that must stay fp32 (Resize scales, ...) and inserts the boundary Casts. Written atomically.
    """
    import onnx
    convert_float_to_float16 = _float16_converter()

    source, destination = Path(source), Path(destination)
    model = onnx.load(str(source))
    try:
        converted = convert_float_to_float16(model, keep_io_types=True)
        _sort_nodes(converted.graph)  # the converter appends its boundary Casts at the end of the node list
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises plain exceptions for unsupported graphs
        raise ModelError(f"fp16 conversion of {source.name} failed: {exc}") from exc
    save_onnx_atomically(converted, destination)
    return destination


def _float16_converter():
    """onnxruntime's fp16 converter, imported without its side effect: ``onnxruntime.transformers`` appends
    its own folder to ``sys.path`` so that its scripts import each other as top-level modules, which makes its
    ``models`` folder shadow any other top-level ``models`` package (SimSwap's pickles name one) for the rest of
    the process. The converter needs nothing from that path once imported."""
    saved = list(sys.path)
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    finally:
        sys.path[:] = saved
    return convert_float_to_float16


def _sort_nodes(graph) -> None:
    """Reorder ``graph.node`` topologically (stable: original order among ready nodes), in place."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ModelError(f"graph has a cycle or a dangling input near node {pending[0].name!r}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    del graph.node[:]
    graph.node.extend(ordered)


def cpu_session(path: str | Path):
    """An ONNX Runtime session on the CPU provider (the reference every export is checked against)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt or invalid graphs
        raise ModelError(f"cannot load {Path(path).name} with onnxruntime: {str(exc).splitlines()[0]}") from exc


def run_onnx(path: str | Path, input_sets: Sequence[tuple[np.ndarray, ...]]) -> list[list[np.ndarray]]:
    """Outputs of ``path`` under ONNX Runtime's CPU provider for each input set."""
    session = cpu_session(path)
    names = [i.name for i in session.get_inputs()]
    return [session.run(None, dict(zip(names, arrays))) for arrays in input_sets]

