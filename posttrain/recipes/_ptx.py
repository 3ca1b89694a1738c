"""The ptx term (InstructGPT's PPO-ptx), shared by ``ppo`` and ``dpo``: a second loss on other
data, mixed into every optimizer step, that keeps the policy's ordinary abilities while it learns
the preference. Its data is raw text (``{"text": ...}``, every token) or SFT records (the
response's tokens); its term is the NLL of those tokens or the exact KL from the reference at
them (``ptx_loss``), per token, times ``ptx_coef``.

Under ``torchrun`` each process takes its slice of the ptx batch, normalised by the response
tokens of the whole batch, so the processes' terms add up to the term per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import check
from posttrain.data import collate, encode_example, load_examples
from posttrain.data.chat import encode_text
from posttrain.losses import kl_to_reference
from posttrain.recipes.sft import nll_sum
from posttrain.training import distributed
from posttrain.training.device import at_least_float32, module_device, to_device

PTX_LOSSES = ("nll", "kl")


@dataclass(kw_only=True)
class PtxConfig:
    """The ptx fields of a recipe's config (one definition of the fields, docs and checks)."""

    ptx_data: str | None = None
    """ptx: data whose tokens are mixed into the loss: raw pretraining text (`{"text": ...}`,
    every token, as InstructGPT) or SFT records (the response's tokens)."""
    ptx_coef: float = 0.0
    """ptx: weight of the ptx term per token of ptx_data (PPO-ptx's gamma); 0 = off."""
    ptx_loss: str = "nll"
    """ptx's term: ``nll``, the NLL of ptx_data's tokens (InstructGPT); ``kl``, the exact
    KL(reference || policy) of the next-token distributions at those tokens (the whole
    vocabulary: the NLL of endless reference samples there, less their entropy), which is zero at
    the reference and, unlike the NLL of a fixed set of texts, is not lowered by fitting them."""
    ptx_batch_size: int = 8
    """ptx examples per optimizer step."""

    def check_ptx(self) -> None:
        check(self.ptx_coef >= 0, "ptx_coef", "must be >= 0", self.ptx_coef)
        check(
            self.ptx_coef == 0 or self.ptx_data is not None,
            "ptx_data",
            "is required with ptx_coef",
            None,
        )
        check(
            self.ptx_loss in PTX_LOSSES,
            "ptx_loss",
            f"must be {' or '.join(PTX_LOSSES)}",
            self.ptx_loss,
        )
        check(
            self.ptx_batch_size >= 1 and self.ptx_batch_size % distributed.world_size() == 0,
            "ptx_batch_size",
            f"must be >= 1 and divisible by the number of processes ({distributed.world_size()})",
            self.ptx_batch_size,
        )

    def uses_ptx_reference(self) -> bool:
        """Whether the ptx term runs the reference model (``ptx_loss kl``, ``ptx_coef`` > 0)."""
        return bool(self.ptx_coef) and self.ptx_loss == "kl"


def load_ptx(cfg, tokenizer) -> list[dict]:
    """``cfg.ptx_data`` encoded (raw text: every token; SFT records: the response), truncated to
    ``cfg.max_length``; [] without it. Bad records are ``FILE:LINE`` errors."""
    if not cfg.ptx_data:
        return []
    return [
        encode_text(tokenizer, ex.response, cfg.max_length)
        if ex.kind == "text"
        else encode_example(tokenizer, ex.prompt, ex.response, cfg.max_length)
        for ex in load_examples(cfg.ptx_data, ["text", "sft"], what="--ptx_data")
    ]


def ptx_term(model, reference, batch: list, pad_id: int, kind: str = "nll") -> torch.Tensor:
    """The ptx term: this process's slice of ``batch`` (encoded examples), its summed NLL
    (``kind`` ``nll``) or KL from the reference (``kl``, :func:`kl_sum`; ``reference`` is a
    ``training.reference.Reference`` with a model) divided by the response tokens of the whole
    batch (so the processes' terms add up to the term per token)."""
    mine = to_device(collate(distributed.shard(batch), pad_id), module_device(model))
    total, count = nll_sum(model, mine) if kind == "nll" else kl_sum(model, reference, mine)
    return total / max(distributed.all_sum(float(count)), 1.0)


def kl_sum(model, reference, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed exact KL(reference || policy) over the positions that predict a response token of
    ``batch`` (``losses.kl_to_reference``: whole-vocabulary logits of those positions, float32 at
    least; the reference's without gradients), and their count."""
    ids, attention = batch["input_ids"], batch["attention_mask"]
    predicts = batch["response_mask"][:, 1:].bool()  # position t predicts token t + 1
    keep = torch.cat([predicts, torch.zeros_like(predicts[:, :1])], dim=1).to(ids.device)

    def logits(m):
        out = m(input_ids=ids, attention_mask=attention, use_cache=False).logits
        return at_least_float32(out[keep])  # (K, V)

    with torch.no_grad(), reference() as ref_model:
        ref_logits = logits(ref_model)
    return kl_to_reference(logits(model), ref_logits).sum(), keep.sum()
