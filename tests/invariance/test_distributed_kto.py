"""KTO under ``torchrun --nproc_per_node 2`` (gloo, CPU, DDP, float64): 2 processes x 4 unpaired
examples (each split into 2 micro-batches) give the weights of 1 process x 8 (tiny-llama, 1e-5);
the reference point z0 and the logged loss and rewards are those of the whole batch."""

from __future__ import annotations

import json

from posttrain.training import read_metrics
from tests.helpers_pref import preference_rows
from tests.invariance.helpers_distributed import (
    assert_moved,
    assert_same_weights,
    final_weights,
    torchrun,
)

ARGS = ["kto", "--model", "tiny-llama", "--dtype", "float64", "--learning_rate", "1e-3"]
ARGS += ["--beta", "0.1", "--max_steps", "3", "--logging_steps", "1", "--progress", "false"]
ARGS += ["--batch_size", "8"]


def test_kto_2x4_equals_1x8(tmp_path):
    from posttrain.cli import main

    rows = preference_rows(32, seed=2)
    unpaired = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rows]
    unpaired += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in rows]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in unpaired))
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*ARGS, "--train_data", train]
    assert main([str(a) for a in args] + ["--output_dir", str(one)]) == 0
    proc = torchrun(*args, "--gradient_accumulation_steps", "2", "--output_dir", two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_moved(final_weights(two))
    assert_same_weights(final_weights(one), final_weights(two))
    rows_one, rows_two = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two]
    assert rows_one[0] == {**rows_two[0], "time/elapsed_s": rows_one[0]["time/elapsed_s"]}
    for a, b in zip(rows_one[1:], rows_two[1:], strict=True):  # row 0: step 0's counts
        for key in ("train/loss", "rewards/chosen", "rewards/rejected", "objective/kl"):
            assert abs(a[key] - b[key]) < 1e-9 * max(1.0, abs(a[key])), key
