"""posttrain sft end to end on tiny-llama: it learns, resumes exactly, refuses bad input."""

from __future__ import annotations

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
from tests.helpers_sft import addition_rows

BASE = [
    "--model",
    "tiny-llama",
    "--batch_size",
    "8",
    "--learning_rate",
    "3e-3",
    "--progress",
    "false",
]


@pytest.fixture
def data(jsonl):
    rows = addition_rows(200, seed=0)
    return jsonl("train.jsonl", rows[:160]), jsonl("eval.jsonl", rows[160:])


def test_sft_lowers_held_out_loss_and_final_loads(cli, data, tmp_path):
    train, held = data
    out = tmp_path / "run"
    code, _, err = cli(
        "sft",
        *BASE,
        "--train_data",
        train,
        "--eval_data",
        held,
        "--output_dir",
        out,
        "--max_steps",
        "60",
        "--logging_steps",
        "20",
        "--warmup_steps",
        "5",
        "--lr_schedule",
        "cosine",
    )
    assert code == 0, err
    rows = read_metrics(out / "metrics.jsonl")
    before, after = rows[0]["eval/loss"], rows[-1]["eval/loss"]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 60
    assert after < 0.35 * before, (before, after)  # e.g. 6.8 -> ~1.5 nats/token
    for key in ("train/loss", "train/grad_norm", "train/lr", "train/tokens_per_s"):
        assert key in rows[-1]
    assert (out / "config.yaml").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert tok.pad_token_id != tok.eos_token_id and model.config.num_hidden_layers == 2


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "final" / "model.safetensors"))


def test_kill_minus_9_then_resume_is_bit_identical(cli, data, tmp_path):
    train, _ = data
    args = [
        *BASE,
        "--train_data",
        train,
        "--max_steps",
        "300",
        "--save_steps",
        "20",
        "--logging_steps",
        "10",
    ]
    code, _, err = cli("sft", *args, "--output_dir", tmp_path / "straight")
    assert code == 0, err

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "posttrain.cli",
            "sft",
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
    code, _, err = cli("sft", *args, "--output_dir", killed, "--resume")
    assert code == 0, err
    a, b = _weights(tmp_path / "straight"), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # nothing logged twice


def test_gradient_accumulation_and_packing_change_memory_not_results(cli, data, tmp_path):
    train, _ = data
    args = [*BASE, "--train_data", train, "--max_steps", "6", "--dtype", "float64"]
    assert cli("sft", *args, "--output_dir", tmp_path / "a")[0] == 0
    assert (
        cli("sft", *args, "--output_dir", tmp_path / "b", "--gradient_accumulation_steps", "4")[0]
        == 0
    )
    assert (
        cli("sft", *args, "--output_dir", tmp_path / "c", "--packing", "--max_length", "64")[0] == 0
    )
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-10, rtol=0)
        torch.testing.assert_close(a[k], c[k], atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        (
            [{"prompt": "p", "completion": "c"}, {"prompt": "p"}],
            [],
            'train.jsonl:2: "completion" is missing',
        ),
        (
            [{"prompt": "p", "completions": ["a", "b"], "ranking": "A > B"}],
            [],
            "--train_data must be sft",
        ),
        ([], [], "no records"),
        ([{"prompt": "p", "completion": "c"}], ["--model", "gpt2"], "unknown model 'gpt2'"),
        (
            [{"prompt": "p", "completion": "c"}],
            ["--learning_rate", "-1"],
            "--learning_rate: must be > 0",
        ),
        ([{"prompt": "p", "completion": "c"}], ["--max_length", "0"], "--max_length: must be >= 1"),
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(cli, jsonl, tmp_path, rows, extra, message):
    train = jsonl("train.jsonl", rows)
    out = tmp_path / "out"
    code, _, err = cli("sft", *BASE, "--train_data", train, "--output_dir", out, *extra)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_missing_file_and_non_empty_output_dir(cli, data, tmp_path):
    code, _, err = cli(
        "sft", *BASE, "--train_data", tmp_path / "nope.jsonl", "--output_dir", tmp_path / "o"
    )
    assert code == 2 and "no such file" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    code, _, err = cli("sft", *BASE, "--train_data", data[0], "--output_dir", busy)
    assert code == 2 and "not empty" in err and (busy / "keep.txt").read_text() == "precious"


def test_sample_greedy_is_deterministic_and_n_per_prompt(cli, jsonl, tmp_path):
    prompts = jsonl("p.jsonl", [{"prompt": "What is 2 plus 3?"}, {"prompt": "The movie was"}])
    out1, out2 = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"
    for out in (out1, out2):
        code, _, err = cli(
            "sample",
            "--model",
            "tiny-llama",
            "--prompts",
            prompts,
            "--output",
            out,
            "--n",
            "3",
            "--temperature",
            "0",
            "--max_new_tokens",
            "8",
        )
        assert code == 0, err
    import json

    rows = [json.loads(line) for line in out1.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["What is 2 plus 3?", "The movie was"]
    assert all(
        len(r["completions"]) == 3 and len(set(r["completions"])) == 1 for r in rows
    )  # greedy
    assert out1.read_text() == out2.read_text()
    code, _, _ = cli(
        "sample",
        "--model",
        "tiny-llama",
        "--prompts",
        prompts,
        "--output",
        out1,
        "--n",
        "4",
        "--temperature",
        "1.0",
        "--max_new_tokens",
        "8",
        "--seed",
        "1",
    )
    rows = [json.loads(line) for line in out1.read_text().splitlines()]
    assert all(len(set(r["completions"])) > 1 for r in rows)  # sampled completions differ


def test_truncation_is_counted_and_reported(cli, jsonl, tmp_path):
    rows = [
        {
            "prompt": "What is 2 plus 3?",
            "completion": " 2 plus 3 is 5, and that is the whole answer.",
        }
    ] * 4
    out = tmp_path / "t"
    code, stdout, err = cli(
        "sft",
        *BASE,
        "--train_data",
        jsonl("t.jsonl", rows),
        "--output_dir",
        out,
        "--max_steps",
        "1",
        "--max_length",
        "8",
    )
    assert code == 0, err
    assert "4 of 4 training examples truncated to max_length=8" in stdout
    assert read_metrics(out / "metrics.jsonl")[0]["train/truncated"] == 4


def test_preference_baselines_preferred_ft_and_control_tokens(cli, jsonl, tmp_path):
    """Preferred-FT raises the chosen responses' likelihood over the starting model's; the
    reward-conditioned model prefers chosen-style text more after [GOOD] than after [BAD]."""
    from posttrain.data import load_examples
    from posttrain.data.preference import collate_pairs, encode_pairs
    from posttrain.models import load_model, load_tokenizer, pair_logps
    from posttrain.recipes.sft import BAD, GOOD, with_prefix
    from tests.helpers_pref import preference_rows

    train = jsonl("pref.jsonl", preference_rows(160, seed=1))
    for mode in ("chosen", "control_tokens"):
        code, _, err = cli(
            "sft",
            *BASE,
            "--train_data",
            train,
            "--output_dir",
            tmp_path / mode,
            "--max_steps",
            "40",
            "--preference_data",
            mode,
        )
        assert code == 0, err
    tok = load_tokenizer("tiny-llama")
    held = preference_rows(20, seed=2)

    def margin(model, tag=""):  # log p(chosen) - log p(rejected), per held-out pair
        rows = [{**r, "prompt": with_prefix(r["prompt"], tag)} for r in held]
        pairs, _ = encode_pairs(tok, load_examples(jsonl("h.jsonl", rows), ["preference"]), 64)
        with torch.no_grad():
            lp = pair_logps(model, collate_pairs(pairs, tok.pad_token_id))
        return lp.chosen - lp.rejected

    preferred = load_model(str(tmp_path / "chosen" / "final"))
    assert (margin(preferred) > margin(load_model("tiny-llama"))).float().mean() >= 0.9
    conditioned = load_model(str(tmp_path / "control_tokens" / "final"))
    assert (margin(conditioned, GOOD) > margin(conditioned, BAD)).float().mean() >= 0.9
