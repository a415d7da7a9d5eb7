"""The models ``swapwatch bench`` runs, loaded once for both sides: the face detector, the swapper (with its
weights described for the report) and the deepfake detector, on the backend and device asked for
(:func:`load_models`), or placed for the device path (torch modules on the path's device)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapwatch.engines.faces import FaceDetector

from swapwatch.errors import InputError

if TYPE_CHECKING:
    from swapwatch.engines.bench.benchmark import BenchConfig

__all__ = ["BenchModels", "load_models", "torch_device"]


@dataclass
class BenchModels:
    detector: FaceDetector
    swapper: Any
    swap_weights: str  # what the swap weights are, for the header
    deepfake: Any | None  # the loaded DeepfakeDetector (its engines are shared by every session)
    backends: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    placement: dict[str, str] = field(default_factory=dict)  # device path: where each model runs
    device: str = ""  # device path: the torch device

    def deepfake_with(self, feature_stride: int, score_stride: int):
        """A fresh detector state (per-track windows) on the shared engines, with these strides (what serve
        gives each session: ``DeepfakeDetector.fork``)."""
        from swapwatch.engines.deepfake import WindowConfig

        return self.deepfake.fork(WindowConfig(feature_stride=feature_stride, score_stride=score_stride))


def _engine_backend(engine: Any) -> str:
    name = type(engine).__name__
    return {"OnnxRuntimeEngine": "onnxruntime", "TorchEngine": "torch", "TensorRTEngine": "tensorrt"}.get(name, name)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_models(cfg: BenchConfig, workdir: Path) -> BenchModels:
    """The face detector, swapper and deepfake detector the run asks for (exported graphs go to ``workdir``)."""
    from swapwatch.engines.faces import create_detector
    from swapwatch.engines.runtime import choose_backend

    from swapwatch.config import DetectorConfig

    notes: list[str] = []
    if cfg.device == "cuda" and not _cuda():
        raise InputError("--device cuda: no CUDA device here")
    if cfg.precision == "fp16" and (cfg.device == "cpu" or not _cuda()):
        raise InputError("--precision fp16 needs a CUDA GPU (none here); fp16 on a CPU is not faster")
    choose_backend(cfg.backend)  # one-line error when the backend is not installed
    if cfg.device_path:
        return _load_device_models(cfg, notes, workdir)
    det_backend = cfg.backend
    if cfg.backend == "torch" and cfg.face_detector != "mtcnn":
        det_backend = "auto"  # YuNet and SCRFD are ONNX graphs
        notes.append(f"{cfg.face_detector} is an ONNX graph: it runs on the best ONNX backend, not torch")
    detector = create_detector(DetectorConfig(name=cfg.face_detector, backend=det_backend, device=cfg.device))
    swapper, weights = _load_swapper(cfg, notes, workdir)
    deepfake = None
    if cfg.deepfake:
        from swapwatch.engines.deepfake import DeepfakeDetector

        deepfake = DeepfakeDetector.load(None, backend=cfg.backend, device=cfg.device)
    det_engine = getattr(detector, "engine", None) or getattr(detector, "pnet", None)
    backends = {"detector": _engine_backend(det_engine) if det_engine is not None else det_backend}
    gen = getattr(swapper, "generator", None) or getattr(swapper, "engine", None)
    backends["swapper"] = _engine_backend(gen) if gen is not None else "numpy/OpenCV"
    if deepfake is not None:
        backends["deepfake"] = _engine_backend(deepfake.scorer)
    return BenchModels(detector, swapper, weights, deepfake, backends, notes)


def torch_device(cfg: BenchConfig) -> str:
    """The torch device of the device path: ``--device`` with ``auto`` resolved (CUDA when present)."""
    return cfg.device if cfg.device in ("cpu", "cuda") else ("cuda" if _cuda() else "cpu")


def _engine_placement(engine: Any) -> str:
    """Where an engine runs: ``onnxruntime:CPUExecutionProvider``, ``torch:cuda``, ..."""
    providers = getattr(engine, "providers", None)
    if providers:
        return f"{_engine_backend(engine)}:{providers[0]}"
    device = getattr(engine, "device", None)
    return f"{_engine_backend(engine)}:{device}" if isinstance(device, str) else _engine_backend(engine)


def _load_device_models(cfg: BenchConfig, notes: list[str], workdir: Path) -> BenchModels:
    """Models for the device path: the swapper's generator and the deepfake detector in torch on the path's
    device; the face detector where it can run (an ONNX detector on the best ONNX Runtime provider present,
    MTCNN in torch on the path's device)."""
    from swapwatch.engines.faces import create_detector

    from swapwatch.config import DetectorConfig

    dev = torch_device(cfg)
    if cfg.face_detector == "mtcnn":
        det_cfg = DetectorConfig(name="mtcnn", backend="torch", device=dev)
    else:  # YuNet / SCRFD are ONNX graphs: ONNX Runtime's best provider here (TensorRT, CUDA, else CPU)
        det_backend = cfg.backend if cfg.backend in ("onnxruntime", "tensorrt") else "auto"
        det_cfg = DetectorConfig(name=cfg.face_detector, backend=det_backend, device="auto")
    detector = create_detector(det_cfg)
    det_engine = getattr(detector, "engine", None) or getattr(detector, "pnet", None)
    swapper, weights = _load_device_swapper(cfg, dev, workdir)
    deepfake = None
    if cfg.deepfake:
        from swapwatch.engines.deepfake import DeepfakeDetector

        df_backend = cfg.backend if cfg.backend in ("onnxruntime", "tensorrt") else "torch"
        deepfake = DeepfakeDetector.load(None, backend=df_backend, device=dev if df_backend == "torch" else "auto")
    backends = {"detector": _engine_backend(det_engine) if det_engine is not None else det_cfg.backend}
    gen = getattr(swapper, "generator", None) or getattr(swapper, "engine", None)
    backends["swapper"] = _engine_backend(gen) if gen is not None else "numpy/OpenCV"
    placement = {"detector": _engine_placement(det_engine) if det_engine is not None else "?",
                 "swapper": _engine_placement(gen) if gen is not None else "numpy/OpenCV:host"}
    if deepfake is not None:
        backends["deepfake"] = _engine_backend(deepfake.scorer)
        placement["deepfake"] = _engine_placement(deepfake.scorer)
    if det_engine is not None and "CPUExecutionProvider" in placement["detector"] and dev == "cuda":
        notes.append(f"{cfg.face_detector} runs on ONNX Runtime's CPU provider: no CUDA or TensorRT provider is "
                     "installed here (MTCNN runs in torch on the GPU: --face-detector mtcnn)")
    models = BenchModels(detector, swapper, weights, deepfake, backends, notes)
    models.placement = placement
    models.device = dev
    return models


def _load_device_swapper(cfg: BenchConfig, dev: str, workdir: Path) -> tuple[Any, str]:
    """SimSwap as torch modules on ``dev`` (the device path runs them on its own tensors; fp16 is the path's
    decision, after its check), other swappers as ``--swap-model`` loads them (NumPy or ONNX ``generate``:
    one host round trip per batch)."""
    from swapwatch.engines.swap import resolve_name

    name = resolve_name(cfg.swap_model)
    if not name.startswith("simswap"):
        # ONNX swappers on ONNX Runtime's best provider (this image may have only the CPU one).
        onnx_device = "cpu" if cfg.device == "cpu" else "auto"
        return _load_swapper(replace(cfg, device=onnx_device), [], workdir)
    from swapwatch.engines.swap import SimSwapSwapper

    if cfg.random_weights:
        import torch
        from swapwatch.export.arcface import ResNet
        from swapwatch.export.simswap import SimSwapGenerator

        torch.manual_seed(0)
        generator, arcface = SimSwapGenerator(int(name.split("-")[1])).eval(), ResNet().eval()
        return SimSwapSwapper.from_modules(generator, arcface, device=dev), "random fixture weights: speed only"
    from swapwatch.engines.runtime import ensure_model
    from swapwatch.export.arcface import load_arcface
    from swapwatch.export.simswap import load_generator

    gen = next(iter(ensure_model(name).values()))
    arc = next(iter(ensure_model("arcface-simswap").values()))
    return SimSwapSwapper.from_modules(load_generator(gen), load_arcface(arc), device=dev), _weights_note(name)


def _load_swapper(cfg: BenchConfig, notes: list[str], workdir: Path) -> tuple[Any, str]:
    from swapwatch.engines.swap import create_swapper, resolve_name

    name = resolve_name(cfg.swap_model)
    half = cfg.precision == "fp16"
    if name == "classic":
        if cfg.random_weights:
            raise InputError("--random-weights applies to simswap-224/512; classic has no weights")
        if half:
            raise InputError("classic is a weight-free uint8 swapper: it has no fp16 mode")
        from swapwatch.engines.swap import ClassicSwapper

        return ClassicSwapper(), "weight-free (classic)"
    if cfg.random_weights:
        if not name.startswith("simswap"):
            raise InputError("--random-weights builds SimSwap's released architecture only (simswap-224/512); "
                             f"{name} needs its real file")
        import torch
        from swapwatch.engines.swap import SimSwapSwapper
        from swapwatch.export.arcface import ResNet
        from swapwatch.export.simswap import SimSwapGenerator

        torch.manual_seed(0)
        generator, arcface = SimSwapGenerator(int(name.split("-")[1])).eval(), ResNet().eval()
        if cfg.backend in ("onnxruntime", "tensorrt") or (cfg.backend == "auto" and not half):
            from swapwatch.export.arcface import export_arcface_onnx
            from swapwatch.export.simswap import export_generator_onnx

            tmp = workdir / "random-simswap"
            tmp.mkdir(parents=True, exist_ok=True)
            gen_onnx = export_generator_onnx(generator, tmp / "generator.onnx")
            arc_onnx = export_arcface_onnx(arcface, tmp / "arcface.onnx")
            swapper = SimSwapSwapper.from_onnx(gen_onnx, arc_onnx, backend=cfg.backend, device=cfg.device)
        else:
            swapper = SimSwapSwapper.from_modules(generator, arcface, device=cfg.device, half=half)
        return swapper, "random fixture weights: speed only"
    if half:
        if not (name.startswith("simswap") and cfg.backend == "torch"):
            raise InputError(f"--precision fp16 is wired for simswap-224/512 with --backend torch; not for {name} "
                             f"on {cfg.backend}")
        from swapwatch.engines.runtime import ensure_model
        from swapwatch.engines.swap import SimSwapSwapper
        from swapwatch.export.arcface import load_arcface
        from swapwatch.export.simswap import load_generator

        gen = next(iter(ensure_model(name).values()))
        arc = next(iter(ensure_model("arcface-simswap").values()))
        swapper = SimSwapSwapper.from_modules(load_generator(gen), load_arcface(arc), device=cfg.device, half=True)
        return swapper, _weights_note(name)
    return create_swapper(name, backend=cfg.backend, device=cfg.device).swapper, _weights_note(name)


def _weights_note(name: str) -> str:
    from swapwatch.engines.runtime import verify

    results = verify(name)
    if results and all(r.status == "ok" for r in results):
        return "learned, sha256 verified against the registry"
    return "learned, files without a pinned sha256 (if these are fixture/random weights: speed only)"
