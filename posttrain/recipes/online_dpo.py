"""Online DPO with AI feedback (OAIF, Guo et al. 2024, arXiv:2402.04792, Algorithm 1), and
iterative DPO (rounds of sample -> judge -> DPO, the reference refreshed each round).

One loop covers both; ``steps_per_round`` and ``ref_update`` choose the method:

- **OAIF** (``steps_per_round: 1``, ``ref_update: fixed``, the defaults): every step takes
  ``batch_size`` prompts, samples two responses to each from the *current* policy, asks the judge
  which is better, and takes one DPO step on those pairs against the fixed initial policy as
  reference. On-policy generation and online feedback, no reward model needed.
- **Iterative DPO** (``steps_per_round: K > 1``): at the start of each round, sample and judge
  ``K * batch_size`` pairs from the current policy, then train K steps on them; with
  ``ref_update: round`` the reference becomes the policy as it was at the start of the round
  (Xu et al. 2023, "Some things are more CRINGE than others"; Yuan et al. 2024, self-rewarding).
- ``steps_per_round: max_steps`` with ``ref_update: fixed`` is offline DPO on pairs sampled once
  from the initial policy — the baseline OAIF is compared with.

Pairs the judge cannot separate (p = 0.5: equal gold rewards, identical samples, an unparsed
generative verdict) carry no preference and are left out of the step (counted in
``judge/ties``). The loss is ``posttrain.losses.preference_loss`` (``dpo_loss``, loss_type
sigmoid | ipo | hinge | robust); with ``soft_labels`` the judge's confidence enters as per-pair
label smoothing eps_i = 1 - p_chosen (cDPO, Mitchell 2023; ``dpo_loss`` takes a (B,) eps), so
a 55/45 verdict pulls less than a 100/0 one. ``rewards/accuracies`` counts a tie half, as
every recipe does (``losses.reward_accuracy``). Responses are re-encoded from their text
(chat template, EOS appended) exactly as offline DPO encodes its data.

Metrics: the DPO ones (``rewards/*``, ``logps/*``), the judge's (``judge/p_chosen``,
``judge/ties``, ``judge/position_bias_rate`` with ``judge_swap``), and ``objective/scores``, the
mean score of the sampled responses for score-based judges (the gold reward for a ``task:``
judge, the reward for a ``reward-model`` judge — how well the policy is doing, measured
on-policy). Round metrics describe the round whose pairs the logged step trained on. With
``eval_data`` (prompts) and a ``task:`` or ``reward-model`` judge, ``eval/scores`` is the mean
score of one sample per held-out prompt (fixed sampling seed) at step 0, every ``eval_steps`` and
at the end.

Under ``torchrun`` each process samples and judges its contiguous slice of a round's
prompts with its own sampling seed; the judged pairs are gathered, so every process holds the
round's pairs (ties dropped, metrics over all of them) and takes its slice of each step's pairs.
The loss is divided by the step's number of pairs and gradients are summed over processes, so
every process takes the same step. Held-out scores are computed on every process (the same
numbers everywhere). Under ``--distributed fsdp`` the policy and a frozen reference are sharded
and every process makes the same forwards: sampling runs until every process's rows have ended,
and a process left with fewer pairs (ties) makes weight-0 passes (:func:`micro_batches`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain import metrics as M
from posttrain.config import GenerationConfig, TrainConfig, check
from posttrain.data import load_examples
from posttrain.data.formats import Example
from posttrain.data.preference import collate_pairs, encode_pair
from posttrain.errors import UserError
from posttrain.judges.factory import build_judge, check_judge
from posttrain.judges.pairwise import summarize
from posttrain.losses import DPO_LOSS_TYPES, preference_loss, reward_accuracy
from posttrain.models import check_model_name, load_model, load_tokenizer, pair_logps
from posttrain.models.lora import apply_lora
from posttrain.rollout.sampler import sample_texts
from posttrain.training import (
    DataOrder,
    Run,
    distributed,
    make_optimizer,
    make_scheduler,
    optimizer_step,
)
from posttrain.training.device import module_device, resolve, to_device
from posttrain.training.reference import policy_reference

SUMMARY = "Online DPO from AI feedback (OAIF) and iterative DPO: sample, judge, DPO step."


@dataclass(kw_only=True)
class Config(TrainConfig, GenerationConfig):
    judge: str
    """Judge: `llm`, `generative`, `reward-model` or `task:NAME` (gold reward, e.g. task:sentiment)."""
    judge_model: str | None = None
    """Judge model: a model name / HF dir (llm, generative) or a reward-model directory."""
    constitution: str | None = None
    """Constitution for llm / generative judges (default: the shipped one)."""
    judge_swap: bool = False
    """Ask the judge both orders and average (position-swap debiasing); doubles judge cost."""
    beta: float = 0.1
    """DPO beta: strength of the KL tie to the reference."""
    loss_type: str = "sigmoid"
    """DPO loss: sigmoid | ipo | hinge | robust."""
    label_smoothing: float = 0.0
    """cDPO / robust label noise eps (fixed); see soft_labels for a per-pair eps."""
    soft_labels: bool = False
    """Use the judge's confidence: per-pair eps = 1 - p_chosen (sigmoid loss only)."""
    steps_per_round: int = 1
    """Optimizer steps per sample-and-judge round: 1 = OAIF (fully online); K > 1 = iterative DPO;
    max_steps = offline DPO on pairs from the initial policy."""
    ref_update: Literal["fixed", "round"] = "fixed"
    """Reference policy: `fixed` (the initial model) or `round` (refreshed to the policy at the
    start of every round: iterative DPO)."""
    temperature: float = 1.0
    """Sampling temperature of the two responses (must be > 0, or they are identical)."""
    learning_rate: float = 5e-6
    """Peak learning rate of AdamW."""
    judge_batch_size: int = 8
    """Sequences per judge forward pass / generation batch."""

    def validate(self) -> None:
        super().validate()
        check(self.beta > 0, "beta", "must be > 0", self.beta)
        check(
            self.loss_type in DPO_LOSS_TYPES,
            "loss_type",
            f"must be one of {DPO_LOSS_TYPES}",
            self.loss_type,
        )
        check(
            0 <= self.label_smoothing < 0.5,
            "label_smoothing",
            "must be in [0, 0.5)",
            self.label_smoothing,
        )
        check(
            not self.soft_labels or self.loss_type == "sigmoid",
            "soft_labels",
            "needs loss_type sigmoid",
            self.soft_labels,
        )
        check(self.steps_per_round >= 1, "steps_per_round", "must be >= 1", self.steps_per_round)
        self.check_sampling(greedy=False, why="(two samples must differ)")
        check(self.judge_batch_size >= 1, "judge_batch_size", "must be >= 1", self.judge_batch_size)


def sample_and_judge(policy, tokenizer, judge, prompts, cfg: Config, generator) -> list[dict]:
    """Two samples per prompt from ``policy``, the judge's verdict on them and, for score-based
    judges, their scores: one record per prompt (``prompt``, ``samples``, ``verdict``,
    ``scores``)."""
    samples = sample_texts(
        policy,
        tokenizer,
        prompts,
        n=2,
        **cfg.sampling_args(),
        batch_size=max(cfg.judge_batch_size, 2),
        generator=generator,
    )
    verdicts = judge.verdicts(
        [(p, a, b) for p, (a, b) in zip(prompts, samples)], swap=cfg.judge_swap
    )
    scores = [None] * len(prompts)
    if getattr(judge, "kind", "") in SCORE_KINDS:
        flat = judge.score([p for p in prompts for _ in range(2)], [s for x in samples for s in x])
        scores = [flat[2 * i : 2 * i + 2] for i in range(len(prompts))]
    return [
        {"prompt": p, "samples": x, "verdict": v, "scores": sc}
        for p, x, v, sc in zip(prompts, samples, verdicts, scores)
    ]


def round_pairs(judged: list[dict], tokenizer) -> tuple[list[dict], dict]:
    """The preference pairs of a round's judged records (ties left out) and its metrics."""
    pairs = []
    for j in judged:
        v, (a, b) = j["verdict"], j["samples"]
        if v.tie:
            continue
        chosen, rejected = (a, b) if v.p > 0.5 else (b, a)
        pairs.append(
            {"prompt": j["prompt"], "chosen": chosen, "rejected": rejected, "p": max(v.p, 1 - v.p)}
        )
    stats = summarize([j["verdict"] for j in judged])
    samples = [s for j in judged for s in j["samples"]]
    values = {
        M.JUDGE_TIES: stats["ties"] / max(len(judged), 1),
        M.JUDGE_P_CHOSEN: sum(x["p"] for x in pairs) / len(pairs) if pairs else None,
        M.RESPONSE_LENGTH: sum(
            len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in samples
        )
        / len(samples),
    }
    if stats["position_bias_rate"] is not None:
        values[M.JUDGE_POSITION_BIAS] = stats["position_bias_rate"]
    scores = [s for j in judged if j["scores"] is not None for s in j["scores"]]
    if scores:
        values[M.OBJECTIVE_SCORES] = sum(scores) / len(scores)
    return pairs, values


SCORE_KINDS = ("task", "reward-model", "score")  # judges whose pointwise score is cheap


@torch.no_grad()
def eval_scores(policy, tokenizer, judge, prompts, cfg: Config) -> float:
    """Mean judge score of one sample per held-out prompt (fixed seed: comparable across steps)."""
    samples = sample_texts(
        policy,
        tokenizer,
        prompts,
        n=1,
        **cfg.sampling_args(),
        batch_size=max(cfg.judge_batch_size, 2),
        generator=torch.Generator().manual_seed(cfg.seed + 1),
    )
    policy.train()
    scores = judge.score(prompts, [s[0] for s in samples])
    return sum(scores) / len(scores)


PAIR_METRICS = (
    M.TRAIN_LOSS,
    M.REWARDS_CHOSEN,
    M.REWARDS_REJECTED,
    M.REWARDS_MARGINS,
    M.REWARDS_ACCURACIES,
    M.LOGPS_CHOSEN,
    M.LOGPS_REJECTED,
)


def dpo_step_loss(policy, ref, tokenizer, pairs: list[dict], cfg: Config, n_total: int):
    """Sum over ``pairs`` of the DPO loss / n_total (so micro-batches, and processes, add up to
    the step's mean), and the sums over ``pairs`` of the :data:`PAIR_METRICS`.

    ``ref`` is the reference (``posttrain.training.reference.Reference``: a frozen copy, or the
    policy with LoRA adapters off); the loss is ``posttrain.losses.preference_loss``."""
    encoded = [
        encode_pair(
            tokenizer,
            Example("preference", "", p["prompt"], chosen=p["chosen"], rejected=p["rejected"]),
            cfg.max_length,
        )
        for p in pairs
    ]
    batch = to_device(collate_pairs(encoded, tokenizer.pad_token_id), module_device(policy))
    logps = pair_logps(policy, batch)
    ref_chosen, ref_rejected = ref.pair_logps(batch)
    # soft labels: cDPO with a per-pair eps_i = 1 - p_i (the judge's confidence)
    eps = (
        torch.tensor(
            [1.0 - p["p"] for p in pairs], dtype=logps.chosen.dtype, device=logps.chosen.device
        )
        if cfg.soft_labels
        else cfg.label_smoothing
    )
    losses, c_r, r_r = preference_loss(
        logps,
        ref_chosen,
        ref_rejected,
        loss_type=cfg.loss_type,
        beta=cfg.beta,
        label_smoothing=eps,
    )
    logs = {
        M.TRAIN_LOSS: losses.detach().sum().item(),
        M.REWARDS_CHOSEN: c_r.sum().item(),
        M.REWARDS_REJECTED: r_r.sum().item(),
        M.REWARDS_MARGINS: (c_r - r_r).sum().item(),
        M.REWARDS_ACCURACIES: reward_accuracy(c_r, r_r).sum().item(),  # ties half
        M.LOGPS_CHOSEN: logps.chosen.detach().sum().item(),
        M.LOGPS_REJECTED: logps.rejected.detach().sum().item(),
    }
    return losses.sum() / n_total, logs


def micro_batches(mine: list, micro: int, sharded: bool) -> list[list]:
    """This process's pairs in chunks of ``micro``. The ties a judge drops can leave processes
    with different numbers of pairs (even none); when ``sharded`` (FSDP: every forward and
    backward is a collective) the list is padded with empty chunks to the largest number of
    chunks of any process, so every process makes the same number of passes."""
    chunks = [mine[s : s + micro] for s in range(0, len(mine), micro)]
    return distributed.pad_to_longest(chunks, []) if sharded else chunks


def run(cfg: Config, flags: dict[str, bool]) -> None:
    # --- validate everything before output_dir exists
    check_model_name(cfg.model)
    check_judge(cfg.judge, cfg.judge_model, model_field="judge_model")
    tokenizer = load_tokenizer(cfg.model)
    examples = load_examples(
        cfg.train_data, ["prompt", "sft", "preference", "completions"], what="--train_data"
    )
    prompts = [ex.prompt for ex in examples]
    held_out = []
    if cfg.eval_data:
        if not (cfg.judge.startswith("task:") or cfg.judge == "reward-model"):
            raise UserError(
                "--eval_data: scoring held-out samples needs a task: or reward-model judge"
            )
        held_out = [
            ex.prompt
            for ex in load_examples(
                cfg.eval_data, ["prompt", "sft", "preference", "completions"], what="--eval_data"
            )
        ]
    judge = build_judge(
        cfg.judge,
        cfg.judge_model,
        constitution=cfg.constitution,
        seed=cfg.seed + distributed.rank(),  # its own random choices on each process
        swap=cfg.judge_swap,
        batch_size=cfg.judge_batch_size,
        dtype=cfg.dtype,
        device=resolve(cfg.device),
    )
    run_ = Run(cfg, flags, "online-dpo")

    torch.manual_seed(cfg.seed)
    policy = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=run_.device)
    policy = apply_lora(policy, cfg.lora)
    # the reference: a frozen copy, or (LoRA, fixed) the policy with its adapters switched off
    # (sharded like the policy under FSDP)
    lora_ref = cfg.lora.enabled and cfg.ref_update == "fixed"
    ref = policy_reference(policy, lora_ref, cfg.distributed)
    reference = ref.frozen  # refreshed each round with ref_update round
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    policy.train()
    model = distributed.wrap(policy, cfg.distributed)  # ``policy`` samples (and is the LoRA ref)
    optimizer = make_optimizer(model, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(
        optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps, kind=cfg.lr_schedule
    )
    order = DataOrder(len(prompts), cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + distributed.rank())
    modules = {"model": model}
    if cfg.ref_update == "round":  # a refreshed reference is state; a fixed one is rebuilt
        modules["reference"] = reference
    state = run_.restore(
        modules=modules, optimizer=optimizer, scheduler=scheduler, generators={"sample": generator}
    )
    buffer: list[dict] = []
    round_values: dict = {}
    if state is not None:
        order.load_state_dict(state["data"])
        buffer, round_values = state["buffer"], state["round_values"]
        if hasattr(judge, "rng"):  # every process's own
            judge.rng.setstate(state["judge_rng"][distributed.rank()])

    if held_out and run_.start_step == 0:
        run_.log(0, {M.EVAL_SCORES: eval_scores(policy, tokenizer, judge, held_out, cfg)})

    micro = run_.micro_batch_size
    for step in run_.steps():
        t0 = time.time()
        k = (step - 1) % cfg.steps_per_round
        if k == 0:  # a new round: refresh the reference, sample and judge its pairs
            if cfg.ref_update == "round" and step > 1:
                reference.load_state_dict(policy.state_dict())
            round_prompts = [prompts[i] for i in order.next(cfg.batch_size * cfg.steps_per_round)]
            judged = distributed.map_sharded(  # each process its slice, gathered
                lambda ps: sample_and_judge(policy, tokenizer, judge, ps, cfg, generator),
                round_prompts,
            )
            buffer, round_values = round_pairs(judged, tokenizer)  # the same on every process
            policy.train()
        share = len(buffer) / cfg.steps_per_round  # this step's slice of the round's pairs
        pairs = buffer[round(k * share) : round((k + 1) * share)]
        mine = distributed.shard(pairs)  # this process's (all of them for one process)
        logs: dict[str, float] = {}
        if pairs:
            sums = dict.fromkeys(PAIR_METRICS, 0.0)
            with distributed.accumulate(model):
                for chunk in micro_batches(mine, micro, distributed.is_fsdp(model)):
                    # an empty chunk stands in (FSDP): a forward and backward of weight 0
                    loss, parts = dpo_step_loss(
                        model, ref, tokenizer, chunk or pairs[:1], cfg, len(pairs)
                    )
                    (loss if chunk else loss * 0).backward()
                    for key, v in parts.items():
                        sums[key] += v if chunk else 0.0
            logs = {key: distributed.all_sum(v) / len(pairs) for key, v in sums.items()}
            distributed.reduce_gradients(model)  # summed over processes
            logs[M.TRAIN_GRAD_NORM] = optimizer_step(
                model.parameters(), optimizer, scheduler, cfg.max_grad_norm
            )
        else:  # every pair of this slice was a tie: nothing to learn from, keep the schedule
            scheduler.step()
        if held_out and run_.should_eval(step):
            logs[M.EVAL_SCORES] = eval_scores(policy, tokenizer, judge, held_out, cfg)
        if run_.should_log(step) or M.EVAL_SCORES in logs:
            run_.log(
                step,
                {
                    **logs,
                    **{key: v for key, v in round_values.items() if v is not None},
                    M.TRAIN_PAIRS: len(pairs),
                    M.TRAIN_LR: scheduler.get_last_lr()[0],
                    "time/step_s": time.time() - t0,
                },
            )
        run_.step_done(
            step,
            modules=modules,
            optimizer=optimizer,
            scheduler=scheduler,
            generators={"sample": generator},
            state={
                "data": order.state_dict(),
                "buffer": buffer,
                "round_values": round_values,
                "judge_rng": distributed.gather_objects(
                    judge.rng.getstate() if hasattr(judge, "rng") else None
                ),
            },
        )
    run_.finish(model, tokenizer)
