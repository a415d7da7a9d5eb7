"""Face parsing with BiSeNet (face-parsing.PyTorch, ``79999_iter.pth``): per-pixel labels and face masks.

Label map (CelebAMask-HQ's 18 attributes, numbered from 1 in the order of face-parsing.PyTorch's
``prepropess_data.py``; 0 is background):

====  ========  ====  ========  ====  ========  ====  =======
0     background  5   r_eye     10    nose      15    neck_l
1     skin        6   eye_g     11    mouth     16    cloth
2     l_brow      7   l_ear     12    u_lip     17    hair
3     r_brow      8   r_ear     13    l_lip     18    hat
4     l_eye       9   ear_r     14    neck
====  ========  ====  ========  ====  ========  ====  =======

(``eye_g`` is eyeglasses, ``ear_r`` earrings, ``neck_l`` necklace, ``mouth`` the inner mouth between the
lips.)
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import cv2
import numpy as np

from swapwatch.engines.runtime import Engine, TensorSpec, fixed_batch, load_onnx_engine, run_batched
from swapwatch.errors import ModelError

LABELS: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
LABEL_IDS: Mapping[str, int] = MappingProxyType({name: i for i, name in enumerate(LABELS)})

# The swapped face region: skin, brows, eyes, glasses (a hole there would show the target's eyes through the
# swapped face; SimSwap's mask includes them too), nose, inner mouth and lips. Ears, neck, hair and
# accessories stay the target's.
FACE_CLASSES: tuple[int, ...] = tuple(LABEL_IDS[n] for n in (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "nose", "mouth", "u_lip", "l_lip"))
MOUTH_CLASSES: tuple[int, ...] = tuple(LABEL_IDS[n] for n in ("mouth", "u_lip", "l_lip"))

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet, RGB
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def face_mask(labels: np.ndarray, *, keep_mouth: bool = False) -> np.ndarray:
    """Hard face mask (float32 in {0, 1}, the shape of ``labels``) from parsing labels.

    ``keep_mouth=True`` leaves the mouth and lips out of the mask, so the target's own mouth (speech,
    expression) shows through the swapped face.
    """
    classes = [c for c in FACE_CLASSES if not (keep_mouth and c in MOUTH_CLASSES)]
    return np.isin(labels, classes).astype(np.float32)


class FaceParser:
    """BiSeNet face parsing on aligned face crops, on any engine (ONNX graph, or the PyTorch module).

    The engine takes ImageNet-normalised RGB at ``input_size`` (512 for the release) and returns logits
    (N, 19, input_size, input_size).
    """

    def __init__(self, engine: Engine, *, input_size: int = 512) -> None:
        if len(engine.inputs) != 1 or len(engine.outputs) < 1:
            raise ModelError(f"a face-parsing model has one input and a logits output, got {engine!r}")
        self.engine = engine
        self.input_size = int(input_size)
        self._input = engine.inputs[0].name
        self._output = engine.outputs[0].name
        shape = engine.inputs[0].shape
        # A graph exported with a fixed side dictates the size; a fixed batch of 1 (some published exports)
        # makes us loop.
        if len(shape) == 4 and isinstance(shape[2], int) and shape[2] > 0:
            self.input_size = shape[2]
        self.fixed_batch = fixed_batch(engine.inputs[0])

    @classmethod
    def from_onnx(cls, path: str | Path, *, backend: str = "auto", device: str = "auto") -> FaceParser:
        return cls(load_onnx_engine(path, backend, device=device))

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", half: bool = False) -> FaceParser:
        """From ``79999_iter.pth`` through the PyTorch backend."""
        from swapwatch.engines.runtime import TorchEngine
        from swapwatch.export.bisenet import INPUT_NAME, INPUT_SIZE, OUTPUT_NAME, load_bisenet

        spec = TensorSpec(INPUT_NAME, (None, 3, INPUT_SIZE, INPUT_SIZE), np.dtype(np.float32))
        engine = TorchEngine(load_bisenet(path), [spec], [OUTPUT_NAME], device=device, half=half)
        return cls(engine, input_size=INPUT_SIZE)

    def preprocess(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) BGR uint8 -> (N, 3, size, size) float32, resized bilinearly and normalised."""
        size = self.input_size
        resized = [c if c.shape[:2] == (size, size) else cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR)
                   for c in crops_bgr]
        rgb = np.stack(resized)[..., ::-1].astype(np.float32) * np.float32(1.0 / 255.0)
        return np.ascontiguousarray(((rgb - _MEAN) / _STD).transpose(0, 3, 1, 2))

    def logits(self, blob: np.ndarray) -> np.ndarray:
        return run_batched(self.engine, {self._input: blob}, self.fixed_batch)[self._output]

    def parse(self, crops_bgr: np.ndarray) -> np.ndarray:
        """Class labels (N, S, S) uint8 for square BGR uint8 crops (N, S, S, 3), at the crops' size."""
        crops = np.asarray(crops_bgr)
        if crops.ndim != 4 or crops.shape[3] != 3 or crops.shape[1] != crops.shape[2] or crops.dtype != np.uint8:
            raise ValueError(f"expected square BGR uint8 crops (N, S, S, 3), got {crops.shape} {crops.dtype}")
        if len(crops) == 0:
            return np.zeros(crops.shape[:3], dtype=np.uint8)
        labels = self.logits(self.preprocess(crops)).argmax(axis=1).astype(np.uint8)
        side = crops.shape[1]
        if side == labels.shape[1]:
            return labels
        # Nearest keeps labels as labels (no blending of class ids).
        return np.stack([cv2.resize(lab, (side, side), interpolation=cv2.INTER_NEAREST) for lab in labels])

    face_mask = staticmethod(face_mask)

    def face_masks(self, crops_bgr: np.ndarray, *, keep_mouth: bool = False) -> np.ndarray:
        """:func:`face_mask` of :meth:`parse`: (N, S, S) float32."""
        return face_mask(self.parse(crops_bgr), keep_mouth=keep_mouth)
