"""Identity embedders: an aligned face crop in, an ArcFace-style identity vector out.

:class:`ArcFaceEmbedder` runs InsightFace's recognition graphs (``w600k_r50.onnx`` of the buffalo_l pack,
the identity inswapper_128 was trained with) exactly as ``insightface.model_zoo.ArcFaceONNX`` does: the
ArcFace 5-point crop at the graph's input size, RGB, ``(x - mean) / std`` with mean and std read off the
graph, and the raw (unnormalised) output vector.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from swapwatch.engines.faces import CropTemplate, Face, align_face, arcface_template
from swapwatch.engines.runtime import Engine, fixed_batch, load_onnx_engine, run_batched
from swapwatch.errors import ModelError


def normed(embedding: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis, keeping the dtype.

    Each vector's norm is ``np.linalg.norm`` of that 1-D vector, as InsightFace's ``Face.normed_embedding``
    computes it (a BLAS dot); the ``axis=`` form sums in another order and differs in the last bits.
    """
    e = np.asarray(embedding)
    rows = e.reshape(-1, e.shape[-1])
    norms = np.array([np.linalg.norm(r) for r in rows], dtype=e.dtype).reshape(e.shape[:-1] + (1,))
    return e / norms


class IdentityEmbedder(abc.ABC):
    """Turns aligned face crops into identity vectors; ``template`` is the crop it expects."""

    name: str = "?"
    template: CropTemplate
    dim: int

    @abc.abstractmethod
    def embed_crops(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) BGR uint8 crops aligned to ``template`` -> (N, dim) float32 raw embeddings."""

    def embed(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        """Raw embedding (dim,) of ``face`` in ``image_bgr``."""
        crop = align_face(image_bgr, face.landmarks, self.template).crop
        return self.embed_crops(crop[None])[0]

    normed = staticmethod(normed)


def _graph_normalisation(path: Path) -> tuple[float, float]:
    """Input mean and std the way ``ArcFaceONNX`` infers them: graphs converted from MXNet carry their own
    ``Sub``/``Mul`` (``_minus``/``_mul``) preprocessing among the first 8 nodes and take raw 0..255 pixels;
    the others (w600k_r50 among them) want ``(x - 127.5) / 127.5``."""
    from swapwatch.export.onnx_export import read_onnx_graph

    graph = read_onnx_graph(path, external_data=False)
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


class ArcFaceEmbedder(IdentityEmbedder):
    """InsightFace ArcFace recognition ONNX (``w600k_r50.onnx``: input ``input.1`` [N, 3, 112, 112])."""

    name = "arcface"

    def __init__(self, model_path: str | Path, *, backend: str = "auto", device: str = "auto",
                 engine: Engine | None = None) -> None:
        path = Path(model_path)
        self.engine = engine if engine is not None else load_onnx_engine(path, backend, device=device)
        if len(self.engine.inputs) != 1 or len(self.engine.outputs) != 1:
            raise ModelError(f"{path.name} is not an ArcFace recognition graph (one input and one output "
                             f"expected, got {self.engine!r})")
        spec = self.engine.inputs[0]
        if len(spec.shape) != 4 or spec.shape[1] != 3 or spec.shape[2] != spec.shape[3] \
                or not isinstance(spec.shape[2], int):
            raise ModelError(f"{path.name}: expected a square NCHW RGB input, got {spec.describe()}")
        self._input = spec.name
        self._dtype = np.dtype(spec.dtype)
        self._output = self.engine.outputs[0].name
        self.batch = fixed_batch(spec)
        self.template = arcface_template(int(spec.shape[2]))
        self.input_mean, self.input_std = _graph_normalisation(path)
        out_shape = self.engine.outputs[0].shape
        self.dim = int(out_shape[-1]) if out_shape and isinstance(out_shape[-1], int) else 512

    def preprocess(self, crops_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 crops -> NCHW RGB ``(x - mean) / std`` float32, as ``cv2.dnn.blobFromImages`` makes it."""
        crops = np.asarray(crops_bgr)
        size = self.template.size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(f"expected (N, {size}, {size}, 3) BGR crops, got {crops.shape}")
        rgb = crops[..., ::-1].astype(np.float32)
        blob = (rgb - np.float32(self.input_mean)) * np.float32(1.0 / self.input_std)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2), dtype=self._dtype)

    def embed_crops(self, crops_bgr: np.ndarray) -> np.ndarray:
        if len(crops_bgr) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = run_batched(self.engine, {self._input: self.preprocess(crops_bgr)}, self.batch)[self._output]
        return np.asarray(out, dtype=np.float32).reshape(len(crops_bgr), -1)
