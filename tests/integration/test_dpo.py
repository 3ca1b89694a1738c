"""posttrain dpo on tiny-llama: the implicit reward learns the preference; every loss type and
reference mode trains; accumulation and resume change nothing; bad input is refused."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.training import read_metrics
from tests.helpers_pref import preference_rows

BASE = [
    "--model",
    "tiny-llama",
    "--batch_size",
    "8",
    "--learning_rate",
    "1e-3",
    "--progress",
    "false",
]
DPO = [*BASE, "--beta", "0.1"]


@pytest.fixture
def pairs(jsonl):
    rows = preference_rows(240, seed=0)
    return jsonl("train.jsonl", rows[:200]), jsonl("eval.jsonl", rows[200:])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "final" / "model.safetensors"))


def test_dpo_learns_the_preference_on_held_out_pairs(cli, pairs, tmp_path):
    train, held = pairs
    out = tmp_path / "dpo"
    code, _, err = cli(
        "dpo",
        *DPO,
        "--train_data",
        train,
        "--eval_data",
        held,
        "--output_dir",
        out,
        "--max_steps",
        "40",
        "--logging_steps",
        "10",
    )
    assert code == 0, err
    rows = read_metrics(out / "metrics.jsonl")
    # policy == reference: every pair's implicit reward margin is 0 (to float rounding: the
    # reference log-probs come from other batches, whose GEMMs may round differently), loss log 2
    assert rows[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[-1]["eval/accuracy"] >= 0.9
    first, last = rows[1], rows[-1]
    assert (
        last["logps/chosen"] - last["logps/rejected"]
        > first["logps/chosen"] - first["logps/rejected"] + 5
    )
    assert last["rewards/margins"] > 1.0
    from posttrain.evaluation.implicit_reward import implicit_reward_accuracy

    res = implicit_reward_accuracy(str(out / "final"), "tiny-llama", held, beta=0.1)
    assert res["accuracy"] >= 0.9 and res["margin_mean"] > 0 and res["pairs"] == 40


@pytest.mark.parametrize(
    "extra",
    [
        ["--loss_type", "ipo"],
        ["--loss_type", "hinge"],
        ["--loss_type", "robust", "--label_smoothing", "0.1"],
        ["--loss_type", "sigmoid", "--label_smoothing", "0.1"],
        ["--rpo_alpha", "1.0"],
        ["--loss_type", "simpo", "--beta", "2.0"],  # the later --beta wins
        ["--loss_type", "orpo"],
        ["--loss_type", "unlikelihood"],
        ["--reference", "none"],
        ["--reference", "model"],  # the default is precomputed
        ["--lora.enabled", "--lora.r", "8", "--learning_rate", "1e-2"],
    ],
    ids=lambda e: "-".join(a.lstrip("-") for a in e),
)
def test_every_objective_and_reference_mode_separates_the_pairs(cli, pairs, tmp_path, extra):
    train, held = pairs
    out = tmp_path / "run"
    code, _, err = cli(
        "dpo",
        *DPO,
        "--train_data",
        train,
        "--eval_data",
        held,
        "--output_dir",
        out,
        "--max_steps",
        "15",
        "--logging_steps",
        "1",
        *extra,
    )
    assert code == 0, err
    rows = read_metrics(out / "metrics.jsonl")

    def margin(row):
        return row["logps/chosen"] - row["logps/rejected"]

    assert margin(rows[-1]) > margin(rows[1]) + 1  # rows[1]: after the first step
    assert rows[-1]["eval/accuracy"] >= 0.9


@pytest.mark.parametrize("reference", ["model", "precomputed"])
def test_kill_minus_9_then_resume_is_bit_identical(cli, pairs, tmp_path, reference):
    train, _ = pairs
    args = [
        *DPO,
        "--train_data",
        train,
        "--max_steps",
        "20",
        "--save_steps",
        "5",
        "--reference",
        reference,
    ]
    assert cli("dpo", *args, "--output_dir", tmp_path / "straight")[0] == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "posttrain.cli",
            "dpo",
            *map(str, args),
            "--output_dir",
            str(killed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parents[2],
    )
    deadline = time.time() + 120
    while not list(killed.glob("checkpoint-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run ended before it could be killed"
    if reference == "precomputed":  # the cache of the killed run is reused, not recomputed
        cache = killed / "reference_logps.pt"
        assert cache.exists()
        written = cache.stat().st_mtime_ns
    code, _, err = cli("dpo", *args, "--output_dir", killed, "--resume")
    assert code == 0, err
    if reference == "precomputed":
        assert cache.stat().st_mtime_ns == written
        torch.testing.assert_close(  # NaN: rows of pairs the run does not visit
            torch.load(cache)["train"],
            torch.load(tmp_path / "straight" / "reference_logps.pt")["train"],
            rtol=0,
            atol=0,
            equal_nan=True,
        )
    a, b = _weights(tmp_path / "straight"), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}],
            [],
            'train.jsonl:2: "rejected" is missing',
        ),
        ([{"prompt": "p", "completion": "c"}], [], "--train_data must be preference"),
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "x"}],
            [],
            '"margin" must be a number',
        ),
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}], ["--beta", "0"], "--beta: must be > 0"),
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b"}],
            ["--reference", "lora"],
            "--reference: lora needs --lora.enabled",
        ),
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b"}],
            ["--loss_type", "ipo", "--label_smoothing", "0.1"],
            "--label_smoothing: has no meaning",
        ),
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b"}],
            ["--loss_type", "simpo", "--reference", "precomputed"],
            "--reference: loss_type simpo uses no reference model",
        ),
        (
            [{"prompt": "p", "chosen": "a", "rejected": "b"}],
            ["--loss_type", "orpo", "--rpo_alpha", "1"],
            "--rpo_alpha: adds to a DPO loss",
        ),
        (["{not json"], [], "train.jsonl:1:"),
    ],
)
def test_bad_input_exit_2_nothing_written(cli, jsonl, tmp_path, rows, extra, message):
    out = tmp_path / "out"
    code, _, err = cli(
        "dpo", *DPO, "--train_data", jsonl("train.jsonl", rows), "--output_dir", out, *extra
    )
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_ranked_data_trains_on_implied_pairs(cli, jsonl, tmp_path):
    rows = [
        {
            "prompt": "The film was",
            "completions": [" awful.", " great.", " fine."],
            "ranking": "B > C > A",
        }
    ] * 8
    out = tmp_path / "r"
    code, _, err = cli(
        "dpo",
        *DPO,
        "--train_data",
        jsonl("r.jsonl", rows),
        "--output_dir",
        out,
        "--max_steps",
        "2",
    )
    assert code == 0, err
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_beta_is_required_where_the_loss_uses_it(cli, jsonl, tmp_path):
    data = jsonl("t.jsonl", preference_rows(8))
    code, _, err = cli("dpo", *BASE, "--train_data", data, "--output_dir", tmp_path / "a")
    assert code == 2 and "--beta is required for loss_type sigmoid" in err
    assert not (tmp_path / "a").exists()
    args = [*BASE, "--train_data", data, "--max_steps", "1", "--loss_type", "orpo"]
    assert cli("dpo", *args, "--output_dir", tmp_path / "b")[0] == 0  # orpo has no beta


def test_kto_learns_from_unpaired_labels(cli, jsonl, tmp_path):
    """Unpaired halves of the synthetic pairs: desirable (positive) and undesirable (negative)
    responses; after KTO the implicit reward prefers held-out positive over negative responses."""
    rows = preference_rows(200, seed=3)
    unpaired = [
        {"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rows[:100]
    ]
    unpaired += [
        {"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in rows[100:]
    ]
    held = jsonl("h.jsonl", preference_rows(40, seed=4))
    out = tmp_path / "kto"
    code, _, err = cli(
        "kto",
        *BASE,
        "--beta",
        "0.1",
        "--train_data",
        jsonl("u.jsonl", unpaired),
        "--eval_data",
        held,
        "--output_dir",
        out,
        "--max_steps",
        "30",
        "--logging_steps",
        "10",
    )
    assert code == 0, err
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[0]["eval/accuracy"] == 0.5  # policy == reference
    assert metrics[-1]["eval/accuracy"] >= 0.9
    assert metrics[-1]["rewards/chosen"] > metrics[-1]["rewards/rejected"]
    from posttrain.evaluation.implicit_reward import implicit_reward_accuracy

    res = implicit_reward_accuracy(str(out / "final"), "tiny-llama", held, beta=0.1)
    assert abs(res["accuracy"] - metrics[-1]["eval/accuracy"]) <= 1 / 40  # the same measure


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([{"prompt": "p", "completion": "c", "label": "yes"}], [], '"label" must be true or false'),
        ([{"prompt": "p", "completion": "c"}], [], "--train_data must be unpaired"),
        (
            [{"prompt": "p", "completion": "c", "label": True}],
            ["--batch_size", "1"],
            "--batch_size",
        ),
        (
            [{"prompt": "p", "completion": "c", "label": True}],
            ["--beta", "-1"],  # the later --beta wins
            "--beta: must be > 0",
        ),
    ],
)
def test_kto_bad_input_exit_2(cli, jsonl, tmp_path, rows, extra, message):
    out = tmp_path / "bad"
    code, _, err = cli(
        "kto",
        *BASE,
        "--beta",
        "0.1",
        "--train_data",
        jsonl("bad.jsonl", rows),
        "--output_dir",
        out,
        *extra,
    )
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
