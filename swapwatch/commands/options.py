"""Command-line options that several subcommands share, so they are spelled and checked the same way."""

from __future__ import annotations

import argparse


def add_deepfake_options(p: argparse.ArgumentParser) -> None:
    """``--deepfake-model`` and the live strides (serve, monitor)."""
    from swapwatch.config import DeepfakeConfig

    g = p.add_argument_group("deepfake detector")
    g.add_argument("--deepfake-model", default=DeepfakeConfig.model, metavar="DIR|default|off",
                   help="sliding-window deepfake detector for model alerts: 'default' (the committed "
                        "demonstration model: weak, see its MODEL_CARD.md), a folder written by "
                        "train-detector or export, or 'off' (watermark alerts only)")
    add_live_stride_options(g)


def add_live_stride_options(group, *aliases: str) -> None:
    """``--deepfake-stride`` and ``--deepfake-score-every`` (serve, monitor, eval-detector); ``aliases`` are
    the shorter names a command also accepts (``"--stride", "--score-every"``)."""
    from swapwatch.config import DeepfakeConfig

    stride_names = ["--deepfake-stride", *aliases[:1]]
    every_names = ["--deepfake-score-every", *aliases[1:2]]
    group.add_argument(*stride_names, dest="deepfake_stride", type=int, default=DeepfakeConfig.feature_stride,
                       metavar="K", help="score every K-th frame of each face track (default: %(default)s)")
    group.add_argument(*every_names, dest="deepfake_score_every", type=int, default=DeepfakeConfig.score_stride,
                       metavar="S",
                       help="run the temporal head after every S-th new frame score (default: %(default)s)")


def deepfake_config(args: argparse.Namespace, *, backend: str = "auto", device: str = "auto"):
    """The DeepfakeConfig the options ask for (InputError on bad values)."""
    from swapwatch.config import DeepfakeConfig
    from swapwatch.errors import InputError

    model = None if args.deepfake_model in ("off", "none") else args.deepfake_model
    try:
        return DeepfakeConfig(model=model, backend=backend, device=device, feature_stride=args.deepfake_stride,
                              score_stride=args.deepfake_score_every)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def add_threshold_options(p: argparse.ArgumentParser, *, fake_help: str, real_help: str) -> None:
    """``--threshold`` (the FAKE threshold) and ``--real-threshold`` (detect, eval-detector); each command says
    in its own words what they decide. Checked by :func:`check_threshold_options`."""
    p.add_argument("--threshold", type=float, metavar="P", help=fake_help)
    p.add_argument("--real-threshold", type=float, metavar="P", help=real_help)


def check_threshold_options(args: argparse.Namespace) -> None:
    """InputError when ``--threshold`` or ``--real-threshold`` lies outside [0, 1]."""
    from swapwatch.errors import InputError

    for flag, value in (("--threshold", args.threshold), ("--real-threshold", args.real_threshold)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise InputError(f"{flag} must lie in [0, 1]")
