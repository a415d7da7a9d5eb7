"""`swapwatch eval-detector`: the metric functions against hand-computed values, the live stream measures
with a scripted scorer, and the command end to end on a tiny real/fake dataset built from the shared clips.

Nothing here says the detector is good (the committed model is a weak demonstration model): the tests check
the machinery (what is computed, from what, in what range)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from swapwatch.cli import main
from swapwatch.engines.deepfake import Thresholds
from swapwatch.engines.deepfake.evaluation import (
    accuracy_at, dataset_metrics, equal_error_rate, expected_calibration_error, reliability_bins, roc_auc,
    roc_curve, splice_pairs, verdict_counts,
)

FRAMES = 40  # frames kept of each shared clip (1.6 s at 25 fps)
FPS = 25
SOURCE_PHOTO = "max_Luciano.png"


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_auc_with_ties_counts_half():
    # fakes 0.8, 0.5, 0.3 vs reals 0.5, 0.2, pairs won by the fake: 0.8 beats both (2), 0.5 beats 0.2 and
    # ties 0.5 (1.5), 0.3 beats 0.2 (1): 4.5 of 6.
    assert roc_auc([1, 1, 1, 0, 0], [0.8, 0.5, 0.3, 0.5, 0.2]) == pytest.approx(4.5 / 6)
    assert roc_auc([1, 0], [0.4, 0.4]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([0, 0], [0.1, 0.9]))


def test_roc_curve_vertices_and_trapezoid_area():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    fpr, tpr, thr = roc_curve(y, s)
    assert thr[0] == np.inf and list(thr[1:]) == [0.8, 0.4, 0.35, 0.1]
    assert list(fpr) == [0, 0, 0.5, 0.5, 1]
    assert list(tpr) == [0, 0.5, 0.5, 1, 1]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s)) == pytest.approx(0.75)
    # Ties make one diagonal vertex, so the trapezoid area is the tie-averaged AUC too.
    y2, s2 = [1, 1, 1, 0, 0], [0.8, 0.5, 0.3, 0.5, 0.2]
    f2, t2, _ = roc_curve(y2, s2)
    assert np.trapezoid(t2, f2) == pytest.approx(roc_auc(y2, s2))
    with pytest.raises(ValueError):
        roc_curve([1, 1], [0.2, 0.3])


def test_equal_error_rate_known_sets():
    # Vertex on the line fpr = 1 - tpr: at threshold 0.4, one real of two is called fake, one fake of two missed.
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == (0.5, 0.4)
    # Separable: no error from the lowest fake score on.
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == (0.0, 0.7)
    # A tie straddles the line: interpolated half way along the diagonal step.
    assert equal_error_rate([0, 1], [0.5, 0.5]) == (0.5, 0.5)
    # reals 0.1 0.2 0.3 0.6, fakes 0.4 0.7 0.8 0.9: at 0.6, one real called fake (0.6) and one fake missed
    # (0.4): fpr 1/4 = miss 1/4.
    eer, thr = equal_error_rate([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert (eer, thr) == (pytest.approx(0.25), 0.6)
    # Crossing inside a segment: reals 0.2 0.6 0.7, fakes 0.5 0.8. Vertices (fpr, tpr): thr 0.8 (0, 1/2),
    # 0.7 (1/3, 1/2), 0.6 (2/3, 1/2), 0.5 (2/3, 1). d = fpr + tpr - 1 goes from -1/6 to +1/6 between 0.7 and
    # 0.6, as fpr goes from 1/3 to 2/3: the crossing is half way, fpr 1/2; the tie goes to the lower
    # threshold, 0.6.
    eer, thr = equal_error_rate([0, 0, 0, 1, 1], [0.2, 0.6, 0.7, 0.5, 0.8])
    assert eer == pytest.approx(0.5) and thr == 0.6
    assert all(math.isnan(v) for v in equal_error_rate([1, 1], [0.3, 0.4]))


def test_accuracy_and_calibration_known_set():
    y, s = [0, 1, 1, 0], [0.05, 0.95, 0.62, 0.68]
    assert accuracy_at(y, s, 0.5) == 0.75
    assert accuracy_at(y, s, 0.65) == 0.5  # 0.62 missed, 0.68 a false alarm
    assert accuracy_at(y, s, 0.95) == 0.75 and accuracy_at(y, s, 0.96) == 0.5  # score >= threshold is FAKE
    # Bins: 0.05 -> bin 0 (|0 - 0.05|), 0.95 -> bin 9 (|1 - 0.95|), 0.62 and 0.68 -> bin 6 (|0.5 - 0.65| twice).
    assert expected_calibration_error(y, s) == pytest.approx((0.05 + 0.05 + 2 * 0.15) / 4)
    bins = reliability_bins(y, s)
    assert len(bins) == 10 and [b["count"] for b in bins] == [1, 0, 0, 0, 0, 0, 2, 0, 0, 1]
    assert bins[6]["mean_score"] == pytest.approx(0.65) and bins[6]["fraction_fake"] == 0.5
    assert bins[1]["mean_score"] is None
    # 1.0 falls in the last bin, and a perfectly calibrated set has no error.
    assert reliability_bins([1], [1.0])[9]["count"] == 1
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_dataset_metrics_one_class_keeps_what_it_can():
    m = dataset_metrics([0, 0, 0], [0.2, 0.7, 0.1], 0.5)
    assert m["auc"] is None and m["eer"] is None and m["eer_threshold"] is None
    assert m["accuracy"] == pytest.approx(2 / 3) and m["ece"] is not None
    assert (m["n_real"], m["n_fake"], m["threshold"]) == (3, 0, 0.5)
    json.dumps(m, allow_nan=False)


def test_verdict_counts_per_class():
    # reals 0.1 0.35 0.5 0.8, fakes 0.3 0.6 0.9 with REAL below 0.3 and FAKE at 0.6: the edges belong upwards
    y, s = [0, 0, 0, 0, 1, 1, 1], [0.1, 0.35, 0.5, 0.8, 0.3, 0.6, 0.9]
    assert verdict_counts(y, s, Thresholds(fake=0.6, real=0.3)) == {
        "real": {"REAL": 1, "UNCERTAIN": 2, "FAKE": 1}, "fake": {"REAL": 0, "UNCERTAIN": 1, "FAKE": 2}}
    # one threshold: nothing is UNCERTAIN, and the counts are accuracy_at's
    counts = verdict_counts(y, s, Thresholds.single(0.5))
    assert counts == {"real": {"REAL": 2, "UNCERTAIN": 0, "FAKE": 2}, "fake": {"REAL": 1, "UNCERTAIN": 0, "FAKE": 2}}
    assert accuracy_at(y, s, 0.5) == pytest.approx((counts["real"]["REAL"] + counts["fake"]["FAKE"]) / len(y))
    assert verdict_counts([], [], Thresholds.single(0.5))["fake"] == {"REAL": 0, "UNCERTAIN": 0, "FAKE": 0}


def test_splice_pairs_prefer_the_same_identity():
    from swapwatch.engines.deepfake import FAKE, REAL, MediaItem

    reals = [MediaItem(Path(f"real/{n}.mp4"), REAL, n, "folders") for n in ("a", "b", "c")]
    fakes = [MediaItem(Path(f"fake/{n}.mp4"), FAKE, n, "folders") for n in ("c", "a")]
    pairs = splice_pairs(reals, fakes, 10)
    assert [(r.identity, f.identity) for r, f in pairs] == [("a", "a"), ("b", "a"), ("c", "c")]
    assert len(splice_pairs(reals, fakes, 2)) == 2 and splice_pairs(reals, [], 3) == []


# --------------------------------------------------------------------------------------------------
# A tiny dataset: two shared clips cut to 40 frames (real) and the same frames classic-swapped (fake)
# --------------------------------------------------------------------------------------------------


def _write_mp4(path: Path, frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def dataset(clips, face_photos, yunet_onnx, tmp_path_factory) -> Path:
    from swapwatch.engines.faces import YuNetDetector
    from swapwatch.engines.swap import ClassicSwapper, SwapPipeline

    root = tmp_path_factory.mktemp("evalset")
    (root / "real").mkdir()
    (root / "fake").mkdir()
    grid = [c for c in clips if c.name.startswith("grid_") and c.suffix == ".mpg"][:2]
    assert len(grid) == 2
    detector = YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu")
    source = cv2.imread(str(next(p for p in face_photos if p.name == SOURCE_PHOTO)))
    for clip in grid:
        with av.open(str(clip)) as c:
            frames = [f.to_ndarray(format="bgr24") for _, f in zip(range(FRAMES), c.decode(video=0))]
        _write_mp4(root / "real" / f"{clip.stem}.mp4", frames)
        pipeline = SwapPipeline(detector, ClassicSwapper())
        pipeline.add_source(source)
        swapped = [pipeline.process(f, i / FPS).frame for i, f in enumerate(frames)]
        _write_mp4(root / "fake" / f"{clip.stem}.mp4", swapped)
    return root


class StepScorer:
    """A scripted live scorer: probability 0 before ``t0`` and 1 from it on, for every tracked face."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def reset(self) -> None:
        pass

    def score_faces(self, frame, faces, t):
        return {f.track_id: float(t >= self.t0 - 1e-9) for f in faces if f.track_id is not None}


def test_time_to_alert_and_false_alerts_follow_the_policy(dataset, yunet_onnx):
    """With a scorer that jumps from 0 to 1 at the splice, the model policy (EMA 0.3, high 0.7, dwell 0.5 s)
    crosses 0.7 on the 4th fake frame (0.3, 0.51, 0.657, 0.760; t = splice + 0.12 s) and starts the alert
    0.5 s later on the first frame at or past it: splice + 0.64 s at 25 fps."""
    from swapwatch.engines.deepfake import Evaluator, FAKE, REAL, folder_items, stream_summary
    from swapwatch.engines.faces import YuNetDetector

    faces = YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu")
    real = folder_items([dataset / "real"], REAL)[0]
    fake = next(i for i in folder_items([dataset / "fake"], FAKE) if i.identity == real.identity)
    splice_t = FRAMES / FPS
    result = Evaluator(StepScorer(splice_t), faces).splice(real, fake)
    assert result.error is None and (result.real_frames, result.fake_frames) == (FRAMES, FRAMES)
    assert result.splice_s == pytest.approx(splice_t)
    assert result.fake_seconds == pytest.approx(FRAMES / FPS)
    assert result.same_track is True  # a swap of the same clip: the face stays put, the track goes on
    assert result.time_to_alert_s == pytest.approx(0.64, abs=1e-6)
    assert not result.false_alert_before_splice and not result.alert_active_at_splice

    # Alerting from the first frame on: one alert before the splice, none after (it is still on).
    early = Evaluator(StepScorer(0.0), faces).splice(real, fake)
    assert early.false_alert_before_splice and early.alert_active_at_splice
    assert early.time_to_alert_s is None and early.missed

    summary = stream_summary([], [result, early])
    assert summary["time_to_alert_s"] == {"median": 0.64, "mean": 0.64, "missed": 1, "alerted": 1, "splices": 2}
    assert summary["false_alerts_before_splice"] == 1 and summary["false_alerts_per_hour"] is None
    # The change alert needs a baseline: 2 s of scores (here from 0 s, longer than the real part; their median
    # is still the real level), then its 1 s dwell: no alert before 3 s into the stream.
    assert result.change_time_to_alert_s >= 2.0 + 1.0 - splice_t - 1e-6
    assert early.change_time_to_alert_s is None  # a face that scores 1 all along has no step


def test_spliced_streams_report_the_change_alerts_time_to_alert(dataset, yunet_onnx):
    """With a warm-up shorter than the real part, the face's own step at the splice raises a change alert
    one dwell (and the fast average's rise) after it; a face that scores 1 from the start raises none,
    where the model alert fires before the splice."""
    from swapwatch.engines.deepfake import (
        FAKE, REAL, ChangeConfig, Evaluator, StreamSettings, folder_items, stream_summary,
    )
    from swapwatch.engines.faces import YuNetDetector

    faces = YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu")
    real = folder_items([dataset / "real"], REAL)[0]
    fake = next(i for i in folder_items([dataset / "fake"], FAKE) if i.identity == real.identity)
    change = ChangeConfig(warmup=1.0)
    settings = StreamSettings(change=change)
    splice_t = FRAMES / FPS
    stepped = Evaluator(StepScorer(splice_t), faces, settings).splice(real, fake)
    assert stepped.same_track is True and not stepped.change_false_alert_before_splice
    assert change.min_dwell <= stepped.change_time_to_alert_s <= change.min_dwell + 0.5
    assert stepped.change_time_to_alert_s <= stepped.fake_seconds and stepped.time_to_alert_s is not None
    flat = Evaluator(StepScorer(0.0), faces, settings).splice(real, fake)
    assert flat.false_alert_before_splice and flat.change_time_to_alert_s is None
    assert not flat.change_false_alert_before_splice

    summary = stream_summary([], [stepped, flat])
    tta = summary["change_time_to_alert_s"]
    assert (tta["alerted"], tta["missed"], tta["splices"]) == (1, 1, 2)
    assert tta["median"] == tta["mean"] == pytest.approx(stepped.change_time_to_alert_s, abs=1e-3)
    assert summary["change_false_alerts_before_splice"] == 0 and summary["false_alerts_before_splice"] == 1
    sp = stepped.to_json()
    assert sp["change_time_to_alert_s"] == pytest.approx(stepped.change_time_to_alert_s, abs=1e-3)
    assert sp["change_missed"] is False and flat.to_json()["change_missed"] is True
    json.dumps(summary | {"splices": [s.to_json() for s in summary["splices"]]}, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# The command end to end
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalout")
    json_path, plot_path = out / "report.json", out / "report.png"
    # Live strides 1 and 2 so that 40-frame clips get several live scores (the defaults, 2 and 5, need
    # 40 frames before the first).
    argv = ["eval-detector", str(dataset), "--json", str(json_path), "--plot", str(plot_path), "--splices", "2",
            "--deepfake-stride", "1", "--deepfake-score-every", "2", "--backend", "onnxruntime"]
    assert main(argv) == 0
    return json.loads(json_path.read_text()), plot_path


def test_report_schema_and_ranges(report, dataset, capsys):
    data, _ = report
    assert set(data) >= {"videos", "metrics", "streams", "model"}
    videos = data["videos"]
    assert sorted((Path(v["path"]).parent.name, v["label"]) for v in videos) == [
        ("fake", "FAKE"), ("fake", "FAKE"), ("real", "REAL"), ("real", "REAL")]
    for v in videos:
        assert v["verdict"] in ("REAL", "UNCERTAIN", "FAKE") and 0.0 <= v["score"] <= 1.0
        assert v["frames"] == FRAMES and v["seconds"] == pytest.approx(FRAMES / FPS)
        m = data["metrics"]
        assert v["verdict"] == Thresholds(fake=m["threshold"], real=m["real_threshold"]).verdict(v["score"])
        assert (v["alerts"] is None) == (v["label"] == "FAKE")  # the live path runs on real videos

    m = data["metrics"]
    assert {"auc", "eer", "eer_threshold", "accuracy", "threshold", "ece", "n_real", "n_fake"} <= set(m)
    assert (m["n_real"], m["n_fake"], m["n_no_faces"]) == (2, 2, 0)
    for key in ("auc", "eer", "accuracy", "ece"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0) and m["auc"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert m["threshold"] == data["model"]["threshold"]  # the model's own when --threshold is not given
    # the default model's two thresholds (fitted on held-out people), and the counts are the videos' verdicts
    assert m["real_threshold"] == data["model"]["real_threshold"] < m["threshold"]
    for name, label in (("real", "REAL"), ("fake", "FAKE")):
        counts = m["verdicts"][name]
        assert sum(counts.values()) == m[f"n_{name}"]
        assert counts == {v: sum(x["verdict"] == v for x in videos if x["label"] == label)
                          for v in ("REAL", "UNCERTAIN", "FAKE")}
    scores = [v["score"] for v in videos]
    assert min(abs(m["eer_threshold"] - x) for x in scores) < 1e-4  # a video's score (rounded in "videos")

    s = data["streams"]
    assert len(s["splices"]) == 2
    for sp, stem in zip(s["splices"], sorted(p.stem for p in (dataset / "real").iterdir())):
        assert Path(sp["real"]).stem == Path(sp["fake"]).stem == stem  # paired by identity (file name)
        assert (sp["real_frames"], sp["fake_frames"]) == (FRAMES, FRAMES)
        assert sp["splice_s"] == pytest.approx(FRAMES / FPS)
        assert sp["time_to_alert_s"] is None or 0.0 <= sp["time_to_alert_s"] <= sp["fake_seconds"]
        assert sp["missed"] == (sp["time_to_alert_s"] is None)
    tta = s["time_to_alert_s"]
    assert set(tta) >= {"median", "mean", "missed"} and tta["missed"] + tta["alerted"] == 2
    assert s["real_hours"] == pytest.approx(2 * FRAMES / FPS / 3600, rel=1e-3)
    assert s["false_alerts"] == sum(v["alerts"] for v in videos if v["label"] == "REAL")
    assert s["false_alerts_per_hour"] == pytest.approx(s["false_alerts"] / s["real_hours"], rel=1e-3)
    # The change alert's figures beside the model's.
    for sp in s["splices"]:
        assert sp["change_time_to_alert_s"] is None or 0.0 <= sp["change_time_to_alert_s"] <= sp["fake_seconds"]
        assert sp["change_missed"] == (sp["change_time_to_alert_s"] is None)
    assert s["change_time_to_alert_s"]["missed"] + s["change_time_to_alert_s"]["alerted"] == 2
    assert all((v["change_alerts"] is None) == (v["label"] == "FAKE") for v in videos)
    assert s["change_false_alerts"] == sum(v["change_alerts"] for v in videos if v["label"] == "REAL")
    assert s["change_false_alerts_per_hour"] == pytest.approx(s["change_false_alerts"] / s["real_hours"], rel=1e-3)
    assert data["model"]["live"]["change"]["step"] == 0.25
    assert data["model"]["default"] is True and data["model"]["live"]["feature_stride"] == 1


def test_offline_score_is_score_video(report, dataset, yunet_onnx):
    """One pass feeds both the offline score and the live path; the offline score is score_video's."""
    from swapwatch.engines.deepfake import DeepfakeDetector, WindowConfig, score_video
    from swapwatch.engines.faces import YuNetDetector

    data, _ = report
    video = next(v for v in data["videos"] if v["label"] == "FAKE")
    detector = DeepfakeDetector.load(None, backend="onnxruntime", device="cpu", config=WindowConfig(score_stride=2))
    clip = score_video(video["path"], detector, YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu"))
    assert clip.score == pytest.approx(video["score"], abs=1e-4)


def test_plot_is_a_png_with_three_panels(report):
    _, plot_path = report
    image = cv2.imread(str(plot_path))
    assert image is not None and image.shape[1] > 2 * image.shape[0]  # three panels side by side
    assert image.std() > 10  # something drawn


def test_table_is_printed(dataset, tmp_path, capsys):
    assert main(["eval-detector", str(dataset), "--max-videos", "1", "--max-frames", "24", "--splices", "0",
                 "--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "EER" in out and "ECE" in out and "false alerts" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["model"], ["change"])}
    assert set(rows) == {"model", "change"}  # one row per kind of live alert, side by side
    assert out.count(".mp4") == 2  # one real and one fake row


def test_a_band_makes_videos_uncertain_and_is_counted(dataset, tmp_path, capsys):
    """--real-threshold 0 and --threshold 1: every video scoring below 1 lies in the band, so it is UNCERTAIN;
    the summary says how each class was called, the metrics count it, the plot shows the band."""
    out_json, plot = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["eval-detector", str(dataset), "--max-videos", "1", "--max-frames", "24", "--splices", "0",
                 "--backend", "onnxruntime", "--threshold", "1", "--real-threshold", "0", "--json", str(out_json),
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    data = json.loads(out_json.read_text())
    m = data["metrics"]
    assert all(v["verdict"] == "UNCERTAIN" and v["score"] < 1.0 for v in data["videos"])
    assert (m["threshold"], m["real_threshold"]) == (1.0, 0.0)
    assert m["verdicts"] == {"real": {"REAL": 0, "UNCERTAIN": 1, "FAKE": 0},
                             "fake": {"REAL": 0, "UNCERTAIN": 1, "FAKE": 0}}
    assert "real clips called FAKE: 0/1, UNCERTAIN: 1/1" in out and "fake clips called REAL: 0/1, UNCERTAIN: 1/1" in out
    assert "real below 0.000, fake at 1.000" in out
    assert m["auc"] is not None and m["accuracy"] == 0.5  # the metrics do not depend on the band
    assert cv2.imread(str(plot)) is not None
    # a REAL threshold above the FAKE one is refused
    assert main(["eval-detector", str(dataset), "--threshold", "0.3", "--real-threshold", "0.6"]) == 2
    assert "--real-threshold" in capsys.readouterr().err


def test_one_class_reports_what_it_can(dataset, tmp_path, capsys):
    only_real = tmp_path / "only_real"
    (only_real / "real").mkdir(parents=True)
    src = min((dataset / "real").iterdir())
    (only_real / "real" / src.name).write_bytes(src.read_bytes())
    out_json = tmp_path / "r.json"
    assert main(["eval-detector", str(only_real), "--max-frames", "24", "--json", str(out_json),
                 "--backend", "onnxruntime"]) == 0
    captured = capsys.readouterr()
    assert "no fake videos" in captured.err
    assert "AUC n/a" in captured.out and "undefined" in captured.out
    data = json.loads(out_json.read_text())
    assert data["metrics"]["auc"] is None and data["metrics"]["accuracy"] is not None
    assert data["streams"]["splices"] == [] and data["streams"]["false_alerts_per_hour"] is not None


def test_videos_without_faces_are_listed_and_excluded(dataset, tmp_path):
    root = tmp_path / "ds"
    for sub in ("real", "fake"):
        (root / sub).mkdir(parents=True)
        src = min((dataset / sub).iterdir())
        (root / sub / src.name).write_bytes(src.read_bytes())
    _write_mp4(root / "real" / "blank.mp4", [np.full((96, 128, 3), 90, np.uint8)] * 6)
    out_json = tmp_path / "r.json"
    assert main(["eval-detector", str(root), "--max-frames", "24", "--splices", "0", "--json", str(out_json),
                 "--backend", "onnxruntime"]) == 0
    data = json.loads(out_json.read_text())
    blank = next(v for v in data["videos"] if v["path"].endswith("blank.mp4"))
    assert blank["verdict"] == "NO_FACES" and blank["score"] is None
    m = data["metrics"]
    assert (m["n_real"], m["n_fake"], m["n_no_faces"]) == (1, 1, 1)
    assert any("NO_FACES" in n for n in data["notes"])


@pytest.mark.parametrize("layout,expected", [
    ("missing", "no such folder"), ("nosub", "expected real/ and fake/"), ("empty", "no videos found")])
def test_clear_errors(tmp_path, capsys, layout, expected):
    root = tmp_path / "ds"
    if layout != "missing":
        root.mkdir()
    if layout == "empty":
        (root / "real").mkdir()
        (root / "fake").mkdir()
    assert main(["eval-detector", str(root)]) == 2
    assert expected in capsys.readouterr().err


def test_bad_options(tmp_path, capsys):
    assert main(["eval-detector", str(tmp_path), "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main(["eval-detector", str(tmp_path), "--plot", str(tmp_path / "x.jpg")]) == 2
    assert ".png" in capsys.readouterr().err


def test_live_strides_are_spelled_as_in_serve_and_monitor():
    """eval-detector takes serve's and monitor's names for the live strides (and its older short ones)."""
    from swapwatch.cli import build_parser

    parser = build_parser()
    for argv in (["--deepfake-stride", "3", "--deepfake-score-every", "4"], ["--stride", "3", "--score-every", "4"]):
        args = parser.parse_args(["eval-detector", "data", *argv])
        assert (args.deepfake_stride, args.deepfake_score_every) == (3, 4)
    for command in (["serve"], ["monitor", "clip.mp4"]):
        args = parser.parse_args([*command, "--deepfake-stride", "3", "--deepfake-score-every", "4"])
        assert (args.deepfake_stride, args.deepfake_score_every) == (3, 4)
