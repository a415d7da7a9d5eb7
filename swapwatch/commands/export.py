"""``swapwatch export MODEL``: export a model's PyTorch definition to ONNX and check parity with PyTorch.

One :class:`ExportTarget` per model; adding ``export simswap`` or ``export arcface`` means writing one more
target class and listing it in :data:`TARGETS`. Heavy imports (torch, onnx) happen inside ``run`` so that
``swapwatch --help`` stays fast.
"""

from __future__ import annotations

import abc
import argparse
from pathlib import Path

DEFAULT_ATOL = 1e-4


class ExportTarget(abc.ABC):
    """One ``swapwatch export NAME`` sub-subcommand."""

    name: str
    help: str

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


# Targets in the order `swapwatch export --help` lists them.
TARGETS: tuple[ExportTarget, ...] = (MTCNNTarget(),)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    targets = parser.add_subparsers(dest="target", metavar="MODEL", required=True)
    for target in TARGETS:
        sub = targets.add_parser(target.name, help=target.help, description=target.help)
        target.add_arguments(sub)
        sub.add_argument("--output-dir", type=Path, required=True, help="folder for the .onnx files")
        sub.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
        sub.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                         help="largest allowed abs difference PyTorch vs ONNX Runtime (default: %(default)s)")
        sub.set_defaults(_export=target.run)
    return parser


def run(args: argparse.Namespace) -> int:
    return args._export(args)
