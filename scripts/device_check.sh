#!/usr/bin/env bash
# Device check: fp16/bf16 per-stage timings, peak memory, overhead and batching ratios for 1/4/16 faces at 512 px,
# without and with torch.compile, and one real-size bf16 training step (random weights), on a CUDA GPU.
#   bash scripts/device_check.sh             on a machine with a CUDA GPU (the check itself stays under 8 minutes)
#   bash scripts/device_check.sh --dry-run   on a CPU with the tiny model: checks the script end to end
# Other options: python -m honestface_core.cli.device_check --help. Installs only from the package registries
# (scripts/setup.sh: PyPI's torch 2.13.0, which is the CUDA build, and requirements.txt; accelerate for the training
# step), and only what .venv lacks. Nothing is downloaded at run time (HF_HUB_OFFLINE=1); nothing is written.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
start=$SECONDS
if ! .venv/bin/python -c "import honestface_core, diffusers" 2>/dev/null; then
  bash scripts/setup.sh
fi
if ! .venv/bin/python -c "import accelerate" 2>/dev/null; then
  .venv/bin/python -m pip --disable-pip-version-check -q install -c constraints.txt "accelerate>=0.30"
fi
echo "[device_check] environment ready in $((SECONDS - start)) s"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec .venv/bin/python -m honestface_core.cli.device_check "$@"
