"""Shared test fixtures: writing small data files and running the CLI in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def jsonl(tmp_path):
    """``jsonl(name, rows)`` writes rows (dicts, or raw strings for broken lines) under tmp_path."""

    def make(name: str, rows) -> str:
        return str(write_jsonl(tmp_path / name, rows))

    return make


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (exit_code, stdout, stderr)`` running posttrain in this process."""
    from posttrain.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


# --------------------------------------------------------------------------- markers
# `pytest -m "not slow and not distributed"` is the inner loop (CI runs everything):
# - distributed: the test starts several processes (torchrun);
# - slow: an end-to-end training run in tests/integration or tests/invariance (the learning,
#   resume and invariance tests), except the bad-input checks that stop before training.
DISTRIBUTED_FILES = ("test_distributed_", "test_rm_distributed", "test_fsdp_lora_weights")
QUICK_NAMES = ("bad", "exit", "refuse", "error", "help", "invalid", "missing", "unknown")


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if path.name.startswith(DISTRIBUTED_FILES):
            item.add_marker(pytest.mark.distributed)
            item.add_marker(pytest.mark.slow)
        elif path.parent.name in ("integration", "invariance") and not any(
            word in item.name.lower() for word in QUICK_NAMES
        ):
            item.add_marker(pytest.mark.slow)
