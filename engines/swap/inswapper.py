"""InsightFace's inswapper_128 (a user-supplied ONNX file) behind the :class:`Swapper` interface.

What the graph wants, as ``insightface.model_zoo.inswapper.INSwapper`` feeds it:

- ``target`` [1, 3, 128, 128]: the face aligned to the ArcFace template scaled into 128 (``INSWAPPER_128``),
  RGB in [0, 1] (``blobFromImage(crop, 1/255, swapRB=True)``);
- ``source`` [1, 512]: the *latent* ``normalize(normalize(e) @ emap)``, where ``e`` is the source face's raw
  w600k_r50 embedding and ``emap`` (512x512) is the graph's last initializer (no node uses it; it is stored
  in the file for exactly this purpose);
- output [1, 3, 128, 128] RGB in [0, 1].

The released graph pins the batch to 1, so a batch of faces is run one face per call; a graph re-exported
with a dynamic batch (or a TensorRT engine built with one) takes the whole batch in one call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swapwatch.engines.faces import INSWAPPER_128, CropTemplate, Face, align_face, arcface_template
from swapwatch.engines.runtime import Array, Engine, fixed_batch, load_onnx_engine, run_batched
from swapwatch.engines.swap.identity import IdentityEmbedder, normed
from swapwatch.engines.swap.swapper import SourceIdentity, Swapper
from swapwatch.errors import ModelError


def read_emap(path: str | Path) -> np.ndarray:
    """The identity projection stored as the graph's last initializer (InsightFace reads it the same way)."""
    from onnx import numpy_helper

    from swapwatch.export.onnx_export import read_onnx_graph

    path = Path(path)
    graph = read_onnx_graph(path)
    if not graph.initializer:
        raise ModelError(f"{path.name} has no initializers, so no emap: not an inswapper graph")
    emap = numpy_helper.to_array(graph.initializer[-1])
    if emap.ndim != 2 or emap.shape[0] != emap.shape[1]:
        raise ModelError(f"{path.name}: the last initializer ({graph.initializer[-1].name!r}, shape "
                         f"{emap.shape}) is not a square emap; not an inswapper graph")
    return emap.astype(np.float32)


class InswapperSwapper(Swapper):
    """inswapper_128 with identities from an :class:`ArcFaceEmbedder` on w600k_r50.

    :class:`SourceIdentity` ``embedding`` holds the latent (what the graph's ``source`` input takes, unit
    norm); ``extra["arcface"]`` keeps the raw embedding it came from.
    """

    name = "inswapper-128"
    template: CropTemplate = INSWAPPER_128  # replaced by the graph's own size if a variant differs

    def __init__(self, model_path: str | Path, embedder: IdentityEmbedder, *, backend: str = "auto",
                 device: str = "auto", engine: Engine | None = None, emap: np.ndarray | None = None) -> None:
        path = Path(model_path)
        self.embedder = embedder
        self.engine = engine if engine is not None else load_onnx_engine(path, backend, device=device)
        self.emap = read_emap(path) if emap is None else np.asarray(emap, dtype=np.float32)
        # Inputs by rank, not position: the image is 4-D, the latent 2-D (the release names them target
        # and source, in that order).
        ranks = {len(spec.shape): spec for spec in self.engine.inputs}
        if len(self.engine.inputs) != 2 or set(ranks) != {2, 4} or len(self.engine.outputs) != 1:
            raise ModelError(f"{path.name} is not an inswapper graph (inputs target [N,3,S,S] and source "
                             f"[N,D], one output expected; got {self.engine!r})")
        target, source = ranks[4], ranks[2]
        self._target, self._source, self._output = target.name, source.name, self.engine.outputs[0].name
        self._target_dtype, self._source_dtype = np.dtype(target.dtype), np.dtype(source.dtype)
        size = target.shape[2]
        if not isinstance(size, int) or target.shape[3] != size:
            raise ModelError(f"{path.name}: expected a fixed square target input, got {target.describe()}")
        if self.emap.shape[1] != source.shape[1] or self.emap.shape[0] != embedder.dim:
            raise ModelError(f"{path.name}: emap {self.emap.shape} does not map the embedder's {embedder.dim}-d "
                             f"identity to the graph's source input {source.describe()}")
        if size != self.template.size:
            self.template = arcface_template(size)
        # None: dynamic batch, one call per batch; an int (1 in the release): run in chunks of that size.
        self.batch = fixed_batch(target)

    # ---- identity --------------------------------------------------------------------------------

    def latent(self, embedding: np.ndarray) -> np.ndarray:
        """Raw embedding(s) (D,) or (N, D) -> unit-norm latent(s), float32, in InsightFace's arithmetic."""
        e = np.asarray(embedding, dtype=np.float32)
        rows = normed(e.reshape(-1, e.shape[-1]))
        # One (1, D) x (D, D) product and a whole-array norm per face, InsightFace's exact operations, so the
        # latent is bit-identical to what INSwapper.get feeds the graph.
        out = np.empty((len(rows), self.emap.shape[1]), dtype=np.float32)
        for i, row in enumerate(rows):
            projected = np.dot(row.reshape(1, -1), self.emap)
            out[i] = projected[0] / np.linalg.norm(projected)
        return out.reshape(e.shape[:-1] + (out.shape[-1],))

    def source_from_embedding(self, embedding: np.ndarray) -> SourceIdentity:
        """A source from a raw embedding computed earlier (e.g. cached per source photo)."""
        raw = np.asarray(embedding, dtype=np.float32).reshape(-1)
        return SourceIdentity(swapper=self.name, embedding=self.latent(raw), crop=None, extra={"arcface": raw})

    def prepare_source(self, image_bgr: np.ndarray, face: Face) -> SourceIdentity:
        return self.source_from_embedding(self.embedder.embed(image_bgr, face))

    # ---- generation ------------------------------------------------------------------------------

    def preprocess(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) BGR uint8 -> (N, 3, S, S) RGB in [0, 1], as ``blobFromImage(crop, 1/255, swapRB)``."""
        rgb = crops_bgr[..., ::-1].astype(np.float32) * np.float32(1.0 / 255.0)
        return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=self._target_dtype)

    def run(self, target_blob: Array, latents: Array) -> Array:
        """The graph on prepared inputs: NumPy or torch (N, 3, S, S) and (N, D); output in the same kind."""
        feeds = {self._target: target_blob, self._source: latents}
        if isinstance(target_blob, np.ndarray):
            return run_batched(self.engine, feeds, self.batch)[self._output]
        if self.batch is None:
            return self.engine.run(feeds)[self._output]
        import torch  # device tensors: chunk and concatenate without leaving the device

        if len(target_blob) % self.batch:
            raise ValueError(f"the graph's batch is fixed at {self.batch}; got {len(target_blob)} faces")
        outs = [self.engine.run({k: v[i:i + self.batch] for k, v in feeds.items()})[self._output]
                for i in range(0, len(target_blob), self.batch)]
        return torch.cat(outs)

    def generate(self, target_crops: np.ndarray, sources: list[SourceIdentity]) -> np.ndarray:
        crops = np.asarray(target_crops)
        size = self.template.size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8:
            raise ValueError(f"expected (N, {size}, {size}, 3) BGR uint8 crops, got {crops.shape} {crops.dtype}")
        if len(sources) != len(crops):
            raise ValueError(f"{len(crops)} crops but {len(sources)} sources")
        if len(crops) == 0:
            return crops.copy()
        for s in sources:
            if s.swapper != self.name or s.embedding is None:
                raise ValueError(f"source prepared by {s.swapper!r}, not by {self.name!r}")
        latents = np.stack([s.embedding for s in sources]).astype(self._source_dtype)
        pred = np.asarray(self.run(self.preprocess(crops), latents), dtype=np.float32)
        # InsightFace's conversion, truncation included, so the same crop gives bit-identical output.
        rgb = np.clip(255.0 * pred.transpose(0, 2, 3, 1), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb[..., ::-1])

    def swap_face(self, image_bgr: np.ndarray, target: Face, source: SourceIdentity) -> tuple[np.ndarray, np.ndarray]:
        """One face: ``(swapped crop BGR uint8, image -> crop matrix)``, InsightFace's ``paste_back=False``."""
        aligned = align_face(image_bgr, target.landmarks, self.template)
        return self.generate(aligned.crop[None], [source])[0], aligned.matrix
