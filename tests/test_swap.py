"""`swapwatch swap` end to end: real clips and photos, real PyAV encode/decode, the weight-free swapper."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from swapwatch.cli import main


def decode(path: Path) -> tuple[list[np.ndarray], float, list[str]]:
    with av.open(str(path)) as c:
        rate = float(c.streams.video[0].average_rate)
        kinds = [s.type for s in c.streams]
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    return frames, rate, kinds


@pytest.fixture(scope="module")
def grid_clip(clips) -> Path:
    return next(c for c in clips if c.name.startswith("grid_") and c.suffix == ".mpg")


@pytest.fixture(scope="module")
def classic_swap(grid_clip, face_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("swap") / "swapped.mp4"
    source = next(p for p in face_photos if p.name == "max_Chris.jpeg")
    assert main(["swap", "--source", str(source), "--target", str(grid_clip), "--output", str(out),
                 "--model", "classic"]) == 0
    return out


def face_boxes(clip: Path) -> list[np.ndarray]:
    from swapwatch.config import DetectorConfig
    from swapwatch.engines.faces import create_detector

    detector = create_detector(DetectorConfig(name="yunet"))
    frames, _, _ = decode(clip)
    return [detector.detect(f)[0].box for f in frames]


def test_classic_video_keeps_count_rate_and_audio(classic_swap, grid_clip):
    src_frames, src_rate, src_kinds = decode(grid_clip)
    out_frames, out_rate, out_kinds = decode(classic_swap)
    assert abs(len(out_frames) - len(src_frames)) <= 1
    assert out_rate == pytest.approx(src_rate, rel=1e-3)
    assert "audio" in src_kinds and "audio" in out_kinds


def test_classic_changes_the_face_and_not_the_background(classic_swap, grid_clip):
    from swapwatch.engines.swap import VisibleLabel

    src_frames, _, _ = decode(grid_clip)
    out_frames, _, _ = decode(classic_swap)
    h, w = src_frames[0].shape[:2]
    x0, y0, x1, y1 = VisibleLabel().badge_box(w, h)
    for i, (src, out, box) in enumerate(zip(src_frames, out_frames, face_boxes(grid_clip))):
        diff = np.abs(src.astype(np.int16) - out.astype(np.int16)).mean(axis=2)
        bx0, by0, bx1, by1 = box.astype(int)
        face = diff[by0 + (by1 - by0) // 4: by1 - (by1 - by0) // 6, bx0 + (bx1 - bx0) // 5: bx1 - (bx1 - bx0) // 5]
        background = np.ones_like(diff, dtype=bool)
        pad = (bx1 - bx0) // 3
        background[max(by0 - pad, 0): by1 + pad, max(bx0 - pad, 0): bx1 + pad] = False
        background[y0:y1 + 2, x0:x1 + 2] = False  # the visible SYNTHETIC badge
        assert face.mean() > 6.0, (i, face.mean())
        # Codec noise (the input is MPEG-1, the output H.264) plus the invisible watermark's amplitude.
        assert diff[background].mean() < 3.0, (i, diff[background].mean())


def test_every_swapped_frame_is_labelled_and_watermarked(classic_swap):
    from swapwatch.engines.swap import Watermarker

    frames, _, _ = decode(classic_swap)
    marker = Watermarker()
    found = sum(marker.detect(f).found for f in frames)
    assert found >= 0.99 * len(frames)


def test_image_swap_and_json_free_output(face_photos, tmp_path, capsys):
    target = next(p for p in face_photos if p.name == "max_Luciano.png")
    source = next(p for p in face_photos if p.name == "max_Bryan.png")
    out = tmp_path / "out.png"
    assert main(["swap", "--source", str(source), "--target", str(target), "--output", str(out),
                 "--model", "classic", "--faces", "largest", "--no-label"]) == 0
    before, after = cv2.imread(str(target)), cv2.imread(str(out))
    assert before.shape == after.shape and np.abs(before.astype(int) - after.astype(int)).mean() > 0.5


def test_source_without_a_face_names_the_file(tmp_path, grid_clip, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    code = main(["swap", "--source", str(blank), "--target", str(grid_clip), "--output", str(tmp_path / "o.mp4"),
                 "--model", "classic"])
    err = capsys.readouterr().err
    assert code != 0 and str(blank) in err and "no face" in err
    assert not (tmp_path / "o.mp4").exists()


def test_target_video_without_faces_passes_through_with_a_warning(tmp_path, face_photos, caplog):
    clip = tmp_path / "noface.mp4"
    with av.open(str(clip), mode="w") as c:
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(20):
            img = np.full((120, 160, 3), 40 + 5 * i, np.uint8)
            img[40:80, 60:100] = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        c.mux(s.encode())
    out = tmp_path / "out.mp4"
    with caplog.at_level("WARNING"):
        assert main(["swap", "--source", str(face_photos[0]), "--target", str(clip), "--output", str(out),
                     "--model", "classic"]) == 0
    assert "no face in any frame" in caplog.text
    frames, _, _ = decode(out)
    assert len(frames) == 20


@pytest.mark.parametrize("argv,needle", [
    (["--faces", "match:/nonexistent/ref.jpg"], "reference photo not found"),
    (["--faces", "bogus"], "unknown face selection"),
    (["--model", "inswapper-128"], "inswapper"),
])
def test_bad_swap_arguments_are_one_line_errors(argv, needle, face_photos, grid_clip, tmp_path, capsys):
    code = main(["swap", "--source", str(face_photos[0]), "--target", str(grid_clip),
                 "--output", str(tmp_path / "o.mp4"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and needle in err[0], err


def test_watermark_survives_vp8_at_1mbps_on_swapped_frames(classic_swap, grid_clip):
    """The swapped video, sent as a WebRTC peer would (VP8, 1 Mbit/s), still carries the mark in >= 99% of
    frames; the same clip unswapped carries it in none."""
    from swapwatch.engines.swap import Watermarker, webrtc_codec_roundtrip

    marker = Watermarker()
    swapped, _, _ = decode(classic_swap)
    received = webrtc_codec_roundtrip(swapped, "vp8", 1_000_000, fps=25)
    assert 0.7e6 < received.bitrate < 1.25e6
    assert sum(marker.detect(f).found for f in received.frames) >= 0.99 * len(received.frames)
    clean = webrtc_codec_roundtrip(decode(grid_clip)[0], "vp8", 1_000_000, fps=25)
    assert not any(marker.detect(f).found for f in clean.frames)


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: what it guards must be decided before the detector or swapper loads."""
    import swapwatch.engines.faces.detectors as detectors
    import swapwatch.engines.swap.swappers as swappers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(detectors, "create_detector", refuse)
    monkeypatch.setattr(swappers, "create_swapper", refuse)


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_output_into_a_missing_folder_fails_fast_naming_it(face_photos, tmp_path, capsys, no_models):
    folder = tmp_path / "not" / "there"
    source, target = face_photos[0], next(p for p in face_photos if p.name == "max_Luciano.png")
    code = main(["swap", "--source", str(source), "--target", str(target), "--output", str(folder / "out.png"),
                 "--model", "classic"])
    line = one_error_line(capsys)
    assert code == 2 and f"output folder {folder} does not exist" in line and "Errno" not in line
    assert not folder.exists()


@pytest.mark.parametrize("target_kind,suffix,needle", [("image", ".mp4", "an image target needs an image output"),
                                                       ("video", ".png", "a video target needs a video output")])
def test_output_type_must_fit_the_target(face_photos, grid_clip, tmp_path, capsys, no_models, target_kind, suffix,
                                         needle):
    target = grid_clip if target_kind == "video" else next(p for p in face_photos if p.name == "max_Luciano.png")
    out = tmp_path / f"out{suffix}"
    code = main(["swap", "--source", str(face_photos[0]), "--target", str(target), "--output", str(out),
                 "--model", "classic"])
    line = one_error_line(capsys)
    assert code == 2 and needle in line and str(out) in line
    assert not out.exists()


def test_missing_output_folder_is_one_line_from_the_real_command(face_photos, tmp_path):
    from cli_util import assert_one_line_error, swapwatch_cmd

    folder = tmp_path / "nowhere"
    t0 = time.monotonic()
    result = swapwatch_cmd("swap", "--source", str(face_photos[0]), "--target", str(face_photos[-1]),
                           "--output", str(folder / "o.png"), "--model", "classic")
    assert_one_line_error(result, f"output folder {folder} does not exist")
    assert "swap model:" not in result.stderr and time.monotonic() - t0 < 60
