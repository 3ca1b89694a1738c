"""The one prompt -> samples path: encode prompts (chat template when the tokenizer has one),
repeat each ``n`` times, generate through a :class:`GenerationBackend` (the built-in engine for a
plain model) in batches, decode. Every command that samples goes through it: sample, best-of-n,
expert-iteration, cai, online-dpo, eval, demo, and the online RL recipes' rollouts."""

from __future__ import annotations

import torch

from posttrain.data import encode_prompt
from posttrain.rollout.generate import (
    EngineBackend,
    GenerationBackend,
    Rollout,
    SamplingParams,
    decode_responses,
)


def as_backend(model_or_backend, tokenizer) -> GenerationBackend:
    """A generation backend: the given one, or the built-in engine on a model."""
    if isinstance(model_or_backend, GenerationBackend):
        return model_or_backend
    return EngineBackend(model_or_backend, tokenizer)


def encode_prompts(
    tokenizer, prompts: list, max_prompt_tokens: int | None = None
) -> list[list[int]]:
    """Token ids of each prompt (chat template when the tokenizer has one), keeping the last
    ``max_prompt_tokens`` (all with None)."""
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    return ids if max_prompt_tokens is None else [i[-max_prompt_tokens:] for i in ids]


def sample_rollouts(
    model_or_backend,
    tokenizer,
    prompts: list,
    params: SamplingParams,
    *,
    n: int = 1,
    batch_size: int | None = None,
    max_prompt_tokens: int | None = None,
    generator: torch.Generator | None = None,
) -> list[Rollout]:
    """``n`` samples per prompt (rows grouped by prompt: prompt i's are rows i*n .. i*n+n-1),
    generated ``batch_size`` rows at a time (None: all rows in one call, even none, which a
    sharded model needs so every process makes the same forwards). One Rollout per batch."""
    backend = as_backend(model_or_backend, tokenizer)
    ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    rows = [i for i in ids for _ in range(n)]
    if batch_size is None:
        return [backend.generate(rows, params, generator=generator)]
    return [
        backend.generate(rows[i : i + batch_size], params, generator=generator)
        for i in range(0, len(rows), batch_size)
    ]


def sample_texts(
    model,
    tokenizer,
    prompts,
    *,
    n: int = 1,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_strings: tuple[str, ...] = (),
    batch_size: int = 16,
    generator: torch.Generator | None = None,
) -> list[list[str]]:
    """``n`` completions for each prompt (string or messages), generated in batches of
    ``batch_size`` sequences: a list per prompt. ``model``: a model or a GenerationBackend."""
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_strings=tuple(stop_strings),
    )
    texts: list[str] = []
    for rollout in sample_rollouts(
        model, tokenizer, prompts, params, n=n, batch_size=batch_size, generator=generator
    ):
        texts += decode_responses(tokenizer, rollout, params.stop_strings)
    return [texts[k * n : (k + 1) * n] for k in range(len(prompts))]
