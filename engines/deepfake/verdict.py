"""Offline deepfake detection of a whole video: one verdict, per-track scores and the score over time.

    video -> probe (fail fast on a bad file) -> score_video (faces tracked, every face scored, windows)
          -> VideoReport: verdict REAL | UNCERTAIN | FAKE | NO_FACES, score, windows, tracks, video, model, timings

The verdict and score are the detector's (:class:`~swapwatch.engines.deepfake.detector.ClipScores`): the video's
probability of being fake is its most suspicious face track; the model's thresholds
(:class:`~swapwatch.engines.deepfake.thresholds.Thresholds`) call it FAKE at or above the FAKE threshold, REAL
below the REAL one and UNCERTAIN in between (a model with one threshold is never UNCERTAIN); a video in which
no face was found gets ``NO_FACES`` and no score, never a guess. :func:`detect_video` backs ``swapwatch detect``
and the server's ``POST /detect``, so both give the same JSON (:meth:`VideoReport.to_json`). What the report
says about the model (which one, whether it is a demonstration model, its note) is read from the model's own
``detector.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.engines.deepfake.detector import (
    DEFAULT_MODEL_DIR, INFO_FILE, ClipScores, DeepfakeDetector, score_video,
)
from swapwatch.engines.deepfake.thresholds import VERDICTS, Thresholds
from swapwatch.engines.swap import WatermarkConfig, Watermarker
from swapwatch.errors import InputError

__all__ = ["VERDICTS", "VideoReport", "WatermarkEvidence", "detect_video", "model_info", "plot_report"]

MODEL_CARD = "MODEL_CARD.md"


@dataclass
class WatermarkEvidence:
    """swapwatch's own watermark (the one every swapped frame carries) over a video's frames, as ``monitor``
    checks it: found on at least ``min_frames`` frames (or on every frame of a shorter video), the video is a
    verified swapwatch swap, FAKE whatever the model says. A frame's chance hit is about 1e-8 (labelling.py),
    so two frames already make one negligible."""

    watermarker: Watermarker = field(default_factory=lambda: Watermarker(WatermarkConfig()))
    min_frames: int = 2
    checked: int = 0
    found: int = 0
    first: float | None = None
    last: float | None = None
    payload_ok: bool = False  # the payload (swapwatch's tag and version) read back whole on some frame

    def __call__(self, image: np.ndarray, t: float) -> None:
        if not self.watermarker.fits(*image.shape[:2]):  # a frame smaller than the watermark's grid carries none
            return
        result = self.watermarker.detect(image)
        self.checked += 1
        if result.found:
            self.found += 1
            self.first = t if self.first is None else self.first
            self.last = t
            self.payload_ok = self.payload_ok or result.payload_ok

    @property
    def verified(self) -> bool:
        return self.found > 0 and self.found >= min(self.min_frames, self.checked)

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "found": self.found, "first": _r(self.first, 3), "last": _r(self.last, 3),
                "payload_ok": self.payload_ok, "verified": self.verified}


@dataclass
class VideoReport:
    """The result of :func:`detect_video`. Times are in seconds from the start of the video.

    ``windows``: one ``{"track", "start", "end", "score", "frames", "full"}`` per scored window (the window's
    first and last frame times, its probability of being fake, how many of the track's frames it holds and
    whether that is the model's whole window: a track's first windows are shorter); ``tracks``: one
    ``{"track", "score", "verdict", "frames", "first", "last", "counted"}`` per face track (``counted``: long
    enough to take part in the video's score, see :attr:`ClipScores.score`; a track's ``verdict`` is its score
    against the same thresholds, None without a score); ``watermark``: the :class:`WatermarkEvidence` (``None``
    when not checked). ``verified``: the verdict is FAKE because swapwatch's own watermark was found, whatever
    ``score`` says. ``thresholds``: the FAKE and REAL thresholds applied (the JSON's ``threshold`` is the FAKE
    one, as before the REAL one existed).
    """

    verdict: str
    score: float | None
    thresholds: Thresholds
    windows: list[dict[str, Any]] = field(default_factory=list)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    video: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    watermark: dict[str, Any] | None = None
    verified: bool = False

    @property
    def threshold(self) -> float:
        """The FAKE threshold."""
        return self.thresholds.fake

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "verified": self.verified, "score": _r(self.score),
                "threshold": self.threshold, "thresholds": self.thresholds.to_json(),
                "watermark": self.watermark, "windows": self.windows,
                "tracks": self.tracks, "video": self.video, "model": self.model, "settings": self.settings,
                "timings": self.timings}

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


# ---- the model: which one, and what its own files say about it ------------------------------------------


def _model_folder(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    if str(path) == "default":
        return DEFAULT_MODEL_DIR
    p = Path(path)
    return p.parent if p.suffix == ".pt" else p


def _card_note(folder: Path | None) -> str | None:
    """The model card's first emphasised statement (``**...**``) in the paragraphs before its first section:
    where a card states what the model is fit for."""
    if folder is None or not (folder / MODEL_CARD).is_file():
        return None
    text = (folder / MODEL_CARD).read_text(errors="replace")
    intro = text.split("\n## ", 1)[0]
    intro = "\n".join(line for line in intro.splitlines() if not line.startswith("#"))
    match = re.search(r"\*\*(.+?)\*\*", intro, flags=re.DOTALL)
    return " ".join(match.group(1).split()) if match else None


def model_info(detector: DeepfakeDetector, path: str | Path | None = None) -> dict[str, Any]:
    """``{"name", "path", "default", "sha256", "demonstration", "note", "threshold", "real_threshold", "window",
    ...}``.

    ``default``: this is the committed default model (same weights as ``engines/weights/deepfake``, by the
    sha256 recorded in its ``detector.json``, or loaded from that folder). ``note``: ``detector.json``'s
    ``note`` if it has one, else the model card's first emphasised statement. ``demonstration``:
    ``detector.json``'s ``demonstration`` flag if it has one, else whether that note calls it a
    demonstration model. ``path``: ``None`` or ``"default"`` both mean the default folder. ``threshold`` and
    ``real_threshold`` are the model's own (``real_threshold`` None: it has one threshold), whatever a user
    overrode for one analysis.
    """
    extra = detector.info.extra
    folder = _model_folder(path)
    sha = extra.get("sha256") if isinstance(extra.get("sha256"), dict) else {}
    default_sha = {}
    try:
        default_sha = json.loads((DEFAULT_MODEL_DIR / INFO_FILE).read_text()).get("sha256") or {}
    except (OSError, ValueError):
        pass
    is_default = bool(sha) and sha == default_sha
    if folder is not None and folder.resolve() == DEFAULT_MODEL_DIR.resolve():
        is_default = True
    if folder is None and is_default:
        folder = DEFAULT_MODEL_DIR
    note = extra.get("note") if isinstance(extra.get("note"), str) else _card_note(folder)
    demo = extra.get("demonstration")
    if not isinstance(demo, bool):
        demo = bool(note and "demonstration model" in note.lower())
    digest = sha.get("detector.pt") or sha.get("scorer.onnx")
    if digest is None and folder is not None and (folder / "detector.pt").is_file():
        digest = hashlib.sha256((folder / "detector.pt").read_bytes()).hexdigest()
    validation = extra.get("validation") if isinstance(extra.get("validation"), dict) else {}
    return {
        "name": "default" if is_default else (folder.name if folder is not None else "unknown"),
        "path": str(folder) if folder is not None else None,
        "default": is_default,
        "sha256": digest,
        "demonstration": demo,
        "note": note,
        "threshold": detector.info.threshold,
        "real_threshold": detector.info.real_threshold,
        "window": detector.window,
        "validation_window_auc": _r(validation.get("window_auc")) if "window_auc" in validation else None,
    }


# ---- one video --------------------------------------------------------------------------------------


def detect_video(path: str | Path, *, detector: DeepfakeDetector, face_detector, detect_every: int = 1,
                 max_frames: int | None = None, window_stride: int | None = None, threshold: float | None = None,
                 real_threshold: float | None = None, model_path: str | Path | None = None, name: str | None = None,
                 check_watermark: bool = True,
                 progress: Callable[[int, int | None], None] | None = None) -> VideoReport:
    """Find, track and score every face of a video file and decide REAL, UNCERTAIN, FAKE or NO_FACES.

    ``threshold``: the probability at or above which the video is called FAKE; ``real_threshold``: the one
    below which it is called REAL (defaults: the model's own; see :meth:`Thresholds.overridden` for how one
    given alone moves the other). ``max_frames``: analyse only the first N frames. ``progress(done, total)`` is
    called per frame (``total`` None when the container does not say). ``model_path``: where ``detector`` was
    loaded from (``None`` or ``"default"``: the default model), for the report. ``name``: the video's name in
    the report (default: the file's name). ``check_watermark``: look for swapwatch's own watermark on every
    frame, as ``monitor`` does; found (see :class:`WatermarkEvidence`), the verdict is FAKE and ``verified``,
    whatever the model's score.
    Raises :class:`InputError` for a missing, unreadable or still-image file.
    """
    from swapwatch.engines.runtime import check_file, is_image_file, probe_video

    path = check_file(path)
    name = name or path.name
    if detect_every < 1:
        raise InputError("detect_every must be at least 1")
    if max_frames is not None and max_frames < 1:
        raise InputError("max_frames must be at least 1")
    thresholds = _thresholds(detector, threshold, real_threshold)
    if is_image_file(path):
        raise InputError(f"{name}: is a still image; detect analyses videos (any format FFmpeg reads)")
    info = probe_video(path)
    total = info.frames or None
    if total is not None and max_frames is not None:
        total = min(total, max_frames)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done = n
        if progress is not None:
            progress(n, total)

    started = time.perf_counter()
    evidence = WatermarkEvidence() if check_watermark else None
    clip = score_video(path, detector, face_detector, detect_every=detect_every, max_frames=max_frames,
                       window_stride=window_stride, progress=tick, on_frame=evidence)
    wall = time.perf_counter() - started
    clip.thresholds = thresholds
    windows, tracks = _windows_and_tracks(clip, detector.window)
    fps = float(info.fps) if info.fps else 0.0
    verified = evidence is not None and evidence.verified
    report = VideoReport(
        verdict="FAKE" if verified else clip.verdict, score=clip.score, thresholds=thresholds,
        windows=windows, tracks=tracks, verified=verified,
        watermark=evidence.to_json() if evidence is not None else None,
        video={"name": name, "frames": done, "frames_in_file": info.frames or None,
               "truncated": bool(max_frames is not None and done >= max_frames and info.frames != done),
               "fps": round(fps, 3), "duration": round(done / fps, 3) if fps else None,
               "width": info.width, "height": info.height},
        model=model_info(detector, model_path),
        settings={"face_detector": getattr(face_detector, "name", type(face_detector).__name__),
                  "detect_every": detect_every, "max_frames": max_frames,
                  "window_stride": window_stride or detector.config.score_stride,
                  "watermark_check": check_watermark},
        timings={"analysis_s": round(wall, 3), "fps": round(done / wall, 2) if wall > 0 else None},
    )
    if report.verdict not in VERDICTS:  # ClipScores grew a verdict this report does not know
        raise ValueError(f"unexpected verdict {report.verdict!r}")
    return report


def _thresholds(detector: DeepfakeDetector, threshold: float | None, real_threshold: float | None) -> Thresholds:
    for name, value in (("threshold", threshold), ("real_threshold", real_threshold)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise InputError(f"{name} must lie in [0, 1]")
    try:
        return detector.info.thresholds.overridden(fake=threshold, real=real_threshold)
    except ValueError as exc:
        raise InputError(f"the REAL threshold cannot be above the FAKE one: {exc}") from None


def _windows_and_tracks(clip: ClipScores, window: int) -> tuple[list[dict], list[dict]]:
    windows: list[dict] = []
    tracks: list[dict] = []
    scored = [t for t in clip.tracks.values() if t.score is not None]
    longest = max((len(t.frame_probs) for t in scored), default=0)
    for tid in sorted(clip.tracks):
        ts = clip.tracks[tid]
        times = ts.frame_times
        j = 0
        for end, p in zip(ts.window_times, ts.window_probs):
            while j < len(times) - 1 and times[j] < end:  # window ends are frame times, in order
                j += 1
            first = max(0, j - window + 1)
            # A track's first windows hold fewer than the model's W frames (a score from the first frame on,
            # so that short clips get one): "frames" says how many, "full" whether it is a whole window.
            windows.append({"track": tid, "start": round(times[first], 3), "end": round(end, 3), "score": _r(p),
                            "frames": j - first + 1, "full": j - first + 1 >= window})
        score = ts.score
        tracks.append({
            "track": tid, "score": _r(score),
            "verdict": clip.track_verdict(tid),
            "frames": len(ts.frame_probs), "first": round(times[0], 3) if times else None,
            "last": round(times[-1], 3) if times else None,
            # the rule ClipScores.score applies: tracks seen on under a quarter of the longest's frames are
            # left out of the video's score (a detector's brief false positive must not decide a video)
            "counted": score is not None and 4 * len(ts.frame_probs) >= longest,
        })
    windows.sort(key=lambda w: (w["end"], w["track"]))
    return windows, tracks


# ---- plot ---------------------------------------------------------------------------------------------


def plot_report(report: VideoReport, out_png: str | Path) -> Path:
    """Each face track's window score over time (at each window's end), the FAKE threshold and, for a model with
    a band, the REAL threshold with the UNCERTAIN band between them shaded; the verdict in the title. Written
    atomically with :func:`swapwatch.plotting.png_figure`."""
    from swapwatch.plotting import png_figure

    out_png = Path(out_png)
    by_track: dict[int, list[tuple[float, float]]] = {}
    for w in report.windows:
        by_track.setdefault(w["track"], []).append((w["end"], w["score"]))
    duration = report.video.get("duration") or max((w["end"] for w in report.windows), default=1.0) or 1.0
    with png_figure(out_png, width=9.0, height=4.0) as (fig, ax):
        for track in report.tracks:
            pts = by_track.get(track["track"], [])
            if not pts:
                continue
            xs, ys = zip(*pts)
            label = f"track {track['track']}: {track['score']:.2f}" + ("" if track["counted"] else " (brief)")
            ax.plot(xs, ys, marker="." if len(pts) < 40 else None, lw=1.5, label=label)
        th = report.thresholds
        if th.has_band:
            ax.axhspan(th.real, th.fake, color="#f5c542", alpha=0.18, lw=0, label="uncertain")
            ax.axhline(th.real, color="#2ca02c", ls="--", lw=1, label=f"REAL below {th.real:.2f}")
            ax.axhline(th.fake, color="#d62728", ls="--", lw=1, label=f"FAKE at {th.fake:.2f}")
        else:
            ax.axhline(th.fake, color="#d62728", ls="--", lw=1, label=f"threshold {th.fake:.2f}")
        if not report.windows:
            ax.text(0.5, 0.5, "no faces found", transform=ax.transAxes, ha="center", va="center",
                    fontsize=14, color="#666666")
        ax.set_xlim(0, duration)
        ax.set_ylim(0, 1)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"P(fake), last {report.model.get('window', '')} frames")
        score = "" if report.score is None else f", score {report.score:.3f}"
        ax.set_title(f"{report.video.get('name', '')}: {report.verdict}{score}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        model = report.model
        if model:
            foot = f"model: {model.get('name')}" + (" (demonstration model, not for real decisions)"
                                                     if model.get("demonstration") else "")
            fig.text(0.01, 0.01, foot, fontsize=7, color="#666666")
    return out_png
