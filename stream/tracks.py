"""The outgoing video track: processed frames, in input order, with the input frames' timestamps.

Every decoded input frame gets a slot, in order. ``recv()`` (called by aiortc's sender, one frame at a time)
takes the oldest slot and waits for its processed frame until ``deadline`` seconds after the input frame
arrived. The deadline is adaptive (:class:`AdaptiveDeadline`): a margin over the session's recent processing
latency, between a floor and the configured maximum. What it sends:

* the slot's processed frame when it is ready in time;
* otherwise a stand-in with the slot's timestamp: in swap/both mode the last processed frame again (or,
  before the first one exists, a black "starting" card), never the raw camera frame; in monitor mode the
  raw frame, which is the user's own unmodified image anyway.

At most ``capacity`` slots wait for the sender; when it falls behind, the oldest slot is dropped. Frames go
out as yuv420p at one fixed size, so aiortc's encoder is never rebuilt mid-stream.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from swapwatch.stream.metrics import LatencyWindow, SessionStats
from swapwatch.stream.processing import Processed, output_size, to_yuv420p


class AdaptiveDeadline:
    """How long a slot waits for its processed frame, counted from the input frame's arrival.

    ``observe(latency)`` takes one processed frame's latency in seconds: arrival of the decoded frame -> its
    result on the event loop (the wait behind the session's frame in flight, the worker's queue and batch, the
    processing), the very quantity the deadline is compared with. ``current()`` is::

        clamp(factor x p<quantile> of the last ``window`` latencies + margin, minimum, maximum)

    and ``maximum`` until ``warmup`` latencies have been seen, or always when not ``adaptive`` (a fixed
    deadline). With the defaults (p90 of the last 50, x 1.5 + 10 ms): up to 5 slow frames in 50 (jitter: a
    GC pause, a busy core) leave it where it is, and those frames alone go out as stand-ins; a lasting
    slowdown raises it after 6 slow frames; a recovery lowers it once the slow frames have left the window.
    The margin keeps ordinary jitter from turning into stand-ins, the floor keeps a very fast worker from
    getting a deadline tighter than the event loop's own jitter, and the maximum keeps the added latency at
    most what a fixed deadline gives."""

    def __init__(self, maximum: float, minimum: float = 0.05, *, adaptive: bool = True, window: int = 50,
                 warmup: int = 10, quantile: float = 0.9, factor: float = 1.5, margin: float = 0.01) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"need 0 < minimum <= maximum, got {minimum} and {maximum}")
        if window < 1 or not 1 <= warmup <= window:
            raise ValueError("need window >= 1 and 1 <= warmup <= window")
        if not 0 < quantile <= 1 or factor < 1 or margin < 0:
            raise ValueError("need 0 < quantile <= 1, factor >= 1 and margin >= 0")
        self.maximum, self.minimum, self.adaptive = maximum, minimum, adaptive
        self.warmup, self.quantile, self.factor, self.margin = warmup, quantile, factor, margin
        self._latencies = LatencyWindow(window)
        self._current = maximum

    def observe(self, latency: float) -> None:
        self._latencies.add(max(0.0, latency))
        if not self.adaptive or self._latencies.count < self.warmup:
            return
        p = self._latencies.percentile(self.quantile)  # nearest rank over the window
        self._current = min(self.maximum, max(self.minimum, self.factor * p + self.margin))

    def current(self) -> float:
        return self._current


@dataclass(eq=False)
class Slot:
    """One input frame on its way out."""

    frame: av.VideoFrame
    arrival: float  # event-loop time the decoded frame reached the session
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    dropped: bool = False  # counted as dropped already

    def resolve(self, value: Processed | None) -> None:
        if not self.result.done():
            self.result.set_result(value)


class ProcessedTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, stats: SessionStats, *, deadline: float | AdaptiveDeadline, capacity: int,
                 raw_allowed: Callable[[], bool],
                 on_sent: Callable[[np.ndarray, int, object], None] | None = None) -> None:
        """``deadline``: an :class:`AdaptiveDeadline`, or seconds for a fixed one."""
        super().__init__()
        self.stats = stats
        self.deadline = deadline if isinstance(deadline, AdaptiveDeadline) else \
            AdaptiveDeadline(deadline, deadline, adaptive=False)
        stats.deadline = self.deadline.current()
        self.capacity = capacity
        self.raw_allowed = raw_allowed
        self.on_sent = on_sent  # sees every frame sent, as yuv420p planes (the recorder)
        self._slots: deque[Slot] = deque()
        self._ready = asyncio.Event()
        self._last: np.ndarray | None = None  # yuv of the last processed frame
        self._size: tuple[int, int] | None = None
        self._placeholder: np.ndarray | None = None
        self.evicted = 0  # slots dropped unsent because the sender fell behind

    # ---- the session's side ---------------------------------------------------------------------------

    def push(self, frame: av.VideoFrame, arrival: float) -> Slot:
        if self._size is None:
            self._size = output_size(frame.width, frame.height)
        while len(self._slots) >= self.capacity:  # the sender fell behind: drop the oldest, keep latency
            self.drop(self._slots.popleft())
            self.evicted += 1
        slot = Slot(frame, arrival)
        self._slots.append(slot)
        self._ready.set()
        return slot

    def drop(self, slot: Slot) -> None:
        """``slot``'s own processed frame will not be sent (it may still go out as a stand-in)."""
        if not slot.dropped:
            slot.dropped = True
            self.stats.dropped()
        slot.resolve(None)

    def processed(self, result: Processed, latency: float | None = None) -> None:
        """A frame finished processing (in time or late): the freshest stand-in from now on. ``latency``:
        seconds from its arrival to now, which the deadline follows."""
        self._last = result.yuv
        if latency is not None:
            self.deadline.observe(latency)
            self.stats.deadline = self.deadline.current()

    @property
    def waiting(self) -> int:
        return len(self._slots)

    # ---- the sender's side ----------------------------------------------------------------------------

    async def recv(self) -> av.VideoFrame:
        while not self._slots:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        slot = self._slots.popleft()
        loop = asyncio.get_running_loop()
        deadline = self.deadline.current()
        remaining = slot.arrival + deadline - loop.time()
        if not slot.result.done() and remaining > 0:
            try:
                await asyncio.wait_for(asyncio.shield(slot.result), remaining)
            except TimeoutError:
                pass
        result = slot.result.result() if slot.result.done() else None
        if result is not None:
            yuv, stand_in = result.yuv, result.held
        else:
            self.drop(slot)
            yuv, stand_in = self._stand_in(slot), True
        if yuv is None:  # monitor mode: the raw frame itself
            frame = slot.frame
        else:
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts, frame.time_base = slot.frame.pts, slot.frame.time_base
        now = loop.time()
        self.stats.frame_out(now, now - slot.arrival, stand_in=stand_in, deadline=deadline)
        if self.on_sent is not None:
            self.on_sent(yuv if yuv is not None else frame.to_ndarray(format="yuv420p"), frame.pts, frame.time_base)
        return frame

    def _stand_in(self, slot: Slot) -> np.ndarray | None:
        if self.raw_allowed() and (slot.frame.width, slot.frame.height) == self._size \
                and slot.frame.format.name == "yuv420p":
            return None
        if self._last is not None:
            return self._last
        if self._placeholder is None:
            self._placeholder = placeholder_frame(*self._size)
        return self._placeholder

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a waiting recv() so that it ends
        for slot in self._slots:
            slot.resolve(None)
        self._slots.clear()


def placeholder_frame(width: int, height: int) -> np.ndarray:
    """A black card that says the swap is starting: sent before the first swapped frame exists."""
    image = np.zeros((height, width, 3), np.uint8)
    scale = max(0.35, min(width, height) / 600)
    text = "swapwatch: starting the swap..."
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(image, text, (max(4, (width - tw) // 2), (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (200, 200, 200), 1, cv2.LINE_AA)
    return to_yuv420p(image)
