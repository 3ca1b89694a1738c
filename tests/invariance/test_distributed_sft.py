"""SFT under ``torchrun --nproc_per_node 2`` (gloo, CPU): 2 processes x batch 4 give the weights of
1 process x batch 8 (float64 tiny-llama, 1e-5), with DDP and with FSDP; a 2-process checkpoint
resumes under 2 processes to the same weights and is refused by 1; a batch the processes cannot
split exits 2 with one line and writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from posttrain.training import read_metrics
from tests.helpers_sft import addition_rows
from tests.invariance.helpers_distributed import (
    ROOT,
    assert_moved,
    assert_same_weights,
    final_weights,
    torchrun,
)

ARGS = ["--model", "tiny-llama", "--dtype", "float64", "--learning_rate", "1e-3"]
ARGS += ["--max_steps", "3", "--logging_steps", "1", "--progress", "false", "--batch_size", "8"]


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in addition_rows(64)))
    return str(path)


@pytest.fixture(scope="module")
def single(train, tmp_path_factory):
    """The one-process run every comparison is against."""
    from posttrain.cli import main

    out = tmp_path_factory.mktemp("single") / "out"
    assert main(["sft", *ARGS, "--train_data", train, "--output_dir", str(out)]) == 0
    return out


def test_ddp_2x4_equals_1x8(train, single, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun("sft", *ARGS, "--train_data", train, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = final_weights(out)
    assert_moved(weights)
    assert_same_weights(final_weights(single), weights)
    # metrics: written once (rank 0), the loss of the whole batch, as the single process saw it
    one, two = read_metrics(single / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in two] == [0, 1, 2, 3]
    for a, b in zip(one[1:], two[1:]):
        assert abs(a["train/loss"] - b["train/loss"]) < 1e-9
        assert abs(a["train/grad_norm"] - b["train/grad_norm"]) < 1e-9
    assert proc.stdout.count("saved ") == 1  # rank 0 speaks


def test_fsdp_2x4_equals_1x8_and_resumes_under_2_processes(train, single, tmp_path):
    out = tmp_path / "fsdp"
    args = ["sft", *ARGS, "--train_data", train, "--distributed", "fsdp", "--save_steps", "2"]
    proc = torchrun(*args, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(final_weights(single), final_weights(out))
    assert (out / "checkpoint-2" / "model.safetensors").exists()

    shutil.rmtree(out / "final")  # continue from checkpoint-2: the same final weights
    # every run also saves its last step: resume from the periodic checkpoint before it
    shutil.rmtree(out / "checkpoint-3")
    proc = torchrun(*args, "--output_dir", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    assert_same_weights(final_weights(single), final_weights(out))

    from posttrain.cli import main  # one process may not resume a 2-process checkpoint

    assert main([*args, "--output_dir", str(out), "--resume"]) == 2


def test_fsdp_with_packing_equals_one_unpacked_process(tmp_path):
    """Packing under FSDP: examples of 8 to 44 tokens packed into rows of 64 give each process
    its own number of rows, so the one with fewer adds passes that train on nothing (every
    forward gathers weights from both). The weights are those of one process, unpacked."""
    from posttrain.cli import main

    rows = addition_rows(64, seed=3)
    for i, row in enumerate(rows):  # every other answer repeated 6 times: 8 or 44 tokens
        row["completion"] *= 1 + 5 * (i % 2)
    train = tmp_path / "mixed.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*ARGS, "--train_data", train, "--max_length", "64"]
    assert main(["sft", *map(str, args), "--output_dir", str(tmp_path / "one")]) == 0
    out = tmp_path / "fsdp-packed"
    proc = torchrun("sft", *args, "--distributed", "fsdp", "--packing", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_moved(final_weights(out))
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(out))


def test_batch_not_divisible_by_processes_exits_2_and_writes_nothing(train, tmp_path):
    out = tmp_path / "bad"
    proc = torchrun("sft", *ARGS, "--train_data", train, "--batch_size", "3", "--output_dir", out)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("--batch_size: must be divisible by processes" in e for e in errors)
    assert str(ROOT / "posttrain") not in proc.stderr  # no traceback from our code (torchrun
    # itself reports its failed children with one)
    assert not out.exists()
