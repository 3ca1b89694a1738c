"""Online-RL pieces by hand: the KL controller, the moving baseline, penalties, batch metrics,
the samples table, reward specs, the LoRA reference and dropout."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain import metrics as M
from posttrain.errors import UserError
from posttrain.judges.sources import CheckedRewardSource, load_reward_source
from posttrain.losses import KLController
from posttrain.models.modes import disable_dropout
from posttrain.recipes.reinforce import moving_baseline
from posttrain.rollout import Rollout
from posttrain.rollout.online import Experience, penalized_scores, rollout_metrics, write_samples


def test_kl_controller_adapts_saves_and_stays_fixed_without_a_target():
    ctl = KLController(0.1, target=6.0, horizon=1000)
    ctl.update(9.0, 100)  # 0.1 * (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.102)
    other = KLController(0.5, target=6.0, horizon=1000)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value
    fixed = KLController(0.1)
    fixed.update(100.0, 100)
    assert fixed.value == 0.1


def test_moving_baseline_by_hand():
    state: dict = {}
    a = moving_baseline(torch.tensor([[1.0], [3.0]]), state, 0.5)  # first batch: b = its mean 2
    assert a.flatten().tolist() == [-1.0, 1.0] and state["baseline"] == 2.0
    a = moving_baseline(torch.tensor([[4.0], [6.0]]), state, 0.5)  # b = 2, then 0.5*2 + 0.5*5
    assert a.flatten().tolist() == [2.0, 4.0] and state["baseline"] == 3.5


def _rollout() -> Rollout:
    """Two rows, prompt width 2, response width 3: row 0 ends with EOS after 2 tokens, row 1 is
    cut at the limit (3 tokens)."""
    ids = torch.tensor([[5, 6, 7, 2, 0], [0, 6, 7, 8, 9]])
    resp = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    attn = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    logps = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -1.0, -1.0, -1.0]])
    return Rollout(ids, attn, resp, logps, 2, torch.tensor([True, False]))


def test_penalties_by_hand():
    raw = torch.tensor([1.0, 1.0])
    # row 0: 2 tokens, ended; row 1: 3 tokens, cut -> 1 - 0.1*2 = 0.8; 1 - 0.5 - 0.1*3 = 0.2
    out = penalized_scores(raw, _rollout(), missing_eos_penalty=0.5, length_penalty=0.1)
    torch.testing.assert_close(out, torch.tensor([0.8, 0.2]))


def test_reward_clip_bounds_the_source_score_before_the_penalties():
    raw = torch.tensor([3.0, -5.0])
    # clipped to [-1.5, 1.5] first: 1.5 - 0.1*2 = 1.3; -1.5 - 0.5 - 0.1*3 = -2.3 (the penalties
    # still apply below the clip)
    out = penalized_scores(
        raw, _rollout(), missing_eos_penalty=0.5, length_penalty=0.1, reward_clip=1.5
    )
    torch.testing.assert_close(out, torch.tensor([1.3, -2.3]))


def test_rollout_metrics_by_hand(tmp_path):
    r = _rollout()
    logps = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[0.0, -2.0, -2.0, 0.0], [0.0, -1.0, -1.5, -1.5]])
    entropy = torch.tensor([[9.0, 1.0, 3.0, 9.0], [9.0, 2.0, 2.0, 2.0]])
    exp = Experience(
        r,
        ["p", "q"],
        ["ab", "cde"],
        raw_scores=torch.tensor([1.0, 3.0]),
        scores=torch.tensor([1.0, 2.0]),
        logps=logps,
        ref_logps=ref,
        entropy=entropy,
    )
    r.train_logps = logps + torch.tensor([[0.0, 1e-3, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    m = rollout_metrics(exp, kl_coef=0.5)
    # seq KL: row 0 (1 + 0) = 1; row 1 (0.5 + 0.5) = 1 -> 1; rlhf: (1 - 0.5, 2 - 0.5) -> 1.0
    assert m[M.OBJECTIVE_SCORES] == 2.0
    assert m[M.OBJECTIVE_KL] == pytest.approx(1.0)
    assert m[M.OBJECTIVE_RLHF_REWARD] == pytest.approx(1.0)
    assert m[M.OBJECTIVE_ENTROPY] == pytest.approx(2.0)  # (1 + 3 + 2 + 2 + 2) / 5
    assert m[M.RESPONSE_LENGTH] == 2.5
    assert m[M.RESPONSE_TRUNCATED] == 0.5 and m[M.RESPONSE_EOS] == 0.5
    assert m[M.ROLLOUT_LOGP_MISMATCH] == pytest.approx(5.0)  # a response token of row 1
    write_samples(tmp_path / "samples.jsonl", 7, exp, n=4)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert rows == [
        {"step": 7, "prompt": "p", "response": "ab", "score": 1.0, "length": 2, "truncated": False},
        {"step": 7, "prompt": "q", "response": "cde", "score": 3.0, "length": 3, "truncated": True},
    ]


def test_reward_specs_resolve_and_fail_clearly():
    from posttrain.models import load_tokenizer

    src = load_reward_source("tests.helpers_rl:count_e")
    assert isinstance(src, CheckedRewardSource) and src(["p"], ["eeee"]) == [1.0]
    assert len(load_reward_source("task:counting")(["p"], ["good good"])) == 1
    tok = load_tokenizer("tiny-llama")
    count = load_reward_source("tests.helpers_rl:count_token", policy_tokenizer=tok)
    assert count(["p", "p"], [" the cat and the dog", "a dog"]) == [2.0, 0.0]
    with pytest.raises(UserError, match="needs the policy's tokenizer"):
        load_reward_source("tests.helpers_rl:count_token")
    with pytest.raises(UserError, match="returned 1 scores for 2 completions"):
        load_reward_source("tests.helpers_rl:wrong_length")(["p", "q"], ["a", "b"])
    for bad in ("nope", "task:nothing", "tests.helpers_rl:missing", "no_such_module:f", ""):
        with pytest.raises(UserError):
            load_reward_source(bad)


def test_lora_reference_is_the_adapters_off_policy():
    from posttrain.config import LoraConfig
    from posttrain.models import forward_logprobs, load_policy
    from posttrain.models.lora import apply_lora
    from posttrain.training.reference import policy_reference

    base, tok = load_policy("tiny-llama")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    attn, resp = torch.ones_like(ids), torch.tensor([[0, 0, 1, 1, 1]])
    before = forward_logprobs(base, ids, attn, resp).logps
    model = apply_lora(base, LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"]))
    reference = policy_reference(model, lora_enabled=True)
    with torch.no_grad():  # train the adapters a little: B != 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    policy = forward_logprobs(model, ids, attn, resp).logps
    with reference() as ref_model:
        ref = forward_logprobs(ref_model, ids, attn, resp).logps
    torch.testing.assert_close(ref, before)  # the reference is the starting policy
    assert (policy - ref).abs().max() > 1e-3  # and the policy has moved away from it


def test_disable_dropout():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    net[0].attention_dropout = 0.1
    disable_dropout(net).train()
    x = torch.ones(4, 3)
    assert net[1].p == 0.0 and net[0].attention_dropout == 0.0
    assert torch.equal(net(x), net(x))


def test_one_spec_parser_for_rewards_and_judges(tmp_path, monkeypatch):
    """parse_spec reads every form once; rewards and judges accept the same spellings."""
    from posttrain.judges.factory import check_judge
    from posttrain.judges.sources import parse_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rm_dir").mkdir()
    kinds = {
        "task:counting": ("task", "counting"),
        "judge:llm": ("judge", "llm"),
        "judge:task:counting": ("judge", "task:counting"),
        "llm": ("llm", "llm"),
        "reward-model": ("reward-model", "reward-model"),
        "rm_dir": ("directory", "rm_dir"),
        "tests.helpers_rl:count_e": ("function", "tests.helpers_rl:count_e"),
        "a/b:c": ("unknown", "a/b:c"),
        "nope": ("unknown", "nope"),
    }
    for text, (kind, name) in kinds.items():
        assert (parse_spec(text).kind, parse_spec(text).name) == (kind, name), text
    # judge:KIND is a reward built from a judge, and as a judge it means KIND
    prompts, texts = ["Count:", "Count:"], ["one two three", "xyz"]
    gold = load_reward_source("task:counting")(prompts, texts)
    assert load_reward_source("judge:task:counting")(prompts, texts) == gold
    check_judge("judge:task:counting", None)  # accepted like task:counting
    with pytest.raises(UserError, match="unknown task"):
        check_judge("judge:task:nothing", None)
    with pytest.raises(UserError, match="is a judge; as a reward give judge:llm"):
        load_reward_source("llm")
