"""Chunked response log-probs (posttrain.models.chunked) equal the whole-logits ones: values,
entropies and gradients (to the hidden states and to every weight), float64, tiny-llama."""

from __future__ import annotations

import pytest
import torch

from posttrain.data import collate, encode_example
from posttrain.losses.common import entropy_from_logits
from posttrain.models import chunked, gather_logprobs, load_policy
from posttrain.models.chunked import can_chunk, chunked_token_logprobs, lm_head_skipped
from posttrain.models.logprobs import position_ids_from_mask


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-llama", dtype="float64")


def _batch(tok):
    encs = [
        encode_example(tok, "The movie", " was great and long enough to chunk", 64),
        encode_example(tok, "A much longer prompt here", " bad", 64),
        encode_example(tok, "x", " an ending of middling length", 64),
    ]
    return collate(encs, tok.pad_token_id, side="right")


def _whole(model, b, temperature):
    """The reference computation: every position's logits at once, masked afterwards."""
    out = model(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        position_ids=position_ids_from_mask(b["attention_mask"]),
        use_cache=False,
    )
    logits = out.logits[:, :-1] / temperature
    mask = b["response_mask"][:, 1:].to(logits.dtype)
    logps = gather_logprobs(logits, b["input_ids"][:, 1:]) * mask
    return logps, entropy_from_logits(logits) * mask


def _chunked(model, b, temperature, chunk_size):
    with lm_head_skipped(model) as (head, box):
        out = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            position_ids=position_ids_from_mask(b["attention_mask"]),
            use_cache=False,
        )
    assert out.logits.shape[1] == 0  # no logits were made
    return chunked_token_logprobs(
        head,
        box["hidden"][:, :-1],
        b["input_ids"][:, 1:],
        b["response_mask"][:, 1:],
        temperature=temperature,
        with_entropy=True,
        chunk_size=chunk_size,
    )


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("keep_max", [0, chunked.KEEP_LOGITS_MAX], ids=["checkpointed", "kept"])
def test_chunked_equals_whole_logits_values_and_gradients(
    tiny, chunk_size, temperature, keep_max, monkeypatch
):
    monkeypatch.setattr(chunked, "KEEP_LOGITS_MAX", keep_max)
    model, tok = tiny
    assert can_chunk(model)
    b = _batch(tok)
    params = [p for p in model.parameters() if p.requires_grad]

    ref_logps, ref_ent = _whole(model, b, temperature)
    # a loss that weights every position differently, through log-probs and entropy
    w = torch.linspace(0.5, 2.0, ref_logps.numel(), dtype=torch.float64).view(ref_logps.shape)
    ref_grads = torch.autograd.grad((w * ref_logps).sum() + (ref_ent / w).sum(), params)

    logps, ent = _chunked(model, b, temperature, chunk_size)
    grads = torch.autograd.grad((w * logps).sum() + (ent / w).sum(), params)

    assert logps.dtype == torch.float64 and logps.shape == ref_logps.shape
    torch.testing.assert_close(logps, ref_logps, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-6, rtol=0)
    assert bool((logps[b["response_mask"][:, 1:] == 0] == 0).all())
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, atol=1e-6, rtol=0)
    assert any(float(g.abs().max()) > 1e-3 for g in grads)  # the gradients are not all zero


@pytest.mark.parametrize("keep_max, backward_calls", [(0, 1), (1 << 22, 0)])
def test_small_logits_are_kept_not_recomputed(tiny, monkeypatch, keep_max, backward_calls):
    """Checkpointed, the backward runs the output layer again; logits up to KEEP_LOGITS_MAX
    (here ~30 positions x 833) are kept, and the output layer runs in the forward only."""
    monkeypatch.setattr(chunked, "KEEP_LOGITS_MAX", keep_max)
    model, tok = tiny
    calls = []  # positions of each call of the output layer that made logits
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, a, out: calls.append(out.shape[-2]) if out.shape[-2] else None
    )
    try:
        logps, _ = _chunked(model, _batch(tok), 1.0, 4096)
        forward_calls = len(calls)
        logps.sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    assert forward_calls == 1  # one chunk
    assert len(calls) - forward_calls == backward_calls, calls


def test_no_grad_chunks_and_empty_mask(tiny):
    model, tok = tiny
    b = _batch(tok)
    with torch.no_grad():
        ref, _ = _whole(model, b, 1.0)
        got, ent = _chunked(model, b, 1.0, 3)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    b["response_mask"] = torch.zeros_like(b["response_mask"])
    with torch.no_grad():
        got, _ = _chunked(model, b, 1.0, 3)
    assert got.shape == ref.shape and bool((got == 0).all())


def test_forward_logprobs_chunked_by_default_equals_whole_logits_with_lora(tiny):
    """``forward_logprobs`` (chunked by default) against ``chunk_size=0`` (whole logits): values,
    entropy, hidden states and the gradients of LoRA adapters, float64."""
    from posttrain.config import LoraConfig
    from posttrain.models import forward_logprobs
    from posttrain.models.lora import apply_lora

    _, tok = tiny
    model, _ = load_policy("tiny-llama", dtype="float64")
    model = apply_lora(model, LoraConfig(enabled=True, r=2))
    for p in model.parameters():  # non-zero adapters, so their gradients are not trivial
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    b = _batch(tok)
    params = [p for p in model.parameters() if p.requires_grad]
    outs, grads = [], []
    for size in (0, 3):
        out = forward_logprobs(
            model,
            b["input_ids"],
            b["attention_mask"],
            b["response_mask"],
            temperature=0.9,
            with_entropy=True,
            with_hidden=True,
            chunk_size=size,
        )
        loss = out.logps.sum() + 0.3 * out.entropy.sum() + out.hidden.square().mean()
        grads.append(torch.autograd.grad(loss, params))
        outs.append(out)
    whole, chunks = outs
    for name in ("logps", "mask", "entropy", "hidden"):
        torch.testing.assert_close(getattr(chunks, name), getattr(whole, name), atol=1e-6, rtol=0)
    for g, rg in zip(grads[1], grads[0]):
        torch.testing.assert_close(g, rg, atol=1e-6, rtol=0)


def test_entropy_without_grad_same_values_no_backward(tiny):
    """``entropy_grad=False`` (PPO with entropy_coef 0): the same entropies, detached, and the
    log-probs' gradients unchanged, chunked and whole-logits alike."""
    from posttrain.models import forward_logprobs

    _, tok = tiny
    model, _ = load_policy("tiny-llama", dtype="float64")
    b = _batch(tok)
    params = [p for p in model.parameters() if p.requires_grad]
    for size in (0, 3):
        got = {}
        for grad in (True, False):
            out = forward_logprobs(
                model,
                b["input_ids"],
                b["attention_mask"],
                b["response_mask"],
                with_entropy=True,
                entropy_grad=grad,
                chunk_size=size,
            )
            got[grad] = (out, torch.autograd.grad(out.logps.sum(), params))
        (on, g_on), (off, g_off) = got[True], got[False]
        assert on.entropy.requires_grad and not off.entropy.requires_grad
        torch.testing.assert_close(off.entropy, on.entropy, atol=1e-12, rtol=0)
        torch.testing.assert_close(off.logps, on.logps, atol=1e-12, rtol=0)
        for a, c in zip(g_off, g_on):
            torch.testing.assert_close(a, c, atol=1e-12, rtol=0)


def test_packed_logprobs_chunked_equal_whole(tiny, monkeypatch):
    """Padding-free pair rows: the chunked output layer gives the whole-logits numbers."""
    from posttrain.data.formats import Example
    from posttrain.data.preference import collate_pairs, encode_pairs
    from posttrain.models import chunked, forward_packed_logprobs

    model, tok = tiny
    examples = [
        Example(
            kind="preference", where="t", prompt="The film", chosen=" was good", rejected=" bad"
        ),
        Example(
            kind="preference", where="t", prompt="A long prompt", chosen=" yes", rejected=" no way"
        ),
    ]
    pairs, _ = encode_pairs(tok, examples, 64)
    batch = collate_pairs(pairs, tok.pad_token_id, padding_free=True)
    new = forward_packed_logprobs(model, batch)
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK_SIZE", 0)
    old = forward_packed_logprobs(model, batch)
    torch.testing.assert_close(new.logps, old.logps, atol=1e-6, rtol=0)
    assert float(new.mask.sum()) > 0
