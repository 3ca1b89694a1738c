"""``forward_logprobs(share_prefix=True)``: an online batch's rows (left-padded prompts, each
repeated for its K samples, then right-padded responses) computed with each prompt once give the
padded forward's log-probs, entropies, hidden states and gradients (tiny-llama, float64), in the
padded layout; and fall back to the padded forward where sharing saves nothing."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.collate import rows_as_groups
from posttrain.models import forward_logprobs, load_policy, logprobs
from posttrain.models import segment_attention as sa
from posttrain.rollout.backend import rollout_from_tokens
from tests.unit.test_segment_attention import norm_in_float64  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-llama", dtype="float64")[0]


def rollout_rows(prompts: list[int], responses: list[list[int]], order: list[int], seed: int = 0):
    """Rows as the sampler lays them out: prompt g (``prompts[g]`` tokens) once per sample,
    left-padded to the longest prompt; its responses (``responses[g]``: their lengths)
    right-padded to the longest; rows in ``order`` (a permutation of the samples, as a PPO
    minibatch shuffles them). Returns ids, attention mask, response mask, (B, T) each."""
    gen = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, 800, (n,), generator=gen).tolist()  # noqa: E731
    prompt_ids = [tok(n) for n in prompts]
    samples = [(prompt_ids[g], tok(n)) for g, lengths in enumerate(responses) for n in lengths]
    samples = [samples[i] for i in order]
    r = rollout_from_tokens(
        [p for p, _ in samples],
        [s for _, s in samples],
        [[0.0] * len(s) for _, s in samples],
        pad_id=0,
        finished=[True] * len(samples),
    )
    return r.input_ids, r.attention_mask, r.response_mask


PROMPTS = [7, 3, 12]
RESPONSES = [[5, 1, 9], [4, 6], [8]]  # K = 3, 2, 1; a 1-token response
ORDER = [3, 0, 5, 1, 4, 2]  # shuffled: a group's rows are not next to each other


def _loss(out, mask, gen):
    """Every output in the loss: log-probs, entropy, and a value head on the hidden states."""
    w = torch.rand(out.logps.shape, dtype=torch.float64, generator=gen)
    head = torch.rand(out.hidden.shape[-1], dtype=torch.float64, generator=gen)
    values = (out.hidden[:, :-1] @ head) * mask
    return (out.logps * w).sum() + out.entropy.sum() + values.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prompts_give_the_padded_outputs_and_gradients(
    tiny,
    temperature,
    norm_in_float64,  # noqa: F811
):
    ids, attend, respond = rollout_rows(PROMPTS, RESPONSES, ORDER)
    kwargs = dict(temperature=temperature, with_entropy=True, with_hidden=True)
    outs, grads = [], []
    for share in (True, False):
        tiny.zero_grad(set_to_none=True)
        out = forward_logprobs(tiny, ids, attend, respond, share_prefix=share, **kwargs)
        _loss(out, respond[:, 1:], torch.Generator().manual_seed(1)).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in tiny.named_parameters()})
    shared, plain = outs
    # the shared path ran: 3 prompts once instead of 6 times, no padding
    groups, numbers, left = rows_as_groups(ids, attend, respond)
    assert sorted(map(len, groups)) == [1, 2, 3] and sorted(sum(numbers, [])) == list(range(6))
    assert left == [12 - PROMPTS[[0, 0, 0, 1, 1, 2][i]] for i in ORDER]
    assert shared.logps.shape == plain.logps.shape == (6, ids.shape[1] - 1)
    assert torch.equal(shared.mask, plain.mask)
    torch.testing.assert_close(shared.logps, plain.logps, atol=1e-10, rtol=0)
    torch.testing.assert_close(shared.entropy, plain.entropy, atol=1e-10, rtol=0)
    real = attend.bool()  # the padded forward's hidden states at padding are not a token's
    torch.testing.assert_close(shared.hidden[real], plain.hidden[real], atol=1e-10, rtol=0)
    assert not shared.hidden[~real].any()
    assert bool((shared.logps != 0).sum() == respond[:, 1:].sum())  # every response token
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-10, rtol=0)


def test_it_takes_the_shared_path_only_when_that_saves_tokens(tiny, monkeypatch):
    calls = []
    real = logprobs.forward_packed_logprobs
    monkeypatch.setattr(
        logprobs, "forward_packed_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    ids, attend, respond = rollout_rows(PROMPTS, RESPONSES, ORDER)
    forward_logprobs(tiny, ids, attend, respond, share_prefix=True)
    assert len(calls) == 1
    forward_logprobs(tiny, ids, attend, respond)  # not asked for
    monkeypatch.setattr(logprobs, "SHARE_PREFIX", False)  # switched off (benchmarks)
    forward_logprobs(tiny, ids, attend, respond, share_prefix=True)
    monkeypatch.setattr(logprobs, "SHARE_PREFIX", True)
    monkeypatch.setattr(sa, "ENABLED", False)  # no segment attention: no sharing either
    forward_logprobs(tiny, ids, attend, respond, share_prefix=True)
    monkeypatch.setattr(sa, "ENABLED", True)
    # one sample per prompt, all the same length: nothing to leave out
    ids1, attend1, respond1 = rollout_rows([6, 6], [[4], [4]], [0, 1])
    forward_logprobs(tiny, ids1, attend1, respond1, share_prefix=True)
    assert len(calls) == 1


def test_rows_that_are_not_prompt_then_response_are_left_padded_ones():
    ids = torch.tensor([[0, 5, 6, 7, 0], [4, 5, 6, 7, 8]])
    attend = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    respond = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    groups, numbers, left = rows_as_groups(ids, attend, respond)
    assert [[m.input_ids for m in g] for g in groups] == [[[5, 6, 7]], [[4, 5, 6, 7, 8]]]
    assert [[m.response_start for m in g] for g in groups] == [[1], [3]] and left == [1, 0]
    hole = attend.clone()
    hole[1, 2] = 0  # a gap inside a row
    assert rows_as_groups(ids, hole, respond) is None
    early = respond.clone()
    early[1, 0] = 1  # a response token inside the prompt
    assert rows_as_groups(ids, attend, early) is None
