"""Rendering: what the networks see of a face track, and the windows the head trains on.

Every clip, real or fake, goes through the same per-clip augmentation (:class:`ClipAugment`: colour,
resolution loss, noise, JPEG, crop jitter, flip) before the aligned crop, so the label is the only systematic
difference between a real clip and its fake. :class:`ClipRenderer` renders a track as real, self-blended
(``engines/deepfake/sbi.py``; one parameter draw per clip, so the fake is consistent through a window) or a
prepared fake. :func:`sample_window` models what a live stream does to a window's frames (frame-rate changes,
drops, stalls, short windows), :func:`pack_windows` packs sequences into masked windows, and
:func:`rotate_pairs` turns training pairs by quarter turns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from swapwatch.engines.deepfake.sbi import SBIParams, SelfBlender, jpeg
from swapwatch.engines.deepfake.tracks import FaceTrack
from swapwatch.engines.faces import estimate_alignment


# --------------------------------------------------------------------------------------------------
# Rendering: per-clip augmentation shared by a real clip and its fakes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipAugment:
    """One draw of the per-clip conditions: the same for every frame of a clip and for a real clip and its
    fake, so that only the manipulation tells them apart. Per-frame randomness (landmark jitter, sensor noise)
    comes from ``seed`` and the frame's position."""

    brightness: float
    contrast: float
    resolution: float  # 1: none; < 1: the region is downscaled by this and back (low-resolution sources)
    quality: int | None  # JPEG quality, None: no compression
    noise: float  # Gaussian sensor noise sigma, 0..255 levels
    blur: float  # Gaussian blur sigma in region pixels (0: none): defocus, motion, soft webcams
    gray: bool  # black-and-white source (old photos, some cameras)
    crop_scale: float
    crop_shift: tuple[float, float]  # fraction of the crop
    rotation: float  # degrees, about the crop centre (landmark detectors err on roll too)
    flip: bool
    jitter: float  # per-frame landmark noise, fraction of the crop
    seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ClipAugment:
        return cls(
            brightness=float(rng.uniform(-20, 20)),
            contrast=float(rng.uniform(0.85, 1.15)),
            resolution=float(rng.uniform(0.35, 0.85)) if rng.random() < 0.3 else 1.0,
            quality=int(rng.integers(40, 101)) if rng.random() < 0.6 else None,
            noise=float(rng.uniform(0, 4)) if rng.random() < 0.3 else 0.0,
            blur=float(rng.uniform(0.4, 1.2)) if rng.random() < 0.15 else 0.0,
            gray=bool(rng.random() < 0.1),
            crop_scale=float(rng.uniform(0.9, 1.1)),
            crop_shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
            rotation=float(rng.uniform(-10, 10)),
            flip=bool(rng.random() < 0.5),
            jitter=float(rng.uniform(0.0, 0.006)),
            seed=int(rng.integers(0, 2**31 - 1)),
        )

    def degrade(self, roi: np.ndarray, position: int) -> np.ndarray:
        # convertTo-style saturating affine on uint8 (one pass, no float copy of the region).
        img = cv2.addWeighted(roi, self.contrast, roi, 0.0, 128.0 * (1.0 - self.contrast) + self.brightness)
        if self.gray:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        if self.blur > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.blur)
        if self.noise > 0:
            noise = np.random.default_rng([self.seed, position, 1]).normal(0, self.noise, img.shape)
            img = np.clip(img + np.rint(noise), 0, 255).astype(np.uint8)
        h, w = img.shape[:2]
        if self.resolution < 1.0:
            small = cv2.resize(img, (max(int(w * self.resolution), 8), max(int(h * self.resolution), 8)),
                               interpolation=cv2.INTER_AREA)
            if self.quality is not None:
                small = jpeg(small, self.quality)  # compression at the low resolution, as a small video has
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return jpeg(img, self.quality) if self.quality is not None else img

    def crop(self, roi: np.ndarray, landmarks: np.ndarray, template, position: int) -> np.ndarray:
        size = template.size
        lmk = np.asarray(landmarks, np.float64)
        if self.jitter > 0:
            m0 = estimate_alignment(lmk, template)
            px = size / math.sqrt(abs(np.linalg.det(m0[:, :2])))  # image pixels per crop
            noise = np.random.default_rng([self.seed, position, 2]).normal(0, self.jitter * px, lmk.shape)
            lmk = lmk + noise
        m = estimate_alignment(lmk, template)
        # Then rotate and scale about the crop centre and shift, in crop pixels.
        c = size / 2.0
        post = np.vstack([cv2.getRotationMatrix2D((c, c), self.rotation, self.crop_scale), [0, 0, 1.0]])
        post[:2, 2] += np.asarray(self.crop_shift) * size
        m = (post @ np.vstack([m, [0, 0, 1]]))[:2]
        crop = cv2.warpAffine(roi, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return crop[:, ::-1].copy() if self.flip else crop


class ClipRenderer:
    """Renders aligned crops of a track as real, self-blended (one SBIParams per clip) or a prepared fake."""

    def __init__(self, template, blender: SelfBlender | None = None) -> None:
        self.template = template
        self.blender = blender or SelfBlender()

    def render(self, track: FaceTrack, positions: Sequence[int], kinds: Sequence[str], rng: np.random.Generator,
               fakes: dict[str, FaceTrack] | None = None, masks: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """One (T, S, S, 3) crop array per kind ("real", "sbi", or a key of ``fakes``: a prepared fake track
        frame-aligned with ``track``), all under one :class:`ClipAugment` draw. With "sbi" and a ``masks``
        list, each frame's blend mask (its shape: scaled to a peak of 1, ratio left out) is appended to it as
        an (S, S) float32 crop warped like the frame."""
        aug = ClipAugment.draw(rng)
        params = SBIParams.draw(rng, self.blender.config) if "sbi" in kinds else None
        size = self.template.size
        outs = [np.empty((len(positions), size, size, 3), np.uint8) for _ in kinds]
        for k, i in enumerate(positions):
            real = track.rois[i]
            sbi = None
            if params is not None:
                result = self.blender(real, track.landmarks[i], params, compress=False)
                # The real counterpart of a self-blended fake is its target (see SBIResult): rendered together,
                # they differ only by the blend.
                real, sbi = result.real, result.image
                if masks is not None:
                    shape = result.mask / max(float(result.mask.max()), 1e-6)
                    masks.append(aug.crop(shape, track.landmarks[i], self.template, k))
            for out, kind in zip(outs, kinds):
                roi = real if kind == "real" else sbi if kind == "sbi" else (fakes or {})[kind].rois[i]
                out[k] = aug.crop(aug.degrade(roi, k), track.landmarks[i], self.template, k)
        return outs


def clip_positions(track: FaceTrack, still_frames: int) -> list[int]:
    """Frame indices of a track's full clip: a photo repeats its one frame (the jitter makes them differ)."""
    return [0] * still_frames if track.still else list(range(len(track)))


# --------------------------------------------------------------------------------------------------
# Temporal augmentation of feature sequences
# --------------------------------------------------------------------------------------------------


def sample_window(length: int, window: int, rng: np.random.Generator, *, min_window: int = 1,
                  max_rate: float = 3.0, drop_prob: float = 0.1, stall_prob: float = 0.05,
                  full_prob: float = 0.7) -> np.ndarray:
    """Indices (L,) into a clip of ``length`` frames for one training window, L <= window.

    Models what a live stream does to the frames a window holds: a different frame rate (a step of 0.5 to
    ``max_rate`` source frames per window slot, so 12.5 to 50 fps views of a 25 fps clip), dropped frames
    (skipped) and stalls (a repeated frame); and a shorter window (masked) while a track is young.
    """
    n = window if rng.random() < full_prob else int(rng.integers(min_window, window + 1))
    rate = float(rng.uniform(0.5, max_rate))
    rate = min(rate, max((length - 1) / max(n - 1, 1), 0.5))  # the window must fit in the clip
    steps = np.full(n - 1, rate)
    r = rng.random(n - 1)
    steps[r < stall_prob] = 0.0
    steps[(r >= stall_prob) & (r < stall_prob + drop_prob)] *= 2.0  # a drop: the next frame is skipped
    pos = np.concatenate([[0.0], np.cumsum(steps)])
    span = pos[-1]
    start = float(rng.uniform(0, max(length - 1 - span, 0)))
    return np.clip(np.rint(pos + start), 0, length - 1).astype(np.int64)


def rotate_pairs(crops: np.ndarray, masks: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Each (real, fake) pair (consecutive crops, (2N, S, S, C)) and its fake's mask ((N, S, S)) turned by the
    same random multiple of 90 degrees."""
    turns = rng.integers(4, size=len(crops) // 2)
    crops = np.stack([np.rot90(crops[2 * i + j], t) for i, t in enumerate(turns) for j in (0, 1)])
    if masks is not None:
        masks = np.stack([np.rot90(m, t) for m, t in zip(masks, turns)])
    return crops, masks


def pack_windows(seqs: Sequence[np.ndarray], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-align each (L, F) sequence in a (W, F) window: (N, W, F) features and (N, W) masks."""
    dim = seqs[0].shape[1]
    feats = np.zeros((len(seqs), window, dim), np.float32)
    masks = np.zeros((len(seqs), window), np.float32)
    for i, s in enumerate(seqs):
        s = s[-window:]
        feats[i, window - len(s):] = s
        masks[i, window - len(s):] = 1.0
    return feats, masks
