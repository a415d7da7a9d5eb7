"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, whichever is installed and asked for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from swapwatch.engines.runtime.engine import Array, Engine, TensorSpec
from swapwatch.errors import BackendUnavailable, ModelError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _providers_for(device: str, available: Sequence[str]) -> list[str]:
    wanted = {
        "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "cpu": ["CPUExecutionProvider"],
    }
    if device not in wanted:
        raise BackendUnavailable(f"unknown device {device!r} for onnxruntime (auto, cpu, cuda, tensorrt)")
    providers = [p for p in wanted[device] if p in available]
    if device in ("cuda", "tensorrt") and providers[:1] == ["CPUExecutionProvider"]:
        raise BackendUnavailable(f"onnxruntime has no {device} provider here (available: {', '.join(available)})")
    return providers


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "auto", intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: provider fallbacks are reported by us, not as warnings
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        # ONNX Runtime's CPU thread pool busy-waits after every run by default. swapwatch runs several models
        # back to back on one worker thread, with decode/encode threads beside it, and spinning threads take
        # the cores the next model needs: the monitor's frame loop ran about 2x slower per frame with spinning
        # on the 2-core CPU (BENCHMARKS.md, "Deepfake detector, live cost"). SWAPWATCH_ORT_SPIN=1 turns it on.
        if os.environ.get("SWAPWATCH_ORT_SPIN", "0") != "1":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _providers_for(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt or invalid graphs
            raise ModelError(f"cannot load {self.path.name} with onnxruntime: {str(exc).splitlines()[0]}") from exc
        self.providers = self.session.get_providers()
        self._inputs = [self._spec(i) for i in self.session.get_inputs()]
        self._outputs = [self._spec(o) for o in self.session.get_outputs()]

    @staticmethod
    def _spec(node) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else (d or None) for d in node.shape)
        return TensorSpec(node.name, shape, np.dtype(_ORT_TYPES.get(node.type, np.float32)))

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        self._check_feeds(feeds)
        first = next(iter(feeds.values()))
        if isinstance(first, np.ndarray):
            out = self.session.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return {spec.name: arr for spec, arr in zip(self._outputs, out)}
        return self._run_torch(feeds)

    def _run_torch(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Torch tensors in and out; on CUDA through IO binding so data never leaves the device."""
        import torch

        first = next(iter(feeds.values()))
        if first.device.type == "cpu" or self.device == "cpu":
            out = self.run({k: v.detach().cpu().numpy() for k, v in feeds.items()})
            return {k: torch.from_numpy(v).to(first.device) for k, v in out.items()}
        binding = self.session.io_binding()
        for spec in self._inputs:
            t = feeds[spec.name].contiguous()
            binding.bind_input(spec.name, "cuda", t.device.index or 0, np.dtype(spec.dtype),
                               list(t.shape), t.data_ptr())
        for spec in self._outputs:
            binding.bind_output(spec.name, "cuda", first.device.index or 0)
        self.session.run_with_iobinding(binding)
        results = binding.get_outputs()
        # OrtValue -> torch via DLPack keeps the output on the GPU.
        return {spec.name: torch.utils.dlpack.from_dlpack(r.to_dlpack()) for spec, r in zip(self._outputs, results)}
