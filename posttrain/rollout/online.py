"""What every online recipe (PPO, RLOO, GRPO, REINFORCE, online DPO, best-of-n) shares: prompts,
the reference policy, K samples per prompt scored by a reward source (with no-EOS and length
penalties), policy and reference log-probs from the training forward, KL to the reference, the KL
controller, metrics, the sample table and peak memory. The recipes keep only what makes them
different; the functions take plain arguments (no config object), so other recipes can call them.
Under ``torchrun --distributed fsdp`` the frozen reference is sharded like the policy
(:func:`make_reference`) and the built-in sampler samples from the sharded policy, every process
making the same number of forwards (``posttrain.rollout.generate.all_finished``).

A typical step::

    exp = collect(backend, model, reference, tokenizer, prompts, reward_fn, k=4,
                  params=SamplingParams(max_new_tokens=32), max_prompt_tokens=480,
                  generator=gen)
    exp.scores  # (N,) N = len(prompts) * k, rows grouped by prompt: view(-1, k) is (B, K)
    exp.kl      # (N, T-1) per-token k1 KL to the reference on response tokens
    rollout_metrics(exp, kl_coef=0.05)  # objective/*, response/*
"""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from posttrain import metrics as M
from posttrain.config import TrainConfig, check
from posttrain.data import encode_prompt, load_examples
from posttrain.judges.sources import load_reward_source
from posttrain.losses import adaptive_kl_coef, kl_estimate, masked_mean
from posttrain.models import (
    TokenLogprobs,
    check_model_name,
    forward_logprobs,
    load_model,
    load_tokenizer,
)
from posttrain.models.lora import adapters_disabled, apply_lora
from posttrain.rollout.generate import (
    EngineBackend,
    GenerationBackend,
    Rollout,
    SamplingParams,
    decode_responses,
)
from posttrain.training import distributed


@dataclass(kw_only=True)
class OnlineConfig(TrainConfig):
    """Fields of every online recipe (on top of the training ones)."""

    train_data: str | None = None
    """Prompt-only data (a `prompt` per record); or give --task."""
    task: str | None = None
    """Built-in task (`sentiment`, `counting`): its prompts, and its gold reward by default."""
    num_prompts: int = 512
    """With --task: how many of its prompts to use."""
    reward: str | None = None
    """Reward: task:NAME, module:function (prompts, completions -> floats), a reward-model
    directory, or judge:KIND (see docs/rl.md)."""
    judge_model: str | None = None
    """Model of a judge:KIND reward."""
    normalize_reward: bool = False
    """Whiten a reward model's scores with its training-set mean/std."""
    num_samples: int = 1
    """Responses sampled per prompt (K); batch_size counts prompts."""
    max_new_tokens: int = 32
    """Longest response."""
    temperature: float = 1.0
    """Sampling temperature (the training forward uses the same)."""
    top_p: float = 1.0
    """Nucleus sampling."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    stop_strings: list[str] = field(default_factory=list)
    """Strings that end a response (besides EOS); the text is cut before them."""
    kl_coef: float = 0.05
    """beta: weight of KL(policy || reference)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward (Schulman's k1, k2, k3)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a response cut at max_new_tokens (no EOS, no stop string)."""
    length_penalty: float = 0.0
    """Subtracted from the score per response token."""
    samples_every: int = 0
    """Append a table of sample completions to samples.jsonl every this many steps (0: never)."""
    samples_count: int = 4
    """Rows per sample table."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""

    def validate(self) -> None:
        super().validate()
        check(
            self.train_data is not None or self.task is not None,
            "train_data",
            "give prompts or --task",
            None,
        )
        check(
            self.reward is not None or self.task is not None,
            "reward",
            "give a reward spec or --task",
            None,
        )
        check(self.num_samples >= 1, "num_samples", "must be >= 1", self.num_samples)
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", self.max_new_tokens)
        check(
            self.max_new_tokens < self.max_length,
            "max_new_tokens",
            "must be below max_length (prompt + response)",
            self.max_new_tokens,
        )
        check(self.temperature > 0, "temperature", "must be > 0 for training", self.temperature)
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        check(self.top_k >= 0, "top_k", "must be >= 0", self.top_k)
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0", self.kl_coef)
        check(self.samples_every >= 0, "samples_every", "must be >= 0", self.samples_every)

    def reward_spec(self) -> str:
        return self.reward or f"task:{self.task}"

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_strings=tuple(self.stop_strings),
        )

    def collect_args(self) -> dict:
        """The plain keyword arguments of :func:`collect` these settings give."""
        return {
            "k": self.num_samples,
            "params": self.sampling(),
            "max_prompt_tokens": self.max_length - self.max_new_tokens,
            "missing_eos_penalty": self.missing_eos_penalty,
            "length_penalty": self.length_penalty,
        }


def load_prompts(train_data: str | None, task: str | None, n: int, seed: int) -> list:
    """Prompts from a prompt-only file (``train_data``) or a built-in task's first ``n``."""
    if train_data is not None:
        return [ex.prompt for ex in load_examples(train_data, ["prompt"], what="--train_data")]
    from posttrain.tasks import get_task

    return get_task(task).prompts(n, seed=seed)


def load_inputs(cfg: OnlineConfig):
    """``(tokenizer, prompts, reward source)`` of an online recipe: everything that can fail on
    bad input, so call it before ``output_dir`` is made."""
    check_model_name(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    prompts = load_prompts(cfg.train_data, cfg.task, cfg.num_prompts, cfg.seed)
    reward_fn = load_reward_source(
        cfg.reward_spec(),
        policy_tokenizer=tokenizer,
        normalize=cfg.normalize_reward,
        judge_model=cfg.judge_model,
    )
    return tokenizer, prompts, reward_fn


def load_trainable_policy(cfg: OnlineConfig, tokenizer, model=None):
    """``(policy, reference, backend)``: ``model`` (default: ``cfg.model`` loaded) with LoRA when
    configured, dropout off, in train mode; the reference (:func:`make_reference`, sharded like
    the policy under ``--distributed fsdp``); the built-in sampler on it. Wrap the policy with
    ``distributed.wrap(policy, cfg.distributed)`` afterwards (FSDP shards it in place, so the
    sampler then samples from the sharded policy)."""
    if model is None:
        model = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer)
    model = disable_dropout(apply_lora(model, cfg.lora)).train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    reference = make_reference(model, cfg.lora.enabled, cfg.distributed)
    return model, reference, EngineBackend(model, tokenizer)


def make_reference(model, lora_enabled: bool, strategy: str = "ddp"):
    """A zero-argument context factory yielding the reference policy: the policy with adapters
    disabled under LoRA, else a frozen copy of the starting model (FSDP-sharded when ``strategy``
    is ``fsdp``, like the policy). Call it with the model as ``apply_lora`` returned it, before
    the first update."""
    if lora_enabled:
        return lambda: adapters_disabled(model)
    frozen = copy.deepcopy(model).requires_grad_(False).eval()
    frozen = distributed.wrap_frozen(frozen, strategy)
    return lambda: contextlib.nullcontext(frozen)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (``nn.Dropout`` modules and attention dropout), so the
    training forward computes the same log-probs as sampling did (the notes' PPO: "give up
    dropout throughout"). Returns ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


class KLController:
    """Fixed (``target`` None) or adaptive KL coefficient (``losses.adaptive_kl_coef``, Ziegler
    et al. 2019); its state goes into checkpoints."""

    def __init__(self, value: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if self.target is not None:
            self.value = adaptive_kl_coef(
                self.value, kl, target=self.target, horizon=self.horizon, n_steps=n_steps
            )

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


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


def encode_prompts(tokenizer, prompts: list, max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of each prompt (chat template when the tokenizer has one), keeping the last
    ``max_prompt_tokens``."""
    return [encode_prompt(tokenizer, p)[-max_prompt_tokens:] for p in prompts]


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
    """``k`` responses per prompt: (rows (N,) prompt per row, rollout, texts (N,))."""
    rows = [p for p in prompts for _ in range(k)]
    ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    rollout = backend.generate([i for i in ids for _ in range(k)], params, generator=generator)
    return rows, rollout, decode_responses(tokenizer, rollout, params.stop_strings)


def penalized_scores(
    raw: torch.Tensor,
    rollout: Rollout,
    *,
    missing_eos_penalty: float = 0.0,
    length_penalty: float = 0.0,
) -> torch.Tensor:
    """(N,) ``raw - missing_eos_penalty * [cut at max_new_tokens] - length_penalty * length``."""
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
    was = model.training
    model.eval()
    out = forward_logprobs(
        model,
        rollout.input_ids,
        rollout.attention_mask,
        rollout.response_mask,
        temperature=temperature,
        with_entropy=True,
        with_hidden=with_hidden,
    )
    model.train(was)
    rollout.train_logps = out.logps
    return out


@torch.no_grad()
def reference_logprobs(reference, rollout: Rollout, temperature: float) -> torch.Tensor:
    """(N, T-1) the reference policy's log-probs of the rollout (``reference`` from
    :func:`make_reference`)."""
    with reference() as ref_model:
        return forward_logprobs(
            ref_model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.response_mask,
            temperature=temperature,
        ).logps


@contextlib.contextmanager
def timed(timings: dict[str, float] | None, key: str):
    """Add the block's wall time to ``timings[key]`` (seconds)."""
    t0 = time.perf_counter()
    yield
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


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
    with timed(timings, "scoring"):
        raw = torch.tensor(reward_fn(rows, texts), dtype=torch.float32)
    scores = penalized_scores(
        raw, rollout, missing_eos_penalty=missing_eos_penalty, length_penalty=length_penalty
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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = [
    "Experience",
    "KLController",
    "OnlineConfig",
    "collect",
    "disable_dropout",
    "encode_prompts",
    "load_inputs",
    "load_prompts",
    "load_reward_source",
    "load_trainable_policy",
    "make_reference",
    "peak_rss_mb",
    "penalized_scores",
    "policy_logprobs",
    "reference_logprobs",
    "rollout_metrics",
    "sample",
    "timed",
    "write_samples",
]
