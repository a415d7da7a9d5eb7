"""The offline detection page (client/static/detect.html) in real headless Chromium against `swapwatch serve`.

With a bearer token (the page passes ?token= on): a GRID clip is uploaded and the verdict, the score, the
demonstration-model warning, the per-track table and the plot (a track's polyline and the threshold line) appear;
a faceless clip shows NO FACES; the client-side size check refuses a file without sending it; a non-video gets
the server's reason; the console stays free of errors; the live page links here with the token. Leaves a
screenshot (path printed). Chromium is the system one; skipped when it is absent.
"""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from browser_util import Chromium, ServerProcess, failure_report, find_chromium
from cli_util import swapwatch_cmd

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium (apt-get install chromium) "
                                                          "or $SWAPWATCH_CHROMIUM; browser tests need a real one")
DT = "window.swapwatchDetect"


def js_errors(page) -> list[dict]:
    return [m for m in page.console if m["level"] == "error" and m["source"] in ("console", "exception", "javascript")]


async def analyse(page, video: Path, until: str, *, timeout: float) -> None:
    """Choose ``video`` in the upload form, press Analyse and wait until the page's JS condition ``until`` holds."""
    await page.set_input_files("#file", [video])
    await page.wait_for("!document.getElementById('analyse').disabled", timeout=5)
    await page.click("#analyse")
    await page.wait_for(until, timeout=timeout)


def make_faceless(path: Path) -> Path:
    import av

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        for i in range(20):
            img = np.full((128, 160, 3), (40 + 5 * i, 90, 160), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_detect_page_in_chromium(clips, tmp_path):
    grid = [c for c in clips if c.name.startswith("grid_") and c.suffix == ".mpg"]
    if not grid:
        pytest.skip("no grid_*.mpg clip in the shared assets")
    clip = grid[0]
    faceless = make_faceless(tmp_path / "blank.mp4")
    swapped = tmp_path / "swapped.mp4"  # swapwatch's own swap of the clip: every frame carries its watermark
    source = clip.parent.parent / "faces" / "max_Chris.jpeg"
    made = swapwatch_cmd("swap", "--source", str(source), "--target", str(clip), "--output", str(swapped),
                         "--model", "classic")
    assert made.returncode == 0, made.stderr
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video at all\n" * 50)
    token = "detect-page-token"
    shot = tmp_path / "detect_page.png"

    with ServerProcess("--detector", "yunet", "--model", "classic", token=token,
                       log_path=tmp_path / "server.log") as server:

        async def scenario():
            async with Chromium(CHROMIUM, log_path=tmp_path / "chromium.log") as browser:
                page = await browser.new_page()
                async with failure_report(page, tmp_path, server=server):
                    # the live page links here, keeping the token
                    await page.goto(server.url + f"?token={token}")
                    href = await page.evaluate("document.getElementById('nav-detect').href")
                    assert href == server.url + f"detect?token={token}"
                    await page.goto(href)
                    assert await page.evaluate("document.title") == "swapwatch · detect"
                    assert "nothing you upload is kept" in (await page.evaluate(
                        "document.getElementById('notice').textContent")).lower()
                    assert await page.evaluate("document.getElementById('nav-live').href") == \
                        server.url + f"?token={token}"
                    health = await page.wait_for(f"{DT}.health", timeout=10)
                    assert await page.evaluate(f"{DT}.maxBytes") == health["max_detect_bytes"]

                    # 1. a real clip: verdict, score, warning, table, plot
                    await analyse(page, clip, f"['done', 'error'].includes({DT}.state)", timeout=90)
                    assert await page.evaluate(f"{DT}.state") == "done", await page.evaluate(f"{DT}.error")
                    report = await page.evaluate(f"{DT}.report")
                    assert report["verdict"] in ("REAL", "FAKE") and 0 <= report["score"] <= 1
                    assert await page.evaluate("document.getElementById('verdict').textContent") == report["verdict"]
                    score_text = await page.evaluate("document.getElementById('score').textContent")
                    assert f"{report['score']:.3f}" in score_text
                    warning = await page.evaluate("document.getElementById('model-warning')"
                                                  ".hidden ? '' : document.getElementById('model-warning').textContent")
                    assert "demonstration model" in warning.lower()
                    assert "Model: default" in await page.evaluate("document.getElementById('model-line').textContent")
                    rows = await page.evaluate("document.querySelectorAll('#tracks tbody tr').length")
                    assert rows == len(report["tracks"]) >= 1
                    points = await page.evaluate(
                        "[...document.querySelectorAll('#plot polyline.track')]"
                        ".map(p => p.getAttribute('points').split(' ').length)")
                    assert points and points[0] == len(report["windows"]) > 10
                    box = await page.evaluate("(() => { const r = document.querySelector('#plot polyline.track')"
                                              ".getBoundingClientRect(); return [r.width, r.height]; })()")
                    assert box[0] > 300, box  # drawn across the plot, not collapsed
                    assert await page.evaluate("document.querySelectorAll('#plot line.threshold').length") == 1
                    assert await page.evaluate("document.getElementById('verified').hidden")  # a guess, not proof
                    print("\nreport:", json.dumps({k: report[k] for k in ("verdict", "score", "tracks")}),
                          "\nscreenshot:", await page.screenshot(shot))

                    # 1b. swapwatch's own swap: FAKE, VERIFIED by its watermark, whatever the model's score
                    await analyse(page, swapped, f"{DT}.state === 'done' && {DT}.report.video.name === 'swapped.mp4'",
                                  timeout=90)
                    assert await page.evaluate(f"{DT}.report.verified") is True
                    assert await page.evaluate("document.getElementById('verdict').textContent") == "FAKE"
                    assert not await page.evaluate("document.getElementById('verified').hidden")
                    line = await page.evaluate("document.getElementById('verified-line').textContent")
                    assert "watermark" in line and "FAKE whatever" in line

                    # 2. a video without faces: NO FACES, no score
                    await analyse(page, faceless, f"{DT}.state === 'done' && {DT}.report.video.name === 'blank.mp4'",
                                  timeout=60)
                    assert await page.evaluate("document.getElementById('verdict').textContent") == "NO FACES"
                    assert await page.evaluate(f"{DT}.report.score") is None
                    assert await page.evaluate("document.querySelectorAll('#plot .no-faces').length") == 1

                    # 3. the client-side size check: refused without an upload
                    await page.evaluate(f"{DT}.maxBytes = 1000")
                    await page.set_input_files("#file", [clip])
                    await page.wait_for(f"{DT}.state === 'error'", timeout=5)
                    err = await page.evaluate(f"{DT}.error")
                    assert err["status"] is None and "too large" in err["text"]
                    assert await page.evaluate("document.getElementById('analyse').disabled")

                    # 4. not a video: the server's reason is shown
                    await page.evaluate(f"{DT}.maxBytes = {health['max_detect_bytes']}")
                    await analyse(page, notes, f"{DT}.state === 'error'", timeout=30)
                    err = await page.evaluate(f"{DT}.error")
                    msg = await page.evaluate("document.getElementById('msg').textContent")
                    assert err["status"] == 400 and "notes.mp4: not a readable" in err["reason"]
                    assert "could not use this file" in msg and err["reason"] in msg

                    assert js_errors(page) == [], page.console

        asyncio.run(asyncio.wait_for(scenario(), 240))


def test_uncertain_verdict_on_the_detect_page(clips, detector, tmp_path):
    """A model whose REAL and FAKE thresholds lie either side of the GRID clip's score: the page shows an amber
    UNCERTAIN badge, the sentence that explains it, both thresholds (in the score line and on the plot, with the
    band between them shaded) and the track's cells in amber."""
    import shutil

    from swapwatch.engines.deepfake import DEFAULT_MODEL_DIR, DeepfakeDetector, detect_video

    grid = [c for c in clips if c.name.startswith("grid_") and c.suffix == ".mpg"]
    if not grid:
        pytest.skip("no grid_*.mpg clip in the shared assets")
    clip = grid[0]
    score = detect_video(clip, detector=DeepfakeDetector.load(), face_detector=detector).score
    model = tmp_path / "banded"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    info = json.loads((model / "detector.json").read_text())
    real, fake = round(max(score - 0.05, 0.0), 4), round(min(score + 0.05, 1.0), 4)
    (model / "detector.json").write_text(json.dumps(info | {"real_threshold": real, "threshold": fake}))
    shot = tmp_path / "detect_uncertain.png"
    amber = "rgb(245, 197, 66)"  # --warn

    with ServerProcess("--detector", "yunet", "--model", "classic", "--deepfake-model", str(model),
                       log_path=tmp_path / "server.log") as server:

        async def scenario():
            async with Chromium(CHROMIUM, log_path=tmp_path / "chromium.log") as browser:
                page = await browser.new_page()
                async with failure_report(page, tmp_path, server=server):
                    await page.goto(server.url + "detect")
                    await page.wait_for(f"{DT}.health", timeout=10)
                    await analyse(page, clip, f"['done', 'error'].includes({DT}.state)", timeout=90)
                    assert await page.evaluate(f"{DT}.state") == "done", await page.evaluate(f"{DT}.error")
                    report = await page.evaluate(f"{DT}.report")
                    assert report["verdict"] == "UNCERTAIN" and report["thresholds"] == {"real": real, "fake": fake}
                    badge = await page.evaluate(
                        "(() => { const v = document.getElementById('verdict'); return "
                        "[v.textContent, v.className, getComputedStyle(v).backgroundColor]; })()")
                    assert badge == ["UNCERTAIN", "UNCERTAIN", amber]
                    note = await page.evaluate("document.getElementById('verdict-note').hidden ? '' : "
                                               "document.getElementById('verdict-note').textContent")
                    assert "cannot tell" in note and f"{real:.2f}" in note and f"{fake:.2f}" in note
                    score_text = await page.evaluate("document.getElementById('score').textContent")
                    assert f"{report['score']:.3f}" in score_text
                    assert f"REAL below {real:.2f}" in score_text and f"FAKE at ≥ {fake:.2f}" in score_text
                    for selector in ("line.threshold", "line.real-threshold", "rect.uncertain-band"):
                        assert await page.evaluate(f"document.querySelectorAll('#plot {selector}').length") == 1
                    cells = await page.evaluate(
                        "[...document.querySelectorAll('#tracks tbody tr:first-child td')]"
                        ".map(td => [td.textContent, td.className, getComputedStyle(td).color])")
                    assert cells[2] == ["UNCERTAIN", "UNCERTAIN", amber] and cells[1][1:] == ["UNCERTAIN", amber]
                    print("\nuncertain screenshot:", await page.screenshot(shot))
                    assert js_errors(page) == [], page.console

        asyncio.run(asyncio.wait_for(scenario(), 180))
