"""Rollouts of the online recipes (PPO, RLOO, GRPO, REINFORCE, best-of-n): K samples per prompt
scored by a reward function (with no-EOS and length penalties), the policy's and the
reference's log-probs from the training forward, KL to the reference, rollout metrics and the
sample table. Plain arguments only (no config object, no judges): the online recipes' shared
config and reward loading are ``posttrain/recipes/_online.py``. Under ``torchrun --distributed
fsdp`` the built-in sampler samples from the sharded policy, every process making the same
number of forwards (``posttrain.rollout.generate.all_finished``).

A typical step::

    exp = collect(backend, model, reference, tokenizer, prompts, reward_fn, k=4,
                  params=SamplingParams(max_new_tokens=32), max_prompt_tokens=480,
                  generator=gen)
    exp.scores  # (N,) N = len(prompts) * k, rows grouped by prompt: view(-1, k) is (B, K)
    exp.kl      # (N, T-1) per-token k1 KL to the reference on response tokens
    rollout_metrics(exp, kl_coef=0.05)  # objective/*, response/*
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain import metrics as M
from posttrain.losses import kl_estimate, masked_mean
from posttrain.models import TokenLogprobs, forward_logprobs
from posttrain.models.modes import eval_mode
from posttrain.rollout.generate import GenerationBackend, Rollout, SamplingParams, decode_responses
from posttrain.rollout.sampler import encode_prompts, sample_rollouts
from posttrain.training.device import module_device, to_device
from posttrain.training.timing import peak_rss_mb, timed


@dataclass
class Experience:
    """One batch of scored rollouts (N = prompts x K rows, grouped by prompt; T = P + R)."""

    rollout: Rollout
    prompts: list  # (N,) one per row (each prompt repeated K times, consecutively)
    texts: list[str]  # (N,) decoded responses
    raw_scores: torch.Tensor  # (N,) the reward source's numbers
    scores: torch.Tensor  # (N,) after the no-EOS and length penalties
    logps: torch.Tensor | None = None  # (N, T-1) policy, training forward before the update
    ref_logps: torch.Tensor | None = None  # (N, T-1) reference (None when kl_coef is 0)
    entropy: torch.Tensor | None = None  # (N, T-1) policy entropy per token
    hidden: torch.Tensor | None = None  # (N, T, H) policy's last hidden state (value heads)

    @property
    def mask(self) -> torch.Tensor:
        """(N, T-1) float, 1 on response tokens (log-prob convention)."""
        return self.rollout.response_mask[:, 1:].float()

    @property
    def kl(self) -> torch.Tensor | None:
        """(N, T-1) per-token k1 estimate of KL(policy || reference), 0 off the response."""
        if self.logps is None or self.ref_logps is None:
            return None
        return kl_estimate(self.logps, self.ref_logps, kind="k1") * self.mask


def sample(
    backend: GenerationBackend,
    tokenizer,
    prompts: list,
    *,
    k: int,
    params: SamplingParams,
    max_prompt_tokens: int,
    generator: torch.Generator | None = None,
) -> tuple[list, Rollout, list[str]]:
    """``k`` responses per prompt in one batch (``rollout.sampler.sample_rollouts``): (rows (N,)
    prompt per row, rollout, texts (N,))."""
    rows = [p for p in prompts for _ in range(k)]
    (rollout,) = sample_rollouts(
        backend,
        tokenizer,
        prompts,
        params,
        n=k,
        max_prompt_tokens=max_prompt_tokens,
        generator=generator,
    )
    return rows, rollout, decode_responses(tokenizer, rollout, params.stop_strings)


def penalized_scores(
    raw: torch.Tensor,
    rollout: Rollout,
    *,
    missing_eos_penalty: float = 0.0,
    length_penalty: float = 0.0,
    reward_clip: float | None = None,
) -> torch.Tensor:
    """(N,) ``clip(raw) - missing_eos_penalty * [cut at max_new_tokens] - length_penalty *
    length``, ``clip`` to [-reward_clip, reward_clip] (None: none)."""
    if reward_clip is not None:
        raw = raw.clamp(-reward_clip, reward_clip)
    truncated = rollout.truncated.to(raw.dtype)
    return (
        raw
        - missing_eos_penalty * truncated
        - length_penalty * rollout.response_lengths.to(raw.dtype)
    )


@torch.no_grad()
def policy_logprobs(
    model, rollout: Rollout, temperature: float, *, with_hidden: bool = False
) -> TokenLogprobs:
    """The training forward's log-probs and entropy of the rollout (eval mode, no grad); also
    stored as ``rollout.train_logps``."""
    with eval_mode(model):
        out = forward_logprobs(
            model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.response_mask,
            temperature=temperature,
            with_entropy=True,
            with_hidden=with_hidden,
            share_prefix=True,  # the K samples of a prompt: the prompt once
        )
    rollout.train_logps = out.logps
    return out


@torch.no_grad()
def reference_logprobs(reference, rollout: Rollout, temperature: float) -> torch.Tensor:
    """(N, T-1) the reference policy's log-probs of the rollout (``reference``: a
    ``posttrain.training.reference.Reference``)."""
    return reference.token_logps(
        rollout.input_ids,
        rollout.attention_mask,
        rollout.response_mask,
        temperature,
        share_prefix=True,
    )


def collect(
    backend: GenerationBackend,
    model,
    reference,
    tokenizer,
    prompts: list,
    reward_fn,
    *,
    k: int,
    params: SamplingParams,
    max_prompt_tokens: int,
    generator: torch.Generator | None = None,
    missing_eos_penalty: float = 0.0,
    length_penalty: float = 0.0,
    reward_clip: float | None = None,
    with_reference: bool = True,
    with_policy: bool = True,
    with_hidden: bool = False,
    timings: dict[str, float] | None = None,
) -> Experience:
    """Sample ``k`` responses per prompt, score them, and (``with_policy`` / ``with_reference``)
    compute the policy's and the reference's log-probs of every response token with the training
    forward. ``timings`` collects seconds under ``generation``, ``scoring``, ``logprobs``."""
    with timed(timings, "generation"):
        rows, rollout, texts = sample(
            backend,
            tokenizer,
            prompts,
            k=k,
            params=params,
            max_prompt_tokens=max_prompt_tokens,
            generator=generator,
        )
    rollout = to_device(rollout, module_device(model))  # e.g. vLLM's, made on the CPU
    with timed(timings, "scoring"):
        raw = torch.tensor(
            reward_fn(rows, texts), dtype=torch.float32, device=rollout.input_ids.device
        )
    scores = penalized_scores(
        raw,
        rollout,
        missing_eos_penalty=missing_eos_penalty,
        length_penalty=length_penalty,
        reward_clip=reward_clip,
    )
    exp = Experience(rollout, rows, texts, raw, scores)
    with timed(timings, "logprobs"):
        if with_policy:
            pol = policy_logprobs(model, rollout, params.temperature, with_hidden=with_hidden)
            exp.logps, exp.entropy, exp.hidden = pol.logps, pol.entropy, pol.hidden
        if with_reference:
            exp.ref_logps = reference_logprobs(reference, rollout, params.temperature)
    return exp


def rollout_metrics(
    exp: Experience, kl_coef: float, timings: dict[str, float] | None = None
) -> dict[str, float]:
    """``objective/*`` and ``response/*`` of one batch (plus ``time/*_s`` of ``timings`` and the
    peak RSS when given). ``objective/kl`` is the mean summed k1 KL per response;
    ``objective/rlhf_reward`` the mean of score - beta * that KL."""
    r = exp.rollout
    out = {
        M.OBJECTIVE_SCORES: float(exp.raw_scores.mean()),
        M.RESPONSE_LENGTH: float(r.response_lengths.float().mean()),
        M.RESPONSE_TRUNCATED: float(r.truncated.float().mean()),
        M.RESPONSE_EOS: float(r.ended_with_eos.float().mean()),
    }
    kl = exp.kl
    if kl is not None:
        seq_kl = kl.sum(-1)  # (N,)
        out[M.OBJECTIVE_KL] = float(seq_kl.mean())
        out[M.OBJECTIVE_RLHF_REWARD] = float((exp.scores - kl_coef * seq_kl).mean())
    else:
        out[M.OBJECTIVE_RLHF_REWARD] = float(exp.scores.mean())
    if exp.entropy is not None:
        out[M.OBJECTIVE_ENTROPY] = float(masked_mean(exp.entropy, exp.mask))
    if r.train_logps is not None:
        gap = (r.train_logps - r.sample_logps).abs() * exp.mask
        out[M.ROLLOUT_LOGP_MISMATCH] = float(gap.max()) if gap.numel() else 0.0
    if timings is not None:
        out.update({f"time/{k}_s": v for k, v in timings.items()})
        out[M.MEMORY_PEAK_RSS] = peak_rss_mb()
    return out


def write_samples(path: Path, step: int, exp: Experience, n: int = 4) -> None:
    """Append ``n`` rows (step, prompt, response, score, length, truncated) to ``samples.jsonl``."""
    lengths = exp.rollout.response_lengths.tolist()
    cut = exp.rollout.truncated.tolist()
    with open(path, "a") as f:
        for i in range(min(n, len(exp.texts))):
            row = {
                M.STEP: step,
                "prompt": exp.prompts[i],
                "response": exp.texts[i],
                "score": float(exp.raw_scores[i]),
                "length": int(lengths[i]),
                "truncated": bool(cut[i]),
            }
            f.write(json.dumps(row) + "\n")


__all__ = [
    "Experience",
    "collect",
    "encode_prompts",
    "penalized_scores",
    "policy_logprobs",
    "reference_logprobs",
    "rollout_metrics",
    "sample",
    "write_samples",
]
