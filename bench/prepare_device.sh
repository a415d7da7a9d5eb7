#!/usr/bin/env bash
# Gather what bench/gpu_check.sh needs on a machine that only gets this repository: the shared assets it
# reads, and the wheels missing from the device image (insightface, for t1.jpg and INSwapper). Ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.devdata/' .git/info/exclude || echo '/.devdata/' >> .git/info/exclude
rm -rf .devdata && mkdir -p .devdata/assets/models .devdata/assets/faces
cp ../shared/assets/models/*.onnx .devdata/assets/models/
cp ../shared/assets/faces/* .devdata/assets/faces/
pip download -q --no-deps -d .devdata insightface
test -f .cache/wheels/facenet_pytorch-2.6.0-py3-none-any.whl || \
  pip download -q --no-deps -d .cache/wheels facenet-pytorch==2.6.0
du -sh .devdata .cache/wheels
