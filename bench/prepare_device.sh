#!/usr/bin/env bash
# Gather into .devdata/ (ignored by git through .git/info/exclude) what bench/gpu_check.sh needs on a lent GPU
# machine that gets only this repository and has no network:
#
#   .devdata/assets/   the shared assets the benchmarks and tests read (YuNet graph, face photos, GRID clips)
#   .devdata/mirror/   the facenet-pytorch wheel: a model mirror for MTCNN's weights (never installed)
#   .devdata/wheels/   wheels missing from the device image, installed there with --no-index --no-deps:
#                      PyAV (decode/encode; the device image has none). One wheel serves CPython 3.11 and 3.12:
#                      PyAV ships abi3 wheels (cp311-abi3), and the device's python3 is 3.12.
#
# Then, from the device tool: run `bash bench/gpu_check.sh` with carry [".devdata"]. Keep .devdata under ~55 MiB:
# the working tree and the carried paths travel together under a 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SWAPWATCH_SHARED_ASSETS:-../shared/assets}
AV_VERSION=${AV_VERSION:-$(python3 -c 'import av; print(av.__version__)' 2>/dev/null || echo 18.1.0)}
FACENET=facenet_pytorch-2.6.0-py3-none-any.whl

grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
rm -rf .devdata
mkdir -p .devdata/assets .devdata/mirror .devdata/wheels
cp -r "$SHARED/models" "$SHARED/faces" "$SHARED/videos" .devdata/assets/
cp "$SHARED/README.md" "$SHARED/SHA256SUMS" .devdata/assets/ 2>/dev/null || true

if [ -f ".cache/wheels/$FACENET" ]; then
  cp ".cache/wheels/$FACENET" .devdata/mirror/
else
  python3 -m pip download -q --no-deps -d .devdata/mirror facenet-pytorch==2.6.0
fi

# abi3: one wheel for every CPython >= 3.11 (the device's 3.12 included).
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .devdata/wheels "av==$AV_VERSION"
ls .devdata/wheels/av-*-abi3-*.whl >/dev/null || { echo "no abi3 PyAV wheel downloaded" >&2; exit 1; }

du -sh .devdata/assets .devdata/mirror .devdata/wheels
total=$(du -sm .devdata | cut -f1)
tree=$(git ls-files -z | du -cm --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "carry .devdata: ${total} MiB; tracked working tree: ~${tree} MiB (limit 64 MiB together)"
if [ "$total" -gt 55 ]; then echo "warning: .devdata is over 55 MiB" >&2; fi
