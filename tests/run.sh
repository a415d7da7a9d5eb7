#!/usr/bin/env bash
# Install everything the test suite needs, then run it: the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium (Debian's package) for the browser tests; without root they are skipped with a reason.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed and this is not root; the browser tests will be skipped" >&2
  fi
fi
# torch 2.13.0 is the CPU build the project is developed and tested with (see README); constraints.txt pins
# every other package to the versions CI tested (re-resolve with tests/lock.sh).
pip install -c constraints.txt torch==2.13.0 -e '.[dev,cluster]'
# The real MTCNN weights live in this wheel; it is downloaded for the tests, never installed.
pip download --no-deps -d .cache/wheels facenet-pytorch==2.6.0
# MediaPipe FaceMesh (face_landmark.tflite) is read out of this wheel; the platform flags fetch the cp311
# manylinux wheel the registry pins, whatever the machine, without installing it.
pip download --no-deps -d .cache/wheels mediapipe==0.10.21 --python-version 3.11 --only-binary=:all: \
  --platform manylinux_2_28_x86_64
# dlib's face-recognition ResNet (and its 5-point shape predictor) live in this sdist; also never installed.
pip download --no-deps -d .cache/wheels face_recognition_models==0.3.0
# pytest's exit code 5 (no tests collected) fails this script, as any non-zero code does.
python -m pytest "$@"
