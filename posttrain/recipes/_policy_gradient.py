"""The loop RLOO, GRPO and REINFORCE share; each recipe file supplies only its advantage
estimator ``(rewards (B, K), state) -> advantages (B, K)`` and its defaults.

Each step: ``batch_size`` prompts x K samples (``posttrain.rollout.online.collect``) -> sequence
rewards = score - beta * KL(policy || reference) (``kl_in: reward``; with ``kl_in: loss`` the KL
is instead a per-token k3 loss term weighted by beta, GRPO's way) -> advantages from the estimator,
the same for every token of a response -> ``ppo_epochs`` passes of the policy-gradient loss
(``ppo_policy_loss``: with one pass its ratio is 1 and it is plain REINFORCE with a baseline; later
passes are clipped) -> log -> checkpoint (sampling RNG, optimizer, data position and the
estimator's state: exact resume).

No separate no-grad policy forward: the first training forward (before any update) supplies the
"old" log-probs, the KL and the entropy, so a step costs one generation, one reference forward
and one forward + backward per pass; dropout is switched off (``models.modes.disable_dropout``) so that
forward's numbers are the sampling policy's. With ``gradient_accumulation_steps`` > 1 the batch is split into micro-batches, each
weighted by its share of the batch's response tokens (the same gradient as one pass), and the
old log-probs then come from a no-grad forward first.

Under ``torchrun`` each process samples and scores its contiguous slice of the step's prompts
(all K samples of a prompt stay on one process, so the leave-one-out and group baselines are
exact), with its own sampling seed; the loss is normalised by the response tokens of the whole
batch and gradients are summed over processes, so every process takes the same step. Under
``--distributed fsdp`` the policy and the frozen reference are sharded; every process makes the
same forwards (sampling runs until every process's rows have ended; the same number of rows and
micro-batches everywhere), as FSDP's per-forward weight gathering needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain import metrics as M
from posttrain.config import check
from posttrain.losses import kl_estimate, masked_mean, ppo_policy_loss
from posttrain.models import forward_logprobs
from posttrain.recipes._online import OnlineConfig, load_inputs, load_trainable_policy
from posttrain.rollout.online import Experience, collect, rollout_metrics, write_samples
from posttrain.training import (
    DataOrder,
    Run,
    distributed,
    make_optimizer,
    make_scheduler,
    optimizer_step,
)
from posttrain.training.timing import peak_rss_mb, timed

Estimator = Callable[[torch.Tensor, dict], torch.Tensor]


@dataclass(kw_only=True)
class PolicyGradientConfig(OnlineConfig):
    num_samples: int = 4
    """Responses sampled per prompt (K >= 2 for a baseline from the other samples)."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Where the KL to the reference goes: subtracted from the sequence reward (RLOO), or a
    per-token k3 loss term weighted by kl_coef (GRPO)."""
    ppo_epochs: int = 1
    """Passes over each batch (> 1 reuses it with the clipped ratio)."""
    clip_eps: float = 0.2
    """Ratio clip range for passes after the first."""

    def validate(self) -> None:
        super().validate()
        check(self.ppo_epochs >= 1, "ppo_epochs", "must be >= 1", self.ppo_epochs)
        check(self.clip_eps > 0, "clip_eps", "must be > 0", self.clip_eps)
        rows = self.batch_size * self.num_samples
        check(
            rows % self.gradient_accumulation_steps == 0,
            "gradient_accumulation_steps",
            f"must divide batch_size x num_samples = {rows}",
            self.gradient_accumulation_steps,
        )


def sequence_rewards(exp: Experience, kl_coef: float, kl_in: str) -> torch.Tensor:
    """(N,) scores, minus beta * summed k1 KL when the KL goes into the reward."""
    if kl_in == "reward" and exp.kl is not None:
        return exp.scores - kl_coef * exp.kl.sum(-1)
    return exp.scores


def train_on_batch(model, exp: Experience, advantages_of, optimizer, scheduler, cfg) -> dict:
    """``ppo_epochs`` optimizer steps on one batch; returns mean loss / clipfrac / approx KL.
    ``advantages_of(exp) -> (N,)`` is called once ``exp.logps`` is known."""
    r, mask = exp.rollout, exp.mask
    n = mask.size(0)
    micro = n // cfg.gradient_accumulation_steps
    total_tokens = max(distributed.all_sum(float(mask.sum())), 1.0)  # the whole batch's
    advantages = None if exp.logps is None else advantages_of(exp)
    stats: dict[str, list[float]] = {"loss": [], "clip": [], "akl": []}
    for _epoch in range(cfg.ppo_epochs):
        with distributed.accumulate(model):
            for lo in range(0, n, micro):
                mb = slice(lo, lo + micro)
                first = exp.logps is None  # the first forward: before any update
                out = forward_logprobs(
                    model,
                    r.input_ids[mb],
                    r.attention_mask[mb],
                    r.response_mask[mb],
                    temperature=cfg.temperature,
                    with_entropy=first,
                    entropy_grad=False,  # reported, not trained on
                    share_prefix=True,  # the K samples of a prompt: the prompt once
                )
                if first:  # one micro-batch is the whole batch here
                    exp.logps, exp.entropy = out.logps.detach(), out.entropy.detach()
                    r.train_logps = exp.logps
                    advantages = advantages_of(exp)
                token_adv = advantages[mb, None].expand_as(mask[mb])  # (n, T-1)
                loss, clipfrac = ppo_policy_loss(
                    out.logps, exp.logps[mb], token_adv, mask[mb], clip_eps=cfg.clip_eps
                )
                if cfg.kl_in == "loss" and cfg.kl_coef > 0:
                    per_token = kl_estimate(out.logps, exp.ref_logps[mb], kind="k3")
                    loss = loss + cfg.kl_coef * masked_mean(per_token, mask[mb])
                (loss * mask[mb].sum() / total_tokens).backward()
                with torch.no_grad():
                    akl = masked_mean(kl_estimate(exp.logps[mb], out.logps, kind="k3"), mask[mb])
                stats["loss"].append(float(loss.detach()))
                stats["clip"].append(float(clipfrac))
                stats["akl"].append(float(akl))
        distributed.reduce_gradients(model)  # summed over processes
        optimizer_step(model.parameters(), optimizer, scheduler, cfg.max_grad_norm)
    return {k: sum(v) / len(v) for k, v in stats.items()}


def run_policy_gradient(
    cfg: PolicyGradientConfig, flags: dict[str, bool], name: str, estimator: Estimator
) -> None:
    """Train with advantages from ``estimator(rewards (B, K), state) -> (B, K)``; ``state`` is a
    dict the estimator may keep between steps (e.g. a running baseline), saved in checkpoints."""
    tokenizer, prompts, reward_fn = load_inputs(cfg)  # bad input fails before output_dir
    run_ = Run(cfg, flags, name)
    torch.manual_seed(cfg.seed)
    model, reference, backend = load_trainable_policy(cfg, tokenizer)
    model = distributed.wrap(model, cfg.distributed)  # DDP / FSDP under torchrun
    optimizer = make_optimizer(model, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(
        optimizer,
        warmup_steps=cfg.warmup_steps,
        total_steps=cfg.max_steps * cfg.ppo_epochs,
        kind=cfg.lr_schedule,
    )
    order = DataOrder(len(prompts), cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + distributed.rank())
    est_state: dict = {}
    modules = {"model": model}
    state = run_.restore(
        modules=modules, optimizer=optimizer, scheduler=scheduler, generators={"sample": generator}
    )
    if state is not None:
        order.load_state_dict(state["data"])
        est_state = state["estimator"]

    def advantages_of(exp: Experience) -> torch.Tensor:  # (N,)
        rewards = sequence_rewards(exp, cfg.kl_coef, cfg.kl_in).view(-1, cfg.num_samples)
        return estimator(rewards, est_state).reshape(-1)

    for step in run_.steps():
        timings: dict[str, float] = {}
        batch = distributed.shard([prompts[i] for i in order.next(cfg.batch_size)])
        exp = collect(
            backend, model, reference, tokenizer, batch, reward_fn, generator=generator,
            with_policy=cfg.gradient_accumulation_steps > 1, timings=timings, **cfg.collect_args(),
        )  # fmt: skip
        with timed(timings, "training"):
            stats = train_on_batch(model, exp, advantages_of, optimizer, scheduler, cfg)
        backend.sync_weights(distributed.unwrap(model))

        if run_.should_log(step):
            run_.log(
                step,
                {
                    **rollout_metrics(exp, cfg.kl_coef, timings),
                    M.POLICY_APPROX_KL: stats["akl"],
                    M.POLICY_CLIPFRAC: stats["clip"],
                    M.LOSS_POLICY: stats["loss"],
                    M.TRAIN_LR: scheduler.get_last_lr()[0],
                },
            )
        if cfg.samples_every and step % cfg.samples_every == 0 and distributed.is_main():
            write_samples(run_.dir / "samples.jsonl", step, exp, cfg.samples_count)
        run_.step_done(
            step,
            modules=modules,
            optimizer=optimizer,
            scheduler=scheduler,
            generators={"sample": generator},
            state={"data": order.state_dict(), "estimator": est_state},
        )
    run_.finish(model, tokenizer, note=lambda: f" (peak RSS {peak_rss_mb():.0f} MB)")
