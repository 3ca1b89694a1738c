"""posttrain dpo with a ptx term (``--ptx_data --ptx_coef --ptx_loss``, the ppo recipe's PPO-ptx)
on tiny-llama: the KL term holds the policy near the reference on other text, texts it never saw
included, while DPO still learns the preference; it is zero at the first step (the policy is the
reference); a run killed and resumed gives the same weights; a KL term without a reference model
is refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from posttrain.data import collate, encode_example
from posttrain.models import load_policy
from posttrain.recipes._ptx import kl_sum
from posttrain.training import read_metrics
from posttrain.training.reference import Reference
from tests.helpers_pref import TOPICS, preference_rows

DPO = ["--model", "tiny-llama", "--batch_size", "8", "--learning_rate", "1e-3", "--beta", "0.1"]
NEUTRAL = ["long", "quiet", "short", "loud", "late", "new", "old", "slow", "plain", "odd"]


def _neutral(topics: list[str], n: int, seed: int) -> list[dict[str, str]]:
    """SFT records: a review opening and two neutral words (none of the pairs' words)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(NEUTRAL, 2)
        rows.append({"prompt": f"The {rng.choice(topics)} was", "completion": f" {a} and {b}."})
    return rows


@pytest.fixture
def data(jsonl):
    rows = preference_rows(240, seed=0)
    return {
        "train": jsonl("train.jsonl", rows[:200]),
        "eval": jsonl("eval.jsonl", rows[200:]),
        "ptx": jsonl("ptx.jsonl", _neutral(TOPICS[:6], 64, seed=1)),
    }


def _held_out_kl(final) -> float:
    """KL(reference || policy) per token at held-out neutral replies to the two openings the
    ptx data never had."""
    policy, tok = load_policy(str(final), dtype="float32")
    reference, _ = load_policy("tiny-llama", dtype="float32")
    rows = _neutral(TOPICS[6:], 32, seed=2)
    encoded = [encode_example(tok, r["prompt"], r["completion"], 64) for r in rows]
    batch = collate(encoded, tok.pad_token_id)
    with torch.no_grad():
        total, count = kl_sum(policy, Reference("model", frozen=reference), batch)
    return float(total) / float(count)


def _dpo(cli, data, out, *extra):
    code, _, err = cli(
        "dpo", *DPO, "--train_data", data["train"], "--eval_data", data["eval"],
        "--output_dir", out, "--max_steps", "20", "--logging_steps", "1", "--progress", "false",
        *extra,
    )  # fmt: skip
    assert code == 0, err
    return read_metrics(out / "metrics.jsonl")


def test_kl_term_holds_the_policy_near_the_reference_on_other_text(cli, data, tmp_path):
    plain = _dpo(cli, data, tmp_path / "plain")
    ptx = ["--ptx_data", data["ptx"], "--ptx_coef", "3", "--ptx_loss", "kl"]
    held = _dpo(cli, data, tmp_path / "ptx", *ptx, "--ptx_batch_size", "8")
    # (reference auto: a frozen copy; a precomputed one has no model for the KL term to run)
    # the policy is the reference at the first step's ptx term; after it, it has moved
    assert held[1]["loss/ptx"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["loss/ptx"] > 0 for r in held[2:]), [r["loss/ptx"] for r in held]
    kl_plain, kl_ptx = (
        _held_out_kl(tmp_path / "plain" / "final"),
        _held_out_kl(tmp_path / "ptx" / "final"),
    )
    # (measured: 0.0050 against 0.0142 nats per token; coefficient 1 gave 0.0069)
    assert kl_ptx < 0.5 * kl_plain, {"plain": kl_plain, "ptx": kl_ptx}
    # and DPO still learned the preference
    assert plain[-1]["eval/accuracy"] >= 0.9 and held[-1]["eval/accuracy"] >= 0.9, (plain, held)


def _ptx_nll(final, path) -> float:
    """NLL per response token of the ptx data under ``final``."""
    from posttrain.recipes.sft import evaluate_loss

    model, tok = load_policy(str(final), dtype="float32")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    encoded = [encode_example(tok, r["prompt"], r["completion"], 64) for r in rows]
    return evaluate_loss(model, encoded, tok.pad_token_id, batch_size=16)


def test_nll_term_fits_its_texts(cli, data, tmp_path):
    """--ptx_loss nll: the ptx data are fitted (as PPO-ptx's NLL term), far below what DPO alone
    leaves them at."""
    _dpo(cli, data, tmp_path / "plain")
    ptx = ["--ptx_data", data["ptx"], "--ptx_coef", "1", "--ptx_loss", "nll"]
    rows = _dpo(cli, data, tmp_path / "nll", *ptx, "--ptx_batch_size", "8")
    plain = _ptx_nll(tmp_path / "plain" / "final", data["ptx"])
    fitted = _ptx_nll(tmp_path / "nll" / "final", data["ptx"])
    assert fitted < plain - 1.0 and rows[-1]["loss/ptx"] < rows[1]["loss/ptx"], (plain, fitted)


def test_resume_with_ptx_is_bit_identical(cli, data, tmp_path):
    from safetensors.torch import load_file

    args = ["--ptx_data", data["ptx"], "--ptx_coef", "1", "--ptx_loss", "kl", "--save_steps", "3"]
    args += ["--lr_schedule", "constant"]  # a shorter first run then has the same schedule
    args += ["--ptx_batch_size", "3"]  # 64 rows: the ptx order wraps into a second epoch
    straight = tmp_path / "straight"
    _dpo(cli, data, straight, *args)
    part = tmp_path / "part"
    code, _, err = cli(
        "dpo", *DPO, "--train_data", data["train"], "--output_dir", part, "--max_steps", "9",
        "--progress", "false", *args,
    )  # fmt: skip
    assert code == 0, err
    resumed = _dpo(cli, data, part, *args, "--resume")
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(part / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed[-1]["loss/ptx"] == read_metrics(straight / "metrics.jsonl")[-1]["loss/ptx"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ptx_coef", "1"], "--ptx_data: is required with ptx_coef"),
        (["--ptx_coef", "-1", "--ptx_data", "P"], "--ptx_coef: must be >= 0"),
        (["--ptx_coef", "1", "--ptx_data", "P", "--ptx_loss", "mse"], "--ptx_loss: must be"),
        (
            [
                "--ptx_coef",
                "1",
                "--ptx_data",
                "P",
                "--ptx_loss",
                "kl",
                "--reference",
                "precomputed",
            ],
            "--ptx_loss: kl runs the reference model: not with reference precomputed",
        ),
        (["--ptx_coef", "1", "--ptx_data", "BAD"], "bad.jsonl:2:"),
    ],
)
def test_bad_ptx_settings_exit_2_nothing_written(cli, data, jsonl, tmp_path, extra, message):
    bad = jsonl("bad.jsonl", [{"text": "fine"}, "{not json"])
    extra = [data["ptx"] if a == "P" else bad if a == "BAD" else a for a in extra]
    out = tmp_path / "out"
    code, _, err = cli("dpo", *DPO, "--train_data", data["train"], "--output_dir", out, *extra)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
