"""``posttrain eval`` through the CLI on tiny models: keys of eval.json, the report, bad input."""

import json

import pytest
import torch

from posttrain.models import save_pretrained
from posttrain.models.tiny import build_tiny_llama, build_tokenizer


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two tiny llamas with the same tokenizer and different weights, as HF dirs."""
    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer()
    for name, seed in (("ref", 1), ("pol", 2)):
        save_pretrained(build_tiny_llama(tok, seed=seed), tok, root / name)
    return root / "pol", root / "ref"


def test_policy_mode_writes_eval_json_and_report(cli, jsonl, tmp_path, two_models):
    pol, ref = two_models
    prompts = jsonl("p.jsonl", [{"prompt": f"The film number {i} was"} for i in range(12)])
    out = tmp_path / "ev"
    code, _, err = cli(
        "eval", "--model", pol, "--reference", ref, "--prompts", prompts,
        "--judge", "task:sentiment", "--max_new_tokens", "6", "--n_shown", "3",
        "--output_dir", out,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "eval.json").read_text())
    for key in ("win_rate", "win_rate_ci", "lc_win_rate", "kl_k1", "kl_k3", "kl_k1_se",
                "gold_reward", "length_mean", "distinct_1", "distinct_2", "entropy",
                "reference_gold_reward"):  # fmt: skip
        assert key in res, key
    assert res["proxy_reward"] is None
    # the same prompts: the mean of the paired differences is the difference of the means
    assert res["gold_gain"] == pytest.approx(res["gold_reward"] - res["reference_gold_reward"])
    assert res["gold_gain_se"] > 0
    assert (
        0 <= res["win_rate"] <= 1
        and res["win_rate_ci"][0] <= res["win_rate"] <= res["win_rate_ci"][1]
    )
    assert res["kl_k3"] > 0 and res["n_prompts"] == 12
    html = (out / "report.html").read_text()
    assert "Sample completions" in html and "The film number 0 was" in html
    assert (out / "report.md").exists() and (out / "samples.jsonl").exists()


def test_policy_against_itself_has_zero_kl(cli, jsonl, tmp_path, two_models):
    _, ref = two_models
    prompts = jsonl("p.jsonl", [{"prompt": "It was"}] * 4)
    out = tmp_path / "ev"
    code, _, err = cli(
        "eval", "--model", ref, "--reference", ref, "--prompts", prompts,
        "--judge", "task:sentiment", "--max_new_tokens", "4", "--capability", "false",
        "--output_dir", out,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "eval.json").read_text())
    assert res["kl_k1"] == 0.0 and res["kl_k3"] == 0.0
    assert res["win_rate"] == 0.5  # same seed, same model: identical samples, all ties


def test_opponent_file_of_responses(cli, jsonl, tmp_path, two_models):
    pol, _ = two_models
    opp = jsonl("o.jsonl", [{"prompt": "It was", "completion": " terrible and awful."}] * 5)
    out = tmp_path / "ev"
    code, _, err = cli(
        "eval", "--model", pol, "--opponent", opp, "--judge", "task:sentiment",
        "--max_new_tokens", "4", "--capability", "false", "--output_dir", out,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "eval.json").read_text())
    assert res["n_prompts"] == 5 and "kl_k1" not in res
    assert res["opponent_gold_reward"] < -0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference", "tiny-llama", "--task", "sentiment"], "--model"),
        (["--model", "tiny-llama", "--task", "sentiment"], "--reference"),
        (["--model", "nope/dir", "--reference", "tiny-llama", "--task", "sentiment"], "nope/dir"),
        (["--model", "tiny-llama", "--reference", "tiny-llama"], "--prompts"),
        (["--model", "tiny-llama", "--reference", "tiny-llama", "--task", "x"], "unknown task"),
        (
            [
                "--model",
                "tiny-llama",
                "--reference",
                "tiny-llama",
                "--task",
                "sentiment",
                "--judge",
                "bogus",
            ],
            "--judge",
        ),  # fmt: skip
        (
            [
                "--mode",
                "frontier",
                "--models",
                "nothing/*",
                "--reference",
                "tiny-llama",
                "--task",
                "sentiment",
            ],
            "matches nothing",
        ),  # fmt: skip
    ],
)
def test_bad_input_exit_2_nothing_written(cli, tmp_path, args, message):
    out = tmp_path / "ev"
    code, _, err = cli("eval", *args, "--output_dir", out)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_choice_data(cli, jsonl, tmp_path):
    bad = jsonl("c.jsonl", [{"prompt": "a", "choices": ["x", "y"], "answer": 0}, {"prompt": "b"}])
    out = tmp_path / "ev"
    code, _, err = cli(
        "eval", "--model", "tiny-llama", "--reference", "tiny-llama", "--task", "sentiment",
        "--choice_data", bad, "--output_dir", out,
    )  # fmt: skip
    assert code == 2 and "c.jsonl:2:" in err and not out.exists()


def test_proxy_reward_model_computes_in_the_eval_dtype(tmp_path):
    """The proxy reward model (and a reward model named as the judge) load in --dtype, as the
    online recipes score theirs; in bfloat16 its scores stay within bfloat16 rounding."""
    from posttrain.evaluation.policy import load_sources
    from posttrain.models.load import load_model
    from posttrain.models.reward import RewardModel

    tok = build_tokenizer()
    rm = RewardModel(load_model("tiny-llama", tokenizer=tok), tok)
    torch.nn.init.normal_(rm.head.linear.weight, generator=torch.Generator().manual_seed(0))
    rm.save(tmp_path / "rm")  # a head that is not zero: scores that differ by precision
    rm_dir = str(tmp_path / "rm")
    prompts, texts = ["The film was"] * 3, [" good", " bad and long", " fine"]
    scores = {}
    for dtype in ("float32", "bfloat16"):
        src = load_sources(None, rm_dir, None, rm_dir, seed=0, dtype=dtype)
        assert next(src.proxy.__self__.parameters()).dtype == getattr(torch, dtype)
        scores[dtype] = src.proxy(prompts, texts)
        assert src.judge(prompts, texts) == scores[dtype]
    assert scores["bfloat16"] != scores["float32"]
    assert scores["bfloat16"] == pytest.approx(scores["float32"], rel=0.1)
