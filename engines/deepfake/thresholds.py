"""A detector's two decision thresholds and the verdict they give: REAL, UNCERTAIN or FAKE.

    score <  real          -> REAL       (the detector is confident the face is not manipulated)
    real  <= score < fake  -> UNCERTAIN  (the detector cannot tell)
    score >= fake          -> FAKE
    no score (no face)     -> NO_FACES   (never a guess)

A model's ``detector.json`` carries ``threshold`` (the FAKE threshold) and, when it was calibrated on held-out
people, ``real_threshold`` (the REAL one); without it the two are equal and there is no UNCERTAIN band, the
single-threshold behaviour. :meth:`Thresholds.fit` sets both from held-out scores. Every verdict in swapwatch
(``detect``, ``POST /detect``, ``eval-detector``, live monitoring) goes through :meth:`Thresholds.verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FAKE", "NO_FACES", "REAL", "UNCERTAIN", "VERDICTS", "ThresholdFit", "Thresholds"]

REAL, UNCERTAIN, FAKE, NO_FACES = "REAL", "UNCERTAIN", "FAKE", "NO_FACES"
VERDICTS = (REAL, UNCERTAIN, FAKE, NO_FACES)


@dataclass(frozen=True)
class Thresholds:
    """FAKE at or above ``fake``, REAL below ``real``, UNCERTAIN in between (``0 <= real <= fake <= 1``)."""

    fake: float
    real: float

    def __post_init__(self) -> None:
        fake, real = float(self.fake), float(self.real)
        if not (math.isfinite(fake) and math.isfinite(real) and 0.0 <= real <= fake <= 1.0):
            raise ValueError(f"thresholds need 0 <= real <= fake <= 1, got real {real:g} and fake {fake:g}")
        object.__setattr__(self, "fake", fake)
        object.__setattr__(self, "real", real)

    @classmethod
    def single(cls, threshold: float) -> Thresholds:
        """One threshold: FAKE at or above it, REAL below, never UNCERTAIN."""
        return cls(fake=threshold, real=threshold)

    @property
    def has_band(self) -> bool:
        """Whether some scores are UNCERTAIN (``real < fake``)."""
        return self.real < self.fake

    def verdict(self, score: float | None) -> str:
        """``NO_FACES`` for None, else REAL (``score < real``), FAKE (``score >= fake``) or UNCERTAIN."""
        if score is None:
            return NO_FACES
        if score >= self.fake:
            return FAKE
        return REAL if score < self.real else UNCERTAIN

    def overridden(self, fake: float | None = None, real: float | None = None) -> Thresholds:
        """These thresholds with the ones given replaced (a user's ``--threshold`` / ``--real-threshold``).

        A new ``fake`` alone moves a single threshold as a whole (a model without a band keeps none); with a
        band, ``real`` stays unless the new ``fake`` is below it, and then drops to it. Raises ValueError when
        the result is not ``0 <= real <= fake <= 1``."""
        if fake is None and real is None:
            return self
        new_fake = self.fake if fake is None else float(fake)
        if real is not None:
            new_real = float(real)
        elif not self.has_band:
            new_real = new_fake
        else:
            new_real = min(self.real, new_fake)
        return Thresholds(fake=new_fake, real=new_real)

    def to_json(self) -> dict[str, float]:
        return {"real": self.real, "fake": self.fake}

    @classmethod
    def fit(cls, real_scores: Sequence[float], fake_scores: Sequence[float], *, max_real_flagged: float = 0.05,
            min_fake_caught: float = 0.95) -> tuple[Thresholds, ThresholdFit]:
        """Both thresholds from held-out people's scores (people the model was not trained on).

        With the ``n`` real scores sorted ascending ``r(1) <= ... <= r(n)`` and ``k = floor(max_real_flagged *
        n)`` reals allowed at or above ``fake``: ``fake`` is the smallest float above ``r(n - k)``
        (``nextafter(r(n - k), +inf)``; 0 when ``k >= n``). Any lower threshold would flag at least ``k + 1``
        reals; with ties above ``r(n - k)`` fewer than ``k`` are flagged. A ``fake`` that would exceed 1 (a
        real scored exactly 1.0) is 1.0, and the report says how many reals it flags.

        With the ``m`` fake scores sorted ascending ``f(1) <= ... <= f(m)`` and ``j = floor((1 -
        min_fake_caught) * m)`` fakes allowed below ``real``: ``real`` is ``f(j + 1)``, the largest threshold
        with at most ``j`` fakes below it (1.0 when ``j >= m``), then capped at ``fake`` (``capped`` in the
        report): a band cannot be inverted, and with well separated classes the band is empty.

        Returns the thresholds and a :class:`ThresholdFit` saying what they do on these scores.
        Raises ValueError without scores of both kinds, on a score outside [0, 1], or on rates outside [0, 1].
        """
        reals, fakes = _scores(real_scores, "real"), _scores(fake_scores, "fake")
        if not 0.0 <= max_real_flagged <= 1.0 or not 0.0 <= min_fake_caught <= 1.0:
            raise ValueError("max_real_flagged and min_fake_caught must lie in [0, 1]")
        k = _allowed(max_real_flagged, len(reals))
        fake = 0.0 if k >= len(reals) else min(float(np.nextafter(reals[len(reals) - k - 1], np.inf)), 1.0)
        j = _allowed(1.0 - min_fake_caught, len(fakes))
        real = 1.0 if j >= len(fakes) else float(fakes[j])
        thresholds = cls(fake=fake, real=min(real, fake))
        return thresholds, ThresholdFit.measure(thresholds, reals, fakes, capped=real > fake)


@dataclass(frozen=True)
class ThresholdFit:
    """What fitted thresholds do on the scores they were fitted to (counts of held-out videos or tracks)."""

    n_real: int
    n_fake: int
    reals_flagged: int  # real scores at or above `fake`: real people called FAKE
    reals_uncertain: int  # real scores in the band
    fakes_below_real: int  # fake scores below `real`: fakes called REAL
    fakes_uncertain: int  # fake scores in the band
    capped: bool  # `real` was lowered to `fake` (fewer fakes would have fallen below it otherwise)

    @classmethod
    def measure(cls, thresholds: Thresholds, reals: Sequence[float], fakes: Sequence[float], *,
                capped: bool = False) -> ThresholdFit:
        real_verdicts = [thresholds.verdict(float(s)) for s in reals]
        fake_verdicts = [thresholds.verdict(float(s)) for s in fakes]
        return cls(n_real=len(real_verdicts), n_fake=len(fake_verdicts),
                   reals_flagged=real_verdicts.count(FAKE), reals_uncertain=real_verdicts.count(UNCERTAIN),
                   fakes_below_real=fake_verdicts.count(REAL), fakes_uncertain=fake_verdicts.count(UNCERTAIN),
                   capped=capped)

    def to_json(self) -> dict[str, Any]:
        return {"n_real": self.n_real, "n_fake": self.n_fake, "reals_flagged": self.reals_flagged,
                "reals_uncertain": self.reals_uncertain, "fakes_below_real": self.fakes_below_real,
                "fakes_uncertain": self.fakes_uncertain, "capped": self.capped}


def _scores(scores: Sequence[float], kind: str) -> np.ndarray:
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if not len(s):
        raise ValueError(f"fitting thresholds needs held-out {kind} scores; got none")
    if not np.isfinite(s).all() or s[0] < 0.0 or s[-1] > 1.0:
        raise ValueError(f"{kind} scores must be probabilities in [0, 1]")
    return s


def _allowed(rate: float, n: int) -> int:
    """How many of ``n`` scores a rate allows (rounded down; the epsilon keeps 0.05 * 20 at 1, not 0)."""
    return math.floor(rate * n + 1e-9)
