"""KL(policy || reference) on policy samples: hand-worked, exact by enumeration, and through the
real sampling path with two tiny llamas."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from posttrain.evaluation.kl import kl_on_samples, mean_and_se, sequence_kl


class Bigram(torch.nn.Module):
    """A model whose next-token logits depend only on the current token: logits = table[token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone(), requires_grad=False)  # (V, V)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def _batch(rows: list[list[int]], prompt_len: int = 1):
    ids = torch.tensor(rows)
    attn = torch.ones_like(ids)
    resp = torch.zeros_like(ids)
    resp[:, prompt_len:] = 1
    return ids, attn, resp


def test_sequence_kl_by_hand():
    """V = 2, prompt token 0, response "1": p(1 | 0) = 1/2 under the policy (uniform logits) and
    q(1 | 0) = e / (1 + e) under the reference (logits [0, 1]).
    k1 = ln(1/2) - ln(e / (1 + e)) = ln((1 + e) / (2e)); k3 = q/p - 1 - ln(q/p) with q/p = 2e/(1+e)."""
    pol = Bigram(torch.zeros(2, 2, dtype=torch.float64))
    ref = Bigram(torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    k1, k3, ent, n = sequence_kl(pol, ref, *_batch([[0, 1]]))
    r = 2 * math.e / (1 + math.e)
    assert k1.item() == pytest.approx(math.log(1 / r), abs=1e-12)
    assert k3.item() == pytest.approx(r - 1 - math.log(r), abs=1e-12)
    assert ent.item() == pytest.approx(math.log(2), abs=1e-12)  # uniform over 2 tokens
    assert n.item() == 1


def test_mean_and_se_by_hand():
    """[1, 2, 3, 4]: mean 2.5, sample variance 5/3, se = sqrt(5/3 / 4) = 0.645497."""
    m, se = mean_and_se([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and se == pytest.approx(math.sqrt(5 / 12), abs=1e-12)


def test_kl_matches_exact_sequence_kl():
    """Three-token responses from a bigram policy over V = 4: the exact sequence KL is a sum over
    all 64 responses; k1 and k3 from 20,000 policy samples agree with it within 4 standard errors."""
    V, L = 4, 3
    gen = torch.Generator().manual_seed(0)
    p_table = torch.randn(V, V, generator=gen, dtype=torch.float64)
    q_table = p_table + 0.7 * torch.randn(V, V, generator=gen, dtype=torch.float64)
    logp, logq = p_table.log_softmax(-1), q_table.log_softmax(-1)
    exact = 0.0
    for ys in itertools.product(range(V), repeat=L):
        seq = (0, *ys)
        lp = sum(logp[a, b] for a, b in zip(seq, seq[1:]))
        lq = sum(logq[a, b] for a, b in zip(seq, seq[1:]))
        exact += float(lp.exp() * (lp - lq))
    n = 20000
    rows = torch.zeros(n, L + 1, dtype=torch.long)
    for t in range(L):
        rows[:, t + 1] = torch.multinomial(logp[rows[:, t]].exp(), 1, generator=gen).squeeze(-1)
    res = kl_on_samples(Bigram(p_table), Bigram(q_table), *_batch(rows.tolist()), batch_size=4096)
    assert res.n == n and exact > 0.1
    assert abs(res.k1 - exact) < 4 * res.k1_se
    assert abs(res.k3 - exact) < 4 * res.k3_se
    assert res.k1_se < 0.05 and res.k3_se < 0.05
    assert min(res.per_sequence_k3) >= 0


def test_kl_through_generate_on_tiny_llamas():
    """Two tiny llamas with different seeds, one sampled token each: the sequence KL is exactly the
    KL of the next-token distributions at the prompt, computable from the logits."""
    from posttrain.models.tiny import build_tiny_llama, build_tokenizer
    from posttrain.rollout import generate

    tok = build_tokenizer()
    pol = build_tiny_llama(tok, seed=1, dtype=torch.float64)
    ref = build_tiny_llama(tok, seed=2, dtype=torch.float64)
    prompt = tok("The film was", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        x = torch.tensor([prompt])
        lp = pol(input_ids=x).logits[0, -1].log_softmax(-1)
        lq = ref(input_ids=x).logits[0, -1].log_softmax(-1)
    exact = float((lp.exp() * (lp - lq)).sum())
    roll = generate(
        pol,
        [prompt] * 3000,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
        max_new_tokens=1,
        generator=torch.Generator().manual_seed(0),
    )
    res = kl_on_samples(
        pol, ref, roll.input_ids, roll.attention_mask, roll.response_mask, batch_size=1000
    )
    assert abs(res.k1 - exact) < 4 * res.k1_se
    assert abs(res.k3 - exact) < 4 * res.k3_se


def test_kl_of_a_model_with_itself_is_zero():
    table = torch.randn(3, 3, dtype=torch.float64)
    res = kl_on_samples(Bigram(table), Bigram(table), *_batch([[0, 1, 2], [2, 2, 1]]))
    assert res.k1 == 0.0 and res.k3 == 0.0 and res.k1_se == 0.0
