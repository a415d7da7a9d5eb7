"""A session's frame path, split in two so that the worker can batch the swapper across sessions.

    prepare(frame) : to BGR at the session's fixed size -> detect + track -> choose faces -> align crops
    [worker]       : swapper.generate on the crops of every session in the batch, at once
    finish(plan)   : mask -> colour -> paste back -> SYNTHETIC badge + watermark -> monitor -> yuv420p
                     (the monitor's alert events and live verdict changes become websocket messages)

It calls the session's own SwapPipeline stage by stage (``plan``, then the worker's batched ``generate``,
then ``paste``), with one tracker per session. Everything
here runs on the worker thread only: a processor is never touched by two threads.

With the worker's device path on (serve's ``--device-path``), ``prepare(frame, t, device=True)`` chooses the
faces without aligning crops on the host; the worker runs align, generate, paste, badge and watermark of every
session's frame in one :meth:`~swapwatch.engines.swap.device_path.DeviceFramePath.process` call, and
``finish(plan, device_frame)`` does the rest (the hold rule, monitor, yuv420p) on the frame it returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np

from swapwatch.config import TrackingConfig
from swapwatch.engines.faces import FACE_SMOOTHING, Face, FaceDetector, FaceTracker, KeyframeTracker
from swapwatch.engines.swap import (
    DEFAULT_SOURCE, FaceSelection, SourceIdentity, SwapOptions, SwapPipeline, SwapPlan, Swapper, SyntheticLabeller,
)
from swapwatch.stream.offer import SessionSettings
from swapwatch.stream.sources import SourceFace

log = logging.getLogger(__name__)

# A frame with no face to swap shortly after one had a face is most likely a detector miss: repeat the last
# swapped frame rather than show the unswapped face for a frame.
MISS_HOLD_S = 0.5
# The smallest frame a session processes: the watermark's grid (96x72 cells of the default pattern), so that no
# swapped frame leaves without it. Below it the session sends a blank frame and says why (issue 17).
MIN_FRAME = (96, 72)
BLANK_GREY = 96


@dataclass
class FramePlan:
    """A frame between :meth:`FrameProcessor.prepare` and :meth:`FrameProcessor.finish`."""

    image: np.ndarray  # BGR at the session's output size
    t: float
    faces: list[Face]
    swap: SwapPlan | None = None  # the pipeline's plan when this frame has faces to swap
    swapper: Swapper | None = None
    generated: np.ndarray | None = None  # filled by the worker
    timings: dict[str, float] = field(default_factory=dict)
    # prepared for the worker's device path: ``swap`` has the chosen faces and sources but no crops, and the
    # frame goes to the device (swapped and labelled there) unless finish would hold the last swapped frame
    device: bool = False
    blank: bool = False  # below MIN_FRAME: nothing was processed, the frame is a blank placeholder

    @property
    def crops(self) -> np.ndarray | None:
        return self.swap.crops if self.swap is not None else None

    @property
    def sources(self) -> list[SourceIdentity]:
        return self.swap.sources if self.swap is not None else []


@dataclass
class Processed:
    """A processed frame as the session needs it: planes ready for the encoder, and what happened."""

    yuv: np.ndarray  # yuv420p planes, shape (H * 3 / 2, W), uint8
    faces: int
    swapped: int
    held: bool  # the last swapped frame again (detector miss), not this frame
    events: list[dict[str, Any]]  # websocket alert messages
    timings: dict[str, float]
    # websocket verdict messages: a face track's live verdict changed (news, not alerts: never counted as one)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    # websocket notice messages: something about the stream the client should know (once per kind)
    notices: list[dict[str, Any]] = field(default_factory=list)


def output_size(width: int, height: int, max_pixels: int | None = None) -> tuple[int, int]:
    """The fixed output size for a stream whose first frame is ``width`` x ``height``: at most ``max_pixels``
    (scaled down, same aspect), and even sides for yuv420p."""
    if max_pixels is not None and width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
        width, height = int(width * scale), int(height * scale)
    return max(2, width - width % 2), max(2, height - height % 2)


def default_monitor_factory() -> Any | None:
    """FrameMonitor when engines/deepfake/monitor.py is there; None (no alerts, frames still flow) otherwise."""
    try:
        from swapwatch.engines.deepfake import FrameMonitor
    except ImportError as exc:
        log.warning("monitor unavailable (%s): monitor sessions return frames without alerts", exc)
        return None
    return FrameMonitor()


class FrameProcessor:
    def __init__(self, detector: FaceDetector, swapper: Swapper, settings: SessionSettings,
                 source: SourceFace | None, *, tracking: TrackingConfig = TrackingConfig(),
                 monitor_factory: Callable[[], Any | None] = default_monitor_factory,
                 max_frame_pixels: int | None = None) -> None:
        """``max_frame_pixels``: frames above it are scaled down to fit before anything else runs."""
        self.detector = detector
        self.max_frame_pixels = max_frame_pixels
        self._notices: list[dict[str, Any]] = []  # sent with the next processed frame
        self.swapper = swapper
        self.tracking = tracking
        self.monitor_factory = monitor_factory
        self.tracker = KeyframeTracker(detector, FaceTracker(smoothing=FACE_SMOOTHING if tracking.smoothing else None),
                                       k=tracking.detect_every)
        self.settings = SessionSettings(mode="monitor")
        self.pipeline: SwapPipeline | None = None
        self.monitor: Any | None = None
        self.overlay: Any | None = None
        self.size: tuple[int, int] | None = None
        self._last_swap: tuple[float, np.ndarray] | None = None  # (t, yuv) of the last frame with a swap
        self.configure(settings, source)

    # ---- settings (worker thread; applied between frames) ---------------------------------------------

    def configure(self, settings: SessionSettings, source: SourceFace | None) -> list[dict[str, Any]]:
        """Apply new settings; on any error nothing changes. Returns alert messages this ends (a monitor
        that stops ends its alerts)."""
        pipeline, identity = self.pipeline, None
        if settings.swaps:
            if source is None:
                raise ValueError("swapping needs a source face")
            identity = self._identity(source)
            if pipeline is None:
                pipeline = SwapPipeline(self.detector, self.swapper, labeller=SyntheticLabeller(),
                                        options=SwapOptions(detect_every=self.tracking.detect_every,
                                                            smoothing=self.tracking.smoothing))
                pipeline.tracker = self.tracker  # one tracker per session, whatever the mode
        monitor = self.monitor
        if settings.monitors and monitor is None:
            monitor = self.monitor_factory()
            self.overlay = _overlay() if monitor is not None else None
        # Everything that could fail has run: commit.
        events: list[dict[str, Any]] = []
        if pipeline is not None:
            pipeline.selection = FaceSelection.parse(settings.faces)
            if identity is not None:
                pipeline.sources[DEFAULT_SOURCE] = identity
        if not settings.monitors and monitor is not None:
            events = _messages(monitor.close())
            monitor = None
        if not settings.swaps:
            self._last_swap = None
        self.pipeline, self.monitor, self.settings = pipeline, monitor, settings
        return events

    def _identity(self, source: SourceFace) -> SourceIdentity:
        identity = source.identities.get(self.swapper.name)
        if identity is None:  # once per photo and swapper, shared by the sessions that use it
            identity = self.swapper.prepare_source(source.image, source.face)
            source.identities[self.swapper.name] = identity
        return identity

    def close(self) -> list[dict[str, Any]]:
        events = _messages(self.monitor.close()) if self.monitor is not None else []
        self.monitor = self.pipeline = None
        return events

    # ---- the frame path ---------------------------------------------------------------------------------

    def prepare(self, frame: av.VideoFrame, t: float, *, device: bool = False) -> FramePlan:
        """``device``: for the worker's device path (faces chosen, no crops aligned here)."""
        clock = time.perf_counter
        t0 = clock()
        if self.size is None:
            self._first_frame(frame.width, frame.height)
        w, h = self.size
        if w < MIN_FRAME[0] or h < MIN_FRAME[1]:
            return FramePlan(np.full((h, w, 3), BLANK_GREY, np.uint8), t, [], blank=True)
        if self.max_frame_pixels is not None and frame.width * frame.height > self.max_frame_pixels:
            # Scaled by swscale on the way to BGR: a 12 MP frame is never converted at full size.
            image = frame.reformat(width=w, height=h, format="bgr24").to_ndarray()
        else:
            image = frame.to_ndarray(format="bgr24")
        if (image.shape[1], image.shape[0]) != self.size:  # the output size never changes (encoder rebuilds)
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        t1 = clock()
        faces = self.tracker.process(image, t)
        t2 = clock()
        plan = FramePlan(image, t, faces, timings={"convert": t1 - t0, "detect": t2 - t1})
        pipeline = self.pipeline
        if pipeline is not None and self.settings.swaps:
            swap = pipeline.plan(image, faces, align=not device)
            if swap.chosen:
                plan.swap, plan.swapper = swap, self.swapper
            plan.device = device and (plan.swap is not None or not self._holds(t))
            plan.timings["align"] = clock() - t2
        return plan

    def _first_frame(self, width: int, height: int) -> None:
        """Fix the session's output size from its first frame, and tell the client if it differs."""
        self.size = w, h = output_size(width, height, self.max_frame_pixels)
        if w < MIN_FRAME[0] or h < MIN_FRAME[1]:
            self._notices.append({
                "type": "notice", "code": "frame-too-small", "size": [width, height], "min": list(MIN_FRAME),
                "message": f"the video is {width}x{height}, below the {MIN_FRAME[0]}x{MIN_FRAME[1]} a session needs "
                           "(a smaller frame cannot carry the swap's watermark): blank frames are sent back"})
            log.warning("session video %dx%d is below %dx%d: sending blank frames", width, height, *MIN_FRAME)
        elif (w, h) != output_size(width, height):
            self._notices.append({
                "type": "notice", "code": "frame-downscaled", "size": [width, height], "to": [w, h],
                "message": f"the video is {width}x{height}, above the server's {self.max_frame_pixels} pixels per "
                           f"frame: it is processed and sent back at {w}x{h}"})
            log.info("session video %dx%d is above %d pixels: processed at %dx%d", width, height,
                     self.max_frame_pixels, w, h)

    def _holds(self, t: float) -> bool:
        """A frame at ``t`` with nothing swapped repeats the last swapped frame (a likely detector miss)."""
        return self._last_swap is not None and t - self._last_swap[0] <= MISS_HOLD_S

    def finish(self, plan: FramePlan, device_frame: np.ndarray | None = None) -> Processed:
        """``device_frame``: the frame as the worker's device path returned it (swapped, badge and watermark
        on; its stage times already in ``plan.timings``), for a plan prepared with ``device=True``."""
        clock = time.perf_counter
        notices, self._notices = self._notices, []
        if plan.blank:
            return Processed(to_yuv420p(plan.image), 0, 0, False, [], plan.timings, [], notices)
        out, held, swapped = plan.image, False, 0
        timings = plan.timings
        pipeline = self.pipeline
        if device_frame is not None and not plan.device:
            raise ValueError("a device frame for a plan not prepared for the device path")
        if pipeline is not None and self.settings.swaps:
            t0 = clock()
            if plan.device:
                swapped = len(plan.swap.chosen) if plan.swap is not None else 0
            elif plan.swap is not None and plan.generated is not None:
                out = pipeline.paste(plan.swap, plan.generated)
                swapped = len(plan.swap.aligned)
            t1 = clock()
            if not plan.device:
                timings["paste"] = t1 - t0
            if not swapped and self._holds(plan.t):
                held = True
            elif plan.device:
                if device_frame is None:
                    raise ValueError("a plan prepared for the device path needs its device frame")
                out = device_frame
            else:
                out = pipeline.labeller(out) if pipeline.labeller is not None else out
            if not plan.device:
                timings["label"] = clock() - t1
        events: list[dict[str, Any]] = []
        verdicts: list[dict[str, Any]] = []
        if self.monitor is not None and not held:
            t0 = clock()
            events = _messages(self.monitor.process(out, plan.t, plan.faces))
            verdicts = _messages(getattr(self.monitor.state, "verdict_changes", ()))  # a monitor may have none
            out = self.overlay(out, self.monitor, plan.faces)
            timings["monitor"] = clock() - t0
        elif self.settings.monitors and not held:  # no monitor installed: say so on the frame
            out = _plain_overlay(out, None, plan.faces)
        t0 = clock()
        if held:
            yuv = self._last_swap[1]
        else:
            yuv = to_yuv420p(out)
            if swapped:
                self._last_swap = (plan.t, yuv)
        timings["output"] = clock() - t0
        return Processed(yuv, len(plan.faces), swapped, held, events, timings, verdicts, notices)


def to_yuv420p(image_bgr: np.ndarray) -> np.ndarray:
    """BGR -> yuv420p planes with swscale's BT.601 limited range, which the encoder and decoders assume
    (OpenCV's YUV_I420 is full range: faces would come out with too much contrast)."""
    return av.VideoFrame.from_ndarray(image_bgr, format="bgr24").reformat(format="yuv420p").to_ndarray()


def _messages(events) -> list[dict[str, Any]]:
    """Monitor events (alerts or verdict changes) as websocket messages."""
    return [e.to_json() for e in events or ()]


def _overlay() -> Callable[[np.ndarray, Any, list[Face]], np.ndarray]:
    try:
        from swapwatch.engines.deepfake import MonitorOverlay
    except ImportError:
        return _plain_overlay
    overlay = MonitorOverlay()
    return lambda image, monitor, faces: overlay.draw(image, monitor.state, faces)


def _plain_overlay(image: np.ndarray, monitor: Any, faces: list[Face]) -> np.ndarray:
    out = image.copy()
    text = f"monitor unavailable: {len(faces)} face(s)" if monitor is None else f"monitoring: {len(faces)} face(s)"
    cv2.putText(out, text, (8, out.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (80, 200, 80), 1, cv2.LINE_AA)
    return out
