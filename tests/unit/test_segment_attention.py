"""Segment attention (posttrain.models.segment_attention) on packed preference rows gives the
same per-token log-probs and the same gradients as the 4-D-mask path and as a plain padded
forward: tiny-llama (GQA, 4 heads over 2), float64, pairs of different prompt and response
lengths (a 1-token response, a 1-token prompt, a batch of one pair)."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.chat import Encoded
from posttrain.data.collate import collate_shared_prefix
from posttrain.data.preference import EncodedPair, collate_pairs
from posttrain.models import chunked, forward_logprobs, forward_packed_logprobs, load_policy
from posttrain.models import segment_attention as sa


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-llama", dtype="float64")[0]


@pytest.fixture
def norm_in_float64(monkeypatch):
    """transformers' LlamaRMSNorm computes in float32 whatever the input dtype, and so rounds the
    gradient flowing back through it to float32; a shared prefix gets its members' gradients
    summed before that rounding, separate rows after it: ~1e-7 apart, in any packed path. For a
    1e-10 comparison with the padded forward the norm computes in the input dtype here."""
    from transformers.models.llama import modeling_llama

    def forward(self, hidden):
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


def _pairs(spec, seed=0):
    """(prompt length, chosen length, rejected length) -> EncodedPair of random tokens (a pair's
    responses share their first token when the lengths say so, to vary the shared prefix)."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for p, c, r in spec:
        prompt = torch.randint(3, 800, (p,), generator=gen).tolist()
        chosen = torch.randint(3, 800, (c,), generator=gen).tolist()
        rejected = torch.randint(3, 800, (r,), generator=gen).tolist()
        pairs.append(
            EncodedPair(Encoded(prompt + chosen, p, False), Encoded(prompt + rejected, p, False))
        )
    return pairs


SPECS = {
    "several": [(5, 9, 1), (1, 3, 12), (8, 1, 1), (3, 7, 4), (2, 15, 6)],  # 1-token responses
    "one pair": [(4, 6, 2)],
}


def _grads(model, out, weights):
    model.zero_grad(set_to_none=True)
    (out.logps * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model, pairs, monkeypatch, chunk_size):
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK_SIZE", chunk_size)
    packed = collate_pairs(pairs, 0, padding_free=True)
    assert packed["input_ids"].shape[0] < 2 * len(pairs) or len(pairs) == 1  # several per row
    padded = collate_pairs(pairs, 0)
    before = model.config._attn_implementation
    new = forward_packed_logprobs(model, packed)
    assert model.config._attn_implementation == before  # restored
    weights = torch.rand(
        new.logps.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    g_new = _grads(model, new, weights)
    # the segment path ran: it does not read the 4-D mask (an all-True one changes nothing)
    no_mask = {**packed, "attention_mask": torch.ones_like(packed["attention_mask"])}
    assert torch.equal(forward_packed_logprobs(model, no_mask).logps, new.logps)
    monkeypatch.setattr(sa, "ENABLED", False)  # the 4-D mask path
    assert not torch.allclose(forward_packed_logprobs(model, no_mask).logps, new.logps)
    old = forward_packed_logprobs(model, packed)
    g_old = _grads(model, old, weights)
    plain = forward_logprobs(
        model, padded["input_ids"], padded["attention_mask"], padded["response_mask"]
    )
    g_plain = _grads(model, plain, weights)
    assert new.logps.shape == old.logps.shape == plain.logps.shape
    assert torch.equal(new.mask, plain.mask) and new.mask.sum() > 0
    torch.testing.assert_close(new.logps, old.logps, atol=1e-10, rtol=0)
    torch.testing.assert_close(new.logps, plain.logps, atol=1e-10, rtol=0)
    assert g_new.keys() == g_old.keys() == g_plain.keys() and len(g_new) > 0
    for name in g_new:
        torch.testing.assert_close(g_new[name], g_old[name], atol=1e-10, rtol=0)
        torch.testing.assert_close(g_new[name], g_plain[name], atol=1e-10, rtol=0)


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("chunk_size", [chunked.DEFAULT_CHUNK_SIZE, 0])
@pytest.mark.parametrize("bucket_cost", [sa.BUCKET_COST, 0])  # 0: a bucket per length
@pytest.mark.parametrize("matmul", [False, True])  # the explicit-matmul attention (bfloat16's)
def test_segment_attention_matches_mask_and_padded(
    tiny, spec, chunk_size, bucket_cost, matmul, monkeypatch, norm_in_float64
):
    assert sa.applies(tiny)
    monkeypatch.setattr(sa, "BUCKET_COST", bucket_cost)
    if matmul:
        monkeypatch.setattr(sa, "MATMUL_DTYPES", frozenset({torch.float64}))
    batch = collate_pairs(_pairs(SPECS[spec]), 0, padding_free=True)
    segments = sa.build(batch)
    # the later members query their remainders only: one token, one output slot
    assert len(segments.q_index) < len(segments.kv_index)
    assert sum(n * n_q for n, n_q, _ in segments.shapes) == len(segments.q_index)
    masked = [mask is not None for mask in segments.masks]
    assert any(masked) and not all(masked)  # first members causal, later ones masked
    if not bucket_cost:  # a bucket per (keys, queries) of each kind
        lengths = batch["segment_lengths"].tolist()
        kinds = {(n_k, n_q, m) for (_, n_q, n_k), m in zip(segments.shapes, masked, strict=True)}
        assert len(segments.shapes) == len(kinds) and len(kinds) >= len(set(lengths))
    else:
        assert len(segments.shapes) == 2  # one bucket of each kind
    _compare(tiny, _pairs(SPECS[spec]), monkeypatch, chunk_size)


def test_segment_attention_matches_mask_path_with_stock_norm(tiny, monkeypatch):
    """With transformers' own (float32) RMSNorm both packed paths still agree to 1e-10: they
    share the layout; only the padded forward sums a prefix's gradients elsewhere."""
    pairs = _pairs(SPECS["several"], seed=2)
    packed = collate_pairs(pairs, 0, padding_free=True)
    new = forward_packed_logprobs(tiny, packed)
    weights = torch.rand(new.logps.shape, dtype=torch.float64)
    g_new = _grads(tiny, new, weights)
    monkeypatch.setattr(sa, "ENABLED", False)
    old = forward_packed_logprobs(tiny, packed)
    g_old = _grads(tiny, old, weights)
    torch.testing.assert_close(new.logps, old.logps, atol=1e-10, rtol=0)
    for name in g_new:
        torch.testing.assert_close(g_new[name], g_old[name], atol=1e-10, rtol=0)


def test_segment_layout_by_hand():
    """Rows [[1 2 3 4 2 5], [6 7 6 8 9 -]] (``test_shared_prefix_layout_by_hand``): A's prefix
    [1] then [2 3 4] and [2 5]; B has no prefix: [6 7] and [6 8 9]. End to end the 11 tokens;
    sequences 0 A chosen, 1 B chosen, 2 A rejected, 3 B rejected, each (L = 4) gathered from them."""
    a = (Encoded([1, 2, 3, 4], 2, False), Encoded([1, 2, 5], 2, False))
    b = (Encoded([6, 7], 1, False), Encoded([6, 8, 9], 1, False))
    batch = collate_shared_prefix([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 2, 5], [6, 7, 6, 8, 9, 0]]
    assert batch["token_index"].tolist() == list(range(11))  # the padding left out
    assert batch["segment_tokens"].tolist() == [
        [0, 1, 2, 3],
        [6, 7, 0, 0],
        [0, 4, 5, 0],
        [8, 9, 10, 0],
    ]
    assert batch["segment_lengths"].tolist() == [4, 2, 3, 3]
    # the prefix from A chosen's segment, A chosen's and A rejected's remainders, B's two
    assert batch["segment_out"].tolist() == [0, 1, 2, 3, 9, 10, 4, 5, 12, 13, 14]
    tokens = batch["input_ids"].flatten()[batch["token_index"]]
    seqs = [a[0].input_ids, b[0].input_ids, a[1].input_ids, b[1].input_ids]
    for i, seq in enumerate(seqs):  # each segment's tokens are its sequence
        assert tokens[batch["segment_tokens"][i, : len(seq)]].tolist() == seq
    # each token's output comes from a segment slot holding that very token
    slots = batch["segment_tokens"].flatten()[batch["segment_out"]]
    assert slots.tolist() == list(range(11))


def test_buckets_group_similar_lengths(monkeypatch):
    """Sequences of 3, 100, 4, 98 tokens: two buckets (3, 4) and (98, 100) cost
    2 * 4^2 + 2 * 100^2 + 2 * BUCKET_COST, less than one (4 * 100^2 + one cost) or four."""
    monkeypatch.setattr(sa, "BUCKET_COST", 64 * 64)
    assert sa.buckets([3, 100, 4, 98]) == [[0, 2], [3, 1]]
    monkeypatch.setattr(sa, "BUCKET_COST", 10**9)  # calls dear: one bucket
    assert sa.buckets([3, 100, 4, 98]) == [[0, 2, 3, 1]]
    monkeypatch.setattr(sa, "BUCKET_COST", 0)  # calls free: a bucket per length
    assert sa.buckets([3, 100, 4, 98]) == [[0], [2], [3], [1]]


def test_attention_implementation_restored_after_an_error(tiny):
    before = tiny.config._attn_implementation
    with pytest.raises(ValueError), sa.segments_used(tiny):
        assert tiny.config._attn_implementation == sa.NAME
        raise ValueError
    assert tiny.config._attn_implementation == before


def test_not_applied_to_other_attention(tiny):
    """A model set to another attention (here flex_attention, not plain causal SDPA/eager) or of
    another family keeps the 4-D-mask path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert not sa.applies(gpt2)
    before = tiny.config._attn_implementation
    try:
        tiny.config._attn_implementation = "flex_attention"
        assert not sa.applies(tiny)
    finally:
        tiny.config._attn_implementation = before


def test_segment_attention_under_lora(monkeypatch):
    """A peft-wrapped policy takes the segment path too, with the mask path's log-probs."""
    from posttrain.config import LoraConfig
    from posttrain.models.lora import apply_lora

    model = load_policy("tiny-llama", dtype="float64")[0]
    model = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8))
    assert sa.applies(model)
    before = model.config._attn_implementation
    packed = collate_pairs(_pairs(SPECS["several"], seed=3), 0, padding_free=True)
    new = forward_packed_logprobs(model, packed)
    monkeypatch.setattr(sa, "ENABLED", False)
    old = forward_packed_logprobs(model, packed)
    torch.testing.assert_close(new.logps, old.logps, atol=1e-10, rtol=0)
    assert model.config._attn_implementation == before


def _reference_attention(q, k, v, allowed):
    """float64 softmax(q k^T / sqrt(d)) v over allowed keys: (B, h, Lq, d) -> (B, Lq, h, d)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1)
    scores = q.double() @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (weights @ v).transpose(1, 2)


@pytest.mark.parametrize(
    "case", ["causal", "one_query_cached", "queries_after_cache", "padded_bool", "padded_float"]
)
def test_attention_forward_short_rows_in_bfloat16(case):
    """``attention_forward`` in bfloat16 on CPU (the explicit-matmul path) against float64
    attention, for each mask transformers hands it (None: causal, bottom-right aligned to a
    cache; SDPA's boolean padding mask; an additive one), within bfloat16 rounding."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(0)
    n_q, n_k = {"one_query_cached": (1, 9), "queries_after_cache": (3, 9)}.get(case, (7, 7))
    q = torch.randn(2, 4, n_q, 8, generator=gen).bfloat16()
    k, v = (torch.randn(2, 2, n_k, 8, generator=gen).bfloat16() for _ in range(2))
    allowed = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q).expand(2, 1, n_q, n_k)
    mask = None
    if case.startswith("padded"):  # the second row left-padded by 3
        allowed = allowed.clone()
        allowed[1, :, :, :3] = False
        allowed[1, :, :3, 0] = True  # a padding query sees something (SDPA's masks do too)
        mask = allowed
        if case == "padded_float":
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, -1e30).bfloat16()
    module = SimpleNamespace(is_causal=True)
    out, _ = sa.attention_forward(module, q, k, v, mask, scaling=8**-0.5)
    want = _reference_attention(q, k, v, allowed)
    assert out.dtype == torch.bfloat16 and out.shape == want.shape
    torch.testing.assert_close(out.double(), want, atol=3e-2, rtol=3e-2)


def test_attention_forward_elsewhere_is_transformers_sdpa():
    """float32 (or more than MATMUL_KEYS keys) goes to transformers' SDPA attention unchanged."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(1)
    module = SimpleNamespace(is_causal=True, num_key_value_groups=2, training=False)
    for dtype, n in ((torch.float32, 7), (torch.bfloat16, sa.MATMUL_KEYS + 1)):
        q = torch.randn(1, 4, n, 8, generator=gen).to(dtype)
        k, v = (torch.randn(1, 2, n, 8, generator=gen).to(dtype) for _ in range(2))
        got, _ = sa.attention_forward(module, q, k, v, None)
        want, _ = sdpa_attention_forward(module, q, k, v, None)
        assert torch.equal(got, want)


def test_load_model_uses_it_and_generates_as_eager_attention():
    """A bfloat16 tiny-llama from ``load_policy`` runs ``posttrain_attention``; its padded
    log-probs and its greedy generation with a KV cache (prefill, then one query a step) are
    those of transformers' eager attention (the same matmuls and softmax), and the saved config
    does not name it."""
    import json
    import tempfile

    from posttrain.rollout.generate import generate

    model, tok = load_policy("tiny-llama", dtype="bfloat16")
    assert model.config._attn_implementation == sa.ATTENTION
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    runs = {}
    for impl in (sa.ATTENTION, "eager"):
        model.set_attn_implementation(impl)
        roll = generate(
            model, prompts, pad_id=tok.pad_token_id, eos_id=-1, max_new_tokens=6, temperature=0
        )
        with torch.no_grad():
            out = forward_logprobs(model, roll.input_ids, roll.attention_mask, roll.response_mask)
        runs[impl] = (roll.input_ids, out.logps)
    assert torch.equal(runs[sa.ATTENTION][0], runs["eager"][0])
    assert torch.equal(runs[sa.ATTENTION][1], runs["eager"][1])
    with tempfile.TemporaryDirectory() as d:
        model.set_attn_implementation(sa.ATTENTION)
        model.save_pretrained(d)
        assert sa.ATTENTION not in json.dumps(json.load(open(f"{d}/config.json")))
