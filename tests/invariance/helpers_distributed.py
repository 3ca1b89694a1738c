"""Running posttrain under ``torchrun`` (2 processes, gloo on CPU) from tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def torchrun(*args, nproc: int = 2, module: str = "posttrain.cli") -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m MODULE ARGS`` (a free port each time)."""
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), "-m", module]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def assert_moved(weights: dict, model: str = "tiny-llama") -> None:
    """Training changed the weights (compared with the starting model in their dtype)."""
    from posttrain.models import load_model

    dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.")
    start = load_model(model, dtype=dtype).state_dict()
    assert any(not torch.equal(weights[k], start[k]) for k in weights)
