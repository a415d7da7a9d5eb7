"""Recording a session's outgoing video to an MP4, on its own thread.

Only when the server has a record folder and the client asked for it (``record: true`` in the offer):
otherwise nothing a user streams touches the disk. What is recorded is what was sent (processed, labelled
frames). aiortc's MediaRecorder encodes on the event loop, hence this small writer: a bounded queue
(frames are dropped, not queued, when the encoder falls behind) and one thread with PyAV's libx264.
"""

from __future__ import annotations

import logging
import queue
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

_CLOSE = None


class Recorder:
    def __init__(self, path: Path, *, max_queue: int = 60) -> None:
        self.path = Path(path)
        self.frames = 0
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name=f"recorder-{self.path.stem}", daemon=True)
        self._thread.start()

    def write(self, yuv: np.ndarray, pts: int | None, time_base: Fraction | None) -> None:
        """Queue one yuv420p frame (never blocks; the planes must not change afterwards)."""
        try:
            self._queue.put_nowait((yuv, pts, time_base))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 10.0) -> None:
        """Flush and close the file (blocking: call it from a thread, not the event loop)."""
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
            if container is not None:
                container.mux(stream.encode())
        except Exception:
            log.exception("recording to %s failed; recording stopped", self.path)
        finally:
            if container is not None:
                container.close()
