"""Build a swapper by name, its files resolved through the registry; `auto` picks the best one installed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swapwatch.engines.faces import CropTemplate
from swapwatch.engines.runtime import ensure_model, is_present, model_dir
from swapwatch.engines.swap.identity import IdentityEmbedder
from swapwatch.engines.swap.swapper import Swapper
from swapwatch.errors import InputError

log = logging.getLogger(__name__)

SWAPPERS = ("simswap-224", "simswap-512", "inswapper-128", "classic")
# `auto` takes the first learned swapper whose files are all in the cache, else the weight-free one.
AUTO_ORDER = ("inswapper-128", "simswap-224", "simswap-512")
# Registry entries each learned swapper needs besides its own.
_COMPANIONS = {"inswapper-128": ("w600k-r50",), "simswap-224": ("arcface-simswap",),
               "simswap-512": ("arcface-simswap",)}


@dataclass
class LoadedSwapper:
    swapper: Swapper
    identity: IdentityEmbedder | None  # for match:/map: face selection; None when no identity model is present


def installed(name: str) -> bool:
    return all(is_present(n) for n in (name, *_COMPANIONS.get(name, ())))


def resolve_name(name: str) -> str:
    if name != "auto":
        if name not in SWAPPERS:
            raise InputError(f"unknown swap model {name!r}; choose from auto, {', '.join(SWAPPERS)}")
        return name
    for candidate in AUTO_ORDER:
        if installed(candidate):
            return candidate
    log.warning("no learned swapper is installed; using the weight-free classic swapper "
                "(install one with `swapwatch models install` / `fetch`)")
    return "classic"


def create_swapper(name: str = "auto", *, backend: str = "auto", device: str = "auto") -> LoadedSwapper:
    name = resolve_name(name)
    if name == "classic":
        from swapwatch.engines.swap.classic import ClassicSwapper

        return LoadedSwapper(ClassicSwapper(), _optional_w600k(backend, device))
    if name == "inswapper-128":
        from swapwatch.engines.swap.identity import ArcFaceEmbedder
        from swapwatch.engines.swap.inswapper import InswapperSwapper

        model = _one(ensure_model("inswapper-128"))  # the user's own file: say so before fetching the rest
        embedder = ArcFaceEmbedder(_one(ensure_model("w600k-r50")), backend=backend, device=device)
        swapper = InswapperSwapper(model, embedder, backend=backend, device=device)
        return LoadedSwapper(swapper, embedder)
    from swapwatch.engines.swap.simswap import SimSwapSwapper

    size = int(name.split("-")[1])
    generator = _one(ensure_model(name))
    arcface = _one(ensure_model("arcface-simswap"))
    if backend == "torch":
        swapper = SimSwapSwapper.from_checkpoints(generator, arcface, crop_size=size, device=device)
    else:
        onnx_dir = model_dir(name) / "onnx"
        swapper = SimSwapSwapper.from_onnx(*_exported_simswap(generator, arcface, size, onnx_dir),
                                           crop_size=size, backend=backend, device=device)
    return LoadedSwapper(swapper, SwapperIdentity(swapper))


def _one(files: dict[str, Path]) -> Path:
    return next(iter(files.values()))


def _optional_w600k(backend: str, device: str) -> IdentityEmbedder | None:
    if not is_present("w600k-r50"):
        return None
    from swapwatch.engines.swap.identity import ArcFaceEmbedder

    return ArcFaceEmbedder(_one(ensure_model("w600k-r50")), backend=backend, device=device)


def _exported_simswap(generator: Path, arcface: Path, size: int, onnx_dir: Path) -> tuple[Path, Path]:
    """ONNX graphs of a SimSwap checkpoint pair, exported on first use (parity-checked against PyTorch)
    and cached beside the checkpoints."""
    from swapwatch.export import arcface as arc, simswap as sim
    from swapwatch.export.onnx_export import EMBEDDING_TOLERANCE, check_parity

    gen_onnx, arc_onnx = onnx_dir / f"simswap_{size}.onnx", onnx_dir / "arcface.onnx"
    if _stale(gen_onnx, generator):
        log.info("exporting %s to ONNX (once)", generator.name)
        module = sim.load_generator(generator, size)
        sim.export_generator_onnx(module, gen_onnx)
        check_parity(module, gen_onnx, sim.generator_parity_inputs(size))
    if _stale(arc_onnx, arcface):
        log.info("exporting %s to ONNX (once)", arcface.name)
        module = arc.load_arcface(arcface)
        arc.export_arcface_onnx(module, arc_onnx)
        check_parity(module, arc_onnx, arc.parity_inputs(), tolerance=EMBEDDING_TOLERANCE)
    return gen_onnx, arc_onnx


def _stale(derived: Path, source: Path) -> bool:
    return not derived.is_file() or derived.stat().st_mtime < source.stat().st_mtime


class SwapperIdentity(IdentityEmbedder):
    """A swapper's own identity encoder (SimSwap's ArcFace) as an embedder for face selection."""

    def __init__(self, swapper) -> None:
        self.swapper = swapper
        self.name = f"{swapper.name}-arcface"
        self.template: CropTemplate = swapper.template
        self.dim = 512

    def embed_crops(self, crops_bgr: np.ndarray) -> np.ndarray:
        return self.swapper.embed_crops(crops_bgr)
