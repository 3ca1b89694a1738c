"""Supervised fine-tuning: maximise log p(response | prompt), loss on response tokens only.

setup -> data (validated before anything is written) -> model, optimizer, schedule -> resume ->
for each step: micro-batches (gradient accumulation), loss, clipped AdamW step -> log -> checkpoint
-> final/.

The loss of a step is the mean NLL over all response tokens of the whole batch, so splitting a
batch into micro-batches (``gradient_accumulation_steps``) changes memory, not the result. Under
``torchrun`` each process takes its slice of the batch, still divides by the whole batch's token
count, and the gradients are summed over processes: N processes give the one-process result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain import metrics as M
from posttrain.config import TrainConfig
from posttrain.data import Encoded, Example, collate, encode_example, load_examples
from posttrain.data.collate import collate_packed, pack
from posttrain.losses import sft_loss
from posttrain.models import check_model_name, forward_logprobs, load_model, load_tokenizer
from posttrain.models.lora import apply_lora
from posttrain.models.modes import eval_mode
from posttrain.training import Run, distributed

SUMMARY = "Supervised fine-tuning on prompt/completion or chat data (loss on responses only)."


@dataclass(kw_only=True)
class Config(TrainConfig):
    learning_rate: float = 1e-4
    """Peak learning rate of AdamW."""
    preference_data: Literal["chosen", "control_tokens"] = "chosen"
    """How preference pairs in train_data/eval_data become SFT data: `chosen` trains on the chosen
    response (preferred-FT, a baseline of the lecture notes); `control_tokens` trains on both,
    the prompt prefixed with `[GOOD] ` or `[BAD] ` (reward-conditioned SFT; sample with the
    `[GOOD] ` prefix)."""
    packing: bool = False
    """Pack several short examples into one row of max_length tokens (each attends only to
    itself; position ids restart per example)."""


GOOD, BAD = "[GOOD] ", "[BAD] "


def with_prefix(prompt, tag: str):
    """The prompt with ``tag`` before its text (before the first user turn for message lists)."""
    if isinstance(prompt, str):
        return tag + prompt
    messages = [dict(m) for m in prompt]
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first]["content"] = tag + messages[first]["content"]
    return messages


def as_sft(examples, mode: str) -> list[Example]:
    """SFT examples from SFT or preference examples (see ``Config.preference_data``)."""
    out = []
    for ex in examples:
        if ex.kind == "sft":
            out.append(ex)
        elif mode == "chosen":
            out.append(Example("sft", ex.where, ex.prompt, response=ex.chosen))
        else:
            out.append(Example("sft", ex.where, with_prefix(ex.prompt, GOOD), response=ex.chosen))
            out.append(Example("sft", ex.where, with_prefix(ex.prompt, BAD), response=ex.rejected))
    return out


def encode_all(tokenizer, examples, max_length: int) -> tuple[list[Encoded], int]:
    """Encode SFT examples; returns them and how many were truncated to ``max_length``."""
    encoded = [encode_example(tokenizer, ex.prompt, ex.response, max_length) for ex in examples]
    return encoded, sum(e.truncated for e in encoded)


def batches_of(encoded: list[Encoded], pad_id: int, *, packing: bool, max_length: int):
    """Turn a list of examples into model inputs: one padded batch, or one packed row per bin."""
    if not packing:
        return [collate(encoded, pad_id)]
    return [collate_packed([encoded[i] for i in row]) for row in pack(encoded, max_length)]


def without_targets(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with no response token: its pass adds 0 to the loss and to every gradient."""
    return {**batch, "response_mask": torch.zeros_like(batch["response_mask"])}


def nll_sum(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response NLL (``losses.sft_loss``, normalize ``sum``) and response-token count of
    one batch."""
    out = forward_logprobs(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["response_mask"],
        position_ids=batch.get("position_ids"),
    )
    return sft_loss(out.logps, out.mask, normalize="sum"), out.mask.sum()


@torch.no_grad()
def evaluate_loss(model, encoded: list[Encoded], pad_id: int, batch_size: int) -> float:
    """Mean NLL per response token over ``encoded``."""
    with eval_mode(model):
        total, count = 0.0, 0.0
        for i in range(0, len(encoded), batch_size):
            nll, n = nll_sum(model, collate(encoded[i : i + batch_size], pad_id))
            total, count = total + float(nll), count + float(n)
    return total / max(count, 1.0)


def run(cfg: Config, flags: dict[str, bool]) -> None:
    # --- setup: everything that can fail on bad input happens before output_dir exists
    check_model_name(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    kinds = ["sft", "preference"]
    train_ex = as_sft(
        load_examples(cfg.train_data, kinds, what="--train_data"), cfg.preference_data
    )
    eval_ex = (
        as_sft(load_examples(cfg.eval_data, kinds, what="--eval_data"), cfg.preference_data)
        if cfg.eval_data
        else []
    )
    train, n_trunc = encode_all(tokenizer, train_ex, cfg.max_length)
    held_out, _ = encode_all(tokenizer, eval_ex, cfg.max_length)
    run_ = Run(cfg, flags, "sft")
    if n_trunc and distributed.is_main():
        print(
            f"note: {n_trunc} of {len(train)} training examples truncated to max_length={cfg.max_length}"
        )

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=run_.device)
    model = apply_lora(model, cfg.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    model = distributed.wrap(model, cfg.distributed)
    train_state = run_.start_training(model, len(train))
    order, scheduler = train_state.order, train_state.scheduler
    if run_.start_step == 0:  # step 0: the starting point, and how much truncation cost
        start = {M.TRAIN_TRUNCATED: n_trunc}
        if held_out:
            start[M.EVAL_LOSS] = evaluate_loss(
                model, held_out, tokenizer.pad_token_id, cfg.batch_size
            )
        run_.log(0, start)

    micro = run_.micro_batch_size
    for step in run_.steps():
        t0 = time.time()
        batch_ex = [train[i] for i in order.next(cfg.batch_size)]
        n_tokens = sum(max(sum(e.response_mask[1:]), 0) for e in batch_ex)  # targets in the batch
        mine = distributed.shard(batch_ex)  # this process's slice (all of it for one process)
        loss_total = 0.0
        batches = [
            batch
            for k in range(0, len(mine), micro)
            for batch in batches_of(
                mine[k : k + micro],
                tokenizer.pad_token_id,
                packing=cfg.packing,
                max_length=cfg.max_length,
            )
        ]
        if distributed.is_fsdp(model):  # packing: as many rows, and passes, on every process
            batches = distributed.pad_to_longest(batches, without_targets(batches[-1]))
        with distributed.accumulate(model):
            for batch in batches:
                with distributed.autocast(cfg.bf16_autocast):
                    nll, _ = nll_sum(model, batch)
                loss = nll / max(n_tokens, 1)  # mean over the whole (global) batch's tokens
                loss.backward()
                loss_total += loss.detach().item()
        loss_total = distributed.all_sum(loss_total)
        grad_norm = train_state.step(cfg.max_grad_norm)
        if run_.should_log(step):
            values = {
                M.TRAIN_LOSS: loss_total,
                M.TRAIN_GRAD_NORM: grad_norm,
                M.TRAIN_LR: scheduler.get_last_lr()[0],
                M.TRAIN_TOKENS_PER_S: sum(len(e.input_ids) for e in batch_ex) / (time.time() - t0),
                M.TRAIN_EPOCH: order.epochs_done,
            }
            if held_out and run_.should_eval(step):
                values[M.EVAL_LOSS] = evaluate_loss(
                    model, held_out, tokenizer.pad_token_id, cfg.batch_size
                )
            run_.log(step, values)
        run_.step_done(step, **train_state.checkpoint())
    run_.finish(model, tokenizer)
