"""PyTorch backend: runs an ``nn.Module`` eagerly on CPU or CUDA behind the :class:`Engine` interface."""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import numpy as np

from swapwatch.engines.runtime.engine import Array, Engine, TensorSpec


class TorchEngine(Engine):
    """Wraps a module whose ``forward`` takes the inputs positionally and returns a tensor or a tuple.

    ``input_specs`` and ``output_names`` give the module the named interface the other backends read from
    the ONNX graph, so one caller works with every backend.
    """

    backend = "torch"

    def __init__(self, module, input_specs: Sequence[TensorSpec], output_names: Sequence[str], *,
                 device: str = "auto", half: bool = False) -> None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self.half = half and self._device.type == "cuda"
        if self.half:
            # .half() converts in place: work on a copy so an fp32 engine sharing the module stays fp32.
            module = copy.deepcopy(module)
        self.module = module.eval().to(self._device)
        if self.half:
            self.module = self.module.half()
        self._inputs = list(input_specs)
        self._outputs = [TensorSpec(n, (), np.dtype(np.float32)) for n in output_names]

    @property
    def device(self) -> str:
        return self._device.type

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        import torch

        self._check_feeds(feeds)
        as_numpy = isinstance(next(iter(feeds.values())), np.ndarray)
        dtype = torch.float16 if self.half else None
        args = []
        for spec in self._inputs:
            t = torch.as_tensor(feeds[spec.name]).to(self._device)
            args.append(t.to(dtype) if dtype is not None and t.is_floating_point() else t)
        with torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self._outputs):
            raise RuntimeError(f"module returned {len(result)} outputs, expected {len(self._outputs)}")
        out = {}
        for spec, t in zip(self._outputs, result):
            t = t.float() if self.half else t
            out[spec.name] = t.cpu().numpy() if as_numpy else t
        return out
