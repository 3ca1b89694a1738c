"""The rollout engine: top-k / top-p by hand, stopping at EOS and at stop strings (with a scripted
model, so the expected tokens are known), the backend interface, and the agreement of
sampling-time log-probs with the training forward."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from posttrain.rollout import (
    EngineBackend,
    GenerationBackend,
    SamplingParams,
    decode_responses,
    filter_logits,
    generate,
)

NEG = float("-inf")


# --------------------------------------------------------------------------- top-k / top-p


def test_top_k_keeps_the_k_largest_and_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [2.0, 2.0, 1.0, 2.0]])
    out = filter_logits(logits, top_k=2)
    assert out[0].tolist() == [NEG, 3.0, 2.0, NEG]
    assert out[1].tolist() == [2.0, 2.0, NEG, 2.0]  # three tied for the top: all kept
    assert torch.equal(filter_logits(logits, top_k=0), logits)  # 0: off
    assert torch.equal(filter_logits(logits, top_k=4), logits)  # k >= V: off


def test_top_p_keeps_the_smallest_set_reaching_p():
    # probabilities 0.15, 0.5, 0.05, 0.3 (shuffled on purpose); sorted: 0.5, 0.3, 0.15, 0.05,
    # mass strictly before each: 0, 0.5, 0.8, 0.95 -> a token is dropped once that mass >= p
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]], dtype=torch.float64))
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.3) == [False, True, False, False]  # the top token alone (0.5 >= 0.3)
    assert kept(0.5) == [False, True, False, False]  # 0.5 reaches 0.5 exactly
    assert kept(0.79) == [False, True, False, True]  # 0.5 + 0.3 = 0.8
    assert kept(0.81) == [True, True, False, True]  # needs 0.15 too
    assert kept(1.0) == [True, True, True, True]
    # kept logits are unchanged (renormalisation happens in the softmax)
    out = filter_logits(logits, top_p=0.79)
    assert out[0, 1] == logits[0, 1] and out[0, 3] == logits[0, 3]


def test_top_k_then_top_p():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    # top-k 3 keeps 0.4, 0.3, 0.2; top-p 0.6 then works on the renormalised 4/9, 3/9, 2/9:
    # mass before: 0, 0.444, 0.777 -> keeps the first two
    out = filter_logits(logits, top_k=3, top_p=0.6)
    assert torch.isfinite(out)[0].tolist() == [True, True, False, False]


# --------------------------------------------------------------------------- scripted model


class ScriptedLM(nn.Module):
    """A stand-in causal LM that emits a fixed token script per row: after the prompt of row r
    and j generated tokens it puts all its mass (logit 20 vs 0) on ``scripts[r][j]``. It reads
    positions from ``position_ids`` like the real engine feeds them."""

    def __init__(self, prompt_lengths, scripts, vocab_size):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.plens, self.scripts, self.vocab = list(prompt_lengths), scripts, vocab_size

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, **kw):
        n, width = input_ids.shape
        logits = torch.zeros(n, width, self.vocab)
        for r in range(n):
            j = int(position_ids[r, -1]) + 1 - self.plens[r]  # tokens generated so far
            script = self.scripts[r]
            logits[r, -1, script[min(j, len(script) - 1)]] = 20.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tok():
    from posttrain.models import load_tokenizer

    return load_tokenizer("tiny-llama")


def test_rows_stop_at_eos_and_the_rest_run_to_the_limit(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    a, b, c = (tok(x, add_special_tokens=False)["input_ids"][0] for x in ("a", "b", "c"))
    prompts = [[a, b, c], [a]]  # mixed lengths: left-padded
    model = ScriptedLM([3, 1], [[a, b, eos, c, c], [c, c, c, c, c]], len(tok))
    r = generate(model, prompts, pad_id=pad, eos_id=eos, max_new_tokens=5, temperature=0)
    assert r.prompt_width == 3
    assert r.response_ids.tolist() == [[a, b, eos, pad, pad], [c, c, c, c, c]]
    assert r.response_mask[:, 3:].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert r.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]]
    assert r.finished.tolist() == [True, False] and r.truncated.tolist() == [False, True]
    assert r.ended_with_eos.tolist() == [True, False]
    assert (r.sample_logps[0, 5:] == 0).all() and (r.sample_logps[:, :2] == 0).all()
    assert decode_responses(tok, r) == ["ab", "ccccc"]  # EOS and padding dropped
    # every row finished: no further steps
    both = ScriptedLM([3, 1], [[eos], [a, eos]], len(tok))
    r = generate(both, prompts, pad_id=pad, eos_id=eos, max_new_tokens=9, temperature=0)
    assert r.response_ids.tolist() == [[eos, pad], [a, eos]] and r.finished.all()


def test_stop_strings_end_a_row_and_cut_the_text(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids = tok("hi there. and more", add_special_tokens=False)["input_ids"]
    other = tok("no stop here at all", add_special_tokens=False)["input_ids"]
    model = ScriptedLM([1, 1], [ids, other], len(tok))
    n = max(len(ids), len(other))
    r = generate(
        model,
        [[ids[0]], [other[0]]],
        pad_id=pad,
        eos_id=eos,
        max_new_tokens=n,
        temperature=0,
        stop_strings=["."],
        tokenizer=tok,
    )
    dot = next(i for i in range(len(ids)) if "." in tok.decode(ids[: i + 1]))
    assert int(r.response_lengths[0]) == dot + 1  # the token completing the stop string is kept
    assert r.stopped.tolist() == [True, False] and r.finished.tolist() == [True, False]
    assert r.ended_with_eos.tolist() == [False, False]
    texts = decode_responses(tok, r, ["."])
    assert texts[0] == "hi there" and texts[1].startswith("no stop here at all")
    assert int(r.response_lengths[1]) == n  # the other row runs to the limit


# --------------------------------------------------------------------------- backend


def test_engine_backend_is_a_generation_backend_and_syncs_weights():
    from posttrain.models import load_policy

    model, tok = load_policy("tiny-llama")
    backend = EngineBackend(model, tok)
    assert isinstance(backend, GenerationBackend)
    prompts = [tok("The movie", add_special_tokens=False)["input_ids"]] * 2
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_k=20)
    a = backend.generate(prompts, params, generator=torch.Generator().manual_seed(1))
    b = generate(
        model,
        prompts,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
        max_new_tokens=6,
        temperature=0.9,
        top_k=20,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.sample_logps, b.sample_logps)
    # a sampler holding its own copy follows the trained model after sync_weights
    trained, _ = load_policy("tiny-llama")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1)
    backend.sync_weights(trained)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), trained.parameters()))


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("float64", 1e-10)])
def test_sampling_logprobs_match_the_training_forward(dtype, atol):
    """The KV-cache sampler's log-probs (temperature 0.7, top-k on, mixed-length left-padded
    prompts) equal the ones the training forward recomputes over the whole padded sequence, in
    the model's dtype (a float64 model's are not rounded through float32)."""
    from posttrain.data import encode_prompt
    from posttrain.models import forward_logprobs, load_policy

    model, tok = load_policy("tiny-llama", dtype=dtype)
    prompts = [
        encode_prompt(tok, p)
        for p in ("Hi", "The movie was long and the music", "What is 2 plus 3?")
    ]
    r = generate(
        model,
        prompts,
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
        max_new_tokens=12,
        temperature=0.7,
        top_k=50,
        generator=torch.Generator().manual_seed(3),
    )
    out = forward_logprobs(model, r.input_ids, r.attention_mask, r.response_mask, temperature=0.7)
    mask = out.mask.bool()
    assert int(mask.sum()) >= 30 and r.prompt_width == max(len(p) for p in prompts)
    assert r.sample_logps.dtype == out.logps.dtype == getattr(torch, dtype)
    torch.testing.assert_close(out.logps[mask], r.sample_logps[mask], atol=atol, rtol=0)
    assert (r.sample_logps[~mask] == 0).all()
    # the same forward at another temperature does not match: the test can fail
    hot = forward_logprobs(model, r.input_ids, r.attention_mask, r.response_mask, temperature=1.0)
    assert (hot.logps[mask] - r.sample_logps[mask]).abs().max() > 1e-3
    assert not math.isnan(float(out.logps.detach().sum()))


def test_a_repeated_prompt_is_prefilled_once_with_the_same_samples(monkeypatch):
    """Rows repeating the row before's prompt (a prompt's n samples) share one prefill: the
    prefill forward gets the 3 distinct prompts of 6 rows, and the tokens and sampling log-probs
    (float64, temperature 0.8, mixed-length prompts, the same generator) equal those of every
    row prefilled. A prompt that comes back after another one is prefilled again."""
    import sys

    from posttrain.data import encode_prompt
    from posttrain.models import load_policy

    gen_module = sys.modules["posttrain.rollout.generate"]
    model, tok = load_policy("tiny-llama", dtype="float64")
    a, b = (encode_prompt(tok, p) for p in ("The movie was long and the music", "Hi"))
    prompts = [a, a, a, b, b, a]
    widths = []
    model.register_forward_pre_hook(
        lambda m, args, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )

    def sample(once: bool):
        monkeypatch.setattr(gen_module, "PREFILL_ONCE", once)
        widths.clear()
        r = generate(
            model,
            prompts,
            pad_id=tok.pad_token_id,
            eos_id=tok.eos_token_id,
            max_new_tokens=10,
            temperature=0.8,
            generator=torch.Generator().manual_seed(5),
        )
        return r, widths[0]

    shared, prefill = sample(True)
    assert prefill == (3, len(a))  # a, b, a
    every, prefill = sample(False)
    assert prefill == (6, len(a))
    assert torch.equal(shared.input_ids, every.input_ids)
    assert torch.equal(shared.attention_mask, every.attention_mask)
    torch.testing.assert_close(shared.sample_logps, every.sample_logps, atol=1e-12, rtol=0)
    # the samples of one prompt differ (each row draws its own tokens)
    assert len({tuple(row) for row in shared.response_ids[:3].tolist()}) > 1


def test_the_kv_cache_goes_by_the_keyword_the_model_takes():
    """transformers renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in
    5.40): the engine passes whichever the model's forward has, so sampling warns of nothing;
    a forward without ``cache`` (an older transformers; ``ScriptedLM``) gets the old name."""
    import inspect
    import warnings

    from posttrain.models import load_policy
    from posttrain.rollout.generate import cache_argument

    model, tok = load_policy("tiny-llama")
    name = cache_argument(model)
    assert name in inspect.signature(model.forward).parameters
    assert cache_argument(ScriptedLM([1], [[0]], 4)) == "past_key_values"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = generate(
            model,
            [[5, 6, 7]],
            pad_id=tok.pad_token_id,
            eos_id=tok.eos_token_id,
            max_new_tokens=4,
            temperature=0,
        )
    assert r.response_ids.shape == (1, 4)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
