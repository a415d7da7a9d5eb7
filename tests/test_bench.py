"""`swapwatch bench`: it runs, its JSON has the documented schema, its plot is a PNG, bad arguments are one-line
errors, and the pipeline's swapped frame equals the baseline's where both detect on the same frame.

No timing is asserted here: speed is what the benchmark measures (BENCHMARKS.md), not what unit tests check.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from swapwatch.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["bench", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def check_side(side: dict) -> None:
    assert isinstance(side["fps"], float) and side["fps"] > 0
    stages = side["stages"]
    for name in ("decode", "detect", "align", "swap", "paste", "encode", "upload", "download", "embed"):
        assert name in stages, name
    for name, stage in stages.items():
        assert set(stage) >= {"p50_ms", "p95_ms"}, name
        assert 0.0 <= stage["p50_ms"] <= stage["p95_ms"], (name, stage)


def test_bench_compare_baseline_json_and_plot(shared_assets, tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code, out, err = run_cli(capsys, "--compare-baseline", "--resolution", "320x240", "--frames", "6",
                             "--warmup", "2", "--rounds", "2", "--detect-every", "5", "--json", str(out_json),
                             "--plot", str(out_png))
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert {"device", "pipeline", "baseline"} <= set(data)
    assert data["device"]["cores"] >= 1 and "onnxruntime" in data["device"]["versions"]
    assert data["device"]["backend"] == "auto" and data["device"]["precision"] == "fp32"
    for side in ("pipeline", "baseline"):
        check_side(data[side])
        assert data[side]["frames"] == 6
        assert data[side]["faces_swapped"] > 0
    assert "deepfake" in data["pipeline"]["stages"] and "deepfake" in data["baseline"]["stages"]
    assert "track" in data["pipeline"]["stages"] and "track" not in data["baseline"]["stages"]
    assert data["baseline"]["detections_run"] == 6  # every frame
    assert data["pipeline"]["detections_run"] < 6  # every 5th frame, flow in between
    assert data["ratio"] == pytest.approx(data["pipeline"]["fps"] / data["baseline"]["fps"], rel=1e-2)
    assert data["device"]["gpu"] is None or isinstance(data["device"]["gpu"], str)
    # The report: header, a per-stage table for both sides, the ratio.
    assert "device:" in out and "| stage | pipeline" in out and "baseline p50 / p95" in out
    assert "pipeline / baseline frame rate:" in out
    assert "weight-free" in out  # the swap model's weights are named in the header
    image = cv2.imread(str(out_png))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_bench_sessions_faces_detector_off(shared_assets, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code, _, err = run_cli(capsys, "--resolution", "320x240", "--faces", "2", "--sessions", "2", "--frames", "3",
                             "--warmup", "1", "--rounds", "1", "--deepfake", "off", "--detect-every", "1",
                             "--json", str(out_json))
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert data["baseline"] is None and data["ratio"] is None
    check_side(data["pipeline"])
    assert data["pipeline"]["frames"] == 6  # 3 per session
    assert "deepfake" not in data["pipeline"]["stages"]
    assert data["pipeline"]["faces_swapped"] > 0


@pytest.mark.parametrize("args, needle", [
    (["--resolution", "big"], "expected WxH"),
    (["--resolution", "641x480"], "even width and height"),
    (["--faces", "0"], "--faces must be at least 1"),
    (["--sessions", "0"], "--sessions must be at least 1"),
    (["--frames", "0"], "--frames must be at least 1"),
    (["--input", "/nonexistent/clip.mp4"], "no such file"),
    (["--plot", "chart.jpg"], "PNG"),
    (["--json", "/nonexistent/dir/out.json"], "does not exist"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
    (["--swap-model", "classic", "--random-weights"], "--random-weights applies to simswap"),
])
def test_bad_arguments_are_one_line_errors(args, needle, capsys, shared_assets):
    code, _, err = run_cli(capsys, *args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("bench: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("swapwatch bench: error:") and needle in lines[0], lines[0]


def test_input_that_is_not_a_video(tmp_path, capsys):
    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video")
    code, _, err = run_cli(capsys, "--input", str(bad))
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("bench: ")]
    assert len(lines) == 1 and "not a readable" in lines[0], err


def test_prepared_input_tiles_faces(shared_assets, tmp_path, detector):
    from swapwatch.engines.bench import default_clips, open_decoder, prepare_input

    clips = default_clips()
    assert clips, "the shared GRID clips were not found"
    clip = prepare_input(tmp_path / "in.mp4", clips=clips, width=640, height=480, faces=4, frames=90)
    frames = [f.to_ndarray(format="bgr24") for f in open_decoder(clip.path)]
    assert len(frames) == 90  # longer than a 75-frame clip: played forwards then backwards
    assert frames[0].shape == (480, 640, 3)
    assert len(detector.detect(frames[0])) == 4
    assert len(detector.detect(frames[80])) == 4


def test_stage_stats_count_frames_where_a_stage_did_not_run():
    from swapwatch.engines.bench import StageStats

    stats = StageStats()
    stats.add_frame({"detect": 0.010, "swap": 0.002})
    for _ in range(3):
        stats.add_frame({"swap": 0.002})
    s = stats.summary()
    assert s["detect"]["p50_ms"] == 0.0 and s["detect"]["mean_ms"] == pytest.approx(2.5)
    assert s["swap"]["p50_ms"] == pytest.approx(2.0) and s["swap"]["p95_ms"] == pytest.approx(2.0)


def _grid_frames(clips, n, size=(640, 512)):
    from swapwatch.engines.runtime import iter_video

    out = []
    for f in iter_video(clips[0]):
        out.append((cv2.resize(f.image, size), f.time))
        if len(out) == n:
            return out
    return out


def test_pipeline_output_equals_baseline_on_detected_frames(shared_assets, clips, face_photos, detector):
    """Same frame, same detections, same model: the pipeline's stages (plan -> generate -> paste, the ones the
    server's FrameProcessor calls) and the baseline's per-face full-frame loop give the same picture.

    Tolerance: 1 grey level, 2 on at most 5 pixels. The pipeline blends with cv2.blendLinear (rounded, weights
    divided by their sum + 1e-5) inside the face's rectangle; the baseline blends in float32 over the whole frame
    and truncates, as InsightFace does. Everywhere outside the
    face mask both are the input frame, bit for bit. Landmark smoothing is off: it moves the pipeline's landmarks
    after the first frame of a track, so smoothed frames differ by design (the first frame, where the filter
    passes its input through, is checked with smoothing on too).
    """
    from swapwatch.engines.bench import BaselineLoop
    from swapwatch.engines.runtime import read_image
    from swapwatch.engines.swap import ClassicSwapper, SwapOptions, SwapPipeline

    grid_clips = [c for c in clips if c.name.startswith("grid_")]
    swapper = ClassicSwapper()
    photo = read_image(face_photos[0])
    for smoothing, n_frames in ((False, 4), (True, 1)):
        pipe = SwapPipeline(detector, swapper, options=SwapOptions(smoothing=smoothing, detect_every=1))
        pipe.add_source(photo)
        (identity,) = pipe.sources.values()
        base = BaselineLoop(detector, swapper, identity)
        for frame, t in _grid_frames(grid_clips, n_frames):
            ours = pipe.process(frame, t)
            theirs, faces = base.process(frame, t)
            assert len(ours.swapped) == len(faces) == 1
            diff = np.abs(ours.frame.astype(np.int16) - theirs.astype(np.int16))
            assert diff.max() <= 2, diff.max()
            assert (diff > 1).sum() <= 5, (diff > 1).sum()  # a stray pixel where rounding and truncation part
            changed = np.abs(ours.frame.astype(np.int16) - frame).max(axis=2) > 0
            assert changed.mean() > 0.02  # the face was really swapped
            outside = (np.abs(theirs.astype(np.int16) - frame).max(axis=2) == 0) & ~changed
            assert outside.mean() > 0.8  # most of the frame is untouched by both


def test_baseline_deepfake_runs_every_frame_per_face(shared_assets, clips, face_photos, detector):
    """The baseline's deepfake detector has no strides: the scorer runs on every frame for every face."""
    from swapwatch.engines.bench import BaselineLoop, StageClock
    from swapwatch.engines.deepfake import DeepfakeDetector
    from swapwatch.engines.runtime import read_image
    from swapwatch.engines.swap import ClassicSwapper

    swapper = ClassicSwapper()
    photo = read_image(face_photos[0])
    identity = swapper.prepare_source(photo, max(detector.detect(photo), key=lambda f: f.area))
    deepfake = DeepfakeDetector.load(None)
    loop = BaselineLoop(detector, swapper, identity, deepfake=deepfake)
    clock = StageClock()
    frames = _grid_frames([c for c in clips if c.name.startswith("grid_")], 3)
    for frame, t in frames:
        loop.process(frame, t, clock)
        assert clock.take()["deepfake"] > 0
    buf = deepfake._tracks[0]
    assert buf.count == len(frames)


def check_device_side(side: dict, *, codec: bool) -> None:
    """The device path's side: the documented stages, upload/download measured, processing and latency."""
    assert side["path"] == "device" and side["codec"] is codec
    assert isinstance(side["fps"], float) and side["fps"] > 0
    stages = side["stages"]
    expected = {"upload", "detect", "track", "align", "embed", "swap", "paste", "label", "download",
                "device_overhead", "queue"}
    expected |= {"decode", "convert", "output", "encode"} if codec else set()
    assert expected <= set(stages), expected - set(stages)
    if not codec:
        assert not {"decode", "encode", "output"} & set(stages)
    for name in ("upload", "download"):
        assert stages[name]["measured"] is True and stages[name]["mean_ms"] > 0.0, name
    for name, stage in stages.items():
        assert 0.0 <= stage["p50_ms"] <= stage["p95_ms"], (name, stage)
    for key in ("processing", "latency"):
        assert 0.0 < side[key]["p50_ms"] <= side[key]["p95_ms"], key
    assert side["device"] == "cpu" and side["precision_used"] == "fp32"


def test_bench_device_path_on_cpu(shared_assets, tmp_path, capsys):
    """--device-path on torch CPU: two sessions batched into one DeviceFramePath call per step, codec on; the
    classic swapper has no torch generator, so each batch makes one counted host round trip."""
    out_json = tmp_path / "bench.json"
    code, out, err = run_cli(capsys, "--device", "cpu", "--device-path", "--swap-model", "classic", "--resolution",
                             "320x240", "--sessions", "2", "--frames", "3", "--warmup", "1", "--rounds", "1",
                             "--detect-every", "2", "--host-threads", "2", "--json", str(out_json))
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert {"device", "pipeline", "baseline"} <= set(data) and data["baseline"] is None
    side = data["pipeline"]
    check_device_side(side, codec=True)
    assert side["frames"] == 6 and side["faces_swapped"] == 6  # every frame of both sessions swapped
    assert side["host_round_trips"] == 4  # one per batch: 1 warm-up + 3 timed steps
    assert side["generator"].startswith("the swapper's own generate")
    assert "deepfake" in side["stages"] and "monitor" in side["stages"]
    assert data["models"]["placement"]["deepfake"] == "torch:cpu"
    assert data["config"]["device_path"] is True
    assert "| upload |" in out and "0 (n/a)" not in out.split("| upload |")[1].splitlines()[0]
    assert "processing per frame" in out and "device path" in out and "monitors on 2 threads" in out


def test_bench_device_path_simswap_no_codec(shared_assets, tmp_path, capsys):
    """--no-codec: server-side processing only; SimSwap (random weights) runs as a torch generator on the
    path's device, with no host round trip."""
    out_json = tmp_path / "bench.json"
    code, _, err = run_cli(capsys, "--device", "cpu", "--device-path", "--no-codec", "--swap-model", "simswap-224",
                           "--random-weights", "--resolution", "256x192", "--frames", "2", "--warmup", "1",
                           "--rounds", "1", "--deepfake", "off", "--json", str(out_json))
    assert code == 0, err
    side = json.loads(out_json.read_text())["pipeline"]
    check_device_side(side, codec=False)
    assert side["faces_swapped"] == 2 and side["host_round_trips"] == 0
    assert side["generator"] == "torch on the device" and "deepfake" not in side["stages"]
    assert side["fps_kind"].startswith("server-side")


@pytest.mark.parametrize("args, needle", [
    (["--cuda-graphs"], "--cuda-graphs applies to --device-path only"),
    (["--device-path", "--path-config", "streams=2"], "--path-config 'streams=2'"),
    (["--path-config", "pinned=0"], "--path-config applies to --device-path only"),
    (["--host-threads", "2"], "--host-threads applies to --device-path only"),
])
def test_device_path_arguments(args, needle, capsys, shared_assets):
    code, _, err = run_cli(capsys, *args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("bench: ")]
    assert len(lines) == 1 and needle in lines[0], err


def test_h264_encoder_falls_back_to_x264_and_a_forced_missing_one_is_an_error(monkeypatch):
    """NVENC is chosen only where an encoder session opens (an NVIDIA GPU): on this machine x264 is used; asking
    for NVENC explicitly where it cannot open is a clear BackendUnavailable, not a silent substitute."""
    from swapwatch.engines.runtime.media import _codec_opens, h264_encoder, h264_options
    from swapwatch.errors import BackendUnavailable

    monkeypatch.delenv("SWAPWATCH_H264_ENCODER", raising=False)
    name = h264_encoder()
    assert name in ("h264_nvenc", "libx264")
    if _codec_opens("h264_nvenc", "w") is not None:
        assert name == "libx264"
        monkeypatch.setenv("SWAPWATCH_H264_ENCODER", "h264_nvenc")
        with pytest.raises(BackendUnavailable, match="h264_nvenc cannot open"):
            h264_encoder()
    monkeypatch.setenv("SWAPWATCH_H264_ENCODER", "mpeg2")
    with pytest.raises(BackendUnavailable, match="choose one of"):
        h264_encoder()
    assert h264_options("libx264", crf=18)["crf"] == "18" and h264_options("h264_nvenc", crf=18)["cq"] == "18"


def test_nvdec_is_used_only_where_it_opens(monkeypatch, clips):
    """Decoding goes through a cuvid (NVDEC) decoder only where one opens: here FFmpeg's own decoder reads the
    clip; forcing NVDEC where it cannot open is a clear error; forcing the CPU decoder always works."""
    import av

    from swapwatch.engines.runtime.media import _CUVID_NAMES, _codec_opens, hardware_decoder, iter_video
    from swapwatch.errors import BackendUnavailable

    clip = next(c for c in clips if c.suffix == ".mpg")
    monkeypatch.delenv("SWAPWATCH_VIDEO_DECODER", raising=False)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        name = hardware_decoder(stream)
        codec = stream.codec_context.name
        if _codec_opens(f"{_CUVID_NAMES.get(codec, codec)}_cuvid", "r") is not None:  # no NVIDIA GPU here
            assert name is None
            monkeypatch.setenv("SWAPWATCH_VIDEO_DECODER", "nvdec")
            with pytest.raises(BackendUnavailable, match="cannot open"):
                hardware_decoder(stream)
    monkeypatch.setenv("SWAPWATCH_VIDEO_DECODER", "cpu")
    assert sum(1 for _ in iter_video(clip)) == 75
    monkeypatch.setenv("SWAPWATCH_VIDEO_DECODER", "gpu")
    with pytest.raises(BackendUnavailable, match="choose one of"):
        next(iter(iter_video(clip)))
