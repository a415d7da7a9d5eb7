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

from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, EMBEDDING_TOLERANCE, Tolerance


class ExportTarget(abc.ABC):
    """One ``swapwatch export NAME`` sub-subcommand."""

    name: str
    help: str
    # "dir": the common --output-dir (a target writing several graphs); "file": --output FILE (one graph).
    output: str = "dir"
    # PyTorch vs ONNX Runtime; --atol, --rtol and (where it sets a cosine floor) --min-cosine override it.
    tolerance: ClassVar[Tolerance] = Tolerance()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Arguments of this target; the common ones (output folder, opset, tolerance) are added for all."""

    def parity_tolerance(self, args: argparse.Namespace) -> Tolerance:
        return self.tolerance.override(atol=args.atol, rtol=args.rtol, min_cosine=getattr(args, "min_cosine", None))

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
            from swapwatch.engines.runtime import ensure_model

            weights = ensure_model("mtcnn")
        nets = load_mtcnn_nets(weights)
        paths = export_mtcnn_onnx(nets, args.output_dir, opset=args.opset)
        tolerance = self.parity_tolerance(args)
        for (name, path), net in zip(paths.items(), nets):
            report = check_parity(net, path, parity_inputs(name), tolerance=tolerance)
            print(f"{name} vs PyTorch: {report.details()} -> {path}")
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
    checkpoint_help = "checkpoint file"
    # fp16 graphs and engines against the fp32 graph: ONNX Runtime's CPU fp16 graphs of the fixtures reach a
    # relative error of 6e-4..2.4e-3 and a cosine of 1 - 7e-7 (GPU kernels differ more).
    fp16_tolerance: ClassVar[Tolerance] = Tolerance(rtol=2e-2)
    # TensorRT builds fp32 engines with TF32 allowed by default, so they differ more than ONNX Runtime's fp32.
    trt_fp32_tolerance: ClassVar[Tolerance] = Tolerance(rtol=1e-2)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", type=Path, required=True, help=self.checkpoint_help)
        parser.add_argument("--fp16", action="store_true",
                            help="also write NAME.fp16.onnx (fp32 inputs/outputs) and check it against fp32 "
                                 f"({self.fp16_tolerance.describe()})")
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

    def run(self, args: argparse.Namespace) -> int:
        from swapwatch.errors import ModelError
        from swapwatch.export.onnx_export import check_parity, compare_outputs, run_onnx, write_fp16_onnx

        if args.trt:
            _require_tensorrt()
        module = self.load(args)
        label = self.label(module)
        start = time.perf_counter()
        path = self.export(module, args.output, args.opset)
        exported = time.perf_counter() - start
        inputs = self.parity_inputs(module)
        report = check_parity(module, path, inputs, tolerance=self.parity_tolerance(args))
        print(f"{label} vs PyTorch: {report.details()}; exported in {exported:.1f} s -> {path}")
        names = list(report.outputs)  # the graph's outputs, in order
        reference = run_onnx(path, inputs) if (args.fp16 or args.trt) else []
        if args.fp16:
            fp16_path = path.with_name(f"{path.stem}.fp16.onnx")
            write_fp16_onnx(path, fp16_path)
            report = compare_outputs(reference, run_onnx(fp16_path, inputs), names=names,
                                     tolerance=self.fp16_tolerance, label=f"{label} fp16 vs fp32")
            print(f"{report.summary()}; ONNX Runtime CPU runs ops without fp16 kernels in fp32 between fp16 "
                  f"tensors: recheck on the GPU -> {fp16_path}")
            if not report.ok:
                fp16_path.unlink(missing_ok=True)
                raise ModelError(f"fp16 graph not kept: {report.summary()}")
        if args.trt:
            self._check_tensorrt(label, path, inputs, reference, names,
                                 precisions=("fp32", "fp16") if args.fp16 else ("fp32",))
        return 0

    def _check_tensorrt(self, label: str, path: Path, inputs: list, reference: list, names: list[str],
                        precisions: tuple[str, ...]) -> None:
        from swapwatch.engines.runtime import TensorRTEngine, engine_cache_dir
        from swapwatch.errors import ModelError
        from swapwatch.export.onnx_export import compare_outputs

        for precision in precisions:
            engine = TensorRTEngine.from_onnx(path, precision=precision)
            in_names = [spec.name for spec in engine.inputs]
            outputs = [[result[name] for name in names] for result in
                       (engine.run(dict(zip(in_names, arrays))) for arrays in inputs)]
            tolerance = self.fp16_tolerance if precision == "fp16" else self.trt_fp32_tolerance
            report = compare_outputs(reference, outputs, names=names, tolerance=tolerance,
                                     label=f"{label} TensorRT {precision} vs ONNX fp32")
            print(f"{report.summary()}; engine cached in {engine_cache_dir()}")
            if not report.ok:
                raise ModelError(f"TensorRT engine rejected: {report.summary()}")


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
    # The identity is used L2-normalised and the raw scale is arbitrary (1e4..1e5 in released checkpoints): the
    # embedding's direction (cosine) is what must match; the relative test catches gross errors besides.
    tolerance = EMBEDDING_TOLERANCE
    fp16_tolerance = Tolerance(rtol=2e-2, min_cosine=0.999)
    trt_fp32_tolerance = Tolerance(rtol=1e-2, min_cosine=0.999)

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


class _DetectorFolderTarget(ExportTarget):
    """A released frame detector's checkpoint -> a detector folder for detect/monitor/serve (scorer.onnx,
    head.onnx with the mean frame probability over a window, detector.json): the options and steps DeepfakeBench's
    and SBI's exports share."""

    tolerance = DETECTOR_TOLERANCE
    # The export's defaults, repeated so that building the parser imports no torch (each target's tests check
    # that they agree).
    defaults: ClassVar[dict[str, float]]
    window_note: ClassVar[str] = ""

    def add_window_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--window", type=int, default=self.defaults["window"],
                            help="frames per window; the window score is their mean probability "
                                 f"(default: %(default)s{self.window_note})")
        parser.add_argument("--threshold", type=float, default=self.defaults["threshold"],
                            help="window probability above which a face is called fake (default: %(default)s)")

    @staticmethod
    def checkpoint(args: argparse.Namespace, registry: tuple[str, str] | None) -> Path:
        """``--checkpoint`` (which must exist), else the registry's ``(model, filename)`` from the model cache."""
        from swapwatch.errors import InputError

        if args.checkpoint is not None:
            if not args.checkpoint.is_file():
                raise InputError(f"checkpoint not found: {args.checkpoint}")
            return args.checkpoint
        from swapwatch.engines.runtime import ensure_model

        name, filename = registry
        return ensure_model(name)[filename]

    @staticmethod
    def report(label: str, info, args: argparse.Namespace, started: float) -> None:
        from swapwatch.export.onnx_export import describe_parity

        print(f"{label} vs PyTorch: {describe_parity(info.extra)} ({time.perf_counter() - started:.1f} s) -> "
              f"{args.output_dir} (load it with --model {args.output_dir}; licence {info.extra['licence']})")


class DeepfakeBenchTarget(_DetectorFolderTarget):
    name = "deepfakebench"
    help = ("A released DeepfakeBench detector (xception_best.pth, effnb4_best.pth) to a detector folder for "
            "detect/monitor/serve: scorer.onnx (256x256 crops -> features, fake logit), head.onnx (mean frame "
            "probability over the window) and detector.json. CC BY-NC 4.0 weights.")
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
        self.add_window_arguments(parser)
        parser.add_argument("--resolution", type=int, default=d["resolution"],
                            help="crop size fed to the network (DeepfakeBench trains at %(default)s)")
        parser.add_argument("--face-scale", type=float, default=d["face_scale"],
                            help="face size in the crop relative to the ArcFace layout (default 1/1.3, "
                                 "DeepfakeBench's margin)")

    def run(self, args: argparse.Namespace) -> int:
        from swapwatch.errors import InputError
        from swapwatch.export.deepfakebench import ARCHS, export_deepfakebench

        if args.checkpoint is None and args.arch is None:
            raise InputError("give --checkpoint FILE or --arch (to use the registry's deepfakebench-ARCH file)")
        arch = ARCHS[args.arch] if args.checkpoint is None else None
        checkpoint = self.checkpoint(args, (arch.registry, arch.filename) if arch is not None else None)
        started = time.perf_counter()
        info = export_deepfakebench(checkpoint, args.output_dir, arch=args.arch, window=args.window,
                                    threshold=args.threshold, resolution=args.resolution,
                                    face_scale=args.face_scale, tolerance=self.parity_tolerance(args),
                                    opset=args.opset)
        self.report(f"deepfakebench-{info.extra['arch']}", info, args, started)
        return 0


class SBITarget(_DetectorFolderTarget):
    name = "sbi"
    help = ("Self-Blended Images' EfficientNet-B4 (FFraw.tar or FFc23.tar from its README) to a detector folder for "
            "detect/monitor/serve: scorer.onnx (380x380 crops -> features, fake logit), head.onnx (mean frame "
            "probability over the window) and detector.json. Noncommercial research use only.")
    registry: ClassVar[tuple[str, str]] = ("sbi-effnb4", "FFraw.tar")
    defaults: ClassVar[dict[str, float]] = {"window": 32, "threshold": 0.5}
    window_note: ClassVar[str] = ", SBI's frame count per video"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        name, filename = self.registry
        parser.add_argument("--checkpoint", type=Path, default=None,
                            help=f"SBI's checkpoint (default: the registry's {name} file, {filename}, which you "
                                 f"download from SBI's README and put in the cache with `swapwatch models install "
                                 f"{name} FILE`)")
        self.add_window_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from swapwatch.export.sbi import export_sbi

        checkpoint = self.checkpoint(args, self.registry)
        started = time.perf_counter()
        info = export_sbi(checkpoint, args.output_dir, window=args.window, threshold=args.threshold,
                          tolerance=self.parity_tolerance(args), opset=args.opset)
        self.report("sbi", info, args, started)
        return 0


# Targets in the order `swapwatch export --help` lists them.
TARGETS: tuple[ExportTarget, ...] = (MTCNNTarget(), SimSwapTarget(), ArcFaceTarget(), DeepfakeBenchTarget(),
                                     SBITarget())


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
        _add_tolerance_arguments(sub, target.tolerance)
        sub.set_defaults(_export=target.run)
    return parser


def _add_tolerance_arguments(parser: argparse.ArgumentParser, tolerance: Tolerance) -> None:
    """--atol, --rtol and, for targets whose outputs are compared as directions, --min-cosine."""
    parser.add_argument("--atol", type=_float_in(0.0), default=tolerance.atol,
                        help="parity PyTorch vs ONNX Runtime: each output passes when max|onnx - torch| <= atol + "
                             "rtol x max|torch|; atol is the absolute floor, for outputs near zero "
                             "(default: %(default)g)")
    parser.add_argument("--rtol", type=_float_in(0.0), default=tolerance.rtol,
                        help="the allowed error relative to the output's own scale max|torch| (default: %(default)g)")
    if tolerance.min_cosine is not None:
        outputs = "every output" if tolerance.cosine_outputs is None else " and ".join(tolerance.cosine_outputs)
        parser.add_argument("--min-cosine", type=_float_in(-1.0, 1.0), default=tolerance.min_cosine,
                            help=f"lowest allowed cosine similarity PyTorch vs ONNX Runtime per row of {outputs}, "
                                 "whose direction is what is used (default: %(default)g)")


def _float_in(low: float, high: float = float("inf")):
    """An argparse type: a float in [low, high], so that a bad value is a usage error rather than a traceback."""
    def number(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in [{low:g}, {high:g}]")
        return value

    return number


def run(args: argparse.Namespace) -> int:
    return args._export(args)
