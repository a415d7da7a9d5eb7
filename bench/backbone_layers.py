"""Which layers of face-trained networks carry manipulation evidence that transfers to people not fitted on.

For each probed layer of three face-trained backbones (dlib's face-recognition ResNet, MediaPipe FaceMesh and
the first layers of the YuNet 2023mar face detector, as ``FrameScorer``'s "yunet" stem uses them) and a
pixel-statistics baseline, a linear probe on the layer's spatially pooled activations is fitted to tell real
faces from fakes, leave-one-identity-out: for each training identity, the probe is fitted on all *other*
identities' crops and scores the held-out one's. Data: the ``--use-assets`` training people only (the assets'
eval/ folder is never read), the crops ``bench/evidence_features.py`` makes: per real track a classic swap from
another person ("swap"), a classic self-swap ("selfswap") and two self-blended versions ("sbi"), each also
under JPEG 75 and a x0.5 down-up scale, cropped with the scorer's template (face_scale 0.75, 192 px).

Features per crop and layer (3C dims for C channels), fixed before any result was seen: per-channel mean and
standard deviation of the activation over space, and per-channel texture energy, the spatial mean of
|activation - its 3x3 local mean|. Probe: L2-regularised logistic regression on features standardised with the
training identities' statistics, C = 0.1 (sklearn's convention: 0.5 |w|^2 + C * sum of log-losses), classes
weighted to equal total weight (real vs all fake kinds), intercept unpenalised; the same for every layer.

Reported per layer: pooled held-out frame AUC (real vs all fakes, and vs each fake kind), track AUC (mean score
per track version and condition), the mean within-person AUC, and -- on the probe's logit scale -- the spread of
the held-out people's mean real score (std over identities) against the mean fake-minus-real gap within a
person. A spread as large as the gap means the probe's output varies with the person as much as with the
manipulation.

The crops come from ``--cache`` (an ``.npz`` with ``crops`` (N,192,192,3) uint8 BGR and ``meta`` rows
``(track_index, identity, kind, condition, frame_index, warp_scale)``); when the file is absent they are rebuilt
with bench/evidence_features.py's functions (as out/evidence/make_crops.py did) and saved there.

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 5 python bench/backbone_layers.py
           --json out/backbone_layers.json [--cache out/evidence/crops_192_16.npz] [--max-frames 16]
           [--assets ../shared/assets]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from swapwatch.engines.deepfake import roc_auc

if TYPE_CHECKING:
    from swapwatch.export.mediapipe_facemesh import FaceMeshNet

ROOT = Path(__file__).resolve().parents[1]
CROP_SIZE = 192  # the cached crops' size (the scorer's template at face_scale 0.75)
KINDS = ("swap", "selfswap", "sbi")
C_REG = 0.1  # fixed before looking at any result; not tuned per layer
BATCH = 32
DLIB_FILE = Path("/root/.cache/swapwatch/models/dlib-resnet-v1/dlib_face_recognition_resnet_model_v1.dat")
YUNET_FILE = ROOT.parent / "shared" / "assets" / "models" / "face_detection_yunet_2023mar.onnx"
# FaceMesh: the PReLU closing each resolution stage (96, 48, 24, 12, 6, 3 px), by output tensor name.
FACEMESH_LAYERS = ("p_re_lu_3", "p_re_lu_6", "p_re_lu_9", "p_re_lu_12", "p_re_lu_15", "p_re_lu_17")
# YuNetStem.layers indices whose output is probed: the first pointwise+depthwise pair's ReLU (16 ch, /2), the
# second 32-channel pair's ReLU (/4) and the stem's output (64 ch after the last pool, /8).
YUNET_LAYERS = {4: "pair1 relu (16ch /2)", 14: "pair4 relu (32ch /4)", 18: "output (64ch /8)"}
YUNET_SIZE = 128  # the scorer's default crop size


# --------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------


def build_crops(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild the crop cache exactly as out/evidence/make_crops.py did (same functions, seeds and order)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import evidence_features as ef
    from swapwatch.engines.deepfake import EvidenceConfig, SelfBlender, crop_faces
    from swapwatch.engines.deepfake.evidence import warp_scales
    from swapwatch.engines.deepfake.tracks import make_swappers

    # Regions kept at native resolution for a 256 crop, as make_crops.py built them; cropped at 192 below.
    ns = argparse.Namespace(assets=args.assets, max_frames=args.max_frames, cache=args.track_cache)
    tracks = ef.build_tracks(ns, 256)
    fakers, blender = make_swappers(["classic"]), SelfBlender()
    rng = np.random.default_rng(0)
    tpl = EvidenceConfig(size=CROP_SIZE).template
    crops, meta = [], []
    for ti, t in enumerate(tracks):
        for kind, v in ef.versions(t, tracks, ti, fakers, rng, blender):
            for cond in ef.CONDITIONS:
                rois = ef.condition(v.rois, cond)
                c = np.concatenate([crop_faces(r, [lm], tpl) for r, lm in zip(rois, v.landmarks)])
                sc = warp_scales(list(v.landmarks), tpl)
                for k in range(len(c)):
                    crops.append(c[k])
                    meta.append((ti, t.identity, kind, cond, k, sc[k]))
        print(f"  crops: track {ti + 1}/{len(tracks)} {t.identity}", flush=True)
    out, rows = np.stack(crops), np.array(meta, dtype=object)
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.cache, crops=out, meta=rows)
    return out, rows


def load_crops(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if args.cache.is_file():
        data = np.load(args.cache, allow_pickle=True)
        return data["crops"], data["meta"]
    print(f"{args.cache} absent: rebuilding the crops", flush=True)
    return build_crops(args)


def version_index(meta: np.ndarray) -> np.ndarray:
    """Which version of a (track, kind, condition) each row belongs to (sbi has two draws): the rows are in
    build order, and every version's frames restart at frame index 0."""
    seen: dict[tuple, int] = {}
    out = np.zeros(len(meta), dtype=np.int64)
    for i, (ti, _, kind, cond, k, _) in enumerate(meta):
        key = (int(ti), kind, cond)
        if int(k) == 0:
            seen[key] = seen.get(key, -1) + 1
        out[i] = seen[key]
    return out


# --------------------------------------------------------------------------------------------------
# Backbones and features
# --------------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    name: str
    size: int  # input side; crops are resized with INTER_AREA
    rgb: bool  # False: BGR as cropped
    layers: list[str]  # labels of run's outputs, in order
    run: Callable[[torch.Tensor], list[torch.Tensor]]  # (N,3,size,size) float 0..255 -> one activation per layer


def _load_facemesh() -> FaceMeshNet:
    """FaceMesh from face_landmark.tflite in the cached mediapipe wheel, else the registry's mediapipe-facemesh."""
    from swapwatch.export.mediapipe_facemesh import FACEMESH_MEMBER, load_facemesh

    wheels = sorted((ROOT / ".cache" / "wheels").glob("mediapipe-0.10.21-*.whl"))
    if wheels:
        with tempfile.TemporaryDirectory(prefix="facemesh-") as tmp:
            path = Path(tmp) / "face_landmark.tflite"
            path.write_bytes(zipfile.ZipFile(wheels[0]).read(FACEMESH_MEMBER))
            return load_facemesh(path)
    from swapwatch.engines.runtime import ensure_model

    return load_facemesh(next(iter(ensure_model("mediapipe-facemesh").values())))


def backbones() -> list[Backbone]:
    from swapwatch.export.deepfake import YuNetStem
    from swapwatch.export.dlib_resnet import load_dlib_resnet

    os.environ.setdefault("SWAPWATCH_MODEL_MIRROR", str(ROOT / ".cache" / "wheels"))
    if DLIB_FILE.is_file():
        dlib_path = DLIB_FILE
    else:
        from swapwatch.engines.runtime import ensure_model

        dlib_path = next(iter(ensure_model("dlib-resnet-v1").values()))
    dlib = load_dlib_resnet(dlib_path).eval()

    def dlib_run(x: torch.Tensor) -> list[torch.Tensor]:
        # One pass collecting every level (what DlibFaceResNet.features(x, level) returns for level 0..5).
        h = dlib.stem(dlib.normalise(x))
        outs = [h]
        for level in dlib.levels:
            h = level(h)
            outs.append(h)
        return outs

    mesh = _load_facemesh()

    def mesh_run(x: torch.Tensor) -> list[torch.Tensor]:
        return list(mesh.features(x, list(FACEMESH_LAYERS)))

    yunet = YuNetStem()
    yunet.load_onnx(YUNET_FILE)
    yunet.eval()

    def yunet_run(x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, module in enumerate(yunet.layers):
            x = module(x)
            if i in YUNET_LAYERS:
                outs.append(x.clone())  # later ReLUs are in place
        return outs

    dlib_levels = ["L0 stem (32ch 35px)", "L1 alevel4 (32ch 35px)", "L2 alevel3 (64ch 17px)",
                   "L3 alevel2 (128ch 8px)", "L4 alevel1 (256ch 4px)", "L5 alevel0 (256ch 2px)"]
    mesh_names = [f"{n} ({c}ch {s}px)" for n, c, s in zip(FACEMESH_LAYERS, (16, 32, 64, 128, 128, 128),
                                                          (96, 48, 24, 12, 6, 3))]
    return [
        Backbone("pixels", CROP_SIZE, False, ["BGR 0..1 (3ch 192px)"], lambda x: [x / 255.0]),
        Backbone("dlib-resnet", 150, True, dlib_levels, dlib_run),
        Backbone("facemesh", 192, True, mesh_names, mesh_run),
        Backbone("yunet-stem", YUNET_SIZE, False, list(YUNET_LAYERS.values()), yunet_run),
    ]


def pooled(a: torch.Tensor) -> torch.Tensor:
    """(N, 3C): per-channel spatial mean, std and texture energy (mean |a - 3x3 local mean|)."""
    a = a.float().contiguous()
    local = F.avg_pool2d(a, 3, 1, 1, count_include_pad=False)
    return torch.cat([a.mean((2, 3)), a.std((2, 3), unbiased=False), (a - local).abs().mean((2, 3))], dim=1)


@torch.inference_mode()
def extract(net: Backbone, crops: np.ndarray) -> list[np.ndarray]:
    """Per layer of ``net``, the (N, 3C) pooled features of every crop."""
    feats: list[list[np.ndarray]] = [[] for _ in net.layers]
    for start in range(0, len(crops), BATCH):
        batch = crops[start:start + BATCH]
        if net.size != batch.shape[1]:
            batch = np.stack([cv2.resize(c, (net.size, net.size), interpolation=cv2.INTER_AREA) for c in batch])
        if net.rgb:
            batch = batch[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).float()
        for i, a in enumerate(net.run(x)):
            feats[i].append(pooled(a).numpy())
    return [np.concatenate(f).astype(np.float64) for f in feats]


# --------------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------------


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = C_REG) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (sklearn's C convention), classes weighted to equal total weight,
    intercept unpenalised; L-BFGS on the exact objective."""
    n = len(y)
    weight = np.where(y == 1, n / (2 * y.sum()), n / (2 * (n - y.sum())))
    sign = np.where(y == 1, 1.0, -1.0)

    def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = p[:-1], p[-1]
        m = sign * (x @ w + b)
        loss = np.logaddexp(0.0, -m)
        g = -c * weight * sign * np.exp(-np.logaddexp(0.0, m))  # d loss / d z, times C and the class weight
        return 0.5 * w @ w + c * (weight @ loss), np.append(w + x.T @ g, g.sum())

    res = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "gtol": 1e-6})
    return res.x[:-1], float(res.x[-1])


def leave_one_identity_out(feats: np.ndarray, y: np.ndarray, ident: np.ndarray) -> np.ndarray:
    """Held-out logits: for each identity, standardise and fit on the others, score its crops."""
    scores = np.zeros(len(y))
    for person in np.unique(ident):
        test = ident == person
        mu, sd = feats[~test].mean(0), feats[~test].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        w, b = fit_logistic((feats[~test] - mu) / sd, y[~test])
        scores[test] = (feats[test] - mu) / sd @ w + b
    return scores


def evaluate(scores: np.ndarray, meta: np.ndarray, version: np.ndarray) -> dict:
    """The held-out scores' AUCs, track AUC, within-person AUC, person spread and fake-real gap."""
    kind, ident, cond = meta[:, 2].astype(str), meta[:, 1].astype(str), meta[:, 3].astype(str)
    real = kind == "real"
    y = (~real).astype(int)
    out: dict = {"frame_auc": roc_auc(y, scores)}
    for k in KINDS:
        sel = real | (kind == k)
        out[f"frame_auc_{k}"] = roc_auc(y[sel], scores[sel])
    out["frame_auc_by_condition"] = {c: roc_auc(y[cond == c], scores[cond == c]) for c in np.unique(cond)}
    # Tracks: mean score over the frames of one (track, kind, condition, version).
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(meta):
        groups.setdefault((int(row[0]), row[2], row[3], int(version[i])), []).append(i)
    t_scores = np.array([scores[idx].mean() for idx in groups.values()])
    t_labels = np.array([int(key[1] != "real") for key in groups])
    out["track_auc"] = roc_auc(t_labels, t_scores)
    out["tracks"] = len(groups)
    people = np.unique(ident)
    within, real_means, gaps = [], [], []
    for p in people:
        sel = ident == p
        within.append(roc_auc(y[sel], scores[sel]))
        real_means.append(scores[sel & real].mean())
        gaps.append(scores[sel & ~real].mean() - real_means[-1])
    out["within_person_auc"] = float(np.mean(within))
    out["real_spread"] = float(np.std(real_means))  # std over people of their mean held-out real logit
    out["fake_real_gap"] = float(np.mean(gaps))  # mean over people of (mean fake - mean real) logit
    out["per_person"] = {p: {"auc": float(a), "real_mean": float(r), "gap": float(g)}
                         for p, a, r, g in zip(people, within, real_means, gaps)}
    return out


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    print("\n| backbone | layer | dims | frame AUC all | swap | selfswap | sbi | track AUC | within-person AUC "
          "| real spread | fake-real gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["metrics"]
        print(f"| {r['backbone']} | {r['layer']} | {r['dims']} | {m['frame_auc']:.3f} | {m['frame_auc_swap']:.3f} "
              f"| {m['frame_auc_selfswap']:.3f} | {m['frame_auc_sbi']:.3f} | {m['track_auc']:.3f} "
              f"| {m['within_person_auc']:.3f} | {m['real_spread']:.2f} | {m['fake_real_gap']:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "backbone_layers.json")
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "evidence" / "crops_192_16.npz",
                        help="crop cache (.npz); rebuilt and written here when absent")
    parser.add_argument("--assets", type=Path, default=None, help="shared assets (default: ../shared/assets)")
    parser.add_argument("--max-frames", type=int, default=16, help="frames per track when rebuilding the crops")
    parser.add_argument("--track-cache", type=Path, default=ROOT / "out" / "evidence" / "cache16",
                        help="TrackBuilder's cache when rebuilding the crops")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    crops, meta = load_crops(args)
    if crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise SystemExit(f"{args.cache}: crops of shape {crops.shape[1:]}, expected {CROP_SIZE}x{CROP_SIZE}x3")
    version = version_index(meta)
    y = (meta[:, 2] != "real").astype(np.int64)
    ident = meta[:, 1].astype(str)
    kinds = {k: int((meta[:, 2] == k).sum()) for k in ("real", *KINDS)}
    print(f"{len(crops)} crops of {len(np.unique(ident))} identities, {len(np.unique(meta[:, 0]))} tracks: {kinds}"
          f" ({time.time() - t0:.0f} s)", flush=True)
    rows: list[dict] = []
    for net in backbones():
        t1 = time.time()
        layer_feats = extract(net, crops)
        t2 = time.time()
        for label, feats in zip(net.layers, layer_feats):
            metrics = evaluate(leave_one_identity_out(feats, y, ident), meta, version)
            rows.append({"backbone": net.name, "input": net.size, "layer": label, "dims": feats.shape[1],
                         "metrics": metrics})
            print(f"  {net.name} {label}: dims {feats.shape[1]}, frame AUC {metrics['frame_auc']:.3f}", flush=True)
        print(f"{net.name}: features {t2 - t1:.0f} s, probes {time.time() - t2:.0f} s", flush=True)
    print_table(rows)
    sys.path.insert(0, str(ROOT / "bench"))
    from machine import describe

    report = {
        "cache": str(args.cache), "crops": len(crops), "identities": sorted(set(ident)), "kinds": kinds,
        "features": "per-channel spatial mean, std and mean |a - 3x3 local mean| (3C dims)",
        "probe": {"model": "L2 logistic regression, balanced class weights, unpenalised intercept",
                  "C": C_REG, "standardise": "on the training identities", "split": "leave one identity out"},
        "machine": describe(), "threads": args.threads, "rows": rows, "seconds": round(time.time() - t0, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
