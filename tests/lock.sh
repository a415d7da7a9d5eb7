#!/usr/bin/env bash
# Re-resolve constraints.txt: what a fresh virtual environment gets today from the package index for
# `pip install torch==2.13.0 -e '.[dev,cluster]'`, pinned exactly. Bump deliberately, in a commit of its own, after
# running the whole suite against the new file (`bash tests/run.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 -e '.[dev,cluster]'
{
  echo "# Exact versions CI installs and tests (pip constraints: bash tests/run.sh and the README's install use"
  echo "# them with -c). Resolved by tests/lock.sh on $(date -u +%Y-%m-%d) for $("$venv/bin/python" -V) on"
  echo "# $(uname -s) $(uname -m); another Python may need other versions: install without -c there."
  # The CPU build's local label (+cpu) is dropped: torch==2.13.0 then also admits a CUDA build of 2.13.0.
  "$venv/bin/pip" freeze --exclude-editable | grep -v '^-e ' | sed -E 's/^(torch==[0-9.]+)\+[a-z0-9]+$/\1/'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
