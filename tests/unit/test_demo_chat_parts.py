"""The SmolLM2 chat demo's pure parts: the factual-answer checker and its shipped questions,
the best-vs-worst pairing, and the report's headline against the targets (empty replies, lost
answers)."""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.data import read_records
from posttrain.recipes.demo_chat import (
    ASSETS,
    FULL,
    _evaluated,
    answer_correct,
    chat_prompts,
    empty_replies,
    extreme_pairs,
    headline,
    load_factual_qa,
)


def test_factual_answers_are_whole_words_and_shipped_set_is_sane():
    assert answer_correct("The capital of France is Paris.", ["paris"])
    assert answer_correct("Water boils at 100 °C.", ["100"])
    assert not answer_correct("It boils at 1000 degrees.", ["100"])
    assert not answer_correct("There are 7,982,304 of them.", ["7"])  # a PPO answer, seen
    assert not answer_correct("About 2.5 of them, or 1,7.", ["2", "7"])
    assert answer_correct("There are 7, or seven.", ["7"]) and answer_correct("Yes: 7.", ["7"])
    assert not answer_correct("Comparison is hard.", ["paris"])
    qa = load_factual_qa()
    assert len(qa) >= 20 and all(q["question"].endswith("?") and q["answers"] for q in qa)
    assert chat_prompts(["The film"]) == ["Continue this movie review: The film"]


def test_ptx_chat_requests_are_distinct_and_never_a_factual_check():
    prompts = [r.data["prompt"] for r in read_records(ASSETS / "chat_prompts.jsonl")]
    assert len(prompts) >= FULL.ptx_prompts and len(set(prompts)) == len(prompts)
    questions = {q["question"].lower() for q in load_factual_qa()}
    assert not questions & {p.lower() for p in prompts}


def test_extreme_pairs_take_the_best_and_worst_reply_by_gold():
    replies = [["a", "b", "c", "d"], ["e", "f"]]
    gold = [[0.1, 0.9, -0.5, 0.3], [0.2, 0.2]]
    pairs, gold_pairs = extreme_pairs(replies, gold)
    assert pairs == [["b", "c"], ["e", "e"]]  # equal gold: one reply twice, a tie to drop
    assert gold_pairs == [(0.9, -0.5), (0.2, 0.2)]


def test_headline_counts_empty_replies_and_lost_answers(tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [
        {"prompt": "p1", "reference": "fine", "ppo@30": "  ", "dpo@54": "good"},
        {"prompt": "p2", "reference": "ok", "ppo@30": "great", "dpo@54": ""},
        {"prompt": "p3", "reference": "", "ppo@30": "nice", "dpo@54": "lovely"},
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    empty = empty_replies(samples)
    assert empty == {"reference": (1, 3), "ppo": (1, 3), "dpo": (1, 3)}
    ref = {"gold_reward": 0.2, "gold_reward_se": 0.01, "distinct_2": 0.9}
    point = {"gold_reward": 0.6, "gold_reward_se": 0.02, "kl_k3": 4.0, "distinct_2": 0.81}
    cap = {
        "base": {"correct": [True, True, False], "nll": 3.0},
        "ppo": {"correct": [False, True, True], "nll": 3.1},
    }
    base_line, ppo_line = headline(ref, {"ppo": point}, cap, {**empty, "ppo": (0, 3)})
    assert "empty replies 1/3" in base_line and "right 2/3" in base_line
    assert "(+0.400 over base;" in ppo_line and "base x 0.90" in ppo_line  # an older eval.json
    paired = {**point, "gold_gain": 0.41, "gold_gain_se": 0.05}  # the paired gain, when stored
    assert "(+0.410 ± 0.050 over base;" in headline(ref, {"ppo": paired}, cap, empty)[1]
    assert "empty replies 0/3 (target 0)" in ppo_line and "answers lost 1 " in ppo_line


def test_eval_reruns_when_it_lacks_a_system_and_rloo_needs_model(tmp_path):
    """``--resume --rloo true`` on a finished run without RLOO: its eval has no RLOO point, so
    the evaluation runs again; ``--rloo`` alone (the tiny-llama demo) is refused."""
    (tmp_path / "eval").mkdir()
    points = [
        {"name": "ppo", "model": str(tmp_path / "ppo" / "final"), "step": 30},
        {"name": "dpo", "model": str(tmp_path / "dpo" / "final"), "step": 54},
    ]
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"points": points}))
    assert _evaluated(tmp_path, ["ppo", "dpo"])
    assert not _evaluated(tmp_path, ["ppo", "dpo", "rloo"])
    assert not _evaluated(tmp_path / "nowhere", ["ppo"])
    out = tmp_path / "d"
    assert main(["demo", "--rloo", "true", "--output_dir", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "bad"),
    [
        ("--ppo_kl_target", "0"),
        ("--ppo_reward_clip", "0"),
        ("--ppo_ptx_coef", "-1"),
        ("--ppo_lam", "1.5"),
        ("--dpo_ptx_coef", "-1"),
    ],
)
def test_ppo_options_need_the_chat_model_and_a_valid_value(tmp_path, capsys, flag, bad):
    out = tmp_path / "d"
    for argv in ([flag, "4"], ["--model", "smollm2-135m-instruct", flag, bad]):
        assert main(["demo", *argv, "--output_dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err, err
        assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [["--ppo_ptx_loss", "kl"], ["--ppo_ptx_loss", "mse", "--model", "smollm2-135m-instruct"]],
)
def test_ppo_ptx_loss_needs_the_chat_model_and_a_known_term(tmp_path, capsys, argv):
    out = tmp_path / "d"
    assert main(["demo", *argv, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ppo_ptx_loss" in err, err
    assert not out.exists()


def test_ppo_missing_eos_penalty_needs_the_chat_model(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo", "--ppo_missing_eos_penalty", "-1", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ppo_missing_eos_penalty" in err, err
    assert not out.exists()
