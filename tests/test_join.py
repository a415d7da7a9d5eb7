"""`swapwatch join` against a real swapwatch server started in-process on 127.0.0.1.

The server (stream/server.py) runs on its own thread and event loop with the YuNet detector and the
weight-free classic swapper; the client runs through the CLI entry point as a user would start it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from app_thread import BackgroundApp

from swapwatch.engines.runtime import iter_video


class ServerThread(BackgroundApp):
    """A SwapwatchServer (YuNet, the classic swapper) served on 127.0.0.1 from a background thread."""

    def __init__(self, detector, **server_config) -> None:
        self.server = None

        def make_app():
            from swapwatch.config import Config, ServerConfig
            from swapwatch.stream.server import SwapwatchServer

            self.server = SwapwatchServer(Config(server=ServerConfig(model="classic", **server_config)), detector)
            return self.server.app()

        super().__init__(make_app)


@pytest.fixture(scope="module")
def server(detector):
    with ServerThread(detector) as s:
        yield s


@pytest.fixture(scope="module")
def clip(clips) -> Path:
    return next(p for p in clips if p.suffix == ".mpg")


@pytest.fixture(scope="module")
def face_photo(face_photos) -> Path:
    return next(p for p in face_photos if p.suffix in (".jpg", ".jpeg"))


def join(capsys, *argv: str) -> tuple[int, list[dict], str]:
    """`swapwatch join` in-process; its exit code, stdout JSON lines and stderr."""
    from swapwatch.cli import main

    rc = main(["join", *argv])
    captured = capsys.readouterr()
    return rc, [json.loads(line) for line in captured.out.splitlines() if line.strip()], captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_join_swap_records_the_processed_video(capsys, server, clip, face_photo, tmp_path):
    out = tmp_path / "swapped.mp4"
    rc, lines, err = join(capsys, server.url, "--input", str(clip), "--mode", "swap", "--source", str(face_photo),
                          "--record", str(out))
    assert rc == 0, err
    types = [m.get("type") for m in lines]
    assert types[0] == "hello" and types[-1] == "summary"
    metrics = [m for m in lines if m["type"] == "metrics"]
    assert metrics and {"frames_in", "frames_out", "fps_in", "fps_out", "latency_ms"} <= set(metrics[-1])
    summary = lines[-1]
    assert summary["ended_by"] == "input" and summary["session"] == lines[0]["session"], summary
    # The server answers every frame (a late one by repeating the last swapped frame); a loaded CPU may
    # still lose a few at the start and end of the connection.
    assert summary["frames_sent"] == 75 and summary["frames_received"] >= 40, summary
    assert summary["fps_received"] > 5 and summary["messages"]["metrics"] == len(metrics), summary
    recorded = list(iter_video(out))
    assert len(recorded) >= 0.8 * summary["frames_received"], (len(recorded), summary)
    assert recorded[0].image.shape[:2] == (288, 360)
    # The session is gone on the server once join returns (closed by DELETE /sessions/{id}).
    assert not server.server.sessions


def test_join_both_modes_with_duration_gets_watermark_alerts(capsys, server, clip, face_photo):
    """Swapped frames carry the watermark; the server's monitor verifies it: start ... end over the websocket."""
    rc, lines, err = join(capsys, server.url, "--input", str(clip), "--mode", "both", "--source", str(face_photo),
                          "--duration", "1.5")
    assert rc == 0, err
    summary = lines[-1]
    assert summary["ended_by"] == "duration" and summary["record"] is None
    assert 15 <= summary["frames_sent"] < 75 and summary["frames_received"] > 0
    assert lines[0]["type"] == "hello" and lines[0]["mode"] == "both"
    alerts = [m for m in lines if m["type"] == "alert"]
    assert [m["event"] for m in alerts if m["event"] != "update"] == ["start", "end"]  # end: the session closed
    assert all(m["kind"] == "watermark" and m["verified"] is True for m in alerts)


def test_unknown_source_is_a_one_line_error(capsys, server, clip, tmp_path):
    text = tmp_path / "not-a-face.png"
    text.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rc, lines, err = join(capsys, server.url, "--input", str(clip), "--source", str(text))
    assert rc != 0 and lines == []
    line = one_line_error(err)
    assert "server refused the source photo" in line and "(HTTP 400)" in line and "not a readable image" in line


def test_photo_without_a_face_is_a_one_line_error(capsys, server, clip, tmp_path):
    import cv2
    import numpy as np

    blank = tmp_path / "wall.jpg"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    rc, _, err = join(capsys, server.url, "--input", str(clip), "--source", str(blank))
    assert rc != 0
    assert "(HTTP 422): no face found" in one_line_error(err)
    assert not server.server.sessions


def test_unreachable_server_and_bad_inputs(capsys, clip, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = join(capsys, f"http://127.0.0.1:{port}", "--input", str(clip), "--mode", "monitor")
    assert rc != 0 and f"cannot reach http://127.0.0.1:{port}" in one_line_error(err)
    rc, _, err = join(capsys, f"http://127.0.0.1:{port}", "--input", str(tmp_path / "none.mp4"), "--mode", "monitor")
    assert rc != 0 and "no such file" in one_line_error(err)
    rc, _, err = join(capsys, f"http://127.0.0.1:{port}", "--input", str(clip))
    assert rc != 0 and "needs --source" in one_line_error(err)
    rc, _, err = join(capsys, "127.0.0.1:8080", "--input", str(clip), "--mode", "monitor")
    assert rc != 0 and "http://" in one_line_error(err)


def test_camera_missing_is_a_one_line_error(capsys):
    rc, _, err = join(capsys, "http://127.0.0.1:9", "--input", "camera", "--camera-device", "/dev/does-not-exist",
                      "--mode", "monitor")
    assert rc != 0 and "no camera at /dev/does-not-exist" in one_line_error(err)


def test_token_is_sent_and_a_missing_token_is_a_one_line_error(detector, clip, capsys):
    """The real entry point as a subprocess: 401 with the server's reason; then the same with --token."""
    with ServerThread(detector, token="sesame") as guarded:
        result = subprocess.run([sys.executable, "-m", "swapwatch", "join", guarded.url, "--input", str(clip),
                                 "--mode", "monitor"], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and result.stdout == ""
        assert "(HTTP 401)" in one_line_error(result.stderr)
        rc, lines, err = join(capsys, guarded.url, "--input", str(clip), "--mode", "monitor", "--token", "sesame",
                              "--duration", "1")
        assert rc == 0, err
        assert lines[0]["type"] == "hello" and lines[-1]["frames_received"] > 0
