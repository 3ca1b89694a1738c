"""posttrain rm: how a batch is split changes memory, not results. Gradient accumulation 4 x 2
pairs == 1 x 8 pairs, and under ``torchrun --nproc_per_node 2`` (DDP, gloo on CPU) 2 processes x
4 pairs == 1 process x 8 pairs: the same trunk, head and saved reward statistics (float64), with
DDP and with FSDP, and with FSDP over a LoRA trunk (saved merged)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from posttrain.training import read_metrics
from tests.helpers_pref import preference_rows
from tests.invariance.helpers_distributed import assert_moved, assert_same_weights, torchrun

ARGS = ["--model", "tiny-llama", "--dtype", "float64", "--learning_rate", "1e-3"]
ARGS += ["--max_steps", "3", "--logging_steps", "1", "--progress", "false", "--batch_size", "8"]


def _final(out):
    f = out / "final"  # a sequence classifier: the trunk's body as model.*, the head as score.*
    weights = load_file(str(f / "model.safetensors"))
    return weights, json.loads((f / "reward_config.json").read_text())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from posttrain.cli import main

    d = tmp_path_factory.mktemp("rm_split")
    rows = [{**r, "margin": 0.5 * (i % 3)} for i, r in enumerate(preference_rows(48, seed=2))]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = str(d / "train.jsonl")
    extra = ["--train_data", train, "--center_rewards_coef", "0.01"]
    assert main(["rm", *ARGS, *extra, "--output_dir", str(d / "single")]) == 0
    return d, extra


def test_gradient_accumulation_changes_nothing(setup):
    from posttrain.cli import main

    d, extra = setup
    out = d / "accum"
    assert (
        main(["rm", *ARGS, *extra, "--output_dir", str(out), "--gradient_accumulation_steps", "4"])
        == 0
    )
    (w1, meta1), (w2, meta2) = _final(d / "single"), _final(out)
    assert_same_weights(w1, w2, atol=1e-10)
    assert meta1["mean"] == pytest.approx(meta2["mean"], abs=1e-10)
    assert meta1["std"] == pytest.approx(meta2["std"], abs=1e-10)


def test_ddp_2x4_equals_1x8(setup):
    d, extra = setup
    out = d / "ddp"
    proc = torchrun("rm", *ARGS, *extra, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (w1, meta1), (w2, meta2) = _final(d / "single"), _final(out)
    assert w1["score.weight"].abs().max() > 0  # the head (the classifier's score) moved
    assert_same_weights(w1, w2)
    assert meta1["mean"] == pytest.approx(meta2["mean"], abs=1e-6)
    assert meta1["std"] == pytest.approx(meta2["std"], abs=1e-6)
    one, two = read_metrics(d / "single" / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in two] == [0, 1, 2, 3]
    for a, b in zip(one[1:], two[1:]):
        for key in ("train/loss", "rewards/accuracies", "rewards/margins", "train/grad_norm"):
            assert abs(a[key] - b[key]) < 1e-9, key
    assert proc.stdout.count("saved ") == 1  # rank 0 speaks


def test_fsdp_2x4_equals_1x8(setup):
    """FSDP: the trunk's layers and the head sharded over 2 processes (float64); the final
    directory, saved from the gathered weights, holds the one-process model."""
    d, extra = setup
    proc = torchrun("rm", *ARGS, *extra, "--distributed", "fsdp", "--output_dir", d / "fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (w1, meta1), (w2, meta2) = _final(d / "single"), _final(d / "fsdp")
    assert_same_weights(w1, w2)
    assert meta1["mean"] == pytest.approx(meta2["mean"], abs=1e-6)
    assert meta1["std"] == pytest.approx(meta2["std"], abs=1e-6)
    assert proc.stdout.count("saved ") == 1  # rank 0 speaks


def test_fsdp_with_lora_2x4_equals_1x8(setup):
    """LoRA adapters on the sharded trunk: the final directory (adapters merged into the gathered
    base weights) holds the one-process LoRA model's, and the adapters moved the weights."""
    from posttrain.cli import main

    d, extra = setup
    lora = ["--lora.enabled", "true", "--lora.r", "4"]
    assert main(["rm", *ARGS, *extra, *lora, "--output_dir", str(d / "lora")]) == 0
    proc = torchrun(
        "rm", *ARGS, *extra, *lora, "--distributed", "fsdp", "--output_dir", d / "fsdp-lora"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (w1, meta1), (w2, meta2) = _final(d / "lora"), _final(d / "fsdp-lora")
    assert_same_weights(w1, w2)
    assert meta1["mean"] == pytest.approx(meta2["mean"], abs=1e-6)
    assert meta1["std"] == pytest.approx(meta2["std"], abs=1e-6)
    assert_moved({k: v for k, v in w2.items() if not k.startswith("score.")})  # merged adapters
