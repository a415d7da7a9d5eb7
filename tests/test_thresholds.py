"""A detector's two thresholds (engines/deepfake/thresholds.py): the verdict they give, how a user's override moves
them, how they are fitted on held-out scores (ties, tiny samples, separable and overlapping classes, the cap),
and how detector.json carries them (a model without ``real_threshold`` reads, writes and decides as before)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swapwatch.engines.deepfake import DetectorInfo, ThresholdFit, Thresholds
from swapwatch.engines.deepfake.detector import ClipScores, TrackScores
from swapwatch.errors import ModelError


# ---- the verdict ----------------------------------------------------------------------------------------


def test_verdict_at_the_edges_of_the_band():
    th = Thresholds(fake=0.7, real=0.3)
    assert th.has_band and th.to_json() == {"real": 0.3, "fake": 0.7}
    assert [th.verdict(s) for s in (0.0, 0.2999, 0.3, 0.5, 0.6999, 0.7, 1.0)] == [
        "REAL", "REAL", "UNCERTAIN", "UNCERTAIN", "UNCERTAIN", "FAKE", "FAKE"]
    assert th.verdict(None) == "NO_FACES"


def test_one_threshold_is_never_uncertain():
    th = Thresholds.single(0.5)
    assert not th.has_band and (th.real, th.fake) == (0.5, 0.5)
    assert [th.verdict(s) for s in (0.0, 0.4999, 0.5, 1.0)] == ["REAL", "REAL", "FAKE", "FAKE"]
    # the edges of [0, 1]: threshold 0 calls everything FAKE, 1 only a score of exactly 1
    assert Thresholds.single(0.0).verdict(0.0) == "FAKE" and Thresholds.single(1.0).verdict(0.999) == "REAL"


@pytest.mark.parametrize("fake,real", [(0.4, 0.6), (1.2, 0.5), (0.5, -0.1), (float("nan"), 0.2)])
def test_invalid_pairs_are_refused_with_a_clear_error(fake, real):
    with pytest.raises(ValueError, match="0 <= real <= fake <= 1"):
        Thresholds(fake=fake, real=real)


def test_overrides_move_the_thresholds_as_documented():
    band, single = Thresholds(fake=0.7, real=0.3), Thresholds.single(0.5)
    assert band.overridden() is band
    # a new fake threshold keeps the real one, unless it falls below it: then the real one drops to it
    assert band.overridden(fake=0.8) == Thresholds(fake=0.8, real=0.3)
    assert band.overridden(fake=0.2) == Thresholds(fake=0.2, real=0.2)
    # a model with one threshold keeps one: --threshold alone moves it whole (no band appears)
    assert single.overridden(fake=0.9) == Thresholds.single(0.9)
    assert single.overridden(real=0.2) == Thresholds(fake=0.5, real=0.2)
    assert band.overridden(fake=0.6, real=0.1) == Thresholds(fake=0.6, real=0.1)
    with pytest.raises(ValueError):
        band.overridden(real=0.75)  # above the model's fake threshold


# ---- fitting on held-out scores -------------------------------------------------------------------------


def test_fit_overlapping_classes_takes_the_order_statistics():
    reals = np.linspace(0.0, 0.95, 20)  # 0, 0.05, ..., 0.95
    fakes = np.linspace(0.3, 1.0, 20)
    th, report = Thresholds.fit(reals, fakes, max_real_flagged=0.05, min_fake_caught=0.95)
    # 5% of 20 reals: one may reach the fake threshold, so it sits just above the 19th smallest (0.90)
    assert th.fake == np.nextafter(reals[18], np.inf) and th.fake > reals[18]
    # 5% of 20 fakes: one may fall below the real threshold, so it is the 2nd smallest fake
    assert th.real == fakes[1]
    assert report == ThresholdFit(n_real=20, n_fake=20, reals_flagged=1, reals_uncertain=12, fakes_below_real=1,
                                  fakes_uncertain=16, capped=False)
    assert sum(th.verdict(s) == "FAKE" for s in reals) <= 1
    assert sum(th.verdict(s) == "REAL" for s in fakes) <= 1
    assert set(report.to_json()) == {"n_real", "n_fake", "reals_flagged", "reals_uncertain", "fakes_below_real",
                                     "fakes_uncertain", "capped"}


def test_fit_is_the_smallest_fake_threshold_with_the_property():
    reals = [0.1, 0.2, 0.3, 0.4]
    th, _ = Thresholds.fit(reals, [0.9], max_real_flagged=0.25)
    below = np.nextafter(th.fake, -np.inf)  # one step lower flags two reals of four: more than 25%
    assert sum(s >= th.fake for s in reals) == 1 and sum(s >= below for s in reals) == 2


def test_fit_with_ties_never_flags_more_than_allowed():
    reals = [0.2, 0.5, 0.5, 0.5, 0.5]  # k = 1 of 5 at 20%, but the top four are tied
    th, report = Thresholds.fit(reals, [0.5, 0.5, 0.9], max_real_flagged=0.2, min_fake_caught=1.0)
    assert th.fake > 0.5 and report.reals_flagged == 0  # any threshold at 0.5 would flag all four
    # the real threshold: no fake may fall below it, so it is the smallest fake (tied at 0.5)
    assert th.real == 0.5 and report.fakes_below_real == 0 and report.fakes_uncertain == 2


def test_fit_on_tiny_samples():
    th, report = Thresholds.fit([0.4], [0.6])  # 5% of one real rounds down to none
    assert th == Thresholds(fake=float(np.nextafter(0.4, np.inf)), real=float(np.nextafter(0.4, np.inf)))
    assert report.capped and report.reals_flagged == 0 and report.fakes_below_real == 0
    # a rate that allows every score: the threshold admits them all
    th, report = Thresholds.fit([0.3, 0.8], [0.1, 0.2], max_real_flagged=1.0, min_fake_caught=0.0)
    assert th == Thresholds(fake=0.0, real=0.0) and report.reals_flagged == 2
    with pytest.raises(ValueError, match="real scores"):
        Thresholds.fit([], [0.5])
    with pytest.raises(ValueError, match="fake scores"):
        Thresholds.fit([0.5], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Thresholds.fit([0.5], [1.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Thresholds.fit([0.5], [0.6], max_real_flagged=2.0)


def test_fit_all_separable_has_no_band():
    """Every fake above every real: the real threshold (the smallest fake) is above the fake threshold (just
    above the largest real), so it is capped there: no UNCERTAIN band, and nothing misclassified."""
    reals, fakes = [0.05, 0.1, 0.2, 0.25], [0.6, 0.7, 0.9]
    th, report = Thresholds.fit(reals, fakes, max_real_flagged=0.0, min_fake_caught=1.0)
    assert not th.has_band and th.fake == np.nextafter(0.25, np.inf) and report.capped
    assert [th.verdict(s) for s in reals] == ["REAL"] * 4 and [th.verdict(s) for s in fakes] == ["FAKE"] * 3


def test_fit_caps_the_fake_threshold_at_one():
    th, report = Thresholds.fit([0.2, 1.0], [1.0], max_real_flagged=0.0)
    assert th.fake == 1.0 and report.reals_flagged == 1  # the report says the target was not met


# ---- detector.json --------------------------------------------------------------------------------------


def test_detector_json_round_trip(tmp_path):
    path = tmp_path / "detector.json"
    one = DetectorInfo(window=8, threshold=0.55, extra={"note": "x"})
    one.write(path)
    assert "real_threshold" not in json.loads(path.read_text())  # a one-threshold file stays as it was
    back = DetectorInfo.read(path)
    assert back == one and back.thresholds == Thresholds.single(0.55)
    banded = DetectorInfo(window=8, threshold=0.7, real_threshold=0.35, extra={"note": "x"})
    banded.write(path)
    data = json.loads(path.read_text())
    assert (data["threshold"], data["real_threshold"], data["note"]) == (0.7, 0.35, "x")
    assert DetectorInfo.read(path).thresholds == Thresholds(fake=0.7, real=0.35)
    path.write_text(json.dumps({**data, "real_threshold": 0.9}))
    with pytest.raises(ModelError, match="0 <= real <= fake <= 1"):
        DetectorInfo.read(path)


def test_clip_verdicts_use_the_band():
    tracks = {1: TrackScores(1, [0.0] * 8, [0.5] * 8, [0.1, 0.2], [0.5, 0.5]),
              2: TrackScores(2, [0.0] * 8, [0.2] * 8, [0.1], [0.2]), 3: TrackScores(3, [0.0], [0.9])}
    clip = ClipScores(tracks, Thresholds(fake=0.6, real=0.4))
    assert clip.score == 0.5 and clip.verdict == "UNCERTAIN" and clip.threshold == 0.6
    assert [clip.track_verdict(t) for t in (1, 2, 3)] == ["UNCERTAIN", "REAL", None]
    assert ClipScores(tracks, Thresholds.single(0.5)).verdict == "FAKE"
    assert ClipScores({}, Thresholds.single(0.5)).verdict == "NO_FACES"
