"""Judges: the CAI prompt format, soft labels, swap debiasing, verdict parsing, constitutions."""

from __future__ import annotations

import math
import random

import pytest
import torch

from posttrain.errors import UserError
from posttrain.judges.constitution import Constitution, Principle, load_constitution
from posttrain.judges.generative import GenerativeJudge, parse_score, parse_verdict
from posttrain.judges.gold import task_judge
from posttrain.judges.llm import (
    OPTIONS,
    LLMJudge,
    context_ids,
    conversation_text,
    format_judge_prompt,
    judge_body,
    option_probs,
)
from posttrain.judges.pairwise import judge_pairs, summarize
from posttrain.judges.reward_model import ScoreJudge
from posttrain.judges.verifier import select_best

# ----------------------------------------------------------------------------- prompt format


def test_judge_prompt_is_the_cai_multiple_choice_format():
    text = format_judge_prompt("What is 2+3?", " 5 ", "7", "Which response is correct?")
    assert text == (
        "Consider the following conversation between a human and an assistant:\n"
        "Human: What is 2+3?\n"
        "Which response is correct?\n"
        "Options:\n"
        "(A) 5\n"
        "(B) 7\n"
        "The answer is:"
    )


def test_conversation_renders_message_lists():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Add 2 and 2."},
    ]
    assert (
        conversation_text(msgs)
        == "System: Be brief.\nHuman: Hi\nAssistant: Hello!\nHuman: Add 2 and 2."
    )


# ----------------------------------------------------------------------------- soft labels


@pytest.fixture(scope="module")
def tiny():
    from posttrain.models import load_policy

    torch.manual_seed(0)
    return load_policy("tiny-llama-chat")


def _option_logp(model, ctx: list[int], opt: list[int]) -> float:
    """log p(opt | ctx) by a plain forward and log-softmax (independent of forward_logprobs)."""
    ids = torch.tensor([ctx + opt])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(opt))


@pytest.mark.parametrize("chat", [True, False])
def test_soft_label_is_the_renormalised_option_probability(tiny, chat):
    model, tok = tiny
    body = judge_body("Say hi.", "hi there", "go away", "Which response is kinder?")
    ctx = context_ids(tok, body, chat=chat)
    probs = option_probs(model, tok, [ctx, ctx[:-3] + ctx[-3:]], OPTIONS, batch_size=3)
    assert probs.shape == (2, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12)
    la, lb = (
        _option_logp(model, ctx, tok(o, add_special_tokens=False)["input_ids"]) for o in OPTIONS
    )
    expected = math.exp(la) / (math.exp(la) + math.exp(lb))
    assert probs[0, 0].item() == pytest.approx(expected, abs=1e-6)
    if chat:  # the chat form ends with the assistant turn pre-filled with "The answer is:"
        assert tok.decode(ctx).endswith("<|assistant|>\nThe answer is:")


def test_llm_judge_probabilities_and_seeded_principles(tiny):
    model, tok = tiny
    cons = load_constitution()
    items = [("Say hi.", "hi there", "go away"), ("Add 1 and 1.", "2", "3")]
    v1 = LLMJudge(model, tok, cons, seed=3).verdicts(items, swap=True)
    v2 = LLMJudge(model, tok, cons, seed=3).verdicts(items, swap=True)
    assert [v.principle for v in v1] == [v.principle for v in v2]
    # P(first better) is the probability of " (A)" (the first option), computed independently
    judge = LLMJudge(model, tok, None)
    ctx = context_ids(tok, judge_body("Say hi.", "hi there", "go away", None), chat=True)
    la, lb = (
        _option_logp(model, ctx, tok(o, add_special_tokens=False)["input_ids"]) for o in OPTIONS
    )
    (p_first,) = judge.first_better([("Say hi.", "hi there", "go away", None)])
    assert p_first == pytest.approx(1 / (1 + math.exp(lb - la)), abs=1e-6)
    for v in v1:
        assert 0 < v.p_forward < 1 and 0 < v.p_swapped < 1
        assert v.p == pytest.approx((v.p_forward + v.p_swapped) / 2)
        assert v.principle in cons.by_id


# ----------------------------------------------------------------------------- swap debiasing


def test_swap_debiasing_cancels_a_judge_that_always_says_A():
    items = [("q", "good answer", "bad answer"), ("q", "bad answer", "good answer")] * 3
    always_a = lambda asks: [1.0] * len(asks)  # noqa: E731
    plain = judge_pairs(always_a, items, swap=False)
    assert [v.p for v in plain] == [1.0] * 6  # picks whatever is shown first
    swapped = judge_pairs(always_a, items, swap=True)
    assert [v.p for v in swapped] == [0.5] * 6
    stats = summarize(swapped)
    assert stats["position_bias_rate"] == 1.0 and stats["swap_agreement"] == 0.0
    assert stats["first_rate"] == 1.0 and stats["ties"] == 6
    assert all(v.swap_agree is False for v in swapped)


def test_swap_combination_worked_by_hand():
    # P(first better) = 0.9 when the good answer is first, 0.6 when the bad one is first:
    # forward P(a=good) = 0.9; swapped order shows bad first -> 0.6, so P(a) = 1 - 0.6 = 0.4;
    # combined (0.9 + 0.4) / 2 = 0.65; the orders disagree (0.9 > 0.5 > 0.4).
    def judge(asks):
        return [0.9 if first.startswith("good") else 0.6 for _, first, _, _ in asks]

    (v,) = judge_pairs(judge, [("q", "good", "bad")], swap=True)
    assert (v.p_forward, v.p_swapped, v.p) == pytest.approx((0.9, 0.4, 0.65))
    assert v.swap_agree is False
    # an unbiased judge agrees with itself
    (u,) = judge_pairs(
        lambda asks: [0.8 if a[1] == "good" else 0.2 for a in asks],
        [("q", "good", "bad")],
        swap=True,
    )
    assert u.p == pytest.approx(0.8) and u.swap_agree is True
    assert summarize([u])["position_bias_rate"] == 0.0


def test_both_orders_see_the_same_principle():
    seen = []

    def judge(asks):
        seen.extend(t for *_, t in asks)
        return [0.5] * len(asks)

    judge_pairs(judge, [("q", "a", "b"), ("q", "c", "d")], swap=True, principles=["P1", "P2"])
    assert seen == ["P1", "P2", "P1", "P2"]


# ----------------------------------------------------------------------------- generative


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B is shorter.\nVerdict: (A)", "A"),
        ("**Verdict:** B", "B"),
        ("I think [[B]].", "B"),
        ("Reasons... The answer is (B).", "B"),
        ("Option A is better because it is correct.", "A"),
        ("The second response is more polite.", "B"),
        ("Both are fine.\n(A)", "A"),
        ("Verdict: A. On reflection... Verdict: (B)", "B"),
        ("(A) 2 + 3 = 5.\n(B) 2 + 3 = 7.", None),  # an echo of the options is no verdict
        ("Both responses are good.", None),
        ("", None),
    ],
)
def test_parse_verdict(text, letter):
    assert parse_verdict(text) == letter


@pytest.mark.parametrize(
    "text, score",
    [
        ("Fine.\nScore: 7", 7.0),
        ("I rate it 8/10", 8.0),
        ("3 out of 10", 3.0),
        ("Score: 42", None),
        ("good", None),
    ],
)
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_generative_unparseable_is_a_counted_tie(tiny):
    model, tok = tiny
    judge = GenerativeJudge(model, tok, None, swap=True)
    replies = iter([["Verdict: (A)", "no idea", "Verdict: (B)", "hmm"]])
    judge._generate = lambda texts: next(replies)
    v1, v2 = judge.verdicts([("q", "x", "y"), ("q", "z", "w")])
    # item 1: forward A -> 1.0; swapped B (x shown second) -> P(x) = 1.0: agree, p = 1
    assert (v1.p, v1.unparsed, v1.swap_agree) == (1.0, 0, True)
    # item 2: both orders unparseable -> 0.5 each, counted twice
    assert (v2.p, v2.unparsed, v2.tie) == (0.5, 2, True)
    assert summarize([v1, v2])["unparsed"] == 2 and summarize([v1, v2])["ties"] == 1
    judge._generate = lambda texts: ["Score: 9", "no score"]
    assert judge.score(["q", "q"], ["a", "b"]) == [9.0, 5.5] and judge.unparsed_scores == 1


# ----------------------------------------------------------------------------- score judges


def test_reward_model_judge_is_bradley_terry():
    judge = ScoreJudge(lambda ps, cs: [{"a": 1.0, "b": -0.5}[c] for c in cs])
    assert judge.compare("q", "a", "b") == pytest.approx(1 / (1 + math.exp(-1.5)), abs=1e-12)
    assert judge.compare("q", "b", "a") == pytest.approx(1 / (1 + math.exp(1.5)), abs=1e-12)
    (v,) = judge.verdicts([("q", "a", "b")], swap=True)
    assert v.swap_agree is True


def test_task_judge_uses_gold_reward():
    judge = task_judge("task:counting")
    assert judge.compare("Tell me", "good good", "bad") == 1.0
    assert judge.compare("Tell me", "bad", "good") == 0.0
    assert judge.compare("Tell me", "fine", "bad") == 0.5
    with pytest.raises(UserError, match="--judge"):
        task_judge("task:nope")


# ----------------------------------------------------------------------------- verifier


def _count_judge():
    return ScoreJudge(lambda ps, cs: [float(c.count("good")) for c in cs], temperature=0.5)


@pytest.mark.parametrize("method", ["tournament", "round-robin", "pointwise"])
def test_select_best_finds_the_best(method):
    cands = ["good", "meh", "good good good", "good good", "bad", "x", "good", "nope", "y"]
    sel = select_best(_count_judge(), "q", cands, method=method, seed=1)
    assert sel.index == 2
    expected = {"tournament": 8, "round-robin": 36, "pointwise": 9}[method]
    assert sel.comparisons == expected


def test_select_best_with_a_position_biased_judge_and_swap_is_a_seeded_coin():
    class AlwaysA:
        def verdicts(self, items, swap=False):
            return judge_pairs(lambda asks: [1.0] * len(asks), items, swap=swap)

    picks = {
        select_best(AlwaysA(), "q", list("abcdefgh"), swap=True, seed=s).index for s in range(20)
    }
    assert len(picks) > 1  # no systematic winner
    assert select_best(AlwaysA(), "q", list("abcd"), seed=5) == select_best(
        AlwaysA(), "q", list("abcd"), seed=5
    )


# ----------------------------------------------------------------------------- constitution


def test_default_constitution_covers_the_principles_asked_for():
    cons = load_constitution()
    assert len(cons) >= 16
    cons.require(("critique", "revision"), "test")
    tags = {t for p in cons.principles for t in p.tags}
    assert {"helpful", "honest", "harmless", "balance"} <= tags
    assert any("preachy" in p.choose for p in cons.principles)
    assert any("over-reactive" in p.id for p in cons.principles)


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("empty.yaml", "name: mine\nprinciples: []\n", "empty.yaml:2:"),
        ("none.yaml", "name: mine\n", "none.yaml:1:"),
        ("blank.yaml", "", "blank.yaml:1:"),
        ("empty.jsonl", "\n", "empty.jsonl:1:"),
    ],
)
def test_constitution_with_no_principles_is_an_error_with_file_and_line(
    tmp_path, name, text, where
):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match="no principles") as err:
        load_constitution(path)
    assert str(err.value).startswith(str(tmp_path / where))


def test_constitution_errors_point_at_the_principle(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("principles:\n  - id: a\n    choose: Pick one.\n  - id: b\n    critique: x\n")
    with pytest.raises(UserError, match=r"c.yaml:4: principle 2 has no \"choose\""):
        load_constitution(path)
    path.write_text(
        "principles:\n  - id: a\n    choose: Pick one.\n  - id: a\n    choose: Again.\n"
    )
    with pytest.raises(
        UserError, match=r"c.yaml:4: principle id 'a' repeats the one at .*c.yaml:2"
    ):
        load_constitution(path)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "a", "choose": "Pick."}\n{"id": "b", "choose": "Pick."}\n')
    cons = load_constitution(jsonl)
    with pytest.raises(UserError, match=r"c.jsonl:1: principle 'a' has no \"critique\""):
        cons.require(("critique",), "cai")


def test_principle_sampling_is_seeded_and_covers_the_file():
    cons = Constitution([Principle(id=str(i), choose=f"q{i}") for i in range(4)])
    a = [cons.sample(random.Random(7)).id for _ in range(1)]
    b = [cons.sample(random.Random(7)).id for _ in range(1)]
    assert a == b
    rng = random.Random(0)
    assert {cons.sample(rng).id for _ in range(200)} == {"0", "1", "2", "3"}
