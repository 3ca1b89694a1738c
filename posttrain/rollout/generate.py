"""Batched sampling with a KV cache, for prompts of mixed length.

Prompts are left-padded into one (N, P) block and run through the model once (prefill; a run of
rows with the same prompt, a prompt's n samples, runs it once and copies its cache); then one
token per step is sampled for every unfinished row, reusing the cache. Position ids come from the
attention mask, exactly as in :func:`posttrain.models.forward_logprobs`, so the log-probs recorded
while sampling agree with the ones a training forward recomputes.

The record (:class:`Rollout`) holds ``input_ids`` (N, P + R): the left-padded prompt followed by
the right-padded response; masks; and ``sample_logps`` (N, P + R - 1) in the log-prob convention
of ``posttrain.models.logprobs`` — log softmax(logits / temperature) of each sampled token, before
top-k / top-p truncation (the policy's own probability of the token, which is what PPO-style
ratios need). ``train_logps`` is left for the caller to fill with the training forward's numbers.

A row ends at an EOS id, at a stop string (the response then keeps the token that completed it;
:func:`decode_responses` cuts the text before the stop string), or after ``max_new_tokens``.
Sampling stops once every row has ended; with an FSDP-sharded model (``torchrun`` with
``--distributed fsdp``), once every row of every process has ended (:func:`all_finished`), since
each forward is then a collective.

:class:`GenerationBackend` is the small interface a sampler implements (``generate`` and
``sync_weights``); :class:`EngineBackend` is the built-in one, this module's :func:`generate`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from posttrain.data.collate import pad
from posttrain.models.logprobs import gather_logprobs, position_ids_from_mask
from posttrain.training import distributed
from posttrain.training.device import at_least_float32

PREFILL_ONCE = True
"""False: :func:`generate` prefills every row, repeated prompts too (benchmarks, tests)."""


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (N, P+R) left-padded prompt, then response, right-padded
    attention_mask: torch.Tensor  # (N, P+R)
    response_mask: torch.Tensor  # (N, P+R) 1 on generated tokens, EOS included
    sample_logps: torch.Tensor  # (N, P+R-1) sampling-time log-probs, 0 off the response
    prompt_width: int  # P
    finished: torch.Tensor  # (N,) bool: ended with EOS or a stop string (False: cut at the limit)
    stopped: torch.Tensor | None = None  # (N,) bool: ended at a stop string (None: no stop strings)
    train_logps: torch.Tensor | None = None  # (N, P+R-1) the training forward's, filled by callers

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    @property
    def ended_with_eos(self) -> torch.Tensor:
        """(N,) bool: the response ends with an EOS token."""
        return self.finished if self.stopped is None else self.finished & ~self.stopped

    @property
    def truncated(self) -> torch.Tensor:
        """(N,) bool: cut at ``max_new_tokens`` (neither EOS nor a stop string)."""
        return ~self.finished


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; the same for every backend."""

    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    stop_strings: tuple[str, ...] = ()


@runtime_checkable
class GenerationBackend(Protocol):
    """Anything that samples responses for token-id prompts with the current policy weights."""

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        generator: torch.Generator | None = None,
    ) -> Rollout: ...

    def sync_weights(self, model) -> None:
        """Make the sampler use ``model``'s current weights (after an optimizer step)."""
        ...


class EngineBackend:
    """The built-in engine: :func:`generate` with ``model`` in this process. When the policy being
    trained *is* ``model`` (the usual case), ``sync_weights`` has nothing to do."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompt_ids, params: SamplingParams, *, generator=None) -> Rollout:
        return generate(
            self.model,
            prompt_ids,
            pad_id=self.tokenizer.pad_token_id,
            eos_id=self.tokenizer.eos_token_id,
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            stop_strings=params.stop_strings,
            tokenizer=self.tokenizer,
            generator=generator,
        )

    def sync_weights(self, model) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())


class MergedLoraBackend(EngineBackend):
    """The built-in engine on a plain copy of a LoRA policy with its adapters folded in
    (``W + B A * alpha / r``), for sampling only.

    A peft model runs every adapted layer as the frozen layer plus two small adapter matmuls in
    float32 (casts in and out of bfloat16 included): per generated token that is ~200 extra small
    operations on SmolLM2, about half of a rollout's time on a CPU. The copy costs one model's
    weights in memory. ``sync_weights`` only marks the copy stale; the next ``generate`` merges
    again from the policy's own unmerged weights (:func:`~posttrain.models.lora.plain_state_dict`,
    so no rounding accumulates). The copy's samples are the merged model's, a rounding away from
    the policy's in bfloat16; recipes train on the log-probs of their own training forward, and
    ``rollout/logp_mismatch`` reports the largest difference."""

    def __init__(self, policy, tokenizer):
        super().__init__(policy, tokenizer)  # ``self.model``: the copy, once made
        self.policy, self.stale = policy, True

    def generate(self, prompt_ids, params: SamplingParams, *, generator=None) -> Rollout:
        if distributed.is_fsdp(self.policy):  # sharded: every process samples the policy itself
            self.model = self.policy
        elif self.stale:
            self._merge()
        return super().generate(prompt_ids, params, generator=generator)

    @torch.no_grad()
    def _merge(self) -> None:
        from posttrain.models.lora import plain_state_dict

        if self.model is self.policy:  # made here, so it lands where the policy is now
            import copy

            self.model = copy.deepcopy(self.policy).merge_and_unload().eval()
            self.model.requires_grad_(False)
        self.model.load_state_dict(plain_state_dict(self.policy), strict=True)
        self.stale = False

    def sync_weights(self, model) -> None:
        self.stale = True


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf. (N, V) -> (N, V).

    Top-k keeps every token tied with the k-th. Top-p keeps the smallest set of most likely tokens
    whose mass reaches ``top_p`` (a token is dropped when the mass strictly before it already
    does), so the most likely token always stays."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class _StopStrings:
    """Detects a stop string at the end of each row's response text, decoding only a short tail
    (the last ``longest + 4`` tokens) per step."""

    def __init__(self, strings: Sequence[str], tokenizer):
        if tokenizer is None:
            raise ValueError("stop_strings need the tokenizer")
        self.strings, self.tokenizer = list(strings), tokenizer
        self.window = max(len(s) for s in self.strings) + 4

    def hits(self, tokens: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """(N,) bool: rows (among ``rows``) whose response now contains a stop string."""
        out = torch.zeros_like(rows)
        idx = rows.nonzero().flatten().tolist()
        if not idx:
            return out
        tail = torch.stack(tokens[-self.window :], 1)[idx].tolist()
        for i, ids in zip(idx, tail):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out[i] = any(s in text for s in self.strings)
        return out


def sample_tokens(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` (N, V) -> (N,), by inverse CDF of one float64 uniform per
    row (:func:`inverse_cdf_tokens`), drawn from ``generator`` on its own device (None: the
    default generator of the probabilities' device). The stream is one number per row on every
    device: a CPU generator (the one a recipe seeds and ``--resume`` restores) gives a GPU run the
    same tokens as a CPU run for the same probabilities, and only N numbers cross to the device.
    On a CPU this is ~20x faster than ``torch.multinomial`` over SmolLM2's 49k-token vocabulary
    (which draws an exponential per entry: 71 ms vs ~3 ms for 64 rows)."""
    device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[0], generator=generator, dtype=torch.float64, device=device)
    return inverse_cdf_tokens(probs, u.to(probs.device))


INVERSE_CDF_BLOCK = 256
"""Entries per block of :func:`inverse_cdf_tokens`'s two-level search."""


def inverse_cdf_tokens(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(N, V) probabilities (rows need not be normalised), (N,) uniforms in [0, 1) -> (N,) the
    first index whose cumulative probability exceeds ``u`` times the row's total (so a token of
    probability 0 is never drawn).

    In two levels, in float64: the row's blocks of ``INVERSE_CDF_BLOCK`` entries by their sums,
    then the entries of the chosen block (a cumulative sum over all V entries in float64 costs
    ~7x more on a CPU)."""
    n, v = probs.shape
    size = min(INVERSE_CDF_BLOCK, v)
    blocks = -(-v // size)
    p = probs
    if blocks * size != v:  # zero-probability padding, never drawn
        p = torch.nn.functional.pad(p, (0, blocks * size - v))
    p = p.view(n, blocks, size)
    totals = p.sum(-1, dtype=torch.float64)  # (N, blocks)
    cdf = totals.cumsum(-1)
    target = u.double() * cdf[:, -1]  # (N,)
    # the first block whose cumulative sum exceeds the target (it holds probability > 0)
    block = (cdf <= target[:, None]).sum(-1).clamp(max=blocks - 1)
    rows = torch.arange(n, device=probs.device)
    before = torch.where(block > 0, cdf[rows, (block - 1).clamp(min=0)], 0.0)
    inner = p[rows, block].double()  # (N, size)
    inner_cdf = inner.cumsum(-1)
    index = (inner_cdf <= (target - before)[:, None]).sum(-1)
    # rounding between the two levels may leave the target at or past the block's own sum: then
    # its last entry of probability > 0
    last = size - 1 - (inner.flip(-1) > 0).long().argmax(-1)
    index = torch.minimum(index, last)
    return (block * size + index).clamp(max=v - 1)


def all_finished(done: torch.Tensor, sharded: bool) -> bool:
    """Whether sampling can stop: every row of ``done`` (N,) bool has ended, on every process
    when ``sharded``. An FSDP-sharded model gathers each layer's weights from all processes in
    every forward (a collective), so all processes must make the same number of decoding forwards:
    one whose rows have all ended keeps making forwards (their output unused; it samples nothing
    more, so its rollout and random stream are those of an unsharded run) until every process's
    have; one all-reduce of a flag per step. Unsharded (one process, DDP): this process's rows
    alone."""
    if not sharded:
        return bool(done.all())
    return distributed.all_sum(float(not bool(done.all()))) == 0


def cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers renamed
    ``past_key_values``, whose old name goes in 5.40), or ``past_key_values`` on an older one."""
    base = distributed.unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # PEFT
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_strings: Sequence[str] = (),
    tokenizer=None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample one response per prompt (repeat a prompt n times for n samples). Temperature 0 is
    greedy. Rows stop at EOS or at a stop string (``stop_strings`` needs ``tokenizer``); the
    others run to ``max_new_tokens``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=device)
    stop = _StopStrings(stop_strings, tokenizer) if stop_strings else None
    # a run of rows with the same prompt (n samples of it) is prefilled once: the prompt's cache
    # entries and logits are then copied to each of its rows
    unique, rows = [], []  # rows[i]: row i's prompt among ``unique``
    for i, prompt in enumerate(prompts):
        if i == 0 or not PREFILL_ONCE or list(prompt) != list(prompts[i - 1]):
            unique.append(prompt)
        rows.append(len(unique) - 1)
    ids = pad(unique, pad_id, side="left").to(device)  # (U, P)
    prompt_attn = pad([[1] * len(p) for p in unique], 0, side="left").to(device)  # (U, P)
    positions = position_ids_from_mask(prompt_attn)
    from transformers import DynamicCache

    cache = {cache_argument(model): DynamicCache()}  # filled in place by every forward
    out = model(
        input_ids=ids,
        attention_mask=prompt_attn,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,  # only the last position's logits (ignored by older transformers)
        **cache,
    )
    logits = at_least_float32(out.logits[:, -1])  # (U, V): float64 stays float64
    if len(unique) < len(prompts):
        owner = torch.tensor(rows, device=device)
        next(iter(cache.values())).reorder_cache(owner)
        ids, prompt_attn, positions, logits = (
            x[owner] for x in (ids, prompt_attn, positions, logits)
        )
    n, width = ids.shape
    attn = prompt_attn
    next_pos = positions[:, -1:] + 1
    sharded = distributed.is_fsdp(model)  # every process must make the same number of forwards
    done = torch.zeros(n, dtype=torch.bool, device=device)
    stopped = torch.zeros(n, dtype=torch.bool, device=device)
    tokens, logps, alive = [], [], []
    for _ in range(max_new_tokens):
        if not bool(done.all()):  # FSDP: a finished process only keeps step (all_finished)
            if temperature == 0:
                tok = logits.argmax(-1)
                lp = gather_logprobs(logits, tok)
            else:
                scaled = logits / temperature if temperature != 1.0 else logits
                probs = torch.softmax(filter_logits(scaled, top_k=top_k, top_p=top_p), dim=-1)
                tok = sample_tokens(probs, generator)
                lp = gather_logprobs(scaled, tok)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            alive.append(~done)
            tokens.append(tok)
            logps.append(torch.where(done, torch.zeros_like(lp), lp))
            ended = torch.isin(tok, eos) & ~done
            if stop is not None:
                hit = stop.hits(tokens, ~done & ~ended)
                stopped |= hit
                ended |= hit
            done = done | ended
        if all_finished(done, sharded):
            break
        attn = torch.cat([attn, torch.ones(n, 1, dtype=attn.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=attn,
            position_ids=next_pos,
            use_cache=True,
            **cache,
        )
        logits = at_least_float32(out.logits[:, -1])
        next_pos = next_pos + 1
    model.train(was_training)
    resp = torch.stack(tokens, 1)  # (N, R)
    resp_mask = torch.stack(alive, 1).long()  # (N, R)
    input_ids = torch.cat([ids, resp], 1)
    attention_mask = torch.cat([prompt_attn, resp_mask], 1)
    response_mask = torch.cat([torch.zeros_like(ids), resp_mask], 1)
    sample_logps = logits.new_zeros(n, input_ids.size(1) - 1)  # in the log-probs' dtype
    sample_logps[:, width - 1 :] = torch.stack(logps, 1)
    return Rollout(
        input_ids,
        attention_mask,
        response_mask,
        sample_logps,
        width,
        done,
        stopped if stop is not None else None,
    )


def decode_responses(tokenizer, rollout: Rollout, stop_strings: Sequence[str] = ()) -> list[str]:
    """Response texts, without EOS and padding, cut before the first stop string."""
    texts = []
    for row, mask in zip(
        rollout.response_ids.tolist(), rollout.response_mask[:, rollout.prompt_width :].tolist()
    ):
        kept = [t for t, m in zip(row, mask) if m and t != tokenizer.eos_token_id]
        text = tokenizer.decode(kept, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
        texts.append(text[: min(cuts)] if cuts else text)
    return texts
