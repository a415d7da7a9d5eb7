#!/usr/bin/env bash
# One run on a lent GPU machine (device image: torch, onnx, onnxruntime; no TensorRT, no network).
# Prepared here with: bench/prepare_device.sh (copies assets and wheels into .devdata/, ignored by git).
# Writes JSON and images under ${OUT:-out}.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, onnxruntime, cv2; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), '| opencv', cv2.__version__)"
python3 -c "import tensorrt" 2>/dev/null && echo "tensorrt: present" || echo "tensorrt: absent (TensorRT rows skipped)"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "editable install failed"
python3 -m pip install -q --no-deps --no-index .devdata/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export SWAPWATCH_SHARED_ASSETS=$PWD/.devdata/assets SWAPWATCH_HOME=/tmp/swh
export SWAPWATCH_MODEL_MIRROR=$PWD/.devdata/assets/models:$PWD/.cache/wheels
mkdir -p /tmp/mtcnn && python3 - <<'PY'
import zipfile
z = zipfile.ZipFile(".cache/wheels/facenet_pytorch-2.6.0-py3-none-any.whl")
for n in ("pnet", "rnet", "onet"):
    open(f"/tmp/mtcnn/{n}.pt", "wb").write(z.read(f"facenet_pytorch/data/{n}.pt"))
PY
T1=$(python3 -c "import insightface, os; print(os.path.join(os.path.dirname(insightface.__file__), 'data/images/t1.jpg'))")
echo "== parity"; timeout 120 python3 bench/gpu_parity.py --weights /tmp/mtcnn --t1 "$T1" --out "$OUT"
echo "== detection"; timeout 120 python3 bench/detect_bench.py --device cuda --repeats 30 --json "$OUT/detect_gpu.json"
echo "== swap"; timeout 180 python3 bench/swap_bench.py --device cuda --repeats 20 --json "$OUT/swap_gpu.json"
echo "== backend tests"; timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_backends.py 2>&1 | tail -5
