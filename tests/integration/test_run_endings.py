"""Runs that end cleanly (issue 22, item 8): every run leaves a checkpoint at its last step, so
``--resume`` with a larger ``--max_steps`` continues exactly (no step twice); a NaN or inf loss
stops the run with a clear message and nothing non-finite is ever saved; a training file that is
not UTF-8 is an error naming its line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.errors import UserError
from posttrain.training import read_metrics
from posttrain.training.checkpoint import list_checkpoints, save_checkpoint
from tests.helpers_pref import preference_rows
from tests.helpers_sft import addition_rows

COMMON = ["--model", "tiny-llama", "--batch_size", "4", "--progress", "false"]
EXACT = ["--lr_schedule", "constant", "--warmup_steps", "0", "--logging_steps", "1"]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("recipe", "rows", "lr"),
    [
        ("sft", lambda: addition_rows(40, seed=1), "3e-3"),
        ("rm", lambda: preference_rows(40), "1e-3"),
    ],
)
def test_resume_with_more_steps_continues_exactly(cli, jsonl, tmp_path, recipe, rows, lr):
    train = jsonl("train.jsonl", rows())
    args = [*COMMON, *EXACT, "--learning_rate", lr, "--train_data", train]
    code, _, err = cli(recipe, *args, "--max_steps", "5", "--output_dir", tmp_path / "straight")
    assert code == 0, err
    short = tmp_path / "short"
    code, _, err = cli(recipe, *args, "--max_steps", "3", "--output_dir", short)
    assert code == 0, err
    assert [p.name for p in list_checkpoints(short)] == ["checkpoint-3"]  # save_steps is 0
    code, _, err = cli(recipe, *args, "--max_steps", "5", "--output_dir", short, "--resume")
    assert code == 0, err
    assert "checkpoint-3 (step 3)" in err
    steps = [r["step"] for r in read_metrics(short / "metrics.jsonl") if r["step"] > 0]
    assert steps == [1, 2, 3, 4, 5]  # none repeated, none missing
    assert _same(_weights(tmp_path / "straight" / "checkpoint-5"), _weights(short / "checkpoint-5"))
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(short / "metrics.jsonl")
    assert [r["train/loss"] for r in straight if r["step"] > 0] == [
        r["train/loss"] for r in resumed if r["step"] > 0
    ]


def _inject(monkeypatch, bad: float, from_call: int):
    """Make sft's loss ``bad`` (nan or inf) from the ``from_call``-th forward on."""
    import posttrain.recipes.sft as sft

    plain, calls = sft.nll_sum, {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        nll, count = plain(model, batch)
        if calls["n"] >= from_call:
            nll = nll * bad if bad != bad else nll + bad  # nan: poisons grads; inf: the value
        return nll, count

    monkeypatch.setattr(sft, "nll_sum", poisoned)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_run_and_nothing_non_finite_is_saved(
    cli, jsonl, tmp_path, monkeypatch, bad
):
    _inject(monkeypatch, bad, from_call=3)
    train = jsonl("train.jsonl", addition_rows(40, seed=2))
    out = tmp_path / "run"
    code, _, err = cli(
        "sft", *COMMON, *EXACT, "--learning_rate", "3e-3", "--train_data", train,
        "--max_steps", "6", "--save_steps", "1", "--output_dir", out,
    )  # fmt: skip
    assert code == 2, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "step 3" in line and "not finite" in line, line
    assert "Traceback" not in err
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert not (out / "final").exists()
    for checkpoint in list_checkpoints(out):
        assert all(torch.isfinite(t).all() for t in _weights(checkpoint).values())


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[1, 2] = float("inf")
    with pytest.raises(UserError, match=r"not finite.*model\.weight"):
        save_checkpoint(tmp_path, 7, modules={"model": model})
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary directory


def test_a_training_file_that_is_not_utf8_names_its_line(cli, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_bytes(
        b'{"prompt": "a", "completion": " b"}\n{"prompt": "caf\xe9", "completion": " c"}\n'
    )
    code, _, err = cli("sft", *COMMON, "--train_data", train, "--output_dir", tmp_path / "o")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: {train}:2: not UTF-8 text")
    assert not (tmp_path / "o").exists()
