"""The PPO value model: a head on the policy's hidden state (shared trunk) or its own critic."""

from __future__ import annotations

import torch

from posttrain.models import forward_logprobs, load_policy
from posttrain.models.value import build_value_model


def test_shared_and_separate_value_models_read_the_same_positions():
    model, tok = load_policy("tiny-llama")
    ids = torch.tensor([[tok.pad_token_id, 5, 6, 7, 8], [9, 10, 11, 12, 13]])
    attn = (ids != tok.pad_token_id).long()
    resp = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    hidden = forward_logprobs(model, ids, attn, resp, with_hidden=True).hidden
    shared, separate = build_value_model(model), build_value_model(model, separate=True)
    assert shared.shares_trunk and sum(p.numel() for p in shared.parameters()) == 64 + 1
    assert not separate.shares_trunk
    assert all(
        p.data_ptr() != q.data_ptr()
        for p in separate.critic.parameters()
        for q in model.parameters()
    )
    assert shared(ids, attn, hidden).shape == (2, 4)
    for v in (shared(ids, attn, hidden), separate(ids, attn)):
        assert v.abs().max() == 0  # zero head at the start: V = 0
    torch.nn.init.normal_(shared.head.linear.weight)
    # entry t reads the hidden state of token t (the state in which token t+1 is chosen)
    expected = shared.head(hidden[:, :-1]).squeeze(-1)
    torch.testing.assert_close(shared(ids, attn, hidden), expected)
    separate.head.linear.weight.data.copy_(shared.head.linear.weight)  # (the critic's: no bias)
    # the critic's own trunk starts as a copy of the policy: same values, its own parameters
    torch.testing.assert_close(separate(ids, attn), expected, atol=1e-5, rtol=0)
    separate(ids, attn).sum().backward()
    assert any(p.grad is not None for p in separate.critic.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_value_trunk_grad_false_keeps_the_value_loss_out_of_the_policy():
    """PPO's shared trunk: by default the value loss's gradients reach the policy's weights;
    with value_trunk_grad False only the head learns from it (advantages 0: no policy gradient)."""
    from posttrain.recipes.ppo import Config, ppo_terms
    from posttrain.rollout.backend import rollout_from_tokens
    from posttrain.rollout.online import Experience

    model, tok = load_policy("tiny-llama")
    r = rollout_from_tokens(
        [[5, 6, 7], [8, 9]],
        [[10, 11], [12, 13, 14]],
        [[-1.0, -1.0], [-1.0, -1.0, -1.0]],
        pad_id=tok.pad_token_id,
        finished=[True, True],
    )
    exp = Experience(rollout=r, prompts=["a", "b"], texts=["", ""], raw_scores=None, scores=None)
    with torch.no_grad():
        exp.logps = forward_logprobs(model, r.input_ids, r.attention_mask, r.response_mask).logps
    zeros, returns = torch.zeros_like(exp.logps), torch.ones_like(exp.logps)  # values 0 -> 1
    rows = torch.arange(2)
    trunk_grads = {}
    for flag in (True, False):
        value = build_value_model(model)
        torch.nn.init.normal_(value.head.linear.weight, std=0.1)
        model.zero_grad(set_to_none=True)
        cfg = Config(
            model="tiny-llama", train_data="x", output_dir="x", vf_coef=1.0, value_trunk_grad=flag
        )
        loss, parts = ppo_terms(model, value, exp, rows, zeros, zeros, returns, cfg)
        assert parts["vf"] > 0
        loss.backward()
        assert value.head.linear.weight.grad.abs().sum() > 0
        trunk_grads[flag] = sum(
            float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None
        )
    assert trunk_grads[True] > 0 and trunk_grads[False] == 0
