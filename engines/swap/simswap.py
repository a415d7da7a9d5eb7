"""SimSwap (224 and 512) behind the :class:`Swapper` interface, on any backend.

Data path, as SimSwap's released inference code does it:

- source: the face aligned to the swapper's own template (SimSwap's multi-pose set at 224, FFHQ at 512),
  RGB, ImageNet mean/std, resized to 112 with *nearest* neighbour (``F.interpolate``'s default mode, which
  the released ``test_*`` scripts use), SimSwap's ArcFace, L2-normalised -> the 512-d identity;
- target: the aligned crop as RGB in [0, 1] without mean/std; the generator's output in [0, 1] is turned
  back into BGR uint8 (rounded; SimSwap clips to [0, 1] first too).

The generator and ArcFace are :class:`Engine` objects: ONNX graphs from ``swapwatch export simswap`` /
``swapwatch export arcface`` (TensorRT or ONNX Runtime), or the PyTorch modules through :class:`TorchEngine`.
A batch of crops is one generator call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from swapwatch.engines.faces import FFHQ_512, SIMSWAP_224, CropTemplate, Face, align_face
from swapwatch.engines.runtime import Engine, TensorSpec, load_onnx_engine
from swapwatch.engines.swap.swapper import SourceIdentity, Swapper
from swapwatch.errors import ModelError

TEMPLATES: dict[int, CropTemplate] = {224: SIMSWAP_224, 512: FFHQ_512}
ARCFACE_SIZE = 112
LATENT_SIZE = 512
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Graph interface written by swapwatch.export (kept literal here so serving never imports the exporters).
GENERATOR_INPUTS = ("target", "source")


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source rows/columns of PyTorch's ``F.interpolate(mode="nearest", size=size_out)``:
    ``floor(i * (in / out))`` with the scale in float32, clamped."""
    scale = np.float32(size_in) / np.float32(size_out)
    idx = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, size_in - 1)


def arcface_input(crop_bgr: np.ndarray) -> np.ndarray:
    """(1, 3, 112, 112) float32 ArcFace input from one aligned BGR uint8 crop of any size."""
    h, w = crop_bgr.shape[:2]
    small = crop_bgr[nearest_indices(h, ARCFACE_SIZE)][:, nearest_indices(w, ARCFACE_SIZE)]
    rgb = small[..., ::-1].astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None])


def _l2_normalised(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ModelError("ArcFace returned a zero or non-finite embedding")
    return (vector / norm).astype(np.float32)


class SimSwapSwapper(Swapper):
    """SimSwap at 224 (``simswap-224``) or 512 (``simswap-512``) from a generator and an ArcFace engine."""

    learned = True

    def __init__(self, generator: Engine, arcface: Engine, *, crop_size: int = 224) -> None:
        if crop_size not in TEMPLATES:
            raise ModelError(f"SimSwap crop size must be one of {sorted(TEMPLATES)}, got {crop_size}")
        names = {spec.name for spec in generator.inputs}
        if names != set(GENERATOR_INPUTS):
            raise ModelError(f"a SimSwap generator graph takes inputs {list(GENERATOR_INPUTS)}, this one "
                             f"{sorted(names)} (export it with `swapwatch export simswap`)")
        if len(arcface.inputs) != 1 or len(arcface.outputs) < 1:
            raise ModelError(f"an ArcFace graph takes one input and gives an embedding, got {arcface!r}")
        self.crop_size = crop_size
        self.name = f"simswap-{crop_size}"
        self.template = TEMPLATES[crop_size]
        self.generator = generator
        self.arcface = arcface
        self._generator_output = generator.outputs[0].name
        self._arcface_input = arcface.inputs[0].name
        self._arcface_output = arcface.outputs[0].name

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def from_onnx(cls, generator_path: str | Path, arcface_path: str | Path, *, crop_size: int | None = None,
                  backend: str = "auto", device: str = "auto", precision: str = "fp32") -> "SimSwapSwapper":
        """From exported graphs; ``crop_size`` None reads it from the generator's ``target`` input shape."""
        generator = load_onnx_engine(generator_path, backend, device=device, precision=precision)
        arcface = load_onnx_engine(arcface_path, backend, device=device, precision=precision)
        if crop_size is None:
            target = next((s for s in generator.inputs if s.name == "target"), None)
            side = target.shape[-1] if target is not None and target.shape else None
            if side not in TEMPLATES:
                raise ModelError(f"{Path(generator_path).name}: cannot tell the crop size from its target input "
                                 f"({target.describe() if target else 'missing'}); pass crop_size")
            crop_size = int(side)
        return cls(generator, arcface, crop_size=crop_size)

    @classmethod
    def from_modules(cls, generator, arcface, *, device: str = "auto", half: bool = False) -> "SimSwapSwapper":
        """From PyTorch modules (a ``SimSwapGenerator`` and SimSwap's ArcFace ``ResNet``), run eagerly."""
        from swapwatch.engines.runtime import TorchEngine

        size = int(generator.crop_size)
        f32 = np.dtype(np.float32)
        gen_engine = TorchEngine(generator, [TensorSpec("target", (None, 3, size, size), f32),
                                             TensorSpec("source", (None, LATENT_SIZE), f32)],
                                 ["output"], device=device, half=half)
        arc_engine = TorchEngine(arcface, [TensorSpec("input", (None, 3, ARCFACE_SIZE, ARCFACE_SIZE), f32)],
                                 ["embedding"], device=device, half=half)
        return cls(gen_engine, arc_engine, crop_size=size)

    @classmethod
    def from_checkpoints(cls, generator_checkpoint: str | Path, arcface_checkpoint: str | Path, *,
                         crop_size: int | None = None, device: str = "auto") -> "SimSwapSwapper":
        """From the released PyTorch files (``latest_net_G.pth`` / ``550000_net_G.pth``, ``arcface_checkpoint.tar``)."""
        from swapwatch.export.arcface import load_arcface
        from swapwatch.export.simswap import load_generator

        return cls.from_modules(load_generator(generator_checkpoint, crop_size), load_arcface(arcface_checkpoint),
                                device=device)

    # -- Swapper ----------------------------------------------------------------------------------------------

    def embed_crops(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(N, 512) L2-normalised identities of aligned source crops (N, S, S, 3) BGR uint8, one ArcFace call."""
        crops = np.asarray(crops_bgr)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 crops, got {crops.shape} {crops.dtype}")
        batch = np.concatenate([arcface_input(c) for c in crops]) if len(crops) else np.zeros(
            (0, 3, ARCFACE_SIZE, ARCFACE_SIZE), np.float32)
        raw = np.asarray(self.arcface.run({self._arcface_input: batch})[self._arcface_output], dtype=np.float32)
        return np.stack([_l2_normalised(v) for v in raw]) if len(raw) else raw.reshape(0, LATENT_SIZE)

    def prepare_source(self, image_bgr: np.ndarray, face: Face) -> SourceIdentity:
        aligned = align_face(image_bgr, face.landmarks, self.template)
        embedding = self.embed_crops(aligned.crop[None])[0]
        return SourceIdentity(swapper=self.name, embedding=embedding, crop=aligned.crop,
                              extra={"template_index": aligned.template_index})

    def _latent(self, source: SourceIdentity) -> np.ndarray:
        if source.swapper != self.name:
            raise ValueError(f"source identity was prepared by {source.swapper!r}, not {self.name!r}: "
                             "SimSwap identities depend on the swapper's alignment and ArcFace")
        if source.embedding is None or np.shape(source.embedding) != (LATENT_SIZE,):
            raise ValueError(f"{self.name} needs a ({LATENT_SIZE},) embedding, got "
                             f"{None if source.embedding is None else np.shape(source.embedding)}")
        return np.asarray(source.embedding, dtype=np.float32)

    def generate(self, target_crops: np.ndarray, sources: Sequence[SourceIdentity]) -> np.ndarray:
        crops = np.asarray(target_crops)
        size = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
            raise ValueError(f"{self.name} expects (N, {size}, {size}, 3) uint8 BGR crops, "
                             f"got {crops.shape} {crops.dtype}")
        if len(sources) != len(crops):
            raise ValueError(f"{len(crops)} target crops but {len(sources)} source identities")
        if len(crops) == 0:
            return np.zeros((0, size, size, 3), np.uint8)
        target = np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
        latent = np.stack([self._latent(s) for s in sources])
        out = self.generator.run({"target": target, "source": latent})[self._generator_output]
        rgb = np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
        return np.ascontiguousarray(np.rint(rgb).astype(np.uint8).transpose(0, 2, 3, 1)[..., ::-1])
