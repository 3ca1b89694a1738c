#!/usr/bin/env bash
# One command for a machine with a GPU: sft, rm, dpo, kto, ppo, rloo, grpo, online-dpo, sample
# and eval on smollm2-135m-instruct for a few steps each (and DDP over every visible GPU, and
# vLLM when it is installed), asserting finite losses, tensors on the GPU, float32 log-probs
# equal to the CPU's to 1e-4; prints peak GPU memory and step times. Under 10 minutes.
#
#   bash scripts/gpu_check.sh                  # --device cuda --model smollm2-135m-instruct
#   bash scripts/gpu_check.sh --help           # every option (scripts/gpu_check.py)
#
# Exit code: 0 all passed, 1 a check failed, 2 the device is not there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" scripts/gpu_check.py "$@"
