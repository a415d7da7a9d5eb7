#!/usr/bin/env bash
# Issue 6 on a lent GPU machine, in one run of about 4-6 minutes: the GPU and versions, which backends are
# present, the device-path tests on CUDA, fp16 checks (SimSwap-224 generator, deepfake scorer), then
# `swapwatch bench --device-path` at 1280x720 and 1920x1080 for 1, 4 and 8 sessions (fp32, and fp16 where its
# check passed), plus a few single-session variants. Results go to $OUT (at most 8 files come back):
#
#   gpu_check.log   everything printed          bench.json   every bench run's JSON, by run name
#   summary.md      the summary table           fp16.json    fp16 check results
#   logs.txt        pytest output + each run's report        fp16_*.png   fp16 diff images (fp32 | fp16 | |diff|)
#
# Prepared here with `bash bench/prepare_device.sh` (.devdata/: assets, PyAV wheel, MTCNN weights mirror), run
# there with carry [".devdata"]. The device image has PyTorch (CUDA), onnx and onnxruntime (CPU provider only)
# and no TensorRT: the swap generator, the device path and the deepfake detector run in torch on CUDA; YuNet (an
# ONNX graph) runs on onnxruntime's CPU provider, every 3rd frame with optical-flow tracking between
# (--detect-every 3), and one 720p run detects on every frame. MTCNN (torch, CUDA) is measured once.
#
# SWAPWATCH_GPU_CHECK_DRY=1: the same steps on this machine's CPU with tiny sizes and frame counts (aiortc,
# insightface and matplotlib made unimportable, as on the device image), to catch mistakes before the one real run.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=${SWAPWATCH_GPU_CHECK_DRY:-0}
OUT=${OUT:-$REPO/out/gpu_check}
WORK=${SWAPWATCH_GPU_CHECK_WORK:-/tmp/swapwatch_gpu_check}
BUDGET=${SWAPWATCH_GPU_CHECK_BUDGET:-540}  # seconds for the whole script; later steps are skipped past it
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK/json" "$WORK/logs" "$WORK/pkg" "$WORK/site"
exec > >(tee "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
say() { echo "[$(($(date +%s) - T0))s] $*"; }
left() { echo $((DEADLINE - $(date +%s))); }
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export SWAPWATCH_ORT_SPIN=0  # engines/runtime/ort_backend.py: ONNX Runtime threads do not spin while idle (its default)
PY=python3

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  RESOLUTIONS="320x240 384x288"
  SESSIONS="1 2"
  say "DRY RUN on CPU: tiny sizes, sessions $SESSIONS, fp16 runs as fp32"
else
  DEVICE=cuda
  RESOLUTIONS="1280x720 1920x1080"
  SESSIONS="1 4 8"
fi

# ---- 1. machine, versions, backends -------------------------------------------------------------------
say "== machine"
if command -v nvidia-smi >/dev/null; then
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
else
  echo "nvidia-smi: not found"
fi
echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"

# PyAV and anything else missing, from local wheels only (no network there).
if ls .devdata/wheels/*.whl >/dev/null 2>&1; then
  timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .devdata/wheels/*.whl \
    && say "installed: $(cd .devdata/wheels && ls *.whl | tr '\n' ' ')" || say "WARNING: wheel install failed"
else
  say "WARNING: .devdata/wheels missing (run bench/prepare_device.sh here first)"
fi
# swapwatch without pip: the package layout of pyproject.toml (engines/ -> swapwatch.engines, ...) as links.
# PYTHONSAFEPATH (Python >= 3.11): the current directory is not put first on sys.path, so the repository's own
# swapwatch/ folder (which lacks engines/ ...) does not hide the linked package.
cp -r swapwatch "$WORK/pkg/swapwatch"
for d in engines export stream client; do ln -s "$REPO/$d" "$WORK/pkg/swapwatch/$d"; done
export PYTHONSAFEPATH=1 PYTHONPATH="$WORK/pkg:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import swapwatch.engines.swap.device_path, swapwatch.export.simswap, swapwatch.commands.bench" 2>"$WORK/import.err"; then
  say "WARNING: linked package does not import ($(tail -1 "$WORK/import.err")); trying pip install -e"
  rm -rf "$WORK/pkg/swapwatch"
  timeout 120 $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . || say "WARNING: pip install -e failed"
fi
if [ "$DRY" = 1 ]; then  # what the device image lacks
  for m in aiortc insightface matplotlib; do
    mkdir -p "$WORK/block/$m"
    echo "raise ImportError('$m is not on the device image (gpu_check dry run)')" > "$WORK/block/$m/__init__.py"
  done
  export PYTHONPATH="$WORK/block:$PYTHONPATH"
fi
export SWAPWATCH_SHARED_ASSETS=$REPO/.devdata/assets SWAPWATCH_HOME=$WORK/home SWAPWATCH_TEST_WHEELS=$REPO/.devdata/mirror
export SWAPWATCH_MODEL_MIRROR=$REPO/.devdata/assets/models:$REPO/.devdata/mirror

timeout 60 $PY - <<'PY'
import platform
import cv2, numpy, onnxruntime, torch
print(f"python {platform.python_version()} | torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}) | onnxruntime {onnxruntime.__version__} "
      f"{onnxruntime.get_available_providers()} | opencv {cv2.__version__} | numpy {numpy.__version__}")
try:
    import av
    print(f"pyav {av.__version__} ({av.__file__})")
except ImportError as exc:
    print(f"pyav: MISSING ({exc}): codec runs will fail, --no-codec runs read the clips with OpenCV")
import swapwatch
from swapwatch.engines.runtime.engine import available_backends
print(f"swapwatch {swapwatch.__version__} from {swapwatch.__file__}")
cuda = torch.cuda.is_available()
print("torch CUDA:", f"yes, {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}"
      if cuda else "no")
try:
    import tensorrt
    print(f"tensorrt: present ({tensorrt.__version__})")
except ImportError:
    print("tensorrt: ABSENT")
ort = onnxruntime.get_available_providers()
print("onnxruntime GPU providers:", [p for p in ort if p != "CPUExecutionProvider" and "Azure" not in p] or "NONE (CPU only)")
print("swapwatch backends available:", available_backends())
best = ("tensorrt" if "tensorrt" in available_backends() else "torch CUDA" if cuda else "CPU (torch / onnxruntime)")
print(f"best backend here: {best} -> swap generator, device path and deepfake detector run in "
      f"{'torch on CUDA' if cuda else 'torch on CPU'}; YuNet (ONNX) on onnxruntime "
      f"{'CUDA' if 'CUDAExecutionProvider' in ort else 'CPU'}")
PY

# ---- 2. device-path tests (parametrised over cpu and cuda when CUDA is present) ------------------------
say "== tests/test_device_path.py"
timeout 170 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfEs tests/test_device_path.py > "$WORK/logs/pytest.log" 2>&1
say "pytest exit $? ($(tail -1 "$WORK/logs/pytest.log"))"
grep -E "^(FAILED|ERROR)|Error|assert " "$WORK/logs/pytest.log" | head -20

# ---- 3. fp16 checks -------------------------------------------------------------------------------------
say "== fp16 checks"
FP16_OK=0
if [ "$(left)" -gt 60 ]; then
  timeout 90 $PY - "$DEVICE" "$OUT" <<'PY'
import json, sys
from pathlib import Path
import cv2, numpy as np, torch
from swapwatch.engines.faces.align import align_face
from swapwatch.engines.bench.benchmark import default_clips, default_source_photo
from swapwatch.engines.deepfake.detector import DeepfakeDetector, crop_faces, to_input
from swapwatch.engines.faces.detectors import create_detector
from swapwatch.engines.swap.device_generator import fp16_check
from swapwatch.engines.runtime.media import read_image
from swapwatch.engines.swap.simswap import SimSwapSwapper
from swapwatch.export.arcface import ResNet
from swapwatch.export.simswap import SimSwapGenerator
from swapwatch.config import DetectorConfig

device, out = sys.argv[1], Path(sys.argv[2])
yunet = create_detector(DetectorConfig(name="yunet", device="auto"))
frames = []
for clip in default_clips()[:4]:  # first frame of 4 GRID speakers: a batch of 4 real faces (OpenCV: no PyAV needed)
    ok, image = cv2.VideoCapture(str(clip)).read()
    assert ok, f"cannot read {clip}"
    frames.append((image, max(yunet.detect(image), key=lambda f: f.area)))
torch.manual_seed(0)
swapper = SimSwapSwapper.from_modules(SimSwapGenerator(224).eval(), ResNet().eval(), device=device)
photo = read_image(default_source_photo())
identity = swapper.prepare_source(photo, max(yunet.detect(photo), key=lambda f: f.area))
crops = np.stack([align_face(img, f.landmarks, swapper.template).crop for img, f in frames])
target = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2))).float().div(255).to(device)
latent = torch.from_numpy(np.stack([identity.embedding] * len(crops)).astype(np.float32)).to(device)
gen = swapper.generator.module
results = {"device": device, "dtype_note": "CUDA: float16; CPU (dry run): bfloat16",
           "fp32_reference_tf32_convolutions": bool(torch.backends.cudnn.allow_tf32) and device == "cuda"}
rep = fp16_check(gen, (target, latent))
results["simswap224_autocast"] = rep.to_json()
cv2.imwrite(str(out / "fp16_simswap224.png"), rep.diff_image)
results["simswap224_half"] = fp16_check(gen, (target, latent), mode="half").to_json()

det = DeepfakeDetector.load(None, backend="torch", device=device)
scorer = det.scorer.module
dcrops = torch.from_numpy(to_input(np.concatenate(
    [crop_faces(img, [f.landmarks], det.template) for img, f in frames]))).to(device)
prob = fp16_check(lambda x: torch.sigmoid(scorer(x)[1].reshape(-1)), (dcrops,))
feat = fp16_check(lambda x: scorer(x)[0], (dcrops,), tolerance=1e9, mean_tolerance=1e9)  # scale-free: reported
results["deepfake_probability"] = prob.to_json()
with torch.inference_mode():
    scale = float(scorer(dcrops)[0].abs().mean())
results["deepfake_features"] = {**feat.to_json(), "passed": None, "feature_scale": scale}
img = cv2.resize(feat.diff_image, None, fx=4, fy=8, interpolation=cv2.INTER_NEAREST)
cv2.imwrite(str(out / "fp16_deepfake.png"), img)
(out / "fp16.json").write_text(json.dumps(results, indent=2) + "\n")
for name in ("simswap224_autocast", "simswap224_half", "deepfake_probability", "deepfake_features"):
    r = results[name]
    print(f"fp16 {name:22s} {r['dtype']:9s} max {r['max_abs_err']:.3e} mean {r['mean_abs_err']:.3e} "
          f"passed {r['passed']} {r['reason']}")
PY
  say "fp16 check exit $?"
  FP16_OK=$($PY -c "import json; print(int(json.load(open('$OUT/fp16.json'))['simswap224_autocast']['passed']))" 2>/dev/null || echo 0)
else
  say "skipped: $(left) s left"
fi

# ---- 4. benchmarks ---------------------------------------------------------------------------------------
# One driver process per group runs its `swapwatch bench` commands in-process (torch and CUDA start once per
# group); each run has its own alarm, each group an outer timeout, all of them the script's deadline.
cat > "$WORK/driver.py" <<'PY'
"""argv: deadline (epoch s), then lines of 'NAME SECONDS ARGS...' on stdin; runs `swapwatch bench ARGS --json`."""
import contextlib, gc, io, json, shlex, signal, sys, time, traceback
from pathlib import Path

work = Path(sys.argv[1])
deadline = float(sys.argv[2])


def alarm(signum, frame):
    raise TimeoutError("run timed out")


class _Stderr:
    """Log records go to whatever sys.stderr is at the time (each run's captured log)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


signal.signal(signal.SIGALRM, alarm)
import logging  # noqa: E402

logging.basicConfig(level=logging.WARNING, stream=_Stderr(), format="%(levelname)s %(name)s: %(message)s")
from swapwatch.cli import main  # noqa: E402

for line in sys.stdin.read().splitlines():
    if not line.strip():
        continue
    name, limit, *args = shlex.split(line)
    limit = int(limit)
    left = deadline - time.time()
    if left < min(limit, 30):
        print(f"run {name}: SKIPPED ({left:.0f} s left before the deadline)", flush=True)
        continue
    out = work / "json" / f"{name}.json"
    log = io.StringIO()
    t0 = time.time()
    code = None
    signal.alarm(int(min(limit, left)))
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = main(["bench", *args, "--json", str(out)])
    except BaseException as exc:  # noqa: BLE001 - a timeout or crash of one run must not stop the others
        log.write(f"\n{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        code = f"{type(exc).__name__}"
    finally:
        signal.alarm(0)
    wall = time.time() - t0
    (work / "logs" / f"{name}.log").write_text(f"$ swapwatch bench {' '.join(args)}\n{log.getvalue()}")
    if out.is_file():
        p = json.loads(out.read_text())["pipeline"]
        proc = p.get("processing") or {}
        print(f"run {name}: {p['fps']:.1f} fps ({p.get('fps_kind', '')}), processing p50/p95 "
              f"{proc.get('p50_ms', 0):.2f}/{proc.get('p95_ms', 0):.2f} ms, precision {p.get('precision_used')}, "
              f"{p['faces_swapped']} faces swapped [{wall:.0f} s]", flush=True)
    else:
        tail = "\n    ".join(log.getvalue().strip().splitlines()[-6:])
        print(f"run {name}: FAILED (exit {code}) [{wall:.0f} s]\n    {tail}", flush=True)
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a broken CUDA context shows in the next run's failure
        pass
PY

COMMON="--device $DEVICE --device-path --no-codec --rounds 1 --deepfake on"
SIMSWAP="--swap-model simswap-224 --random-weights"
frames_for() {  # timed frames and warm-up per session, by session count
  if [ "$DRY" = 1 ]; then echo "--frames 2 --warmup 1"; return; fi
  case $1 in 1) echo "--frames 240 --warmup 20" ;; 4) echo "--frames 100 --warmup 10" ;; *) echo "--frames 60 --warmup 8" ;; esac
}
short() { case $1 in 1280x720) echo 720p ;; 1920x1080) echo 1080p ;; *) echo "$1" ;; esac; }
sweep() {  # precision -> run lines
  local prec=$1 flag=$1
  [ "$DRY" = 1 ] && flag=fp32
  for res in $RESOLUTIONS; do
    for s in $SESSIONS; do
      echo "$(short "$res")_s${s}_${prec} 75 $COMMON $SIMSWAP --precision $flag --resolution $res --sessions $s --detect-every 3 --host-threads 4 $(frames_for "$s")"
    done
  done
}
group() {  # name, outer timeout -> runs the lines on stdin
  local name=$1 limit=$2 t=$(left)
  [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -lt 30 ]; then say "== $name: skipped ($t s left)"; cat >/dev/null; return; fi
  say "== $name (timeout ${limit}s)"
  timeout --kill-after=5 "$limit" $PY "$WORK/driver.py" "$WORK" "$DEADLINE"
  local rc=$?
  [ $rc -ne 0 ] && say "$name: driver exit $rc (124: outer timeout)"
}

# A first short run shows whether the device path works with its defaults (pinned buffers, copy stream,
# CUDA events); if not, every later run uses plain synchronous copies and says so.
PATHCFG=""
SMOKE="--frames 20 --warmup 3"
[ "$DRY" = 1 ] && SMOKE=$(frames_for 1)
echo "smoke_720p_s1 60 $COMMON $SIMSWAP --precision fp32 --resolution $(set -- $RESOLUTIONS; echo $1) --sessions 1 $SMOKE" \
  | group smoke 90
if [ ! -f "$WORK/json/smoke_720p_s1.json" ]; then
  PATHCFG="--path-config pinned=0,streams=0,events=0"
  say "device path failed with its defaults: later runs use $PATHCFG"
  COMMON="$COMMON $PATHCFG"
fi

sweep fp32 | group "sweep fp32" 150
if [ "$FP16_OK" = 1 ] || [ "$DRY" = 1 ]; then
  sweep fp16 | group "sweep fp16" 150
else
  say "== sweep fp16: skipped (the SimSwap-224 fp16 check did not pass; see fp16.json)"
fi
BEST=fp32
[ "$FP16_OK" = 1 ] && [ "$DRY" != 1 ] && BEST=fp16
R720=$(set -- $RESOLUTIONS; echo $1)
F1=$(frames_for 1)
[ "$DRY" = 1 ] || F1="--frames 120 --warmup 15"
SMAX=$(set -- $SESSIONS; eval echo "\${$#}")
S720="$COMMON $SIMSWAP --precision $BEST --resolution $R720"
{  # CUDA-graph runs last: a failed capture should not disturb the others in this process
  echo "720p_s1_classic 60 $COMMON --swap-model classic --precision fp32 --resolution $R720 --sessions 1 --detect-every 3 $F1"
  echo "720p_s1_${BEST}_detect1 60 $S720 --sessions 1 --detect-every 1 $F1"
  echo "720p_s1_${BEST}_codec 75 ${S720/--no-codec/} --sessions 1 --detect-every 3 $F1"
  echo "720p_s${SMAX}_${BEST}_threads1 75 $S720 --sessions $SMAX --detect-every 3 --host-threads 1 $(frames_for 8)"
  echo "720p_s1_${BEST}_mtcnn 60 $S720 --sessions 1 --detect-every 3 --face-detector mtcnn $(frames_for 8)"
  echo "720p_s1_${BEST}_graphs 75 $S720 --sessions 1 --detect-every 3 --cuda-graphs $F1"
  echo "720p_s${SMAX}_${BEST}_graphs 75 $S720 --sessions $SMAX --detect-every 3 --host-threads 4 --cuda-graphs $(frames_for 8)"
} | group extras 150

# ---- 5. summary --------------------------------------------------------------------------------------------
say "== summary"
$PY - "$WORK" "$OUT" "$DRY" <<'PY'
import json, sys
from pathlib import Path

work, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
runs = {p.stem: json.loads(p.read_text()) for p in sorted((work / "json").glob("*.json"), key=lambda p: p.stat().st_mtime)}
fp16 = json.loads((out / "fp16.json").read_text()) if (out / "fp16.json").is_file() else None
(out / "bench.json").write_text(json.dumps({"runs": runs, "fp16": fp16}, indent=1) + "\n")
logs = [(work / "logs" / "pytest.log")] + sorted(p for p in (work / "logs").glob("*.log") if p.stem != "pytest")
(out / "logs.txt").write_text("".join(f"===== {p.name}\n{p.read_text()}\n" for p in logs if p.is_file()))


def ms(stage, key="mean_ms"):
    return f"{stage[key]:.2f}" if stage else "-"


rows = ["| run | WxH | sess | prec | fps | fps/sess | proc p50 / p95 ms | upload / swap / paste / label / download "
        "mean ms | detect / track / deepfake / monitor mean ms | decode / output / encode mean ms | swapped |",
        "|---" * 11 + "|"]
for name, d in runs.items():
    p, c, st = d["pipeline"], d["config"], d["pipeline"]["stages"]
    proc = p.get("processing") or {}
    dev_ms = " / ".join(ms(st.get(s)) for s in ("upload", "swap", "paste", "label", "download"))
    host_ms = " / ".join(ms(st.get(s)) for s in ("detect", "track", "deepfake", "monitor"))
    codec_ms = " / ".join(ms(st.get(s)) for s in ("decode", "output", "encode")) if p.get("codec") else "no codec"
    rows.append(f"| {name} | {c['width']}x{c['height']} | {c['sessions']} | {p.get('precision_used')} | "
                f"{p['fps']:.1f} | {p['fps_per_session']:.1f} | {proc.get('p50_ms', 0):.2f} / {proc.get('p95_ms', 0):.2f}"
                f" | {dev_ms} | {host_ms} | {codec_ms} | {p['faces_swapped']}/{p['frames']} |")
any_run = next(iter(runs.values()), None)
head = []
if any_run:
    dv = any_run["device"]
    head.append(f"device: {dv.get('gpu') or 'no GPU'} (driver {dv.get('driver')}, CUDA {dv.get('cuda')}); "
                f"{dv['cores']} CPU cores; torch {dv['versions']['torch']}, onnxruntime {dv['versions']['onnxruntime']} "
                f"{dv['onnxruntime_providers']}, PyAV {dv['versions']['pyav']}")
    head.append(f"placement: {any_run['models'].get('placement')}")
head.append("fps: server-side processing (no decode/encode) except *_codec runs (end to end, decode -> encode); "
            "proc: per-frame processing (the batch's host stage + device call + monitors); device stages are "
            "per batch. SimSwap-224 random weights (speed only); YuNet every 3rd frame, optical flow between, "
            "except *_detect1; deepfake detector on (serve's strides 2/5).")
if fp16:
    head.append("fp16: " + "; ".join(f"{k} max {v['max_abs_err']:.2e} mean {v['mean_abs_err']:.2e} passed {v['passed']}"
                                    for k, v in fp16.items() if isinstance(v, dict)))
targets = []
for prec in ("fp16", "fp32"):
    one, eight = runs.get(f"720p_s1_{prec}"), runs.get(f"720p_s8_{prec}")
    if one:
        targets.append(f"720p 1 session {prec}: {one['pipeline']['fps']:.0f} fps (target >= 120): "
                       f"{'MET' if one['pipeline']['fps'] >= 120 else 'not met'}")
    if eight:
        p = eight["pipeline"]
        p95 = (p.get("processing") or {}).get("p95_ms", float("inf"))
        targets.append(f"720p 8 sessions {prec}: {p['fps_per_session']:.1f} fps per session (target >= 30): "
                       f"{'MET' if p['fps_per_session'] >= 30 else 'not met'}; p95 processing {p95:.1f} ms "
                       f"(target <= 10): {'MET' if p95 <= 10 else 'not met'}")
text = "\n".join(head + [""] + rows + [""] + targets) + "\n"
if dry:
    text = "DRY RUN (CPU, tiny sizes: the numbers mean nothing)\n" + text
(out / "summary.md").write_text(text)
print(text)
PY
say "done: $(ls "$OUT" | tr '\n' ' ')"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
