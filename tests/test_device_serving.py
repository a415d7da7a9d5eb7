"""serve's device path (ServerConfig.device_path, `swapwatch serve --device-path`): the inference worker runs a
batch's swap-mode frames through one DeviceFramePath.process call, on torch CPU here ("on" forces it; "auto"
is off without CUDA). Compared with the same worker on the CPU path, on real GRID frames, with the tolerance
of tests/test_device_path.py (max <= 3 levels, >= 99.9% of pixels within 1). CUDA is not exercised here.
"""

from __future__ import annotations

import asyncio

import av
import cv2
import numpy as np
import pytest

from swapwatch.config import Config, ServerConfig
from swapwatch.engines.swap import ClassicSwapper, DeviceFramePath, SyntheticLabeller, Watermarker, resolve_device_path

MAX_LEVELS = 3  # as tests/test_device_path.py
WITHIN_ONE = 0.999
MODES = ("swap", "swap", "monitor", "both")  # one worker, four sessions batched together
STEPS = 6  # GRID frames with a face; then one blank frame (a detector miss: the swap sessions hold)


def parity(cpu: np.ndarray, dev: np.ndarray) -> tuple[int, float]:
    assert cpu.shape == dev.shape and dev.dtype == np.uint8
    diff = np.abs(cpu.astype(np.int16) - dev.astype(np.int16)).max(axis=2)
    return int(diff.max()), float((diff <= 1).mean())


@pytest.fixture(scope="module")
def grid_frames(clips):
    with av.open(str(next(c for c in clips if c.name.startswith("grid_")))) as c:
        frames = [f for _, f in zip(range(STEPS), c.decode(video=0))]
    blank = av.VideoFrame.from_ndarray(np.zeros_like(frames[0].to_ndarray(format="bgr24")), format="bgr24")
    return frames + [blank]


@pytest.fixture(scope="module")
def chris(face_photos, detector):
    from swapwatch.stream.sources import SourceStore

    image = cv2.imread(str(next(p for p in face_photos if p.name == "max_Chris.jpeg")))
    return SourceStore().add(image, max(detector.detect(image), key=lambda f: f.area))


class CountingClassic(ClassicSwapper):
    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def generate(self, target_crops, sources):
        self.batches.append(len(target_crops))
        return super().generate(target_crops, sources)


def run_worker(detector, source, frames, device_path: str):
    """Every frame to each of MODES' sessions, one batch per step. Returns (worker, swapper, per-step results,
    per-step BGR outputs before yuv420p, per-step DeviceFramePath.process job counts)."""
    from swapwatch.stream import processing
    from swapwatch.stream.metrics import ServerStats
    from swapwatch.stream.offer import SessionSettings
    from swapwatch.stream.processing import FrameProcessor
    from swapwatch.stream.worker import InferenceWorker

    swapper = CountingClassic()
    images: dict[int, np.ndarray] = {}
    calls: list[list[int]] = []
    to_yuv = processing.to_yuv420p
    process = DeviceFramePath.process

    def recording_yuv(image):
        yuv = to_yuv(image)
        images[id(yuv)] = image.copy()
        return yuv

    def counting_process(self, jobs):
        calls.append([len(j.faces) for j in jobs])
        return process(self, jobs)

    worker = InferenceWorker(ServerStats(), batch_window=2.0, device_path=device_path)  # every session meets
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(processing, "to_yuv420p", recording_yuv)
        mp.setattr(DeviceFramePath, "process", counting_process)
        worker.start()
        try:
            processors = [worker.call(FrameProcessor, detector, swapper,
                                      SessionSettings(mode=m, source=None if m == "monitor" else source.id),
                                      source).result() for m in MODES]
            for _ in processors:
                worker.attach()
            results, outputs, per_step = [], [], []
            for i, frame in enumerate(frames):
                before = len(calls)
                futures = [worker.submit(p, frame, i / 25) for p in processors]
                step = [f.result(timeout=120) for f in futures]
                results.append(step)
                outputs.append([images[id(r.yuv)] if id(r.yuv) in images else None for r in step])
                per_step.append(calls[before:])
        finally:
            worker.stop()
    return worker, swapper, results, outputs, per_step


@pytest.fixture(scope="module")
def runs(detector, chris, grid_frames):
    return {mode: run_worker(detector, chris, grid_frames, mode) for mode in ("on", "off")}


def test_auto_is_off_without_cuda_and_the_setting_is_checked():
    import torch

    from swapwatch.cli import build_parser
    from swapwatch.stream.worker import InferenceWorker

    assert ServerConfig().device_path == "auto"
    with pytest.raises(ValueError):
        ServerConfig(device_path="yes")
    classic = ClassicSwapper()
    assert not resolve_device_path("auto", classic)  # a NumPy swapper: off even with a GPU
    assert resolve_device_path("on", classic) and not resolve_device_path("off", classic)

    class OnCuda(ClassicSwapper):  # a swapper whose engine says it runs on CUDA
        generator = type("Engine", (), {"device": "cuda"})()

    assert resolve_device_path("auto", OnCuda()) == torch.cuda.is_available()
    if not torch.cuda.is_available():  # this machine: auto resolves to off, the CPU path
        assert InferenceWorker(device_path="auto").device_path_for(OnCuda()) is None
    path = InferenceWorker(device_path="on").device_path_for(classic)
    assert isinstance(path, DeviceFramePath)
    assert InferenceWorker(device_path="off").device_path_for(classic) is None
    args = build_parser().parse_args(["serve", "--device-path", "on"])
    assert args.device_path == "on"
    assert build_parser().parse_args(["serve"]).device_path == "auto"


def test_swap_frames_match_the_cpu_path(runs):
    _, _, on_results, on_out, _ = runs["on"]
    _, _, off_results, off_out, _ = runs["off"]
    worst, least_within = 0, 1.0
    for step in range(STEPS):
        for s, mode in enumerate(MODES):
            r_on, r_off = on_results[step][s], off_results[step][s]
            assert (r_on.faces, r_on.swapped, r_on.held) == (r_off.faces, r_off.swapped, r_off.held)
            if mode == "monitor":
                continue
            assert r_on.swapped == 1 and not r_on.held
            cpu, dev = off_out[step][s], on_out[step][s]
            if mode == "both":
                # The monitor's status box prints the watermark's z score to 0.1, which the device path's
                # few one-level differences can move: the box is compared as the alerts it reports, the rest
                # of the frame by pixels (outside the box both sessions' frames equal their swap sessions').
                assert r_on.events == r_off.events
                swap = MODES.index("swap")
                box = (cpu != off_out[step][swap]).any(axis=2) | (dev != on_out[step][swap]).any(axis=2)
                cpu, dev = cpu[~box][None], dev[~box][None]
            m, w = parity(cpu, dev)
            worst, least_within = max(worst, m), min(least_within, w)
    print(f"\ndevice path vs CPU path in the worker, {STEPS} GRID frames x 3 swapping sessions: max {worst} "
          f"levels, >= {least_within:.4%} of pixels within 1")
    assert worst <= MAX_LEVELS and least_within >= WITHIN_ONE, (worst, least_within)


def test_sessions_share_one_process_call_and_no_host_generate_per_frame(runs):
    worker, swapper, results, _, per_step = runs["on"]
    for step in range(STEPS):
        # swap, swap and both: three frames (one face each) in one call; the monitor session is not in it.
        assert per_step[step] == [[1, 1, 1]], per_step[step]
    # classic has no torch generator: the path calls its NumPy generate once per batch, with all faces.
    assert swapper.batches == [3] * STEPS
    for step in range(STEPS):
        for mode, r in zip(MODES, results[step]):
            if mode == "monitor":
                assert not {"upload", "download"} & set(r.timings)
                continue
            assert {"upload", "align", "generate", "paste", "label", "download", "device_overhead",
                    "total"} <= set(r.timings), r.timings
            assert all(v >= 0 for v in r.timings.values())
            if mode == "both":
                assert "monitor" in r.timings
    from swapwatch.stream.metrics import render_prometheus

    text = render_prometheus(worker.stats, sessions=4, max_sessions=4, queue_depth=0, uptime=1.0)
    for stage in ("upload", "generate", "download"):
        assert f'swapwatch_stage_seconds{{stage="{stage}",quantile="0.5"}}' in text
    assert worker.stats.batch_sizes.count == STEPS
    off_swapper = runs["off"][1]
    assert off_swapper.batches == [3] * STEPS  # the CPU path batches the same faces through _generate


def test_device_frames_carry_watermark_and_badge(runs, grid_frames):
    _, _, _, outputs, _ = runs["on"]
    labeller = SyntheticLabeller()
    marker = Watermarker(labeller.config.watermark)
    raw = grid_frames[0].to_ndarray(format="bgr24")
    for s, mode in enumerate(MODES):
        if mode != "swap":
            continue
        out = outputs[0][s]
        found = marker.detect(out)
        assert found.found and found.payload_ok, found
        h, w = out.shape[:2]
        x1, y1, x2, y2 = labeller.label.badge_box(w, h)
        cpu = runs["off"][3][0][s]  # the CPU path's badge, drawn by VisibleLabel
        badge = out[y1:y2, x1:x2].astype(np.int16)
        assert np.abs(badge - cpu[y1:y2, x1:x2]).max() <= 1  # the badge corner is away from the face
        assert np.abs(badge - raw[y1:y2, x1:x2]).mean() > 40  # dark box, red bar, white text over the frame


def test_monitor_sessions_and_held_frames_unchanged(runs):
    on_results, on_out, per_step = runs["on"][2], runs["on"][3], runs["on"][4]
    off_results, off_out = runs["off"][2], runs["off"][3]
    monitor = MODES.index("monitor")
    for step in range(STEPS + 1):  # monitor mode: bit-identical, device path on or off
        assert np.array_equal(on_results[step][monitor].yuv, off_results[step][monitor].yuv)
        assert np.array_equal(on_out[step][monitor], off_out[step][monitor])
        assert on_results[step][monitor].swapped == 0
    # The blank frame: no face, so the swap sessions repeat their last swapped frame and nothing goes to the
    # device (no process call that step); exactly as on the CPU path.
    last = STEPS
    assert per_step[last] == []
    for s, mode in enumerate(MODES):
        r_on, r_off = on_results[last][s], off_results[last][s]
        assert r_on.held == r_off.held == (mode != "monitor")
        if mode != "monitor":
            assert r_on.yuv is on_results[last - 1][s].yuv  # the previous step's frame, repeated


def test_processor_finish_rejects_mismatched_device_frames(detector, chris, grid_frames):
    from swapwatch.stream.offer import SessionSettings
    from swapwatch.stream.processing import FrameProcessor

    processor = FrameProcessor(detector, ClassicSwapper(), SessionSettings(mode="swap", source=chris.id), chris)
    plan = processor.prepare(grid_frames[0], 0.0, device=True)
    assert plan.device and plan.swap is not None and plan.crops is None  # faces chosen, no host crops
    with pytest.raises(ValueError, match="needs its device frame"):
        processor.finish(plan)
    cpu_plan = processor.prepare(grid_frames[1], 0.04)
    assert not cpu_plan.device and cpu_plan.crops is not None
    with pytest.raises(ValueError, match="not prepared"):
        processor.finish(cpu_plan, cpu_plan.image)


def test_webrtc_swap_session_on_the_device_path(detector, clips, face_photos):
    """A real aiortc session (loopback, VP8 both ways) against serve with device_path="on": swapped,
    watermarked frames come back, the worker ran the device path (its stage times in /metrics)."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    from swapwatch.stream.probe import Probe
    from swapwatch.stream.server import SwapwatchServer

    with av.open(str(next(c for c in clips if c.name.startswith("grid_")))) as c:
        clip = [f.to_ndarray(format="bgr24") for _, f in zip(range(30), c.decode(video=0))]
    photo = next(p for p in face_photos if p.name == "max_Chris.jpeg")

    async def main():
        server = SwapwatchServer(Config(server=ServerConfig(device_path="on")), detector, ClassicSwapper())
        async with TestServer(server.app(), host="127.0.0.1") as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                fd = aiohttp.FormData()
                fd.add_field("file", photo.read_bytes(), filename=photo.name, content_type="image/jpeg")
                async with http.post("/sources", data=fd) as r:
                    assert r.status == 200, await r.text()
                    source = (await r.json())["id"]
                probe = Probe(http, clip, mode="swap", source=source, keep_images=True)
                await probe.start()
                report = await probe.run(tail=1.0)
                await probe.close()
                async with http.get("/metrics") as r:
                    metrics = await r.text()
                return server, probe, report, metrics

    server, probe, report, metrics = asyncio.run(main())
    assert report.received >= 0.8 * report.sent, (report.received, report.sent)
    marker = Watermarker()
    found = sum(marker.detect(r.image).found for r in probe.received)
    print(f"\nwebrtc, device path on (torch CPU): {report.received}/{report.sent} frames back, "
          f"{found} watermarked")
    assert found >= 0.8 * len(probe.received), (found, len(probe.received))
    for stage in ("upload", "download"):
        assert f'swapwatch_stage_seconds{{stage="{stage}",quantile="0.5"}}' in metrics
