"""A DPO policy scored as a reward model: r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)).

Accuracy is the share of held-out pairs whose chosen response gets the higher implicit reward
(Rafailov et al. 2023, sec. 5: the policy *is* a reward model); a tie counts half, so a policy
equal to its reference scores 0.5.
"""

from __future__ import annotations

import torch

from posttrain.data import Example, load_examples, to_preference_pairs
from posttrain.data.preference import EncodedPair, collate_pairs, encode_pairs
from posttrain.losses import reward_accuracy
from posttrain.models import check_model_name, load_model, load_tokenizer, pair_logps
from posttrain.models.modes import eval_mode
from posttrain.training.reference import Reference


@torch.no_grad()
def implicit_rewards(policy, reference, pairs, pad_id: int, *, beta: float, batch_size: int = 16):
    """``(chosen_rewards (N,), rejected_rewards (N,))`` for encoded pairs (models in eval mode).

    ``reference`` may be ``policy`` itself when it carries LoRA adapters: the reference is then
    the policy with its adapters disabled."""
    chosen, rejected = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.float64)]
    ref = (
        Reference("lora", policy=policy)
        if reference is policy
        else Reference("model", frozen=reference)
    )
    with eval_mode(policy, reference):
        for i in range(0, len(pairs), batch_size):
            batch = collate_pairs(pairs[i : i + batch_size], pad_id)
            p = pair_logps(policy, batch)
            ref_chosen, ref_rejected = ref.pair_logps(batch)
            chosen.append((beta * (p.chosen - ref_chosen)).double().cpu())
            rejected.append((beta * (p.rejected - ref_rejected)).double().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def implicit_reward_accuracy(
    policy,
    reference,
    data,
    *,
    beta: float,
    tokenizer=None,
    batch_size: int = 16,
    max_length: int = 512,
    dtype: str = "float32",
    device=None,
) -> dict[str, float]:
    """Accuracy and mean margin of the implicit reward of ``policy`` (vs ``reference``) on ``data``.

    ``policy`` / ``reference``: loaded models, or names / HF directories (loaded in ``dtype`` on
    ``device``, None: the CPU);
    ``data``: a file of preference or ranked records, or a list of ``Example``s or
    ``EncodedPair``s; ``tokenizer``: needed with loaded models (else the policy's is loaded).
    Returns ``accuracy`` (ties half), ``margin_mean`` (chosen minus rejected reward),
    ``chosen_reward_mean``, ``rejected_reward_mean`` and ``pairs``."""
    for m in (policy, reference):
        if isinstance(m, str):
            check_model_name(m)
    if tokenizer is None:
        tokenizer = load_tokenizer(policy)
    if isinstance(data, str):
        data = load_examples(data, ["preference", "ranked"], what="--data")
    if data and isinstance(data[0], Example):
        data, _ = encode_pairs(tokenizer, to_preference_pairs(data), max_length)
    pairs: list[EncodedPair] = list(data)
    models = [
        load_model(m, dtype=dtype, tokenizer=tokenizer, device=device) if isinstance(m, str) else m
        for m in (policy, reference)
    ]
    rc, rr = implicit_rewards(
        *models, pairs, tokenizer.pad_token_id, beta=beta, batch_size=batch_size
    )  # (N,), (N,)
    return {
        "accuracy": float(reward_accuracy(rc, rr).mean()),  # ties count half
        "margin_mean": float((rc - rr).mean()),
        "chosen_reward_mean": float(rc.mean()),
        "rejected_reward_mean": float(rr.mean()),
        "pairs": len(pairs),
    }
