"""Position-swap evaluation (``posttrain eval`` judges both orders by default), ``module:function``
pairwise judges, and the reasons (``rationale``) of the generative judge and verifier."""

from __future__ import annotations

import json

import pytest

from posttrain.judges.generative import GenerativeJudge
from posttrain.judges.pairwise import FunctionJudge, load_function_judge, summarize
from posttrain.judges.verifier import select_best
from posttrain.models import load_policy, save_pretrained
from posttrain.models.tiny import build_tiny_llama, build_tokenizer
from tests import judge_stubs


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer()
    for name, seed in (("ref", 1), ("pol", 2)):
        save_pretrained(build_tiny_llama(tok, seed=seed), tok, root / name)
    return root / "pol", root / "ref"


def test_function_judge_swap_cancels_position_bias():
    items = [("q", "short", "a longer one"), ("q", "a longer one", "short")]
    biased = FunctionJudge("always_a", judge_stubs.always_a)
    assert [v.p for v in biased.verdicts(items)] == [1.0, 1.0]  # position decides
    swapped = biased.verdicts(items, swap=True)
    assert [v.p for v in swapped] == [0.5, 0.5]
    assert summarize(swapped)["position_bias_rate"] == 1.0
    fair = FunctionJudge("longer", judge_stubs.prefers_longer, swap=True)
    assert [v.p for v in fair.verdicts(items)] == [0.0, 1.0]
    assert summarize(fair.verdicts(items))["position_bias_rate"] == 0.0


def test_function_judge_specs_are_checked(cli, jsonl, tmp_path):
    assert isinstance(load_function_judge("tests.judge_stubs:always_a"), FunctionJudge)
    data = jsonl("c.jsonl", [{"prompt": "q", "completions": ["a", "bb"]}])
    for spec, message in (
        ("tests.judge_stubs:nope", "--judge: cannot import"),
        ("posttrain.data.formats:strength", "must take (prompts, firsts, seconds)"),
        ("tests.judge_stubs:broken", "returned 2.0"),
    ):
        out = tmp_path / "o.jsonl"
        code, _, err = cli("judge", "--judge", spec, "--input", data, "--output", out)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_judge_command_with_a_position_biased_function_and_swap_writes_ties(cli, jsonl, tmp_path):
    data = jsonl(
        "c.jsonl", [{"prompt": f"q{i}", "completions": ["a", "bb", "c"]} for i in range(3)]
    )
    out = tmp_path / "o.jsonl"
    code, _, err = cli("judge", "--judge", "tests.judge_stubs:always_a", "--input", data,
                       "--output", out)  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9 and all(
        r["p_chosen"] == 1.0 and r["chosen_index"] < r["rejected_index"] for r in rows
    )
    code, _, err = cli("judge", "--judge", "tests.judge_stubs:always_a", "--input", data,
                       "--output", out, "--swap")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["p_chosen"] == 0.5 and r["tie"] and r["swap_agree"] is False for r in rows)
    assert "position_bias_rate=1.000" in err


def run_eval(cli, tmp_path, two_models, jsonl, *extra, judge="tests.judge_stubs:always_a"):
    pol, ref = two_models
    prompts = jsonl("p.jsonl", [{"prompt": f"The film number {i} was"} for i in range(4)])
    out = tmp_path / f"ev{len(extra)}"
    code, _, err = cli(
        "eval", "--model", pol, "--reference", ref, "--prompts", prompts,
        "--judge", judge, "--max_new_tokens", "4",
        "--capability", "false", "--output_dir", out, *extra,
    )  # fmt: skip
    assert code == 0, err
    return json.loads((out / "eval.json").read_text())


def test_eval_judges_both_orders_by_default(cli, jsonl, tmp_path, two_models):
    res = run_eval(cli, tmp_path, two_models, jsonl)
    # a judge that always says A: the policy wins every prompt in position A, loses every one in
    # position B; debiased, 4 ties
    assert res["swap"] is True and res["position_bias_rate"] == 1.0
    assert res["win_rate_policy_first"] == 1.0 and res["win_rate_policy_second"] == 0.0
    assert res["win_rate"] == 0.5 and res["ties"] == 4
    one = run_eval(cli, tmp_path, two_models, jsonl, "--swap", "false")
    assert one["swap"] is False and one["position_bias_rate"] is None
    assert one["win_rate"] == 1.0 and one["wins"] == 4  # the bias decides the win rate
    # a module:function of (prompts, completions) is still a pointwise reward: no swap keys
    pointwise = run_eval(cli, tmp_path, two_models, jsonl, "--n_shown", "1",
                         "--title", "pointwise", judge="tests.helpers_rl:count_e")  # fmt: skip
    assert "position_bias_rate" not in pointwise and 0 <= pointwise["win_rate"] <= 1


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-llama")


def test_generative_judge_writes_its_reasons(tiny):
    model, tok = tiny
    judge = GenerativeJudge(model, tok, None, swap=True)
    replies = ["(A) is right: 2+2 is 4.\nVerdict: (A)", "(B) is right.\nVerdict: (B)"]
    judge._generate = lambda texts: list(replies)
    (v,) = judge.verdicts([("What is 2+2?", "4", "5")])
    assert v.p == 1.0 and v.rationale == replies[0] and v.rationale_swapped == replies[1]


def test_judge_command_writes_the_generative_rationale(cli, jsonl, tmp_path, monkeypatch):
    calls = []

    def fake_generate(self, texts):
        calls.append(len(texts))
        return [f"Reason {i}: the first is kinder.\nVerdict: (A)" for i in range(len(texts))]

    monkeypatch.setattr(GenerativeJudge, "_generate", fake_generate)
    data = jsonl("c.jsonl", [{"prompt": "Hi", "completions": ["Hello!", "Go away."]}])
    out = tmp_path / "o.jsonl"
    code, _, err = cli("judge", "--judge", "generative", "--model", "tiny-llama",
                       "--input", data, "--output", out)  # fmt: skip
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["chosen"] == "Hello!" and row["rationale"].startswith(
        "Reason 0: the first is kinder"
    )
    code, _, err = cli("judge", "--judge", "generative", "--model", "tiny-llama", "--input", data,
                       "--output", out, "--select", "best", "--method", "pointwise")  # fmt: skip
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["rationale"] == ["Reason 0: the first is kinder.\nVerdict: (A)"]


def test_verifier_keeps_the_reasons_about_the_winner(tiny):
    model, tok = tiny
    judge = GenerativeJudge(model, tok, None)

    # the judge always prefers the candidate containing "4", and says so
    def first_better(asks):
        judge.replies = [
            f"{'first' if '4' in a else 'second'} has the right sum" for _, a, b, _ in asks
        ]
        return [1.0 if "4" in a else 0.0 for _, a, b, _ in asks]

    judge.first_better = first_better
    sel = select_best(judge, "2+2?", ["5", "4", "3"], method="round-robin")
    assert sel.index == 1
    assert sel.rationale == ["A vs B: second has the right sum", "B vs C: first has the right sum"]
