"""PPO for RLHF (step 3 of InstructGPT), as the lecture notes teach it ("PPO in practice").

Each iteration:
1. rollout: ``batch_size`` prompts x ``num_samples`` responses from the current policy, scored by
   the reward source (clipped to ``reward_clip``; no-EOS / length penalties), with the policy's
   and the reference's log-probs and the values from the training forward;
2. reward shaping: per-token reward = -beta * KL estimate (``kl_clip_zero`` clamps it at 0) with
   the score added at the last response token (``whiten_rewards`` rescales them, mean kept);
3. GAE (``gamma``, ``lam``) over the value model's values -> returns; advantages whitened;
4. ``ppo_epochs`` passes over shuffled minibatches (``num_minibatches`` optimizer steps each):
   clipped policy loss + ``vf_coef`` * clipped value loss - ``entropy_coef`` * entropy
   (+ PPO-ptx: ``ptx_coef`` * NLL of ``ptx_data``, raw text or SFT records, or with ``ptx_loss``
   ``kl`` the exact KL from the reference at those tokens); the epoch loop stops early once the mean
   approximate KL to the sampling policy passes ``max_approx_kl``;
5. the KL controller updates beta (fixed, or adaptive toward ``kl_target``, Ziegler et al. 2019);
6. log, samples table, checkpoint (sampling RNG, KL controller, optimizer, data positions, value
   model: ``--resume`` continues exactly).

The value head shares the policy's trunk by default (``posttrain.models.value``; with
``value_trunk_grad`` False it reads the trunk's states detached); with
``separate_critic`` it gets its own trunk, saved at the end to ``critic/`` as a transformers
sequence-classification directory. With LoRA the reference is the policy with adapters off.
Math: ``posttrain.losses`` (kl_shaped_rewards, gae, masked_whiten, ppo_policy_loss,
ppo_value_loss, kl_estimate, explained_variance, value_clipfrac).

Under ``torchrun`` each process samples and scores its contiguous slice of the step's
prompts with its own sampling seed and splits its rows into ``num_minibatches`` minibatches (a
global minibatch is every process's i-th); advantage (and reward) whitening uses the statistics of
all processes' rows, a minibatch's loss is normalised by the response tokens of the global
minibatch (PPO-ptx: each process takes a slice of the ptx batch, normalised by the whole batch's
tokens), gradients of the policy and of the value model are summed, and the approx-KL early stop
and the KL controller see means over all processes, so every process takes the same steps.
Under ``--distributed fsdp`` the policy, the value model (head, and critic trunk) and the frozen
reference are sharded; every process makes the same forwards (sampling runs until every
process's rows have ended; minibatches have the same number of rows everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain import metrics as M
from posttrain.config import check
from posttrain.losses import (
    KLController,
    explained_variance,
    gae,
    kl_estimate,
    kl_shaped_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    value_clipfrac,
)
from posttrain.models import check_model_name, forward_logprobs, load_model
from posttrain.models.modes import disable_dropout
from posttrain.models.value import build_value_model, load_critic
from posttrain.recipes._online import OnlineConfig, load_inputs, load_trainable_policy
from posttrain.recipes._ptx import PtxConfig, load_ptx, ptx_term
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

SUMMARY = "PPO with a value head, KL-shaped reward, GAE, adaptive KL, PPO-ptx; exact resume."


@dataclass(kw_only=True)
class Config(OnlineConfig, PtxConfig):
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    num_minibatches: int = 2
    """Minibatches per pass (optimizer steps per pass)."""
    clip_eps: float = 0.2
    """Policy ratio clip range."""
    value_clip_eps: float = 0.2
    """Value clip range around the rollout-time values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    gamma: float = 1.0
    """Discount (1: the RLHF bandit, reward-to-go)."""
    lam: float = 0.95
    """GAE lambda."""
    kl_target: float | None = None
    """Adaptive KL: target KL per response, in nats (None: fixed kl_coef)."""
    kl_horizon: int = 10000
    """Adaptive KL horizon, in samples (Ziegler et al. 2019)."""
    kl_clip_zero: bool = False
    """Clip the per-token KL penalty at 0 (no bonus for tokens the reference likes more)."""
    whiten_rewards: bool = False
    """Rescale the shaped per-token rewards to unit variance over the batch (mean kept)."""
    max_approx_kl: float | None = None
    """Stop the epoch loop once an epoch's mean approx KL to the sampling policy exceeds this."""
    separate_critic: bool = False
    """Give the value head its own trunk (a copy of the starting policy, or critic_model)."""
    value_trunk_grad: bool = True
    """With the shared trunk: the value loss's gradients reach the trunk (the policy's weights).
    False: the head learns on the policy's hidden states detached, so fitting values cannot move
    the policy."""
    critic_model: str | None = None
    """With separate_critic: the critic's starting model (a model name, HF directory, or a reward
    model's directory: its trunk)."""

    def validate(self) -> None:
        super().validate()
        check(self.ppo_epochs >= 1, "ppo_epochs", "must be >= 1", self.ppo_epochs)
        rows = self.batch_size * self.num_samples // distributed.world_size()  # per process
        per = " per process" if distributed.world_size() > 1 else ""
        check(
            1 <= self.num_minibatches <= rows and rows % self.num_minibatches == 0,
            "num_minibatches",
            f"must divide batch_size x num_samples{per} = {rows}",
            self.num_minibatches,
        )
        check(
            (rows // self.num_minibatches) % self.gradient_accumulation_steps == 0,
            "gradient_accumulation_steps",
            f"must divide the minibatch ({rows // self.num_minibatches} rows)",
            self.gradient_accumulation_steps,
        )
        check(self.clip_eps > 0, "clip_eps", "must be > 0", self.clip_eps)
        check(self.value_clip_eps > 0, "value_clip_eps", "must be > 0", self.value_clip_eps)
        check(0 <= self.gamma <= 1, "gamma", "must be in [0, 1]", self.gamma)
        check(0 <= self.lam <= 1, "lam", "must be in [0, 1]", self.lam)
        check(
            self.kl_target is None or self.kl_target > 0, "kl_target", "must be > 0", self.kl_target
        )
        check(self.kl_horizon >= 1, "kl_horizon", "must be >= 1", self.kl_horizon)
        self.check_ptx()
        check(
            self.value_trunk_grad or not self.separate_critic,
            "value_trunk_grad",
            "is for the shared trunk; a separate critic's trunk is the value model's own",
            self.value_trunk_grad,
        )
        check(
            self.critic_model is None or self.separate_critic,
            "critic_model",
            "needs --separate_critic",
            self.critic_model,
        )


def advantages_and_returns(exp: Experience, values: torch.Tensor, kl_coef: float, cfg: Config):
    """Shaped rewards -> GAE -> whitened advantages; values (N, T-1) -> (advantages, returns)."""
    rewards = kl_shaped_rewards(
        exp.scores,
        exp.logps,
        exp.ref_logps,
        exp.mask,
        kl_coef=kl_coef,
        kind=cfg.kl_estimator,
        clip_zero=cfg.kl_clip_zero,
    )
    if cfg.whiten_rewards:
        rewards = distributed.masked_whiten_all(rewards, exp.mask, shift_mean=False)
    advantages, returns = gae(rewards, values, exp.mask, gamma=cfg.gamma, lam=cfg.lam)
    return distributed.masked_whiten_all(advantages, exp.mask), returns


def ppo_terms(model, value, exp: Experience, mb, old_values, advantages, returns, cfg: Config):
    """The loss of rows ``mb`` (clipped policy loss + vf_coef * clipped value loss - entropy_coef
    * entropy, token means over these rows) and their statistics (floats)."""
    r, m = exp.rollout, exp.mask[mb]
    out = forward_logprobs(
        model,
        r.input_ids[mb],
        r.attention_mask[mb],
        r.response_mask[mb],
        temperature=cfg.temperature,
        with_entropy=True,
        entropy_grad=cfg.entropy_coef != 0,  # else only reported: no backward through it
        with_hidden=distributed.unwrap(value).shares_trunk,
        share_prefix=True,  # a prompt's samples in the minibatch: the prompt once
    )
    hidden = out.hidden if out.hidden is None or cfg.value_trunk_grad else out.hidden.detach()
    values = value(r.input_ids[mb], r.attention_mask[mb], hidden)
    pg_loss, clipfrac = ppo_policy_loss(
        out.logps, exp.logps[mb], advantages[mb], m, clip_eps=cfg.clip_eps
    )
    vf_loss = ppo_value_loss(values, old_values[mb], returns[mb], m, clip_eps=cfg.value_clip_eps)
    entropy = masked_mean(out.entropy, m)
    with torch.no_grad():
        approx_kl = masked_mean(kl_estimate(exp.logps[mb], out.logps, kind="k3"), m)
        vclip = value_clipfrac(values, old_values[mb], returns[mb], m, clip_eps=cfg.value_clip_eps)
    parts = {
        "pg": pg_loss,
        "vf": vf_loss,
        "clip": clipfrac,
        "akl": approx_kl,
        "ent": entropy,
        "vclip": vclip,
    }
    loss = pg_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * entropy
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def run(cfg: Config, flags: dict[str, bool]) -> None:
    tokenizer, prompts, reward_fn = load_inputs(cfg)  # bad input fails before output_dir
    if cfg.critic_model:
        check_model_name(cfg.critic_model)
    ptx = load_ptx(cfg, tokenizer)
    run_ = Run(cfg, flags, "ppo")

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=run_.device)
    critic = (
        load_critic(cfg.critic_model, dtype=cfg.dtype, device=run_.device)
        if cfg.critic_model
        else None
    )
    value = build_value_model(model, separate=cfg.separate_critic, critic=critic)
    value = disable_dropout(value.to(run_.device))
    model, reference, backend = load_trainable_policy(cfg, tokenizer, model)
    shares_trunk = value.shares_trunk
    model = distributed.wrap(model, cfg.distributed)  # DDP / FSDP under torchrun
    value = distributed.wrap(value, cfg.distributed)
    trainable = torch.nn.ModuleList([model, value]).train()
    optimizer = make_optimizer(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    updates = cfg.max_steps * cfg.ppo_epochs * cfg.num_minibatches
    scheduler = make_scheduler(
        optimizer, warmup_steps=cfg.warmup_steps, total_steps=updates, kind=cfg.lr_schedule
    )
    order, ptx_order = DataOrder(len(prompts), cfg.seed), DataOrder(max(len(ptx), 1), cfg.seed + 1)
    kl_ctl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    generator = torch.Generator().manual_seed(cfg.seed + distributed.rank())
    modules = {"model": model, "value": value}
    state = run_.restore(
        modules=modules, optimizer=optimizer, scheduler=scheduler, generators={"sample": generator}
    )
    if state is not None:
        order.load_state_dict(state["data"])
        ptx_order.load_state_dict(state["ptx"])
        kl_ctl.load_state_dict(state["kl"])

    for step in run_.steps():
        timings: dict[str, float] = {}
        # --- 1. rollout and scoring
        batch = distributed.shard([prompts[i] for i in order.next(cfg.batch_size)])
        exp = collect(
            backend, model, reference, tokenizer, batch, reward_fn, generator=generator,
            with_hidden=shares_trunk, timings=timings, **cfg.collect_args(),
        )  # fmt: skip
        r, mask = exp.rollout, exp.mask
        with timed(timings, "training"):
            # --- 2.-3. values, shaped rewards, GAE
            with torch.no_grad():
                old_values = value(r.input_ids, r.attention_mask, exp.hidden) * mask
            advantages, returns = advantages_and_returns(exp, old_values, kl_ctl.value, cfg)
            exp.hidden = None  # (N, T, H): not needed any more

            # --- 4. epochs of minibatches (each process: its rows' share of every minibatch)
            n = mask.size(0)
            size = n // cfg.num_minibatches
            micro = size // cfg.gradient_accumulation_steps
            stats: dict[str, list[float]] = {
                k: [] for k in ("pg", "vf", "clip", "vclip", "akl", "ent", "ptx")
            }
            epochs = 0
            for _epoch in range(cfg.ppo_epochs):
                epochs += 1
                perm = torch.randperm(n, generator=generator).to(mask.device)
                epoch_kl = []
                for start in range(0, n, size):
                    # of every process's i-th: the minibatch; in row order, so that its micro-
                    # batches hold a prompt's samples together (each computes a prompt once)
                    rows = perm[start : start + size].sort().values
                    mb_tokens = max(distributed.all_sum(float(mask[rows].sum())), 1.0)
                    with distributed.accumulate(model), distributed.accumulate(value):
                        for lo in range(0, size, micro):
                            mb = rows[lo : lo + micro]
                            loss, parts = ppo_terms(
                                model, value, exp, mb, old_values, advantages, returns, cfg
                            )
                            loss = loss * mask[mb].sum() / mb_tokens  # token share of minibatch
                            if cfg.ptx_coef and lo == 0:  # PPO-ptx, once per optimizer step
                                batch = [ptx[i] for i in ptx_order.next(cfg.ptx_batch_size)]
                                ptx_loss = ptx_term(
                                    model, reference, batch, tokenizer.pad_token_id, cfg.ptx_loss
                                )
                                loss = loss + cfg.ptx_coef * ptx_loss
                                stats["ptx"].append(distributed.all_sum(float(ptx_loss.detach())))
                            loss.backward()
                            epoch_kl.append(parts["akl"])
                            for key, v in parts.items():
                                stats[key].append(v)
                    distributed.reduce_gradients(model)  # summed over processes
                    distributed.reduce_gradients(value)
                    optimizer_step(trainable.parameters(), optimizer, scheduler, cfg.max_grad_norm)
                backend.sync_weights(distributed.unwrap(model))
                if cfg.max_approx_kl is not None:  # the mean over every process's micro-batches
                    total = distributed.all_sum(sum(epoch_kl))
                    if total / distributed.all_sum(len(epoch_kl)) > cfg.max_approx_kl:
                        break

        # --- 5. KL controller, 6. log and checkpoint
        metrics = distributed.all_reduce_mean(rollout_metrics(exp, kl_ctl.value, timings))
        kl_ctl.update(metrics.get(M.OBJECTIVE_KL, 0.0), n * distributed.world_size())
        if run_.should_log(step):
            mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
            run_.log(
                step,
                {
                    **metrics,
                    M.POLICY_APPROX_KL: mean(stats["akl"]),
                    M.POLICY_CLIPFRAC: mean(stats["clip"]),
                    M.POLICY_EPOCHS: epochs,
                    M.VAL_EXPLAINED_VARIANCE: float(explained_variance(old_values, returns, mask)),
                    M.VAL_CLIPFRAC: mean(stats["vclip"]),
                    M.LOSS_POLICY: mean(stats["pg"]),
                    M.LOSS_VALUE: mean(stats["vf"]),
                    M.LOSS_PTX: mean(stats["ptx"]),
                    M.OBJECTIVE_KL_COEF: kl_ctl.value,
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
            state={
                "data": order.state_dict(),
                "ptx": ptx_order.state_dict(),
                "kl": kl_ctl.state_dict(),
            },
        )
    if cfg.separate_critic:  # critic/: a sequence classifier (FSDP: gathered on every rank)
        critic = distributed.unwrap(value)
        state = distributed.full_state_dict(critic) if distributed.is_fsdp(critic) else None
        if distributed.is_main():
            critic.save(run_.dir / "critic", tokenizer, state=state)
    run_.finish(model, tokenizer, note=lambda: f" (peak RSS {peak_rss_mb():.0f} MB)")
