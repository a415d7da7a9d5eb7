"""`swapwatch swap` end to end with learned models: fixture checkpoints in the official formats, installed
into the model cache as a user would (`models install`), then the same command as with real weights.

The weights are seeded random: these runs prove the plumbing (load, export, align, generate, paste, encode),
never swap quality.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from swapwatch.cli import main


@pytest.fixture(scope="module")
def gif_clip(clips):
    return next(c for c in clips if c.suffix == ".gif")  # 23 frames, one turning head: short enough for CPU


def frames_of(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def install(name: str, path) -> None:
    assert main(["models", "install", name, str(path)]) == 0


def test_inswapper_fixture_end_to_end(gif_clip, face_photos, tmp_path, capsys):
    from fixtures_insightface import build_insightface_fixtures

    files = build_insightface_fixtures(tmp_path / "fixtures")
    install("inswapper-128", files["inswapper_fixed"])  # the release has a fixed batch of 1
    install("w600k-r50", files["arcface"])
    out = tmp_path / "inswapped.mp4"
    assert main(["swap", "--source", str(face_photos[0]), "--target", str(gif_clip), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "swap model: inswapper-128 [learned]" in err  # `auto` picked the installed learned model
    src, dst = frames_of(gif_clip), frames_of(out)
    assert len(dst) == len(src)
    assert np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(src, dst)]) > 1.0


def test_simswap_fixture_end_to_end_with_match_selection(gif_clip, face_photos, tmp_path, capsys):
    from fixtures_simswap import build_arcface_checkpoint, build_generator_checkpoint

    install("simswap-224", build_generator_checkpoint(tmp_path / "latest_net_G.pth", 224))
    build_arcface_checkpoint(tmp_path / "arcface_checkpoint.tar")
    install("arcface-simswap", tmp_path / "arcface_checkpoint.tar")
    reference = tmp_path / "ref.png"
    import cv2

    cv2.imwrite(str(reference), frames_of(gif_clip)[0])  # the target person, from the clip itself
    out = tmp_path / "simswapped.mp4"
    assert main(["swap", "--source", str(face_photos[0]), "--target", str(gif_clip), "--output", str(out),
                 "--model", "simswap-224", "--faces", f"match:{reference}", "--detect-every", "3"]) == 0
    assert "swap model: simswap-224 [learned]" in capsys.readouterr().err
    assert len(frames_of(out)) == len(frames_of(gif_clip))
