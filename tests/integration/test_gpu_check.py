"""scripts/gpu_check.sh: what can run without a GPU. Its dry run lists every part with --device;
--device cuda on this machine is exit 2 naming the device; its CPU path (tiny-llama, --quick)
runs the same checks end to end (slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PARTS = ["sft", "rm", "dpo", "kto", "ppo", "rloo", "grpo", "online-dpo", "sample", "eval"]


def check(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_the_script_parses_and_its_dry_run_lists_every_part():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    proc = check("--device", "cpu", "--model", "tiny-llama", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if line.startswith("  $ ")]
    for part in PARTS:
        line = next(c for c in commands if f" posttrain.cli {part} " in c)
        assert "--device cpu" in line, line
    assert "SKIP  ddp" in proc.stdout  # no GPUs here


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_an_absent_gpu_is_exit_2_naming_it():
    proc = check("--dry-run")  # the default device is cuda
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: --device: cuda is not available on this machine (torch {torch.__version__} "
        "sees no CUDA device); use --device cpu or auto"
    )


@pytest.mark.slow  # ~2 minutes on 2 cores: six real runs
def test_the_cpu_path_runs_the_checks(tmp_path):
    parts = "logprobs,shared-prefix,sft,rm,dpo,sample,eval"
    args = ["--device", "cpu", "--model", "tiny-llama", "--quick", "--steps", "2"]
    proc = check(*args, "--only", parts, "--workdir", str(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for part in parts.split(","):
        assert f"PASS  {part}" in proc.stdout, proc.stdout
    assert "all checks passed" in proc.stdout
