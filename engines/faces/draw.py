"""Drawing detections and writing annotated video (for `faces --draw` and debugging)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from swapwatch.engines.faces.face import Face

# BGR colours for left eye, right eye, nose, mouth left, mouth right.
_LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255))


def draw_faces(image_bgr: np.ndarray, faces: list[Face]) -> np.ndarray:
    out = image_bgr.copy()
    thickness = max(1, round(min(out.shape[:2]) / 300))
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 200, 0), thickness)
        label = f"{face.score:.2f}" + (f" #{face.track_id}" if face.track_id is not None else "")
        cv2.putText(out, label, (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness,
                    (0, 200, 0), thickness)
        for (x, y), colour in zip(face.landmarks, _LANDMARK_COLOURS):
            cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, colour, -1)
    return out


class VideoWriter:
    """H.264 (or VP9 for .webm) writer through PyAV; frames are BGR uint8 of a fixed size."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        import av

        self._av = av
        self.container = av.open(str(path), mode="w")
        from swapwatch.engines.runtime import h264_encoder, h264_options

        codec = "libvpx-vp9" if path.suffix.lower() == ".webm" else h264_encoder()
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        if codec != "libvpx-vp9":
            self.stream.options = h264_options(codec)
        # Encoders need even dimensions for 4:2:0.
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, image_bgr: np.ndarray) -> None:
        h, w = self.stream.height, self.stream.width
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image_bgr[:h, :w]), format="bgr24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
