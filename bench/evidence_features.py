#!/usr/bin/env python3
"""How well identity-independent swap evidence (engines/deepfake/evidence.py) separates real faces from fakes.

Builds the ``--use-assets`` training media's face tracks (GRID clips, the head-pose GIF, photos; the same
``collect_items``/``TrackBuilder`` path as ``swapwatch train-detector --use-assets``; never the assets' eval/
folder) and makes, per real track: a classic swap from another identity, a classic self-swap, and two
self-blended versions (one SBI draw per clip each). Every version is also run under a mild JPEG (quality 75)
and a downscale-upscale (x0.5 and back) of the frame region. Each is cropped at every evidence size (the
scorer's template geometry) and every feature computed; "native" picks, per track, the largest size that does
not upsample the face (the smallest size when all do).

Reports per feature: frame-level and track-level AUC (mean over frames; flicker for video tracks) of real vs
each fake kind (AUC > 0.5: the fake's value is higher), per identity the real tracks' values against the
paired shift a fake causes, what upsampling a face does to the real level, and the cost (ms per crop of
EvidenceFeatures in torch and onnxruntime on one thread, and of the crop warp).

Usage: python bench/evidence_features.py --json out/evidence.json [--sizes 128,192,256] [--max-frames 75]
       python bench/evidence_features.py --json out/evidence.json --print   (the tables of a finished run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from swapwatch.engines.deepfake import (
    REAL, DataSpec, EvidenceConfig, EvidenceFeatures, SBIParams, SelfBlender, collect_items, crop_faces, flicker,
    jpeg, roc_auc,
)
from swapwatch.engines.deepfake.detector import detector_template, to_input
from swapwatch.engines.deepfake.evidence import STAT_NAMES, warp_scales
from swapwatch.engines.deepfake.tracks import FaceTrack, TrackBuilder, _self_source, make_swappers
from swapwatch.engines.deepfake.training import _yunet_path

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ("none", "jpeg75", "downup")
KINDS = ("swap", "selfswap", "sbi")  # fake kinds; "real" is the reference
# A fixed, unfitted combination with the signs the method expects (a fake: less detail and noise inside, more
# seam): how much the features add up to without any training.
COMBINED = {"hf": -0.5, "noise": -0.5, "seam": 1 / 3, "seam_chroma": 1 / 3, "seam_noise": 1 / 3}


# --------------------------------------------------------------------------------------------------
# Media
# --------------------------------------------------------------------------------------------------


def build_tracks(args: argparse.Namespace, size: int) -> list[FaceTrack]:
    """Real face tracks of the training assets, regions kept at native resolution for a ``size`` crop."""
    spec = DataSpec(use_assets=True, assets_dir=args.assets)
    items = [it for it in collect_items(spec) if "eval" not in it.path.parts]  # the eval set is never read
    builder = TrackBuilder(_yunet_path(spec), max_frames=args.max_frames, template=detector_template(size, 0.75),
                           cache_dir=args.cache)
    tracks = [t for it in items for t in builder.build(it) if t.label == REAL]
    return sorted(tracks, key=lambda t: (t.still, t.identity, t.origin))


def versions(track: FaceTrack, pool: list[FaceTrack], index: int, fakers, rng: np.random.Generator,
             blender: SelfBlender) -> list[tuple[str, FaceTrack]]:
    """(kind, track) for the real track and its fakes."""
    others = [s for s in pool if s.identity != track.identity]
    source = others[int(rng.integers(len(others)))]
    out = [("real", track), ("swap", fakers[index % len(fakers)](track, source)),
           ("selfswap", fakers[(index + 1) % len(fakers)](track, _self_source(track)))]
    for seed in (0, 1):
        params = SBIParams.draw(np.random.default_rng([index, seed, 5]))
        rois = np.stack([blender(r, lm, params, compress=False).image for r, lm in zip(track.rois, track.landmarks)])
        out.append(("sbi", replace(track, rois=rois, kind="sbi", origin=f"sbi-{seed}")))
    return out


def condition(rois: np.ndarray, name: str) -> np.ndarray:
    """The frame regions under a capture/transport condition (the same for a real track and its fakes)."""
    if name == "none":
        return rois
    if name == "jpeg75":
        return np.stack([jpeg(r, 75) for r in rois])
    h, w = rois.shape[1:3]
    small = [cv2.resize(r, (max(w // 2, 1), max(h // 2, 1)), interpolation=cv2.INTER_AREA) for r in rois]
    return np.stack([cv2.resize(s, (w, h), interpolation=cv2.INTER_LINEAR) for s in small])


@torch.inference_mode()
def evidence(track: FaceTrack, rois: np.ndarray, module: EvidenceFeatures) -> tuple[np.ndarray, np.ndarray]:
    """((T, K) features, (T,) warp scales) of a track's frames."""
    template = module.config.template
    crops = np.concatenate([crop_faces(r, [lm], template) for r, lm in zip(rois, track.landmarks)])
    feats = np.concatenate([module(torch.from_numpy(to_input(crops[i:i + 32]))).numpy()
                            for i in range(0, len(crops), 32)])
    col = {n: i for i, n in enumerate(module.names)}
    combined = sum(w * feats[:, col[f]] for f, w in COMBINED.items() if f in col)
    return np.concatenate([feats, combined[:, None]], axis=1), warp_scales(list(track.landmarks), template)


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _auc(real: list[float], fake: list[float]) -> float:
    real, fake = [v for v in real if np.isfinite(v)], [v for v in fake if np.isfinite(v)]
    return roc_auc([0] * len(real) + [1] * len(fake), real + fake)


def metrics(records: list[dict], names: list[str], features: list[str]) -> dict:
    """AUCs, per-identity levels and paired shifts for one (size mode, condition)."""
    col = {n: i for i, n in enumerate(names)}
    stats = [col[n] for n in STAT_NAMES]
    by_kind = {k: [r for r in records if r["kind"] == k] for k in ("real", *KINDS)}
    out: dict = {"frame_auc": {}, "track_auc": {}, "flicker_auc": {}, "shift": {}, "real_spread": {}}
    for kind in KINDS:
        out["frame_auc"][kind] = {f: _auc([v for r in by_kind["real"] for v in r["values"][:, col[f]]],
                                          [v for r in by_kind[kind] for v in r["values"][:, col[f]]])
                                  for f in features}
        out["track_auc"][kind] = {f: _auc([r["values"][:, col[f]].mean() for r in by_kind["real"]],
                                          [r["values"][:, col[f]].mean() for r in by_kind[kind]]) for f in features}
        out["flicker_auc"][kind] = _auc([flicker(r["values"][:, stats]) for r in by_kind["real"]],
                                        [flicker(r["values"][:, stats]) for r in by_kind[kind]])
    real_by_track = {r["track"]: r for r in by_kind["real"]}
    identities = sorted({r["identity"] for r in by_kind["real"]})
    out["real_by_identity"] = {
        i: {f: float(np.mean([r["values"][:, col[f]].mean() for r in by_kind["real"] if r["identity"] == i]))
            for f in features} for i in identities}
    for f in features:
        levels = np.array([out["real_by_identity"][i][f] for i in identities])
        out["real_spread"][f] = {"mean": float(levels.mean()), "std": float(levels.std()),
                                 "min": float(levels.min()), "max": float(levels.max())}
    for kind in KINDS:
        out["shift"][kind] = {}
        for f in features:
            d = [r["values"][:, col[f]].mean() - real_by_track[r["track"]]["values"][:, col[f]].mean()
                 for r in by_kind[kind]]
            out["shift"][kind][f] = {"median": float(np.median(d)), "mean": float(np.mean(d)),
                                     "positive": float(np.mean(np.asarray(d) > 0))}
    flick = [flicker(r["values"][:, stats]) for r in by_kind["real"]]
    out["real_flicker"] = {r["identity"]: v for r, v in zip(by_kind["real"], flick) if np.isfinite(v)}
    return out


def upsampling(records: list[dict], names: list[str], features: list[str], sizes: list[int]) -> dict:
    """Real faces only, condition none: the mean feature level per warp-scale bin over every size, and the
    paired change from the smallest to the largest size (the same frames, upsampled more)."""
    col = {n: i for i, n in enumerate(names)}
    real = [r for r in records if r["kind"] == "real" and r["condition"] == "none" and r["mode"] in map(str, sizes)]
    bins = [(0.0, 0.8), (0.8, 1.05), (1.05, 1.5), (1.5, 2.5), (2.5, 99.0)]
    out: dict = {"bins": {}, "paired": {}}
    for lo, hi in bins:
        sel = [(r["values"][k], r["scales"][k]) for r in real for k in range(len(r["scales"]))
               if lo <= r["scales"][k] < hi]
        if sel:
            vals = np.stack([v for v, _ in sel])
            out["bins"][f"{lo:g}-{hi:g}"] = {"frames": len(sel), **{f: float(vals[:, col[f]].mean()) for f in features}}
    small, large = str(min(sizes)), str(max(sizes))
    by_track = {r["track"]: r for r in real if r["mode"] == large}
    pairs = [(a, by_track[a["track"]]) for a in real if a["mode"] == small]
    for f in features:
        d = [b["values"][:, col[f]].mean() - a["values"][:, col[f]].mean() for a, b in pairs]
        out["paired"][f] = {"mean": float(np.mean(d)), "std": float(np.std(d))}
    out["paired"]["scale_ratio"] = max(sizes) / min(sizes)
    return out


# --------------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------------


def cost(sizes: list[int], out_dir: Path, repeats: int = 30) -> dict:
    """ms per crop of EvidenceFeatures (torch, onnxruntime; one thread; batch 1 and 8) and of the crop warp."""
    import onnxruntime as ort
    from swapwatch.engines.faces import arcface_template
    from swapwatch.export.onnx_export import export_onnx

    torch.set_num_threads(1)
    result: dict = {}
    rng = np.random.default_rng(0)
    for size in sizes:
        module = EvidenceFeatures(EvidenceConfig(size=size)).eval()
        path = export_onnx(module, (torch.zeros(1, 3, size, size),), out_dir / f"evidence_{size}.onnx",
                           input_names=["crops"], output_names=["evidence"],
                           dynamic_axes={"crops": {0: "batch"}, "evidence": {0: "batch"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        entry: dict = {}
        for batch in (1, 8):
            x = torch.from_numpy(rng.uniform(0, 255, (batch, 3, size, size)).astype(np.float32))
            with torch.inference_mode():
                entry[f"torch_b{batch}_ms"] = _time(lambda m=module, x=x: m(x), repeats) / batch
            feeds = {"crops": x.numpy()}
            entry[f"ort_b{batch}_ms"] = _time(lambda s=session, f=feeds: s.run(None, f), repeats) / batch
        # The warp: a 1080p frame with a ~400 px face (area shrink, then warp) and a 480p one with a ~150 px face.
        template = detector_template(size, 0.75)
        for label, (w, h, face) in {"warp_1080p_ms": (1920, 1080, 400), "warp_480p_ms": (640, 480, 150)}.items():
            frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            lmk = arcface_template(112).points[0] * (face / 112.0) + np.array([w / 2 - face / 2, h / 2 - face / 2])
            entry[label] = _time(lambda f=frame, lm=lmk, t=template: crop_faces(f, [lm], t), repeats)
        result[str(size)] = {k: round(v, 3) for k, v in entry.items()}
    return result


def _time(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "  -  " if not np.isfinite(v) else f"{v:.2f}"


def print_tables(report: dict, features: list[str]) -> None:
    for mode, per_cond in report["results"].items():
        print(f"\n== size {mode}: AUC real vs fake (frame / track; > 0.5: the fake's value is higher) ==")
        print(f"{'cond':7s} {'kind':8s} " + " ".join(f"{f:>13s}" for f in features) + "  flicker")
        for cond, m in per_cond.items():
            for kind in KINDS:
                cells = [f"{_fmt(m['frame_auc'][kind][f])}/{_fmt(m['track_auc'][kind][f])}" for f in features]
                print(f"{cond:7s} {kind:8s} " + " ".join(f"{c:>13s}" for c in cells)
                      + f"  {_fmt(m['flicker_auc'][kind])}")
    mode = report["table_mode"]
    m = report["results"][mode]["none"]
    print(f"\n== size {mode}, condition none: real level per identity (mean over frames) ==")
    print(f"{'identity':26s} " + " ".join(f"{f:>12s}" for f in features) + "  flicker")
    for ident, vals in m["real_by_identity"].items():
        fl = m["real_flicker"].get(ident, float("nan"))
        print(f"{ident:26s} " + " ".join(f"{vals[f]:12.3f}" for f in features) + f"  {_fmt(fl)}")
    print(f"{'across people: std':26s} " + " ".join(f"{m['real_spread'][f]['std']:12.3f}" for f in features))
    for kind in KINDS:
        print(f"{'median shift ' + kind:26s} " + " ".join(f"{m['shift'][kind][f]['median']:12.3f}" for f in features))
    print("real mean level (across people) per condition: the shift a condition itself causes")
    for cond, mc in report["results"][mode].items():
        print(f"{'  ' + cond:26s} " + " ".join(f"{mc['real_spread'][f]['mean']:12.3f}" for f in features))
    up = report["upsampling"]
    print("\n== real faces (condition none): mean level by warp scale (crop px per frame px) ==")
    for name, row in up["bins"].items():
        print(f"scale {name:9s} n={row['frames']:4d} " + " ".join(f"{row[f]:12.3f}" for f in features))
    print(f"paired {up['paired']['scale_ratio']:.1f}x upsampling  "
          + " ".join(f"{up['paired'][f]['mean']:12.3f}" for f in features))
    print("\n== cost (ms per crop, one thread) ==")
    for size, entry in report["cost"].items():
        print(f"S={size}: " + ", ".join(f"{k} {v:.2f}" for k, v in entry.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "evidence.json")
    parser.add_argument("--assets", type=Path, default=None, help="shared assets (default: ../shared/assets)")
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "evidence" / "cache")
    parser.add_argument("--sizes", default="128,192,256")
    parser.add_argument("--max-frames", type=int, default=75)
    parser.add_argument("--seed", type=int, default=0)
    # One thread: on a 2-core machine with anything else running, two torch threads run ~50x slower (spinning).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost-sizes", default="128,192,256,384", help="crop sizes whose cost is measured")
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--print", dest="reprint", action="store_true", help="only print the tables of --json")
    args = parser.parse_args()
    if args.reprint:
        report = json.loads(args.json.read_text())
        print_tables(report, report["features"])
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(","))
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tracks = build_tracks(args, max(sizes))
    print(f"{len(tracks)} real tracks, {sum(len(t) for t in tracks)} frames, "
          f"{len({t.identity for t in tracks})} identities ({time.time() - t0:.0f} s)", flush=True)
    modules = {s: EvidenceFeatures(EvidenceConfig(size=s)).eval() for s in sizes}
    names = list(modules[sizes[0]].names) + ["combined"]
    features = list(modules[sizes[0]].config.features) + ["combined"]
    fakers, blender = make_swappers(["classic"]), SelfBlender()
    rng = np.random.default_rng(args.seed)
    records: list[dict] = []
    for ti, track in enumerate(tracks):
        # Per track, the largest size whose crop does not upsample the face ("native").
        scale = {s: float(np.median(warp_scales(list(track.landmarks), modules[s].config.template))) for s in sizes}
        native = max([s for s in sizes if scale[s] <= 1.0], default=min(sizes))
        for kind, version in versions(track, tracks, ti, fakers, rng, blender):
            for cond in CONDITIONS:
                rois = condition(version.rois, cond)
                for s in sizes:
                    values, scales = evidence(version, rois, modules[s])
                    for mode in [str(s)] + (["native"] if s == native else []):
                        records.append({"track": ti, "identity": track.identity, "kind": kind, "condition": cond,
                                        "mode": mode, "values": values, "scales": scales})
        print(f"[{ti + 1}/{len(tracks)}] {track.identity}: {len(track)} frames, native size {native} "
              f"(scale at {max(sizes)}: {scale[max(sizes)]:.2f}) {time.time() - t0:.0f} s", flush=True)
    modes = [str(s) for s in sizes] + ["native"]
    results = {mode: {cond: metrics([r for r in records if r["mode"] == mode and r["condition"] == cond],
                                    names, features) for cond in CONDITIONS} for mode in modes}
    report = {
        "sizes": sizes, "conditions": list(CONDITIONS), "kinds": list(KINDS), "features": features,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(EvidenceConfig()).items()},
        "tracks": [{"identity": t.identity, "origin": t.origin, "frames": len(t), "still": t.still} for t in tracks],
        "results": results, "table_mode": "native", "upsampling": upsampling(records, names, features, sizes),
        "cost": {} if args.no_cost else cost([int(s) for s in args.cost_sizes.split(",")],
                                             args.json.parent / "evidence_onnx"),
        "seconds": round(time.time() - t0, 1),
    }
    print_tables(report, features)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=_json_default))
    print(f"\nwrote {args.json} ({report['seconds']:.0f} s)")
    return 0


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    sys.exit(main())
