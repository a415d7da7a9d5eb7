"""``swapwatch export MODEL``: export a model's PyTorch definition to ONNX and check parity with PyTorch.

One :class:`ExportTarget` per model; adding ``export simswap`` or ``export arcface`` means writing one more
target class and listing it in :data:`TARGETS`. Heavy imports (torch, onnx) happen inside ``run`` so that
``swapwatch --help`` stays fast.
"""

from __future__ import annotations

import abc
import argparse
import time
from pathlib import Path
from typing import ClassVar

DEFAULT_ATOL = 1e-4


class ExportTarget(abc.ABC):
    """One ``swapwatch export NAME`` sub-subcommand."""

    name: str
    help: str
    # "dir": the common --output-dir (a target writing several graphs); "file": --output FILE (one graph).
    output: str = "dir"
    default_atol: float = DEFAULT_ATOL

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Arguments of this target; the common ones (output folder, opset, tolerance) are added for all."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int: ...


class MTCNNTarget(ExportTarget):
    name = "mtcnn"
    help = "MTCNN's PNet, RNet and ONet (facenet-pytorch weights) to pnet/rnet/onet.onnx."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--weights-dir", type=Path, default=None,
                            help="folder with pnet.pt, rnet.pt, onet.pt (default: the model cache, fetched "
                                 "and verified if needed)")

    def run(self, args: argparse.Namespace) -> int:
        from swapwatch.export.mtcnn import export_mtcnn_onnx, load_mtcnn_nets, parity_inputs
        from swapwatch.export.onnx_export import check_parity

        if args.weights_dir is not None:
            weights = args.weights_dir
        else:
            from swapwatch.engines.registry import ensure_model

            weights = ensure_model("mtcnn")
        nets = load_mtcnn_nets(weights)
        paths = export_mtcnn_onnx(nets, args.output_dir, opset=args.opset)
        for (name, path), net in zip(paths.items(), nets):
            report = check_parity(net, path, parity_inputs(name), atol=args.atol)
            print(f"{name}: max abs error {report.worst:.2e} (atol {args.atol:.0e}) -> {path}")
        return 0


def _require_tensorrt() -> None:
    """Fail before a long export when --trt cannot be honoured here."""
    import importlib.util

    from swapwatch.errors import BackendUnavailable

    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailable("--trt needs TensorRT, which is not installed here "
                                 "(pip install 'swapwatch[gpu]' on a CUDA machine)")
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("--trt needs a CUDA GPU; none is visible here")


class _CheckedGraphTarget(ExportTarget):
    """One PyTorch checkpoint -> one ONNX graph, checked against PyTorch; optional fp16 graph and TensorRT
    engines, each checked against the fp32 graph before it is kept."""

    output = "file"
    default_atol = 1e-3
    checkpoint_help = "checkpoint file"
    fp16_limit = 2e-2  # largest allowed fp16-vs-fp32 difference, in the units of fp16_error
    fp16_metric = "max abs error"
    # TensorRT builds fp32 engines with TF32 allowed by default, so they differ slightly more than ORT.
    trt_fp32_limit = 1e-2

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", type=Path, required=True, help=self.checkpoint_help)
        parser.add_argument("--fp16", action="store_true",
                            help="also write NAME.fp16.onnx (fp32 inputs/outputs) and check it against fp32 "
                                 f"({self.fp16_metric} <= {self.fp16_limit:g})")
        parser.add_argument("--trt", action="store_true",
                            help="also build TensorRT engines (fp32, and fp16 with --fp16) into the engine "
                                 "cache and check them against the fp32 graph; needs tensorrt and a CUDA GPU")

    @abc.abstractmethod
    def load(self, args: argparse.Namespace): ...

    @abc.abstractmethod
    def label(self, module) -> str: ...

    @abc.abstractmethod
    def export(self, module, path: Path, opset: int) -> Path: ...

    @abc.abstractmethod
    def parity_inputs(self, module) -> list: ...

    def fp16_error(self, reference: list, candidate: list) -> float:
        from swapwatch.export.onnx_export import max_abs_error

        return max_abs_error(reference, candidate)

    def run(self, args: argparse.Namespace) -> int:
        from swapwatch.errors import ModelError
        from swapwatch.export.onnx_export import check_parity
        from swapwatch.export.onnx_export import run_onnx, write_fp16_onnx

        if args.trt:
            _require_tensorrt()
        module = self.load(args)
        label = self.label(module)
        start = time.perf_counter()
        path = self.export(module, args.output, args.opset)
        exported = time.perf_counter() - start
        inputs = self.parity_inputs(module)
        report = check_parity(module, path, inputs, atol=args.atol)
        print(f"{label}: max abs error {report.worst:.2e} vs PyTorch (atol {args.atol:.0e}, batches 1 and 3;"
              f" exported in {exported:.1f} s) -> {path}")
        reference = run_onnx(path, inputs) if (args.fp16 or args.trt) else []
        if args.fp16:
            fp16_path = path.with_name(f"{path.stem}.fp16.onnx")
            write_fp16_onnx(path, fp16_path)
            err = self.fp16_error(reference, run_onnx(fp16_path, inputs))
            print(f"{label} fp16: {self.fp16_metric} {err:.2e} vs fp32 (limit {self.fp16_limit:g}; ONNX Runtime "
                  f"CPU runs ops without fp16 kernels in fp32 between fp16 tensors: recheck on the GPU) -> {fp16_path}")
            if not err <= self.fp16_limit:
                fp16_path.unlink(missing_ok=True)
                raise ModelError(f"{label} fp16 graph differs from fp32 by {err:.2e} "
                                 f"(> {self.fp16_limit:g}); not kept")
        if args.trt:
            self._check_tensorrt(label, path, inputs, reference,
                                 precisions=("fp32", "fp16") if args.fp16 else ("fp32",))
        return 0

    def _check_tensorrt(self, label: str, path: Path, inputs: list, reference: list,
                        precisions: tuple[str, ...]) -> None:
        from swapwatch.engines.trt_backend import TensorRTEngine, engine_cache_dir
        from swapwatch.errors import ModelError

        for precision in precisions:
            engine = TensorRTEngine.from_onnx(path, precision=precision)
            names = [spec.name for spec in engine.inputs]
            outputs = [[out for out in engine.run(dict(zip(names, arrays))).values()] for arrays in inputs]
            err = self.fp16_error(reference, outputs)
            limit = self.fp16_limit if precision == "fp16" else self.trt_fp32_limit
            print(f"{label} TensorRT {precision}: {self.fp16_metric} {err:.2e} vs ONNX fp32 (limit {limit:g}); "
                  f"engine cached in {engine_cache_dir()}")
            if not err <= limit:
                raise ModelError(f"{label} TensorRT {precision} engine differs from the ONNX graph by {err:.2e}")


class SimSwapTarget(_CheckedGraphTarget):
    name = "simswap"
    help = ("SimSwap's generator (latest_net_G.pth: 224, 550000_net_G.pth: 512) to one graph: target [N,3,S,S] "
            "RGB in [0,1] + source [N,512] -> output [N,3,S,S].")
    checkpoint_help = "the released generator state_dict (latest_net_G.pth or 550000_net_G.pth)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--crop-size", type=int, choices=(224, 512), default=None,
                            help="generator size (default: read from the checkpoint; if given it must match)")

    def load(self, args: argparse.Namespace):
        from swapwatch.export.simswap import load_generator

        return load_generator(args.checkpoint, args.crop_size)

    def label(self, module) -> str:
        return f"simswap-{module.crop_size}"

    def export(self, module, path: Path, opset: int) -> Path:
        from swapwatch.export.simswap import export_generator_onnx

        return export_generator_onnx(module, path, opset=opset)

    def parity_inputs(self, module) -> list:
        from swapwatch.export.simswap import generator_parity_inputs

        return generator_parity_inputs(module.crop_size)


class ArcFaceTarget(_CheckedGraphTarget):
    name = "arcface"
    help = ("SimSwap's ArcFace (arcface_checkpoint.tar, read without its original code) to one graph: input "
            "[N,3,112,112] ImageNet-normalised RGB -> embedding [N,512].")
    checkpoint_help = "arcface_checkpoint.tar (a pickled module) or a state_dict of the same network"
    # Compared after L2 normalisation: the identity is used normalised, and the raw scale is arbitrary.
    fp16_limit = 1e-2
    fp16_metric = "max abs error of the L2-normalised embedding"

    def load(self, args: argparse.Namespace):
        from swapwatch.export.arcface import load_arcface

        return load_arcface(args.checkpoint)

    def label(self, module) -> str:
        return "arcface"

    def export(self, module, path: Path, opset: int) -> Path:
        from swapwatch.export.arcface import export_arcface_onnx

        return export_arcface_onnx(module, path, opset=opset)

    def parity_inputs(self, module) -> list:
        from swapwatch.export.arcface import parity_inputs

        return parity_inputs()

    def fp16_error(self, reference: list, candidate: list) -> float:
        import numpy as np

        from swapwatch.export.onnx_export import max_abs_error

        def normed(sets: list) -> list:
            return [[o / np.linalg.norm(o, axis=-1, keepdims=True) for o in outs] for outs in sets]

        return max_abs_error(normed(reference), normed(candidate))


class DeepfakeBenchTarget(ExportTarget):
    name = "deepfakebench"
    help = ("A released DeepfakeBench detector (xception_best.pth, effnb4_best.pth) to a detector folder for "
            "detect/monitor/serve: scorer.onnx (256x256 crops -> features, fake logit), head.onnx (mean frame "
            "probability over the window) and detector.json. CC BY-NC 4.0 weights.")

    # The defaults of swapwatch.export.deepfakebench, repeated so that building the parser imports no torch
    # (tests/test_deepfakebench.py checks that they agree).
    archs: ClassVar[tuple[str, ...]] = ("effnb4", "xception")
    defaults: ClassVar[dict[str, float]] = {"window": 20, "threshold": 0.5, "resolution": 256, "face_scale": 1.0 / 1.3}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        d = self.defaults
        parser.add_argument("--arch", choices=self.archs, default=None,
                            help="which detector (default: read from the checkpoint's keys; needed without "
                                 "--checkpoint)")
        parser.add_argument("--checkpoint", type=Path, default=None,
                            help="the released state_dict (default: the registry's deepfakebench-ARCH file in "
                                 "the model cache, fetched from DeepfakeBench's v1.0.1 release if missing)")
        parser.add_argument("--window", type=int, default=d["window"],
                            help="frames per window; the window score is their mean probability "
                                 "(default: %(default)s)")
        parser.add_argument("--threshold", type=float, default=d["threshold"],
                            help="window probability above which a face is called fake (default: %(default)s)")
        parser.add_argument("--resolution", type=int, default=d["resolution"],
                            help="crop size fed to the network (DeepfakeBench trains at %(default)s)")
        parser.add_argument("--face-scale", type=float, default=d["face_scale"],
                            help="face size in the crop relative to the ArcFace layout (default 1/1.3, "
                                 "DeepfakeBench's margin)")

    def run(self, args: argparse.Namespace) -> int:
        from swapwatch.errors import InputError
        from swapwatch.export.deepfakebench import ARCHS, export_deepfakebench

        checkpoint = args.checkpoint
        if checkpoint is None:
            if args.arch is None:
                raise InputError("give --checkpoint FILE or --arch (to use the registry's deepfakebench-ARCH file)")
            from swapwatch.engines.registry import ensure_model

            arch = ARCHS[args.arch]
            checkpoint = ensure_model(arch.registry)[arch.filename]
        elif not checkpoint.is_file():
            raise InputError(f"checkpoint not found: {checkpoint}")
        start = time.perf_counter()
        info = export_deepfakebench(checkpoint, args.output_dir, arch=args.arch, window=args.window,
                                    threshold=args.threshold, resolution=args.resolution,
                                    face_scale=args.face_scale, atol=args.atol, opset=args.opset)
        parity = info.extra["parity_max_abs_error"]
        print(f"deepfakebench-{info.extra['arch']}: scorer max abs error {parity['scorer']:.2e}, head "
              f"{parity['head']:.2e} vs PyTorch (atol {args.atol:.0e}; {time.perf_counter() - start:.1f} s) -> "
              f"{args.output_dir} (load it with --model {args.output_dir}; licence {info.extra['licence']})")
        return 0


# Targets in the order `swapwatch export --help` lists them.
TARGETS: tuple[ExportTarget, ...] = (MTCNNTarget(), SimSwapTarget(), ArcFaceTarget(), DeepfakeBenchTarget())


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    targets = parser.add_subparsers(dest="target", metavar="MODEL", required=True)
    for target in TARGETS:
        sub = targets.add_parser(target.name, help=target.help, description=target.help)
        target.add_arguments(sub)
        if target.output == "file":
            sub.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
        else:
            sub.add_argument("--output-dir", type=Path, required=True, help="folder for the .onnx files")
        sub.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
        sub.add_argument("--atol", type=float, default=target.default_atol,
                         help="largest allowed abs difference PyTorch vs ONNX Runtime (default: %(default)s)")
        sub.set_defaults(_export=target.run)
    return parser


def run(args: argparse.Namespace) -> int:
    return args._export(args)
