"""`swapwatch train-detector`: train the sliding-window deepfake detector (frame scorer + temporal head).

Real faces come from the shared assets (``--use-assets``), user folders or FaceForensics++/DFDC layouts; fakes
are self-blended from those real faces, swapped by swapwatch's own swappers (``--swapwatch-fakes``) and taken
from labelled fake media. The output folder gets ``detector.pt``, ``scorer.onnx``, ``head.onnx``,
``detector.json`` (what ``DeepfakeDetector.load(OUT)`` reads), ``training_log.json`` (validation AUC per
epoch), ``checkpoint.pt`` (``--resume``) and ``cache/`` (face tracks).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in _csv(text))


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data-real", nargs="+", type=Path, default=[], metavar="PATH",
                      help="real videos/images or folders of them (with --layout ffpp/dfdc: dataset roots)")
    data.add_argument("--data-fake", nargs="+", type=Path, default=[], metavar="PATH",
                      help="fake videos/images or folders of them (layout folders)")
    data.add_argument("--layout", choices=("folders", "ffpp", "dfdc"), default="folders",
                      help="how labels are read: folders (real/fake by option), FaceForensics++ or DFDC")
    data.add_argument("--data", nargs="+", type=Path, default=[], metavar="ROOT",
                      help="FaceForensics++ or DFDC dataset roots (with --layout ffpp/dfdc)")
    data.add_argument("--ffpp-compression", default="c23", choices=("raw", "c23", "c40"))
    data.add_argument("--use-assets", action="store_true",
                      help="train on the shared assets (../shared/assets) and face images shipped in dependencies")
    data.add_argument("--assets", type=Path, default=None, metavar="DIR", help="shared assets folder")
    data.add_argument("--swapwatch-fakes", action="store_true",
                      help="add swapwatch's own swaps (another identity swapped onto each track) as fakes")
    data.add_argument("--swappers", type=_csv, default=("classic",), metavar="NAMES",
                      help="swappers for --swapwatch-fakes: classic; autoencoder (a small learned autoencoder trained "
                           "here on the training faces: each track re-rendered through it); learned ones where "
                           "their weights are installed")
    data.add_argument("--autoencoder-steps", type=int, default=600, metavar="N",
                      help="training steps of the autoencoder swapper (with --swappers ...,autoencoder)")
    data.add_argument("--swap-sources", type=int, default=0, metavar="N",
                      help="other identities swapped onto each track (each track is also swapped with its own "
                           "face); with few identities, cross-identity swaps teach 'unfamiliar face = fake'")
    data.add_argument("--val-identities", type=_csv, default=(), metavar="IDS",
                      help="identities held out for validation (default: --val-fraction of them, seeded)")
    data.add_argument("--val-fraction", type=float, default=0.25)
    data.add_argument("--max-frames", type=int, default=96, help="frames read from each video")
    data.add_argument("--max-videos", type=int, default=None, help="at most N media per source (quick subsets)")
    data.add_argument("--max-items", type=int, default=None, help="at most N media in all (quick subsets)")

    train = p.add_argument_group("training")
    train.add_argument("--out", type=Path, default=Path("out/deepfake"), help="output folder")
    train.add_argument("--epochs", type=int, default=12, help="frame-scorer epochs")
    train.add_argument("--head-epochs", type=int, default=8, help="temporal-head epochs")
    train.add_argument("--pairs-per-epoch", type=int, default=2048, help="(real, fake) pairs per scorer epoch")
    train.add_argument("--head-windows", type=int, default=4096, help="windows per head epoch")
    train.add_argument("--head-renders", type=int, default=3,
                       help="renders of each training clip (real and each fake) whose features train the head")
    train.add_argument("--head", choices=("gru", "residual", "mean"), default="gru",
                       help="temporal head: the original GRU head; residual: the GRU head's output added to the "
                            "window's mean frame logit (a learned temporal correction); mean: the mean frame logit "
                            "(nothing to train)")
    train.add_argument("--residual-head", dest="head", action="store_const", const="residual",
                       help="the same as --head residual")
    train.add_argument("--calibrate", type=int, default=0, metavar="K",
                       help="fit the window logit's calibration on K cross-fitted fold models (each trained "
                            "without one K-th of the identities and scoring it), so the threshold sits where "
                            "new people fall; trains K more models (0: no calibration)")
    train.add_argument("--max-real-flagged", type=float, default=0.05, metavar="RATE",
                       help="with --calibrate: set the FAKE threshold so that at most this share of the held-out "
                            "people's real clips reach it, and a REAL threshold below it (UNCERTAIN between); "
                            "default 0.05")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--window", type=int, default=20, help="frames per temporal window (W)")
    train.add_argument("--crop-size", type=int, default=128, help="scorer crop size")
    train.add_argument("--widths", type=_ints, default=(16, 32, 64, 128), metavar="W1,W2,..",
                       help="scorer stage widths")
    train.add_argument("--highpass", action="store_true",
                       help="give the scorer each crop's high-frequency residual beside its pixels")
    train.add_argument("--region-map", type=float, default=0.0, metavar="WEIGHT",
                       help="also train the scorer to map where each fake differs from its real frame "
                            "(dense supervision, training only), with this loss weight (0: off)")
    train.add_argument("--region-target", choices=("diff", "boundary"), default="diff",
                       help="what the region map learns for a self-blended fake: where it differs from its real "
                            "frame, or the boundary of its blend mask (Face X-ray); other fakes use diff")
    train.add_argument("--stem", choices=("resnet", "yunet", "dlib"), default="resnet",
                       help="the scorer's first layers: our own (trained from scratch), YuNet's first 11 "
                            "convolutions started from its real weights (to stride 8), or dlib's face-recognition "
                            "ResNet to its second level (model dlib-resnet-v1; needs --crop-size 150); the "
                            "pretrained ones read raw pixels (not with --highpass)")
    train.add_argument("--stem-lr-scale", type=float, default=0.1, metavar="F",
                       help="learning-rate factor of a pretrained stem (0 freezes it)")
    train.add_argument("--evidence", type=lambda v: tuple(x for x in v.split(",") if x), default=(),
                       metavar="F1,F2,..",
                       help="identity-independent evidence features beside the local evidence (needs "
                            "--local-evidence): the inner face against the frame around it, hf (fine detail), "
                            "noise, seam, seam_chroma, seam_noise (engines/deepfake/evidence.py)")
    train.add_argument("--local-evidence", type=int, default=0, metavar="K",
                       help="score a frame by the K most altered-looking cells of the region map, predicted from "
                            "the last stage's patches (needs --region-map): a patch shows a seam, not who the "
                            "person is (0: global pool of the last stage)")
    train.add_argument("--pair-pool", type=int, default=0, metavar="N",
                       help="render N (real, fake) pairs once and draw every scorer batch from them (with flips): "
                            "many more steps per minute on a CPU, less variety (0: fresh pairs every batch)")
    train.add_argument("--rotate-pairs", action="store_true",
                       help="turn each training pair by a random multiple of 90 degrees (a seam is a seam at any "
                            "angle; where a face's lines usually lie is not evidence)")
    train.add_argument("--vary-mask-top", action="store_true",
                       help="cut each self-blend mask's top at a random forehead height instead of the face "
                            "outline's top or a fixed line above the eyes (the seam's height is not evidence)")
    train.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help="face-track cache, reusable across runs (default: OUT/cache)")
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace):
    """The (TrainConfig, DataSpec) a command line asks for."""
    from swapwatch.engines.deepfake import DataSpec, TrainConfig

    spec = DataSpec(real=tuple(args.data_real), fake=tuple(args.data_fake), layout=args.layout,
                    datasets=tuple(args.data), use_assets=args.use_assets, assets_dir=args.assets,
                    ffpp_compression=args.ffpp_compression, max_videos=args.max_videos)
    config = TrainConfig(
        out=args.out, seed=args.seed, epochs=args.epochs, head_epochs=args.head_epochs,
        pairs_per_epoch=args.pairs_per_epoch, head_windows_per_epoch=args.head_windows, lr=args.lr,
        head_renders=args.head_renders, head=args.head, calibration_folds=args.calibrate,
        max_real_flagged=args.max_real_flagged,
        window=args.window, scorer_size=args.crop_size, scorer_widths=args.widths,
        scorer_blocks=(1,) * len(args.widths), scorer_highpass=args.highpass,
        scorer_aux_map=args.region_map, scorer_local_topk=args.local_evidence, region_target=args.region_target,
        scorer_stem=args.stem, stem_lr_scale=args.stem_lr_scale, scorer_evidence=args.evidence,
        pair_pool=args.pair_pool, rotate_pairs=args.rotate_pairs, vary_mask_top=args.vary_mask_top,
        max_frames=args.max_frames, val_identities=args.val_identities,
        val_fraction=args.val_fraction, swap_fakes=args.swapwatch_fakes, swappers=args.swappers,
        autoencoder_steps=args.autoencoder_steps,
        swap_sources=args.swap_sources,
        max_items=args.max_items, threads=args.threads, cache_dir=args.cache_dir, progress=not args.no_progress)
    return config, spec


def run(args: argparse.Namespace) -> int:
    from swapwatch.engines.deepfake import train

    config, spec = config_from_args(args)
    result = train(config, spec, resume=args.resume)
    m = result.metrics
    if m:
        print(f"validation (held-out identities): frame AUC {_f(m.get('frame_auc'))}, window AUC "
              f"{_f(m.get('window_auc'))} (mean-of-frames baseline {_f(m.get('window_mean_auc'))})")
    print(f"done in {result.seconds / 60:.1f} min -> {result.out}")
    return 0


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
