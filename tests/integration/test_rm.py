"""posttrain rm on tiny-llama: held-out accuracy rises from 50% to >= 90%; data kinds; multi-head;
save/load; scoring by text; evaluation; training-set statistics; exact resume; bad input."""

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

from posttrain.evaluation.reward_model import evaluate_reward_model
from posttrain.models.reward import load_reward_model
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One RM trained on the synthetic separable pairs (shared by several tests)."""
    from posttrain.cli import main

    d = tmp_path_factory.mktemp("rm")
    rows = preference_rows(240, seed=0)
    for i, r in enumerate(rows):
        r["subset"] = "movies" if i % 2 else "music"
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:200]))
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[200:]))
    code = main(
        [
            "rm",
            *BASE,
            "--train_data",
            str(d / "train.jsonl"),
            "--eval_data",
            str(d / "eval.jsonl"),
            "--output_dir",
            str(d / "out"),
            "--max_steps",
            "30",
            "--logging_steps",
            "10",
        ]
    )
    assert code == 0
    return d


def test_held_out_accuracy_rises_from_chance_to_90_percent(trained):
    rows = read_metrics(trained / "out" / "metrics.jsonl")
    # measured by the recipe on the 40 held-out pairs before the first step and after the last
    before, after = rows[0]["eval/accuracy"], rows[-1]["eval/accuracy"]
    print(f"held-out accuracy before {before:.3f}, after {after:.3f}")
    assert before == 0.5  # untrained head: every reward 0, every pair a tie (counted half)
    assert after >= 0.9
    assert rows[-1]["rewards/margins"] > 1 and rows[-1]["train/loss"] < rows[1]["train/loss"]


def test_saved_model_scores_text_and_evaluates(trained):
    rm = load_reward_model(trained / "out" / "final")
    assert (
        rm.score(["The film was"], [" great and lovely."])[0]
        > rm.score(["The film was"], [" awful and sad."])[0]
    )
    res = evaluate_reward_model(
        str(trained / "out" / "final"),
        str(trained / "eval.jsonl"),
        sections={"all": ["movies", "music"]},
    )
    assert res["accuracy"] >= 0.9 and res["pairs"] == 40
    assert set(res) >= {
        "accuracy/movies",
        "accuracy/music",
        "section/all",
        "ece",
        "length_bias/rm_prefers_longer",
        "length_bias/data_chosen_longer",
        "length_bias/reward_length_corr",
    }
    assert res["section/all"] == pytest.approx((res["accuracy/movies"] + res["accuracy/music"]) / 2)


def test_training_set_statistics_are_saved_for_whitening(trained):
    # mean / std of the served reward over the DISTINCT responses of the training pairs
    rm = load_reward_model(trained / "out" / "final")
    rows = [json.loads(line) for line in (trained / "train.jsonl").read_text().splitlines()]
    distinct = sorted({(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")})
    r = torch.tensor(rm.score([p for p, _ in distinct], [t for _, t in distinct]))
    assert rm.mean == pytest.approx(float(r.mean()), abs=1e-4)
    assert rm.std == pytest.approx(float(r.std()), rel=1e-4)
    saved = json.loads((trained / "out" / "final" / "reward_config.json").read_text())
    assert (saved["mean"], saved["std"]) == (rm.mean, rm.std)
    source = rm.as_reward_source(normalize=True)  # what RL recipes call
    white = torch.tensor(source([p for p, _ in distinct[:5]], [t for _, t in distinct[:5]]))
    torch.testing.assert_close(white, (r[:5] - rm.mean) / rm.std)


def test_round_trip_gives_identical_scores(trained, tmp_path):
    rm = load_reward_model(trained / "out" / "final")
    rm.save(tmp_path / "copy")
    again = load_reward_model(tmp_path / "copy")
    prompts, texts = ["The film was"] * 2, [" great and lovely.", " awful and sad."]
    assert rm.score(prompts, texts) == again.score(prompts, texts)


def test_training_continues_from_a_saved_reward_model(trained, cli, tmp_path):
    # --model may name a reward model: its head comes along (accuracy is high at step 0)
    out = tmp_path / "more"
    code, _, err = cli(
        "rm",
        *BASE,
        "--model",
        trained / "out" / "final",
        "--train_data",
        trained / "train.jsonl",
        "--eval_data",
        trained / "eval.jsonl",
        "--output_dir",
        out,
        "--max_steps",
        "2",
    )
    assert code == 0, err
    assert read_metrics(out / "metrics.jsonl")[0]["eval/accuracy"] >= 0.9


def test_multi_head_trains_each_aspect_and_serves_weighted_sum(cli, jsonl, tmp_path):
    # helpfulness follows the positive words; harmlessness follows a "please" prefix
    rows = []
    for r in preference_rows(60, seed=5):
        rows.append(
            {
                "prompt": r["prompt"],
                "completions": [r["chosen"], " please" + r["rejected"]],
                "scores": [{"help": 2, "harm": 0}, {"help": 0, "harm": 2}],
            }
        )
    out = tmp_path / "multi"
    code, _, err = cli(
        "rm",
        *BASE,
        "--train_data",
        jsonl("s.jsonl", rows),
        "--output_dir",
        out,
        "--max_steps",
        "30",
        "--heads",
        "help,harm",
        "--head_weights",
        "{help: 1.0, harm: 0.5}",
    )
    assert code == 0, err
    rm = load_reward_model(out / "final")
    from posttrain.data import collate, encode_example

    enc = [
        encode_example(rm.tokenizer, "The plot was", c, 64)
        for c in (" lovely and great.", " please awful and poor.")
    ]
    b = collate(enc, rm.tokenizer.pad_token_id)
    with torch.no_grad():
        per_head = rm(b["input_ids"], b["attention_mask"])  # (2, 2)
        served = rm.reward(b["input_ids"], b["attention_mask"])
    assert per_head[0, 0] > per_head[1, 0]  # help head prefers the positive answer
    assert per_head[1, 1] > per_head[0, 1]  # harm head prefers the "please" answer
    torch.testing.assert_close(served, per_head[:, 0] * 1.0 + per_head[:, 1] * 0.5)


RANKED = {"prompt": "p", "completions": ["a", "b", "c"], "ranking": "C > A = B"}
SCORED = {"prompt": "p", "completions": ["a", "b"], "scores": [{"help": 1}, {"help": 2}]}
PAIR = {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.5}


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        (
            [RANKED, {**RANKED, "ranking": "A > D"}],
            [],
            "r.jsonl:2: ranking names D but there are only 3 completions",
        ),
        (
            [SCORED, {**SCORED, "scores": [{"help": 1}, {"harm": 2}]}],
            ["--aspect_weights", "{help: 1}"],
            "r.jsonl:2: completion 1 has no score for aspect 'help'",
        ),
        ([PAIR, {**PAIR, "margin": "lots"}], [], 'r.jsonl:2: "margin" must be a number'),
        ([SCORED], [], "r.jsonl:1: scored data needs aspect weights"),
        ([PAIR], ["--heads", "help,harm"], "r.jsonl:1: several heads need scored records"),
        (
            [SCORED],
            ["--heads", "help,harm", "--aspect_weights", "{help: 1}"],
            "--aspect_weights: is for one head",
        ),
        ([SCORED], ["--heads", "help,harm", "--head_weights", "{help: 1}"], "--head_weights:"),
        ([{"prompt": "p", "completion": "c"}], [], "--train_data must be preference"),
    ],
)
def test_bad_input_exit_2_with_file_line(cli, jsonl, tmp_path, rows, extra, message):
    out = tmp_path / "out"
    code, _, err = cli(
        "rm", *BASE, "--train_data", jsonl("r.jsonl", rows), "--output_dir", out, *extra
    )
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_margin_and_centering_enter_the_loss(cli, jsonl, tmp_path):
    # a saved RM whose head is weight 0, bias 2: every reward is exactly 2 at the first step, so
    # the step-1 loss is -log sigmoid(2 - 2 - margin 1) + coef * (2 + 2)^2 = log(1 + e) + 0.16
    # (a head with a bias, as older posttrain RMs had: the bias is kept in reward_config.json)
    from posttrain.models import load_policy
    from posttrain.models.reward import RewardModel

    model, tok = load_policy("tiny-llama")
    biased = RewardModel(model, tok, bias=True)
    with torch.no_grad():
        biased.head.linear.bias.fill_(2.0)
    biased.save(tmp_path / "biased")
    rows = [{**r, "margin": 1.0} for r in preference_rows(40, seed=6)]
    data = jsonl("m.jsonl", rows)
    args = [*BASE, "--train_data", data, "--center_rewards_coef", "0.01"]
    code, _, err = cli(
        "rm",
        *args,
        "--model",
        tmp_path / "biased",
        "--output_dir",
        tmp_path / "one",
        "--max_steps",
        "1",
    )
    assert code == 0, err
    first = read_metrics(tmp_path / "one" / "metrics.jsonl")[-1]
    assert first["rewards/chosen"] == pytest.approx(2.0) == first["rewards/rejected"]
    assert first["train/loss"] == pytest.approx(math.log(1 + math.e) + 0.01 * 16, abs=1e-5)
    # and with both on, a fresh RM still learns the preference
    code, _, err = cli("rm", *args, "--output_dir", tmp_path / "m", "--max_steps", "10")
    assert code == 0, err
    assert read_metrics(tmp_path / "m" / "metrics.jsonl")[-1]["rewards/accuracies"] >= 0.9


def _final(path: Path) -> tuple[dict, dict]:
    f = path / "final"  # the trunk's body and the head (score.weight) in one file
    return (
        load_file(str(f / "model.safetensors")),
        json.loads((f / "reward_config.json").read_text()),
    )


def _same(a, b) -> bool:
    x, y = a[0], b[0]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) and a[1] == b[1]


def test_resume_is_bit_identical(cli, jsonl, tmp_path):
    """Uninterrupted == (stopped at a checkpoint, then --resume) == (kill -9, then --resume)."""
    train = jsonl("train.jsonl", preference_rows(64, seed=3))
    args = [*BASE, "--train_data", train, "--max_steps", "12", "--save_steps", "4"]
    args += ["--save_total_limit", "3", "--logging_steps", "2"]
    assert cli("rm", *args, "--output_dir", tmp_path / "straight")[0] == 0
    straight = _final(tmp_path / "straight")

    # stop at checkpoint-4: the uninterrupted run's directory as it was at step 4
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (stopped / name).write_bytes((tmp_path / "straight" / name).read_bytes())
    subprocess.run(
        ["cp", "-r", str(tmp_path / "straight" / "checkpoint-4"), str(stopped)], check=True
    )
    code, _, err = cli("rm", *args, "--output_dir", stopped, "--resume")
    assert code == 0, err
    assert _same(straight, _final(stopped))
    steps = [r["step"] for r in read_metrics(stopped / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # nothing logged twice

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "posttrain.cli", "rm", *map(str, args), "--output_dir", str(killed)],
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
    code, _, err = cli("rm", *args, "--output_dir", killed, "--resume")
    assert code == 0, err
    assert _same(straight, _final(killed))
