"""Native TensorRT backend: builds an engine from ONNX once, caches it, runs on CUDA torch tensors.

The cache key covers everything that makes a serialized engine invalid elsewhere: the ONNX file's
sha256, the GPU name and compute capability, the TensorRT version, the precision and the shape profile.
This code path runs only where ``tensorrt`` imports and a CUDA device exists (tests skip it otherwise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from swapwatch.engines.runtime.engine import Array, Engine, TensorSpec
from swapwatch.errors import BackendUnavailable, ModelError

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16


def engine_cache_dir() -> Path:
    from swapwatch.engines.runtime.registry import models_home

    return models_home() / "trt-engines"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(onnx_sha256: str, gpu: str, trt_version: str, precision: str, profile: dict) -> str:
    blob = json.dumps({"onnx": onnx_sha256, "gpu": gpu, "trt": trt_version, "precision": precision,
                       "profile": profile}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, serialized: bytes) -> None:
        import tensorrt as trt
        import torch

        self._trt = trt
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise ModelError("TensorRT could not deserialize the cached engine")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [self._spec(n) for n in names if is_input[n]]
        self._outputs = [self._spec(n) for n in names if not is_input[n]]

    def _spec(self, name: str) -> TensorSpec:
        shape = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))
        return TensorSpec(name, shape, np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name))))

    @classmethod
    def from_onnx(cls, onnx_path: Path, *, precision: str = "fp32", max_batch: int = DEFAULT_MAX_BATCH,
                  cache_dir: Path | None = None) -> "TensorRTEngine":
        try:
            import tensorrt as trt
            import torch
        except ImportError as exc:
            raise BackendUnavailable(f"tensorrt is not installed ({exc})") from None
        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt needs a CUDA GPU")
        if precision not in ("fp32", "fp16"):
            raise BackendUnavailable(f"unsupported TensorRT precision {precision!r}")
        onnx_path = Path(onnx_path)
        profile = {"max_batch": max_batch}
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu = f"{props.name} sm{props.major}{props.minor}"
        key = cache_key(file_sha256(onnx_path), gpu, trt.__version__, precision, profile)
        cache_dir = cache_dir or engine_cache_dir()
        plan = cache_dir / f"{onnx_path.stem}-{precision}-{key}.plan"
        if plan.is_file():
            log.info("TensorRT engine cache hit: %s", plan.name)
            return cls(plan.read_bytes())
        log.info("building TensorRT %s engine for %s on %s (once; cached as %s)", precision, onnx_path.name, gpu,
                 plan.name)
        serialized = build_serialized_engine(onnx_path, precision=precision, max_batch=max_batch)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = plan.with_suffix(f".{os.getpid()}.part")
        tmp.write_bytes(serialized)
        os.replace(tmp, plan)
        return cls(serialized)

    @property
    def device(self) -> str:
        return "cuda"

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        torch = self._torch
        self._check_feeds(feeds)
        as_numpy = isinstance(next(iter(feeds.values())), np.ndarray)
        keep_alive = []
        for spec in self._inputs:
            t = torch.as_tensor(feeds[spec.name]).to("cuda", non_blocking=True)
            t = t.to(_torch_dtype(torch, spec.dtype)).contiguous()
            keep_alive.append(t)
            self.context.set_input_shape(spec.name, tuple(t.shape))
            self.context.set_tensor_address(spec.name, t.data_ptr())
        outputs = {}
        for spec in self._outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            out = torch.empty(shape, dtype=_torch_dtype(torch, spec.dtype), device="cuda")
            self.context.set_tensor_address(spec.name, out.data_ptr())
            outputs[spec.name] = out
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        torch.cuda.current_stream().wait_stream(self.stream)
        if as_numpy:
            return {k: v.float().cpu().numpy() for k, v in outputs.items()}
        return outputs


def _torch_dtype(torch, dtype: np.dtype):
    return {np.float32: torch.float32, np.float16: torch.float16, np.int32: torch.int32,
            np.int64: torch.int64, np.uint8: torch.uint8, np.bool_: torch.bool}[np.dtype(dtype).type]


def build_serialized_engine(onnx_path: Path, *, precision: str, max_batch: int) -> bytes:
    """Parse ONNX and build an engine with one profile: batch 1..max_batch (opt: max_batch/2)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise ModelError(f"{onnx_path.name}: input {tensor.name} has dynamic non-batch dims {dims}; "
                             "export with fixed spatial size for TensorRT")
        lo, opt, hi = ([b] + dims[1:] for b in (1, max(1, max_batch // 2), max_batch))
        if dims[0] >= 0:
            lo = opt = hi = dims
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine for {onnx_path.name}")
    return bytes(serialized)
