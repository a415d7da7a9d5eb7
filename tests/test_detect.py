"""Offline deepfake detection: `swapwatch detect` and the server's POST /detect (issue 5, item 6).

- the command on a real GRID clip: valid JSON in the documented schema, the score in [0, 1] and consistent with
  the per-track and per-window scores and with `score_video` itself, a PNG plot that decodes, the model named
  and, for the default model, the demonstration warning taken from its own files;
- a video without faces: NO_FACES and a null score, never a guess;
- bad input: one line on stderr and a non-zero exit, before any model is loaded;
- the endpoint on loopback: an upload gives the same JSON as the command, too large -> 413, not a video ->
  400 with the reason, busy -> 503, token and Origin checks, and the temporary file is always deleted;
- a model with a REAL/FAKE band (issue 15): a clip whose score falls between its thresholds is UNCERTAIN, in
  the command's JSON, its human output and POST /detect alike, and the overrides move the thresholds as
  their help says.
"""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from cli_util import swapwatch_cmd as run_cli
from aiohttp.test_utils import TestServer
from swapwatch.engines.deepfake import DEFAULT_MODEL_DIR

from swapwatch.cli import main

FRAMES = 40
SVG = ('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       '<rect width="64" height="64" fill="red"/></svg>\n')
WINDOW_KEYS = {"track", "start", "end", "score", "frames", "full"}
TRACK_KEYS = {"track", "score", "verdict", "frames", "first", "last", "counted"}
VIDEO_KEYS = {"name", "frames", "fps", "duration", "width", "height"}
DEFAULT_INFO = json.loads((DEFAULT_MODEL_DIR / "detector.json").read_text())


@pytest.fixture(scope="module")
def grid_clip(clips) -> Path:
    grid = [c for c in clips if c.name.startswith("grid_") and c.suffix == ".mpg"]
    if not grid:
        pytest.skip("no grid_*.mpg clip in the shared assets")
    return grid[0]


@pytest.fixture(scope="module")
def faceless_clip(tmp_path_factory) -> Path:
    """30 frames of drifting colour gradients (no face anywhere), H.264 in MP4, made with PyAV."""
    import av

    path = tmp_path_factory.mktemp("faceless") / "no_faces.mp4"
    h, w = 144, 176
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(30):
            img = np.stack([(xx * 1.2 + i * 4) % 256, (yy * 1.5 + i * 2) % 256,
                            np.full_like(xx, 60 + i * 3)], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _verdict(doc: dict) -> str:
    """The verdict a report's own score and thresholds give."""
    from swapwatch.engines.deepfake import Thresholds

    return Thresholds(fake=doc["thresholds"]["fake"], real=doc["thresholds"]["real"]).verdict(doc["score"])


def check_report(doc: dict, *, frames: int, name: str) -> None:
    """The documented schema, and the numbers consistent with each other."""
    assert doc["verdict"] in ("REAL", "UNCERTAIN", "FAKE", "NO_FACES")
    assert doc["threshold"] == DEFAULT_INFO["threshold"]  # the model's own thresholds, read from detector.json
    # the default model carries both (fitted on held-out people): UNCERTAIN between them
    assert doc["thresholds"] == {"real": DEFAULT_INFO["real_threshold"], "fake": DEFAULT_INFO["threshold"]}
    assert doc["model"]["real_threshold"] == DEFAULT_INFO["real_threshold"] < doc["threshold"]
    if doc["score"] is not None:
        assert doc["verdict"] == _verdict(doc)
    assert VIDEO_KEYS <= set(doc["video"]) and doc["video"]["name"] == name and doc["video"]["frames"] == frames
    model = doc["model"]
    assert model["default"] is True and model["demonstration"] is True
    assert "demonstration model" in model["note"].lower()
    assert model["sha256"] == DEFAULT_INFO["sha256"]["detector.pt"]
    assert doc["timings"]["analysis_s"] > 0
    if doc["verdict"] == "NO_FACES":
        assert doc["score"] is None and doc["windows"] == [] and doc["tracks"] == []
        return
    assert 0.0 <= doc["score"] <= 1.0
    assert doc["verdict"] == ("FAKE" if doc["score"] >= doc["threshold"] else "REAL")
    assert doc["tracks"] and doc["windows"]
    duration = doc["video"]["duration"]
    by_track: dict[int, list[float]] = {}
    for w in doc["windows"]:
        assert set(w) == WINDOW_KEYS
        assert 0.0 <= w["start"] <= w["end"] <= duration and 0.0 <= w["score"] <= 1.0
        assert 1 <= w["frames"] <= doc["model"]["window"] and w["full"] == (w["frames"] == doc["model"]["window"])
        by_track.setdefault(w["track"], []).append(w["score"])
    assert set(by_track) == {t["track"] for t in doc["tracks"]}
    for t in doc["tracks"]:
        assert set(t) == TRACK_KEYS
        assert 0 < t["frames"] <= frames and 0.0 <= t["first"] <= t["last"] <= duration
        # a track's score is the mean of its windows' scores (rounded to 4 places in the JSON)
        assert t["score"] == pytest.approx(np.mean(by_track[t["track"]]), abs=2e-4)
        assert t["verdict"] == ("FAKE" if t["score"] >= doc["threshold"] else "REAL")
    assert doc["score"] == max(t["score"] for t in doc["tracks"] if t["counted"])


# ---- the command ----------------------------------------------------------------------------------------


def test_detect_json_and_plot_on_a_real_clip(grid_clip, tmp_path):
    plot = tmp_path / "scores.png"
    result = run_cli("detect", str(grid_clip), "--json", "--max-frames", str(FRAMES), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # stdout holds the JSON object and nothing else
    check_report(doc, frames=FRAMES, name=grid_clip.name)
    assert doc["verdict"] in ("REAL", "UNCERTAIN", "FAKE")  # one speaker, always in view
    assert len(doc["tracks"]) == 1 and doc["tracks"][0]["frames"] == FRAMES
    assert len(doc["windows"]) == FRAMES  # a window per frame by default
    # the demonstration warning, from the model card, on stderr (stdout stays pure JSON)
    assert "warning:" in result.stderr and "demonstration model" in result.stderr
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    assert not list(tmp_path.glob("*.part"))


def test_report_matches_score_video(grid_clip, detector):
    """detect_video adds nothing to the detector's numbers: same tracks, windows and score as score_video."""
    from swapwatch.engines.deepfake import DeepfakeDetector, detect_video, score_video

    deepfake = DeepfakeDetector.load()
    clip = score_video(grid_clip, deepfake, detector, max_frames=25)
    report = detect_video(grid_clip, detector=deepfake, face_detector=detector, max_frames=25)
    assert report.verdict == clip.verdict and report.score == clip.score
    (tid, ts), = clip.tracks.items()
    assert [w["end"] for w in report.windows] == [round(t, 3) for t in ts.window_times]
    assert [w["score"] for w in report.windows] == [round(p, 4) for p in ts.window_probs]
    assert report.tracks[0]["track"] == tid and report.tracks[0]["frames"] == len(ts.frame_probs) == 25
    # windows span at most W frames, ending on the frame they are scored at
    starts = [w["start"] for w in report.windows]
    assert starts[:deepfake.window] == [0.0] * deepfake.window and starts[deepfake.window] > 0
    # the warm-up windows say so: the first holds one frame (start == end), the W-th is the first full one
    frames = [w["frames"] for w in report.windows]
    assert frames == [min(i + 1, deepfake.window) for i in range(25)]
    assert [w["full"] for w in report.windows] == [n == deepfake.window for n in frames]


def test_detect_human_output_and_threshold(grid_clip, capsys):
    assert main(["detect", str(grid_clip), "--max-frames", "20", "--threshold", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    # every score is >= 0, so a threshold of 0 makes the video and its track FAKE
    assert out[0].startswith(f"{grid_clip.name}: FAKE (score ") and "threshold 0.00" in out[0]
    assert out[1].lstrip().startswith("track ") and " FAKE, 20 frames" in out[1]
    assert out[2].startswith("model: default (the committed default), sha256 ")
    assert out[3].startswith("warning: ") and "demonstration model" in out[3]


def test_video_without_faces_is_no_faces(faceless_clip, tmp_path):
    plot = tmp_path / "none.png"
    result = run_cli("detect", str(faceless_clip), "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    check_report(doc, frames=30, name=faceless_clip.name)
    assert doc["verdict"] == "NO_FACES" and doc["score"] is None
    assert cv2.imread(str(plot)) is not None


def test_no_faces_human_output(faceless_clip, capsys):
    assert main(["detect", str(faceless_clip)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{faceless_clip.name}: NO_FACES (no score,") and "no face was found" in out


def _make_audio_only(path: Path) -> None:
    import av

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"), ("text", "not a readable"), ("photo", "still image"),
    ("audio", "no video stream"), ("plot_jpg", "ending in .png"), ("plot_folder", "does not exist"),
    ("threshold", "--threshold"), ("max_frames", "--max-frames"), ("svg_as_mp4", "not a readable video"),
])
def test_bad_input_is_one_line_error(case, needle, tmp_path, face_photos, grid_clip, capsys):
    args = [str(grid_clip)]
    if case == "missing":
        args = [str(tmp_path / "nope.mp4")]
    elif case == "text":
        (tmp_path / "notes.mp4").write_text("not a video\n")
        args = [str(tmp_path / "notes.mp4")]
    elif case == "photo":
        args = [str(face_photos[0])]
    elif case == "audio":
        _make_audio_only(tmp_path / "sound.wav")
        args = [str(tmp_path / "sound.wav")]
    elif case == "plot_jpg":
        args += ["--plot", str(tmp_path / "plot.jpg")]
    elif case == "plot_folder":
        args += ["--plot", str(tmp_path / "no" / "plot.png")]
    elif case == "svg_as_mp4":  # FFmpeg finds a video stream it has no decoder for (no codec context)
        (tmp_path / "drawing.mp4").write_text(SVG)
        args = [str(tmp_path / "drawing.mp4")]
    elif case == "threshold":
        args += ["--threshold", "1.5"]
    else:
        args += ["--max-frames", "0"]
    code = main(["detect", *args])
    captured = capsys.readouterr()
    assert code != 0 and captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("swapwatch detect: error:") and needle in lines[0], lines


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 200)
    result = run_cli("detect", str(bad), "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---- the endpoint ---------------------------------------------------------------------------------------


def with_server(detector, scenario, **server_options):
    from swapwatch.stream.server import SwapwatchServer

    from swapwatch.config import Config, ServerConfig

    async def main_():
        server = SwapwatchServer(Config(server=ServerConfig(**server_options)), detector)
        async with TestServer(server.app(), host="127.0.0.1") as ts, \
                aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
            return await scenario(http, server)

    return asyncio.run(main_())


def video_form(data: bytes, filename: str, content_type: str = "video/mpeg") -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field("file", data, filename=filename, content_type=content_type)
    return fd


def test_endpoint_upload_and_rejections(detector, grid_clip, face_photos, tmp_path):
    from swapwatch.engines.deepfake import DeepfakeDetector, detect_video

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    data = grid_clip.read_bytes()
    expected = detect_video(grid_clip, detector=DeepfakeDetector.load(), face_detector=detector,
                            max_frames=30).to_json()

    async def scenario(http, server):
        async with http.get("/health") as r:
            assert (await r.json())["max_detect_bytes"] == len(data) + 1024
        # a good upload (multipart): the command's JSON, same numbers
        async with http.post("/detect?max_frames=30", data=video_form(data, grid_clip.name)) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        check_report(doc, frames=30, name=grid_clip.name)
        for key in ("verdict", "score", "threshold", "windows", "tracks"):
            assert doc[key] == expected[key], key
        assert doc["model"]["path"] == DEFAULT_MODEL_DIR.name  # no server paths in the answer
        assert list(uploads.iterdir()) == []
        # the raw body works too
        async with http.post("/detect?max_frames=5&name=clip.mpg", data=data,
                             headers={"Content-Type": "application/octet-stream"}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["video"]["name"] == "clip.mpg"
        # rejections, each with a reason, nothing left behind
        other_field = aiohttp.FormData()
        other_field.add_field("video", data[:1000], filename="a.mpg", content_type="video/mpeg")
        cases = [
            (413, "larger than", {"data": video_form(data + b"\0" * 200_000, "big.mpg")}),
            (400, "notes.mp4: not a readable", {"data": video_form(b"just some text\n" * 100, "notes.mp4")}),
            (400, "drawing.mp4: not a readable video", {"data": video_form(SVG.encode(), "drawing.mp4")}),
            (400, "still image", {"data": video_form(face_photos[0].read_bytes(), "face.jpg", "image/jpeg")}),
            (400, "empty", {"data": video_form(b"", "empty.mp4")}),
            (400, "missing multipart field 'file'", {"data": other_field}),
        ]
        for status, reason, kwargs in cases:
            async with http.post("/detect", **kwargs) as r:
                body = await r.json()
                assert r.status == status and reason in body["error"], (status, body)
                assert "swapwatch-detect-" not in body["error"]  # the temporary file's name never leaks
            assert list(uploads.iterdir()) == []
        async with http.post("/detect?max_frames=abc", data=video_form(data, "x.mpg")) as r:
            assert r.status == 400 and "max_frames" in (await r.json())["error"]
        # one analysis at a time: a second upload while one runs gets 503
        first = asyncio.create_task(http.post("/detect?max_frames=60", data=video_form(data, "a.mpg")))
        for _ in range(200):
            if server._detecting:
                break
            await asyncio.sleep(0.01)
        async with http.post("/detect", data=video_form(data, "b.mpg")) as r:
            assert r.status == 503 and "busy" in (await r.json())["error"]
            assert r.headers.get("Retry-After")
        r1 = await first
        assert r1.status == 200, await r1.text()
        r1.release()
        assert server._detecting == 0 and list(uploads.iterdir()) == []

    with_server(detector, scenario, max_detect_bytes=len(data) + 1024, detect_tmp_dir=str(uploads))


def test_an_idle_upload_blocks_nobody_and_is_dropped(detector, grid_clip, tmp_path):
    """Issue 17: a client that sends a few bytes of its upload and waits made every other /detect get 503. The
    upload now arrives before the analysis slot is taken, and a stalled one is dropped (408) with its file."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    data = grid_clip.read_bytes()

    async def scenario(http, server):
        async with http.get("/health") as r:
            host, port = r.url.host, r.url.port
        reader, writer = await asyncio.open_connection(host, port)  # a careless client: headers, 10 bytes, silence
        writer.write(f"POST /detect?name=slow.mpg HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                     + data[:10])
        await writer.drain()
        await asyncio.sleep(0.3)
        assert server._detecting == 0  # it holds no slot while it dawdles
        async with http.post("/detect?max_frames=10", data=video_form(data, "quick.mpg")) as r:
            assert r.status == 200, await r.text()  # everyone else is served meanwhile
        reply = await asyncio.wait_for(reader.read(4096), timeout=10)
        assert reply.startswith(b"HTTP/1.1 408") and b"upload stalled" in reply, reply[:200]
        writer.close()
        assert server._detecting == 0 and list(uploads.iterdir()) == []

    with_server(detector, scenario, detect_tmp_dir=str(uploads), upload_read_timeout=1.5)


def test_endpoint_token_origin_and_page(detector, grid_clip):
    async def scenario(http, server):
        async with http.get("/detect") as r:  # the page is public, like GET /
            assert r.status == 200 and "<title>swapwatch · detect</title>" in await r.text()
        async with http.post("/detect", data=video_form(b"x", "a.mpg")) as r:
            assert r.status == 401
        auth = {"Authorization": "Bearer s3cret"}
        async with http.post("/detect", data=video_form(b"x", "a.mpg"),
                             headers={**auth, "Origin": "https://evil.example"}) as r:
            assert r.status == 403
        async with http.post("/detect", data=video_form(b"x", "a.mpg"),
                             headers={**auth, "Origin": "https://ok.example"}) as r:
            assert r.status == 400  # through the checks, then refused as not a video
        assert server._offline is None  # nothing was analysed, so no model was loaded

    with_server(detector, scenario, token="s3cret", allowed_origins=("https://ok.example",))


# ---- verified beats guessed: swapwatch's own watermark --------------------------------------------------


@pytest.fixture(scope="module")
def swapped_clip(grid_clip, face_photos, tmp_path_factory) -> Path:
    """The GRID clip swapped by swapwatch itself (classic swapper, H.264): every frame carries the watermark."""
    out = tmp_path_factory.mktemp("swapped") / "swapped.mp4"
    source = next(p for p in face_photos if p.name == "max_Chris.jpeg")
    result = run_cli("swap", "--source", str(source), "--target", str(grid_clip), "--output", str(out),
                     "--model", "classic")
    assert result.returncode == 0, result.stderr
    return out


def test_a_swapwatch_swap_is_verified_fake_whatever_the_model_says(swapped_clip):
    args = ("detect", str(swapped_clip), "--json", "--max-frames", "30", "--threshold", "1.0")
    checked = json.loads(run_cli(*args).stdout)
    model_only = json.loads(run_cli(*args, "--no-watermark-check").stdout)
    # At a FAKE threshold of 1.0 the model's own verdict is not FAKE unless its score is exactly 1; the
    # watermark decides.
    assert model_only["verdict"] == _verdict(model_only) and model_only["thresholds"]["fake"] == 1.0
    assert model_only["verified"] is False and model_only["watermark"] is None
    assert model_only["settings"]["watermark_check"] is False
    assert checked["verdict"] == "FAKE" and checked["verified"] is True
    assert checked["score"] == model_only["score"]  # the model's score is reported as it is
    wm = checked["watermark"]
    assert wm["checked"] == 30 and wm["found"] >= 27 and wm["payload_ok"] and wm["verified"]
    assert 0.0 <= wm["first"] <= wm["last"] <= checked["video"]["duration"]


def test_a_real_clip_is_not_verified(grid_clip, capsys):
    result = run_cli("detect", str(grid_clip), "--json", "--max-frames", "30")
    doc = json.loads(result.stdout)
    assert doc["verified"] is False and doc["watermark"]["found"] == 0 and doc["watermark"]["checked"] == 30
    assert doc["verdict"] == _verdict(doc)


def test_verified_in_the_human_output(swapped_clip, capsys):
    assert main(["detect", str(swapped_clip), "--max-frames", "10", "--threshold", "1.0"]) == 0
    out = capsys.readouterr().out
    assert ": FAKE (" in out and "verified: swapwatch's watermark is in" in out


# ---- a model with a REAL/FAKE band: UNCERTAIN ----------------------------------------------------------

BAND_FRAMES = 30


@pytest.fixture(scope="module")
def banded_model(grid_clip, detector, tmp_path_factory) -> tuple[Path, float]:
    """A copy of the default model whose detector.json puts the REAL and FAKE thresholds 0.05 either side of
    the GRID clip's score (first 30 frames), so that the clip is UNCERTAIN; and that score."""
    import shutil

    from swapwatch.engines.deepfake import DeepfakeDetector, detect_video

    score = detect_video(grid_clip, detector=DeepfakeDetector.load(), face_detector=detector,
                         max_frames=BAND_FRAMES, check_watermark=False).score
    folder = tmp_path_factory.mktemp("models") / "banded"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    info = dict(DEFAULT_INFO, real_threshold=round(max(score - 0.05, 0.0), 4),
                threshold=round(min(score + 0.05, 1.0), 4))
    del info["sha256"]  # not the committed default any more: named by its folder
    (folder / "detector.json").write_text(json.dumps(info, indent=2))
    return folder, score


def test_a_score_in_the_band_is_uncertain(grid_clip, banded_model, tmp_path):
    folder, score = banded_model
    info = json.loads((folder / "detector.json").read_text())
    plot = tmp_path / "band.png"
    result = run_cli("detect", str(grid_clip), "--json", "--max-frames", str(BAND_FRAMES), "--model", str(folder),
                     "--plot", str(plot))
    assert result.returncode == 0, result.stderr  # an UNCERTAIN verdict is an answer, not a failure
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "UNCERTAIN" and doc["score"] == pytest.approx(score, abs=1e-4)
    assert doc["threshold"] == info["threshold"]  # still the FAKE threshold
    assert doc["thresholds"] == {"real": info["real_threshold"], "fake": info["threshold"]}
    assert doc["thresholds"]["real"] <= doc["score"] < doc["thresholds"]["fake"]
    (track,) = doc["tracks"]
    assert track["verdict"] == "UNCERTAIN" and set(track) == TRACK_KEYS
    model = doc["model"]
    assert (model["name"], model["default"]) == ("banded", False)
    assert (model["threshold"], model["real_threshold"]) == (info["threshold"], info["real_threshold"])
    assert cv2.imread(str(plot)) is not None


def test_uncertain_human_output_and_overrides(grid_clip, banded_model, capsys):
    folder, score = banded_model
    info = json.loads((folder / "detector.json").read_text())
    args = ["detect", str(grid_clip), "--max-frames", str(BAND_FRAMES), "--model", str(folder)]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{grid_clip.name}: UNCERTAIN (score ")
    assert f"real below {info['real_threshold']:.2f}, fake at {info['threshold']:.2f}" in out[0]
    assert out[1] == "  UNCERTAIN (score between the real and fake thresholds: the detector cannot tell)"
    assert " UNCERTAIN, 30 frames" in out[2]
    # --threshold below the model's real threshold: the real threshold drops to it (no band): FAKE
    assert main([*args, "--json", "--threshold", f"{info['real_threshold'] - 0.01:.4f}"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "FAKE" and doc["thresholds"]["real"] == doc["thresholds"]["fake"] == doc["threshold"]
    # --threshold above the score keeps the model's real threshold: still UNCERTAIN
    assert main([*args, "--json", "--threshold", "0.99"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "UNCERTAIN" and doc["thresholds"] == {"real": info["real_threshold"], "fake": 0.99}
    # --real-threshold above the score: REAL
    assert main([*args, "--json", "--real-threshold", f"{min(score + 0.01, info['threshold']):.4f}"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "REAL"
    # a REAL threshold above the FAKE one is refused, as one line
    assert main([*args, "--real-threshold", "0.9", "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swapwatch detect: error: --real-threshold 0.9 is above --threshold 0.5")
    assert main([*args, "--real-threshold", f"{info['threshold'] + 0.01:.4f}"]) == 2
    assert "REAL threshold cannot be above the FAKE one" in capsys.readouterr().err


def test_endpoint_gives_the_same_uncertain_report(grid_clip, banded_model, detector):
    from swapwatch.stream.server import SwapwatchServer

    from swapwatch.config import Config, DeepfakeConfig, ServerConfig

    folder, _ = banded_model
    expected = json.loads(run_cli("detect", str(grid_clip), "--json", "--max-frames", str(BAND_FRAMES),
                                  "--model", str(folder)).stdout)

    async def main_():
        config = Config(server=ServerConfig(), deepfake=DeepfakeConfig(model=str(folder)))
        server = SwapwatchServer(config, detector)
        async with TestServer(server.app(), host="127.0.0.1") as ts, \
                aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http, \
                http.post(f"/detect?max_frames={BAND_FRAMES}", data=video_form(grid_clip.read_bytes(),
                                                                             grid_clip.name)) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    doc = asyncio.run(main_())
    assert doc["verdict"] == "UNCERTAIN"
    for key in ("verdict", "score", "threshold", "thresholds", "windows", "tracks"):
        assert doc[key] == expected[key], key
    assert doc["model"]["real_threshold"] == expected["model"]["real_threshold"]
