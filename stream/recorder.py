"""Recording a session's outgoing video to an MP4, on its own thread.

Only when the server has a record folder and the client asked for it (``record: true`` in the offer):
otherwise nothing a user streams touches the disk. What is recorded is what was sent (processed, labelled
frames). aiortc's MediaRecorder encodes on the event loop, hence this small writer: a bounded queue
(frames are dropped, not queued, when the encoder falls behind) and one thread with PyAV's libx264.

A recording ends, its file closed and playable, at the first of: ``max_seconds`` of video, ``max_bytes`` of
file, less than ``min_free_bytes`` left on its disk (issue 17: a session left running must not fill the disk);
``on_stopped(reason)`` is then called once, from the writer thread, and later frames are ignored.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

_CLOSE = None


CHECK_EVERY = 30  # frames between two looks at the file's size and the disk's free space


class Recorder:
    def __init__(self, path: Path, *, max_queue: int = 60, max_seconds: float | None = None,
                 max_bytes: int | None = None, min_free_bytes: int = 0,
                 on_stopped: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.frames = 0
        self.dropped = 0
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.on_stopped = on_stopped
        self.stopped: str | None = None  # why the recording ended early
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name=f"recorder-{self.path.stem}", daemon=True)
        self._thread.start()

    def write(self, yuv: np.ndarray, pts: int | None, time_base: Fraction | None) -> None:
        """Queue one yuv420p frame (never blocks; the planes must not change afterwards)."""
        if self.stopped is not None:
            return
        try:
            self._queue.put_nowait((yuv, pts, time_base))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 10.0) -> None:
        """Flush and close the file (blocking: call it from a thread, not the event loop)."""
        if not self._thread.is_alive():  # stopped at a limit (or failed): the file is closed already
            return
        try:
            self._queue.put(_CLOSE, timeout=timeout)
        except queue.Full:  # the writer died and left its queue full
            pass
        self._thread.join(timeout)

    def _run(self) -> None:
        container = stream = None
        first = last = None
        try:
            while (item := self._queue.get()) is not _CLOSE:
                yuv, pts, time_base = item
                if container is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    container = av.open(str(self.path), mode="w")
                    stream = container.add_stream("libx264", rate=30)
                    stream.width, stream.height = yuv.shape[1], yuv.shape[0] * 2 // 3
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.time_base = Fraction(1, 90000)
                    stream.options = {"preset": "veryfast"}
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                # RTP timestamps start anywhere and wrap at 2^32: record them relative to the first frame.
                ticks = 0 if pts is None or time_base is None else int(pts)
                first = ticks if first is None else first
                rel = (ticks - first) % (1 << 32)
                if last is not None and rel <= last:
                    rel = last + 1
                last = rel
                frame.pts, frame.time_base = rel, time_base or Fraction(1, 90000)
                container.mux(stream.encode(frame))
                self.frames += 1
                reason = self._limit_reached(float(rel * frame.time_base))
                if reason is not None:
                    self.stopped = reason
                    log.warning("recording %s stopped after %d frames: %s", self.path.name, self.frames, reason)
                    if self.on_stopped is not None:
                        self.on_stopped(reason)
                    break
            if container is not None:
                container.mux(stream.encode())
        except Exception:
            self.stopped = "failed"
            log.exception("recording to %s failed; recording stopped", self.path)
        finally:
            if container is not None:
                container.close()

    def _limit_reached(self, seconds: float) -> str | None:
        if self.max_seconds is not None and seconds >= self.max_seconds:
            return f"length limit ({self.max_seconds:g} s) reached"
        if self.frames % CHECK_EVERY:
            return None
        if self.max_bytes is not None and os.path.getsize(self.path) >= self.max_bytes:
            return f"size limit ({self.max_bytes} bytes) reached"
        if self.min_free_bytes and shutil.disk_usage(self.path.parent).free < self.min_free_bytes:
            return f"less than {self.min_free_bytes} bytes free on the recording disk"
        return None
