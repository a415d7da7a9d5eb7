"""Which faces in a frame get swapped, and with which source.

Modes, as the command line spells them (:meth:`FaceSelection.parse`):

- ``all``: every detected face, with the one source.
- ``largest``: the face with the largest box, with the one source.
- ``match:REF.jpg``: the face that looks most like the person in REF.jpg, if it is similar enough.
- ``map:NAME=REF.jpg,NAME2=REF2.jpg``: many-to-many: each source NAME goes to the face that matches its
  reference photo(s) best; a face gets at most one source and a source at most one face per frame (optimal
  one-to-one assignment), and pairs below the threshold are never made.

Matching compares L2-normalised identity embeddings by cosine similarity. The identity model is not this
module's business: a file reference is turned into an embedding by a callable the caller passes to
:meth:`FaceSelection.resolve`, and the frame's faces by the ``embed`` callable passed to
:meth:`FaceSelection.select`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from swapwatch.engines.faces import Face
from swapwatch.errors import InputError

__all__ = ["DEFAULT_SOURCE", "DEFAULT_THRESHOLD", "MODES", "EmbedFaces", "FaceSelection"]

# ArcFace cosine similarity: photos of the same person mostly score 0.4-0.8, different people mostly under
# 0.2, and verification thresholds in common use sit at 0.3-0.4. 0.35 is the middle of that band; a
# threshold is only a floor here, since the best match among the frame's faces is preferred anyway.
DEFAULT_THRESHOLD = 0.35
# The source key of the single-source modes (all, largest, match).
DEFAULT_SOURCE = "source"
MODES = ("all", "largest", "match", "map")

# embed(frame_bgr, faces) -> (N, D) L2-normalised identity embeddings, one row per face.
EmbedFaces = Callable[[np.ndarray, Sequence[Face]], np.ndarray]

_USAGE = "expected all, largest, match:REF.jpg or map:NAME=REF.jpg[,NAME2=REF2.jpg...]"


def _normalised(vectors: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError(f"{what}: expected (N, D) embeddings, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if not np.all(np.isfinite(v)) or np.any(norms <= 1e-12):
        raise ValueError(f"{what}: embeddings must be finite and non-zero")
    return v / norms


def _existing_file(text: str, spec: str) -> Path:
    if not text:
        raise InputError(f"face selection {spec!r}: missing the reference photo path")
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(f"face selection {spec!r}: reference photo not found: {path}")
    return path


@dataclass(frozen=True, eq=False)
class FaceSelection:
    """A face-selection rule. Build it with :meth:`parse` (command line), :meth:`match` or :meth:`mapping`.

    ``references`` holds ``(source_key, embedding)`` pairs (several pairs may share a key: several photos of
    one person, of which the best-matching one counts); ``reference_files`` holds the ``(source_key, path)``
    pairs that :meth:`resolve` still has to turn into embeddings.
    """

    mode: str
    threshold: float = DEFAULT_THRESHOLD
    references: tuple[tuple[str, np.ndarray], ...] = ()
    reference_files: tuple[tuple[str, Path], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown face selection {self.mode!r}: {_USAGE}")
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise InputError(f"similarity threshold {self.threshold} is outside [-1, 1]")
        object.__setattr__(self, "threshold", float(self.threshold))
        refs = tuple((str(key), _normalised(emb, f"reference {key!r}")[0]) for key, emb in self.references)
        object.__setattr__(self, "references", refs)
        if self.mode in ("match", "map") and not (refs or self.reference_files):
            raise InputError(f"face selection {self.mode!r} needs at least one reference")

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: str, *, threshold: float = DEFAULT_THRESHOLD) -> FaceSelection:
        """Parse ``all``, ``largest``, ``match:REF.jpg`` or ``map:NAME=REF.jpg,...``.

        Reference files are checked to exist here; :meth:`resolve` embeds them. Raises
        :class:`~swapwatch.errors.InputError` with a one-line message on anything else.
        """
        text = spec.strip()
        mode, sep, arg = text.partition(":")
        mode = mode.strip().lower()
        if mode in ("all", "largest"):
            if sep:
                raise InputError(f"face selection {spec!r}: {mode!r} takes no argument")
            return cls(mode, threshold)
        if mode == "match":
            return cls("match", threshold, reference_files=((DEFAULT_SOURCE, _existing_file(arg.strip(), spec)),))
        if mode == "map":
            files = []
            for item in (part.strip() for part in arg.split(",")):
                name, eq, path = item.partition("=")
                if not eq or not name.strip():
                    raise InputError(f"face selection {spec!r}: {item!r} is not NAME=REF.jpg")
                files.append((name.strip(), _existing_file(path.strip(), spec)))
            return cls("map", threshold, reference_files=tuple(files))
        raise InputError(f"unknown face selection {spec!r}: {_USAGE}")

    @classmethod
    def match(cls, reference: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD,
              source: str = DEFAULT_SOURCE) -> FaceSelection:
        """Only the face most similar to ``reference`` (a (D,) embedding), if at least ``threshold``."""
        return cls("match", threshold, references=((source, reference),))

    @classmethod
    def mapping(cls, pairs: Sequence[tuple[str, np.ndarray]], *,
                threshold: float = DEFAULT_THRESHOLD) -> FaceSelection:
        """Many-to-many: ``(source_key, reference_embedding)`` pairs (a key may repeat)."""
        return cls("map", threshold, references=tuple(pairs))

    def resolve(self, embed_file: Callable[[Path], np.ndarray]) -> FaceSelection:
        """A copy whose reference files are embedded with ``embed_file(path) -> (D,)`` (the caller's
        detector and identity model, e.g. the largest face of the photo)."""
        if not self.reference_files:
            return self
        embedded = tuple((key, np.asarray(embed_file(path))) for key, path in self.reference_files)
        return replace(self, references=self.references + embedded, reference_files=())

    # ---- selection -----------------------------------------------------------------------------

    @property
    def needs_embeddings(self) -> bool:
        """Whether :meth:`select` calls ``embed`` (the pipeline can skip loading an identity model if not)."""
        return self.mode in ("match", "map")

    @property
    def source_keys(self) -> tuple[str, ...]:
        """The source keys :meth:`select` can return, in first-appearance order."""
        if not self.needs_embeddings:
            return (DEFAULT_SOURCE,)
        keys = [k for k, _ in self.references] + [k for k, _ in self.reference_files]
        return tuple(dict.fromkeys(keys))

    def select(self, faces: Sequence[Face], frame_bgr: np.ndarray,
               embed: EmbedFaces | None = None) -> list[tuple[Face, str]]:
        """The faces to swap in this frame, each with its source key, in the order of ``faces``."""
        faces = list(faces)
        if not faces:
            return []
        if self.mode == "all":
            return [(f, DEFAULT_SOURCE) for f in faces]
        if self.mode == "largest":
            areas = [f.area for f in faces]
            return [(faces[int(np.argmax(areas))], DEFAULT_SOURCE)]  # first of equal largest
        if self.reference_files:
            raise RuntimeError("reference photos are not embedded yet: call FaceSelection.resolve() first")
        if embed is None:
            raise ValueError(f"face selection {self.mode!r} needs an embed callable")
        embeddings = _normalised(embed(frame_bgr, faces), "embed() output")
        if embeddings.shape[0] != len(faces):
            raise ValueError(f"embed() returned {embeddings.shape[0]} embeddings for {len(faces)} faces")
        return [(faces[i], key) for i, key in self._assign(embeddings)]

    def similarities(self, embeddings: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
        """(N faces, K sources) cosine similarity, each source's best over its references; and the keys."""
        keys = tuple(dict.fromkeys(k for k, _ in self.references))
        refs = np.stack([emb for _, emb in self.references])
        if refs.shape[1] != embeddings.shape[1]:
            raise ValueError(f"reference embeddings have {refs.shape[1]} dims, face embeddings "
                             f"{embeddings.shape[1]}: they come from different identity models")
        per_ref = embeddings @ refs.T
        column = np.array([keys.index(k) for k, _ in self.references])
        sims = np.full((embeddings.shape[0], len(keys)), -np.inf)
        for j in range(len(keys)):
            sims[:, j] = per_ref[:, column == j].max(axis=1)
        return sims, keys

    def _assign(self, embeddings: np.ndarray) -> list[tuple[int, str]]:
        """Optimal one-to-one (face, source) pairs: the assignment maximising the total margin above the
        threshold, ``sum(similarity - threshold)`` over the pairs it makes.

        The margin, not the raw similarity, is what is summed, so that one clear match beats two marginal
        ones (a frame's Alice is not given to Bob's reference so that a weaker Alice look-alike gets Alice).
        A pair below the threshold is worth 0, like no pair, and is dropped after the solve.
        """
        sims, keys = self.similarities(embeddings)
        allowed = sims >= self.threshold
        gain = np.where(allowed, sims - self.threshold + 1e-9, 0.0)
        rows, cols = linear_sum_assignment(gain, maximize=True)
        pairs = [(int(r), keys[int(c)]) for r, c in zip(rows, cols) if allowed[r, c]]
        return sorted(pairs)
