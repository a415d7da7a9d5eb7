"""Parity checks judge correctness, not scale: the comparator (Tolerance, compare_outputs, ParityReport) on
synthetic outputs, and check_parity on real exports: a correct ArcFace with embeddings around 5e4 passes through
the command line, while exports made wrong on purpose (one BatchNorm statistic, one ONNX initializer) fail.

Figures differ across CPUs and library versions, so the tests assert verdicts and bounds only.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cli_util import swapwatch_cmd
from fixtures_simswap import ARCFACE_MODULE, build_arcface_model, randomize_, temporary_module
from swapwatch.errors import ModelError
from swapwatch.export.arcface import load_arcface, parity_inputs
from swapwatch.export.onnx_export import (
    DEFAULT_MIN_COSINE,
    DEFAULT_RTOL,
    EMBEDDING_TOLERANCE,
    Tolerance,
    check_parity,
    compare_outputs,
    describe_parity,
    parity_json,
)
from swapwatch.export.simswap import SimSwapGenerator, export_generator_onnx, generator_parity_inputs

REPO = Path(__file__).resolve().parents[1]
EMBEDDING_SCALE = 5e4  # what a released ArcFace-format checkpoint's raw embeddings reach
SMALL_ARCFACE = (1, 1, 1, 1)


def _compare(ref: np.ndarray, got: np.ndarray, tolerance: Tolerance = Tolerance(), name: str = "out"):
    return compare_outputs([[ref]], [[got]], names=[name], tolerance=tolerance, label="test")


def _embeddings(scale: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((4, 512)) * scale).astype(np.float32)


# -- the comparator -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1e5])
def test_relative_error_gives_the_same_verdict_at_any_scale(scale):
    ref = _embeddings(scale)
    wiggle = np.sign(np.random.default_rng(1).standard_normal(ref.shape)).astype(np.float32)
    peak = float(np.abs(ref).max())
    for rel, ok in ((1e-5, True), (DEFAULT_RTOL / 3, True), (DEFAULT_RTOL * 10, False), (1e-1, False)):
        report = _compare(ref, ref + wiggle * np.float32(rel * peak))
        assert report.ok is ok, report.summary()
        assert report.outputs["out"].rel_error == pytest.approx(rel, rel=1e-2)
    # The absolute test alone (rtol 0) accepts the small-scale output and refuses the same error at 1e5.
    report = _compare(ref, ref + wiggle * np.float32(1e-6 * peak), Tolerance(atol=1e-4, rtol=0.0))
    assert report.ok is (scale == 1.0)


def test_zeros_in_the_reference_do_not_make_the_error_infinite():
    ref = np.zeros((2, 100), np.float32)
    ref[:, ::10] = 1.0  # mostly exact zeros, as after a ReLU
    got = ref + np.float32(1e-6)  # an element-wise relative error would be infinite on every zero
    report = _compare(ref, got)
    assert report.ok and report.outputs["out"].rel_error <= 1e-5
    assert _compare(np.zeros(5, np.float32), np.full(5, 1e-6, np.float32)).ok  # all zeros: the atol floor
    assert not _compare(np.zeros(5, np.float32), np.full(5, 1e-3, np.float32)).ok


def test_cosine_criterion_is_per_row_and_names_itself():
    ref = _embeddings(EMBEDDING_SCALE)
    rotated = ref.copy()
    rotated[2] = ref[2] + 0.01 * _embeddings(EMBEDDING_SCALE, seed=5)[2]  # one row turned by ~0.01 rad
    loose_relative = Tolerance(rtol=0.5, min_cosine=DEFAULT_MIN_COSINE)
    report = _compare(ref, rotated, loose_relative)
    assert not report.ok and 1 - 1e-3 < report.outputs["out"].cosine < DEFAULT_MIN_COSINE
    assert len(report.failures()) == 1 and "cosine" in report.failures()[0]
    assert "FAIL" in report.summary() and "cosine" in report.summary() and "\n" not in report.summary()
    # Without a cosine floor the same outputs pass the loose relative test; a uniform rescale keeps the cosine.
    assert _compare(ref, rotated, Tolerance(rtol=0.5)).ok
    rescaled = _compare(ref, ref * np.float32(1.01), EMBEDDING_TOLERANCE)
    assert rescaled.outputs["out"].cosine > 1 - 1e-9
    assert not rescaled.ok and "max abs error" in rescaled.failures()[0]


def test_cosine_applies_only_to_the_outputs_named():
    ref, worse = _embeddings(1.0), _embeddings(1.0, seed=9)
    tolerance = Tolerance(rtol=10.0, min_cosine=0.99, cosine_outputs=("features",))
    report = compare_outputs([[ref, ref]], [[ref, worse]], names=["features", "logits"], tolerance=tolerance,
                             label="scorer")
    assert report.ok and report.outputs["logits"].cosine is None  # logits: relative test only
    report = compare_outputs([[ref, ref]], [[worse, ref]], names=["features", "logits"], tolerance=tolerance,
                             label="scorer")
    assert not report.ok and report.failures()[0].startswith("features: cosine")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_fail_on_either_side(bad):
    ref = _embeddings(1.0)
    got = ref.copy()
    got[1, 7] = bad
    for report in (_compare(ref, got, Tolerance(atol=math.inf)), _compare(got, ref, Tolerance(atol=math.inf))):
        assert not report.ok and "NaN or inf" in report.summary()
        assert report.worst == math.inf


def test_shape_mismatch_fails():
    ref = _embeddings(1.0)
    report = _compare(ref, ref[:, :511], Tolerance(atol=math.inf))
    assert not report.ok and "shape (4, 511) vs (4, 512)" in report.failures()[0]
    with pytest.raises(ModelError, match="2 outputs against 1"):
        compare_outputs([[ref]], [[ref, ref]], names=["out"], tolerance=Tolerance(), label="test")


@pytest.mark.parametrize("fields", [{"atol": -1e-6}, {"rtol": float("nan")}, {"min_cosine": 1.5}])
def test_tolerance_refuses_meaningless_values(fields):
    with pytest.raises(ValueError):
        Tolerance(**fields)


def test_detector_json_entries_and_old_folders():
    ref = _embeddings(1.0)
    report = compare_outputs([[ref, ref[:, 0]]], [[ref, ref[:, 0]]], names=["features", "logits"],
                             tolerance=Tolerance(min_cosine=DEFAULT_MIN_COSINE, cosine_outputs=("features",)),
                             label="scorer")
    meta = json.loads(json.dumps(parity_json({"scorer": report})))  # must survive JSON
    assert meta["parity_max_abs_error"] == {"scorer": 0.0}
    assert meta["parity"]["scorer"]["outputs"]["features"]["cosine"] == pytest.approx(1.0)
    assert "features max abs" in describe_parity(meta) and "logits" in describe_parity(meta)
    # The committed model folder predates the per-output figures: its single number still reads.
    committed = json.loads((REPO / "engines" / "weights" / "deepfake" / "detector.json").read_text())
    old = {key: value for key, value in committed.items() if key != "parity"}
    assert "scorer: max abs" in describe_parity(old)


# -- real exports: a correct one at a large scale passes, wrong ones fail ----------------------------------------


@pytest.fixture(scope="module")
def large_arcface(tmp_path_factory) -> Path:
    """``arcface_checkpoint.tar`` (SimSwap's pickled-module format, a shallow depth) whose raw embeddings reach
    ~5e4, as a released checkpoint's do: its last BatchNorm's scale and shift are multiplied up."""
    model, classes = build_arcface_model(layers=SMALL_ARCFACE, seed=11)
    with torch.no_grad():
        peak = float(model(torch.from_numpy(parity_inputs()[0][0])).abs().max())
        model.bn3.weight.mul_(EMBEDDING_SCALE / peak)
        model.bn3.bias.mul_(EMBEDDING_SCALE / peak)
    path = tmp_path_factory.mktemp("arcface_large") / "arcface_checkpoint.tar"
    with temporary_module(ARCFACE_MODULE, classes), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model, path)
    return path


@pytest.fixture(scope="module")
def large_arcface_export(large_arcface) -> tuple[object, Path]:
    """(`swapwatch export arcface` run, the graph it wrote)."""
    onnx_path = large_arcface.with_name("arcface.onnx")
    result = swapwatch_cmd("export", "arcface", "--checkpoint", str(large_arcface), "--output", str(onnx_path))
    return result, onnx_path


def test_large_embedding_arcface_exports_through_the_command_line(large_arcface, large_arcface_export):
    result, onnx_path = large_arcface_export
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("arcface vs PyTorch:"))
    assert line.startswith("arcface vs PyTorch: ok;"), line
    rel = float(line.split(" rel ")[1].split()[0])
    cosine = float(line.split(" cos ")[1].split()[0])
    assert rel <= DEFAULT_RTOL / 10 and cosine >= DEFAULT_MIN_COSINE, line
    # The scale is what made the old absolute test fail: embeddings of order 1e4..1e5.
    module = load_arcface(large_arcface)
    with torch.inference_mode():
        assert 1e4 <= float(module(torch.from_numpy(parity_inputs()[1][0])).abs().max()) <= 1e6
    report = check_parity(module, onnx_path, parity_inputs(), tolerance=EMBEDDING_TOLERANCE)
    assert report.ok and report.worst_rel_error <= DEFAULT_RTOL / 10


def test_wrong_large_embedding_arcface_fails(large_arcface, large_arcface_export):
    _, onnx_path = large_arcface_export
    module = load_arcface(large_arcface)
    with torch.no_grad():
        module.layer2[0].bn2.running_var.mul_(1.2)  # a BatchNorm with the wrong statistics
    with pytest.raises(ModelError, match="parity check failed") as failed:
        check_parity(module, onnx_path, parity_inputs(), tolerance=EMBEDDING_TOLERANCE)
    assert "\n" not in str(failed.value)
    # Each criterion catches it on its own.
    with pytest.raises(ModelError, match="embedding: cosine"):
        check_parity(module, onnx_path, parity_inputs(), tolerance=Tolerance(rtol=1.0, min_cosine=DEFAULT_MIN_COSINE))
    with pytest.raises(ModelError, match="embedding: max abs error"):
        check_parity(module, onnx_path, parity_inputs(), tolerance=Tolerance())


@pytest.fixture(scope="module")
def small_generator(tmp_path_factory) -> tuple[SimSwapGenerator, Path]:
    """A SimSwap 224 generator with one ID block (the fixtures' weights), and its graph."""
    generator = randomize_(SimSwapGenerator(224, n_blocks=1), 224).eval()
    return generator, export_generator_onnx(generator, tmp_path_factory.mktemp("simswap") / "simswap_224.onnx")


def test_generator_parity_passes_and_fails_when_a_batchnorm_is_wrong(small_generator):
    generator, onnx_path = small_generator
    report = check_parity(generator, onnx_path, generator_parity_inputs(224))
    assert report.ok and report.worst_rel_error <= DEFAULT_RTOL / 10
    with torch.no_grad():
        generator.down3[1].running_var.mul_(1.2)
    try:
        with pytest.raises(ModelError, match="output: max abs error"):
            check_parity(generator, onnx_path, generator_parity_inputs(224))
    finally:
        with torch.no_grad():
            generator.down3[1].running_var.div_(1.2)


def test_generator_parity_fails_when_an_onnx_initializer_is_wrong(small_generator, tmp_path):
    generator, onnx_path = small_generator
    model = onnx.load(str(onnx_path))
    (bias,) = [t for t in model.graph.initializer if tuple(t.dims) == (3,)]  # the last conv's, one per channel
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.05), bias.name))
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    with pytest.raises(ModelError, match="parity check failed: wrong.onnx vs PyTorch: FAIL"):
        check_parity(generator, tmp_path / "wrong.onnx", generator_parity_inputs(224))


# -- command-line flags -------------------------------------------------------------------------------------


def test_tolerance_flags(capsys):
    from swapwatch.cli import main

    for target, cosine in (("arcface", True), ("deepfakebench", True), ("simswap", False), ("mtcnn", False)):
        with pytest.raises(SystemExit):
            main(["export", target, "--help"])
        text = capsys.readouterr().out
        assert "--atol" in text and "--rtol" in text and ("--min-cosine" in text) is cosine, target
    with pytest.raises(SystemExit) as exited:
        main(["export", "arcface", "--checkpoint", "x", "--output", "y.onnx", "--rtol", "-1"])
    assert exited.value.code == 2 and "--rtol" in capsys.readouterr().err


class _StandInEngine:
    """ONNX Runtime posing as a TensorRT engine, its outputs optionally scaled (a wrong engine); for checking on
    any machine how ``export --trt`` compares engines with the fp32 graph."""

    scale = {"fp32": 1.0, "fp16": 1.0}

    def __init__(self, path: Path, precision: str) -> None:
        from swapwatch.engines.runtime import OnnxRuntimeEngine

        self.engine, self.factor = OnnxRuntimeEngine(path, device="cpu"), self.scale[precision]
        self.inputs = self.engine.inputs

    @classmethod
    def from_onnx(cls, path: Path, *, precision: str = "fp32") -> _StandInEngine:
        return cls(path, precision)

    def run(self, feeds: dict) -> dict:
        return {name: out * np.float32(self.factor) for name, out in self.engine.run(feeds).items()}


def test_tensorrt_engines_are_judged_by_the_same_comparator(large_arcface, tmp_path, monkeypatch, capsys):
    from swapwatch.cli import main
    from swapwatch.commands import export as export_command
    from swapwatch.engines.runtime import trt_backend

    monkeypatch.setattr(export_command, "_require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_backend, "TensorRTEngine", _StandInEngine)
    monkeypatch.setattr(trt_backend, "engine_cache_dir", lambda: tmp_path)
    argv = ["export", "arcface", "--checkpoint", str(large_arcface), "--output", str(tmp_path / "a.onnx"), "--trt",
            "--fp16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for precision in ("fp32", "fp16"):
        assert f"arcface TensorRT {precision} vs ONNX fp32: ok;" in out, out
    # An engine whose embeddings are 5% too large keeps their direction but fails the relative test.
    monkeypatch.setattr(_StandInEngine, "scale", {"fp32": 1.05, "fp16": 1.0})
    assert main(argv) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "TensorRT engine rejected: arcface TensorRT fp32 vs ONNX fp32: FAIL" in err[0]
    assert "embedding: max abs error" in err[0] and "embedding: cosine" not in err[0]
