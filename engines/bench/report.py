"""What ``swapwatch bench`` reports: the machine it ran on (:func:`device_info`), each side's results and the
run's JSON (:class:`SideResult`, :class:`BenchResult`), the text table (:func:`format_report`) and the chart
(:func:`plot_stages`)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from swapwatch.engines.bench.media import BenchInput, pyav_version
from swapwatch.engines.bench.stats import DEVICE_STAGES, STAGES, StageStats

if TYPE_CHECKING:
    from swapwatch.engines.bench.benchmark import BenchConfig

__all__ = ["BenchResult", "SideResult", "describe_device", "device_info", "format_report", "plot_stages"]


# --------------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def device_info() -> dict[str, Any]:
    """CPU, cores, GPU and driver, and the versions of the libraries that set the speed."""
    import onnxruntime
    import torch

    from swapwatch import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "driver": _nvidia_driver() if gpu else None,
        "cuda": torch.version.cuda if gpu else None,
        "platform": platform.platform(),
        "load_average": load,
        "versions": {"python": platform.python_version(), "swapwatch": __version__, "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "pyav": pyav_version(),
                     "numpy": np.__version__},
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "h264_encoder": _h264_encoder(),
    }


def _h264_encoder() -> str | None:
    """The H.264 encoder the codec runs use (NVENC where it opens, else libx264); None without PyAV."""
    if pyav_version() is None:
        return None
    from swapwatch.engines.runtime import h264_encoder

    return h264_encoder()


def describe_device(info: dict[str, Any]) -> str:
    v = info["versions"]
    gpu = f"{info['gpu']} (driver {info['driver'] or '?'}, CUDA {info['cuda']})" if info["gpu"] else "no GPU"
    return (f"{info['cpu']}, {info['cores']} cores, {gpu}; Python {v['python']}, torch {v['torch']}, "
            f"onnxruntime {v['onnxruntime']} ({', '.join(info['onnxruntime_providers'])}), OpenCV {v['opencv']}, "
            f"PyAV {v['pyav'] or 'not installed'}")


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class SideResult:
    name: str
    description: str
    stats: StageStats
    wall_s: float = 0.0
    frames: int = 0
    faces_swapped: int = 0
    detections_run: int = 0
    encoded_bytes: int = 0
    device_stages_measured: bool = False  # upload/download timed (device path) rather than reported as 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self, sessions: int) -> dict[str, Any]:
        stages = self.stats.summary()
        for name in DEVICE_STAGES:
            stages.setdefault(name, {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0})
            stages[name]["measured"] = self.device_stages_measured
        out = {
            "fps": round(self.fps, 3), "fps_per_session": round(self.fps / sessions, 3),
            "stages": {k: stages[k] for k in [s for s in STAGES if s in stages] + sorted(set(stages) - set(STAGES))},
            "latency": self.stats.latency_summary(), "processing": self.stats.processing_summary(),
            "frames": self.frames, "wall_s": round(self.wall_s, 3),
            "faces_swapped": self.faces_swapped, "detections_run": self.detections_run,
            "encoded_bytes": self.encoded_bytes, "description": self.description,
        }
        out.update(self.extra)
        return out


@dataclass
class BenchResult:
    config: BenchConfig
    device: dict[str, Any]
    input: BenchInput
    models: dict[str, Any]
    pipeline: SideResult
    baseline: SideResult | None
    setup: dict[str, Any]
    notes: list[str]
    date: str
    command: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline.fps <= 0:
            return None
        return self.pipeline.fps / self.baseline.fps

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}
        out = {
            "date": self.date, "command": self.command,
            "device": {**self.device, "backend": cfg.backend, "precision": cfg.precision, "backends": self.models["backends"]},
            "config": config, "input": {"description": self.input.description, "width": self.input.width,
                                        "height": self.input.height, "fps": self.input.fps},
            "models": self.models, "setup": self.setup,
            "pipeline": self.pipeline.to_json(cfg.sessions),
            "baseline": self.baseline.to_json(cfg.sessions) if self.baseline is not None else None,
            "ratio": round(self.ratio, 3) if self.ratio is not None else None,
            "stage_notes": STAGES, "notes": self.notes,
        }
        return out


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _cell(stage: dict[str, float] | None) -> str:
    if stage is None:
        return "—"
    if stage.get("measured") is False:
        return "0 (n/a)"
    return f"{stage['p50_ms']:.2f} / {stage['p95_ms']:.2f} / {stage['mean_ms']:.2f}"


def format_report(result: BenchResult) -> str:
    cfg = result.config
    data = result.to_json()
    dev = data["device"]
    lines = [
        f"swapwatch bench — {result.date}",
        f"device: {describe_device(result.device)}",
        (f"backend: {cfg.backend} (detector {dev['backends'].get('detector')}, swapper {dev['backends'].get('swapper')}"
         + (f", deepfake {dev['backends']['deepfake']}" if "deepfake" in dev["backends"] else "")
         + f"), device {cfg.device}, precision {cfg.precision}"
         + (f" (used: {data['pipeline'].get('precision_used')})" if cfg.device_path else "")),
        (f"models: face detector {cfg.face_detector}; swap {result.models['swapper']} "
         f"[{result.models['swap_weights']}]; deepfake detector {'on' if cfg.deepfake else 'off'}"),
        *(["placement: " + ", ".join(f"{k} {v}" for k, v in result.models["placement"].items())]
          if result.models.get("placement") else []),
        (f"input: {result.input.description}; {cfg.faces} face(s), {cfg.sessions} session(s), {cfg.frames} timed + "
         f"{cfg.warmup} warm-up frames per session, {cfg.rounds} round(s)"),
        f"load average at start: {result.device.get('load_average')}",
        "",
        f"pipeline: {result.pipeline.description}",
    ]
    if result.baseline is not None:
        lines.append(f"baseline: {result.baseline.description}")
    lines.append("")
    sides = [("pipeline", data["pipeline"])] + ([("baseline", data["baseline"])] if data["baseline"] else [])
    header = "| stage | " + " | ".join(f"{n} p50 / p95 / mean ms" for n, _ in sides) + " |"
    lines += [header, "|---" * (len(sides) + 1) + "|"]
    names = [s for s in STAGES if any(s in d["stages"] for _, d in sides)]
    for stage in names:
        lines.append(f"| {stage} | " + " | ".join(_cell(d["stages"].get(stage)) for _, d in sides) + " |")
    proc = " | ".join(_cell(d.get("processing")) for _, d in sides)
    lines.append(f"| processing per frame (server side, no waits) | {proc} |")
    lat = " | ".join(_cell(d["latency"]) for _, d in sides)
    span = "decode start -> encoded" if cfg.codec else "frame taken from memory -> processed"
    lines.append(f"| frame latency at full throughput ({span}) | {lat} |")
    kind = "end to end" if cfg.codec else "server side"
    lines.append(f"| fps (all sessions, {kind}) | " + " | ".join(f"{d['fps']:.1f}" for _, d in sides) + " |")
    lines.append("| faces swapped / detector runs | "
                 + " | ".join(f"{d['faces_swapped']} / {d['detections_run']}" for _, d in sides) + " |")
    lines.append("")
    if result.ratio is not None:
        lines.append(f"pipeline / baseline frame rate: {result.ratio:.2f}x "
                     f"({data['pipeline']['fps']:.1f} vs {data['baseline']['fps']:.1f} fps)")
    else:
        lines.append(f"pipeline frame rate: {data['pipeline']['fps']:.1f} fps")
    lines.append(f"source identity embedded once: {result.setup['embed_source_once_ms']:.1f} ms "
                 f"({result.setup['source']})")
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def plot_stages(result: BenchResult, out: str | Path) -> Path:
    """Mean ms per frame for each stage (bars) with its p95 (whisker), pipeline beside baseline."""
    from swapwatch.plotting import png_figure

    data = result.to_json()
    sides = [("pipeline", data["pipeline"], "#1f77b4")]
    if data["baseline"]:
        sides.append(("baseline", data["baseline"], "#d62728"))
    names = [s for s in STAGES if any(s in d["stages"] and d["stages"][s].get("measured", True) for _, d, _ in sides)]
    y = np.arange(len(names), dtype=np.float64)
    height = 0.8 / len(sides)
    with png_figure(out, width=9.0, height=max(3.0, 0.42 * len(names) + 1.4)) as (_fig, ax):
        for i, (label, d, colour) in enumerate(sides):
            means = [d["stages"].get(s, {}).get("mean_ms", 0.0) for s in names]
            p95 = [d["stages"].get(s, {}).get("p95_ms", 0.0) for s in names]
            pos = y + (i - (len(sides) - 1) / 2) * height
            ax.barh(pos, means, height=height, color=colour, label=f"{label}: {d['fps']:.1f} fps (bar: mean)")
            ax.errorbar(p95, pos, fmt="|", color="black", markersize=7, label="p95" if i == 0 else None)
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_xlabel("ms per frame")
        ratio = f", pipeline/baseline {result.ratio:.2f}x" if result.ratio is not None else ""
        ax.set_title(f"swapwatch bench {result.config.width}x{result.config.height}, {result.config.faces} face(s), "
                     f"{result.config.sessions} session(s){ratio}", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    return Path(out)
