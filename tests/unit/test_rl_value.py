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
