"""The Engine interface: the same graph through ONNX Runtime, PyTorch and (where installed) TensorRT."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from swapwatch.engines.runtime import (
    BACKENDS, OnnxRuntimeEngine, TensorSpec, TorchEngine, available_backends, choose_backend, load_onnx_engine,
)
from swapwatch.errors import BackendUnavailable, ModelError
from swapwatch.export.onnx_export import export_onnx, retry_spurious_ast_error


class TwoHeads(nn.Module):
    """A small conv net with two outputs and a dynamic batch, like the detectors' heads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head_a = nn.Conv2d(8, 2, 1)
        self.head_b = nn.Linear(8, 4)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return torch.softmax(self.head_a(f), dim=1), self.head_b(f.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def model_and_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoHeads().eval()
    path = tmp_path_factory.mktemp("engine") / "two_heads.onnx"
    export_onnx(model, (torch.randn(1, 3, 16, 16),), path, input_names=["image"], output_names=["prob", "vec"],
                dynamic_axes={"image": {0: "batch"}, "prob": {0: "batch"}, "vec": {0: "batch"}})
    return model, path


def torch_engine(model) -> TorchEngine:
    return TorchEngine(model, [TensorSpec("image", ("batch", 3, 16, 16), np.dtype(np.float32))], ["prob", "vec"],
                       device="cpu")


def test_onnxruntime_specs_and_run_match_torch(model_and_onnx):
    model, path = model_and_onnx
    ort_engine = load_onnx_engine(path, backend="onnxruntime", device="cpu")
    assert isinstance(ort_engine, OnnxRuntimeEngine) and ort_engine.device == "cpu"
    assert [s.name for s in ort_engine.inputs] == ["image"]
    assert ort_engine.inputs[0].shape == ("batch", 3, 16, 16)
    assert [s.name for s in ort_engine.outputs] == ["prob", "vec"]
    pt_engine = torch_engine(model)
    for batch in (1, 3, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        a, b = ort_engine.run({"image": x}), pt_engine.run({"image": x})
        assert set(a) == set(b) == {"prob", "vec"}
        for name in a:
            assert isinstance(a[name], np.ndarray) and a[name].shape == b[name].shape
            np.testing.assert_allclose(a[name], b[name], atol=1e-5)


def test_torch_tensors_in_torch_tensors_out(model_and_onnx):
    model, path = model_and_onnx
    x = torch.randn(2, 3, 16, 16)
    for engine in (load_onnx_engine(path, backend="onnxruntime", device="cpu"), torch_engine(model)):
        out = engine.run({"image": x})
        assert all(isinstance(v, torch.Tensor) and v.device == x.device for v in out.values()), engine


def test_wrong_feeds_are_rejected(model_and_onnx):
    _, path = model_and_onnx
    engine = load_onnx_engine(path, backend="onnxruntime", device="cpu")
    with pytest.raises(ValueError, match="missing"):
        engine.run({})
    with pytest.raises(ValueError, match="unexpected"):
        engine.run({"image": np.zeros((1, 3, 16, 16), np.float32), "extra": np.zeros(1, np.float32)})


def test_corrupt_and_missing_model_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="bad.onnx"):
        load_onnx_engine(bad, backend="onnxruntime")
    with pytest.raises(ModelError, match="not found"):
        load_onnx_engine(tmp_path / "missing.onnx")


def test_automatic_choice_and_override(monkeypatch, model_and_onnx):
    _, path = model_and_onnx
    have_trt = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
    assert choose_backend("auto", for_file=path) == ("tensorrt" if have_trt else "onnxruntime")
    assert choose_backend("auto") == available_backends()[0]
    assert choose_backend("torch") == "torch"
    monkeypatch.setenv("SWAPWATCH_BACKEND", "onnxruntime")
    assert choose_backend("auto") == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        choose_backend("tflite")
    if not have_trt:
        with pytest.raises(BackendUnavailable, match="not available here"):
            choose_backend("tensorrt")
    with pytest.raises(BackendUnavailable, match="cannot run an ONNX file"):
        load_onnx_engine(path, backend="torch")
    assert set(available_backends()) <= set(BACKENDS)


def test_onnxruntime_refuses_a_missing_gpu_provider(model_and_onnx):
    import onnxruntime as ort

    _, path = model_and_onnx
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal is for CPU-only installs")
    with pytest.raises(BackendUnavailable, match="no cuda provider"):
        load_onnx_engine(path, backend="onnxruntime", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_engine_on_cuda_matches_cpu(model_and_onnx):
    model, _ = model_and_onnx
    x = torch.randn(4, 3, 16, 16)
    cpu = torch_engine(model).run({"image": x})
    gpu = TorchEngine(model, torch_engine(model).inputs, ["prob", "vec"], device="cuda").run({"image": x.cuda()})
    for name in cpu:
        assert gpu[name].is_cuda
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_onnxruntime_cuda_io_binding(model_and_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
        pytest.skip("needs onnxruntime-gpu with the CUDA provider and a CUDA GPU")
    model, path = model_and_onnx
    engine = load_onnx_engine(path, backend="onnxruntime", device="cuda")
    x = torch.randn(3, 3, 16, 16, device="cuda")
    out = engine.run({"image": x})
    ref = torch_engine(model).run({"image": x.cpu()})
    for name in ref:
        assert out[name].is_cuda
        torch.testing.assert_close(out[name].cpu(), ref[name], atol=1e-4, rtol=1e-4)


def test_tensorrt_engine_builds_caches_and_matches(model_and_onnx, tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install 'swapwatch[gpu]' on a CUDA machine)")
    if not torch.cuda.is_available():
        pytest.skip("tensorrt needs a CUDA GPU")
    from swapwatch.engines.runtime import TensorRTEngine

    model, path = model_and_onnx
    engine = TensorRTEngine.from_onnx(path, precision="fp32", max_batch=8, cache_dir=tmp_path)
    plans = list(tmp_path.glob("*.plan"))
    assert len(plans) == 1
    x = torch.randn(5, 3, 16, 16, device="cuda")
    out = engine.run({"image": x})
    ref = torch_engine(model).run({"image": x.cpu()})
    for name in ref:
        torch.testing.assert_close(out[name].cpu(), ref[name], atol=1e-3, rtol=1e-3)
    again = TensorRTEngine.from_onnx(path, precision="fp32", max_batch=8, cache_dir=tmp_path)  # cache hit
    assert list(tmp_path.glob("*.plan")) == plans and again.inputs[0].name == "image"


def test_spurious_ast_error_is_retried_and_nothing_else_is():
    """CPython 3.11's spurious AST "recursion depth mismatch" SystemError (python/cpython#106905) makes an
    export run again, up to three times; any other error is raised at once."""
    calls = []

    def flaky(failures: int, message: str = "AST constructor recursion depth mismatch (before=162, after=35)"):
        def call():
            calls.append(1)
            if len(calls) <= failures:
                raise SystemError(message)
            return "exported"
        return call

    assert retry_spurious_ast_error(flaky(2)) == "exported" and len(calls) == 3
    calls.clear()
    with pytest.raises(SystemError, match="recursion depth mismatch"):
        retry_spurious_ast_error(flaky(3))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(SystemError, match="something else"):
        retry_spurious_ast_error(flaky(1, "something else"))
    assert len(calls) == 1


def test_fp16_conversion_leaves_sys_path_alone(tmp_path):
    """onnxruntime.transformers appends its folder to sys.path on import, which would make its `models` folder
    importable as a top-level package for the rest of the process (and break loading SimSwap's pickles, whose
    classes live in a `models` package); the fp16 conversion must not leave that behind."""
    import sys

    import torch

    from swapwatch.export.onnx_export import write_fp16_onnx

    before = list(sys.path)
    src = export_onnx(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), tmp_path / "conv.onnx",
                      input_names=["x"], output_names=["y"])
    write_fp16_onnx(src, tmp_path / "conv.fp16.onnx")
    assert sys.path == before and (tmp_path / "conv.fp16.onnx").is_file()
