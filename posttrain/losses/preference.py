"""Preference objectives: the Bradley-Terry reward-model loss and the DPO family.

Every function takes per-sequence log-probabilities, i.e. the sum over response tokens of
``log pi(y_t | x, y_<t)``, shape (B,), and returns per-example losses (B,); the recipe takes the
mean. "Rewards" returned beside the losses are detached and meant for logging
(``rewards/chosen``, ``rewards/margins``, ``rewards/accuracies``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posttrain.losses.common import log1mexp
from posttrain.losses.sft import unlikelihood_loss

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
REFERENCE_FREE_LOSS_TYPES = ("simpo", "orpo", "unlikelihood")  # never use a reference policy
PREFERENCE_LOSS_TYPES = (*DPO_LOSS_TYPES, *REFERENCE_FREE_LOSS_TYPES)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Pairwise reward-model loss ``-log sigmoid(r_c - r_r - margin)``.

    Ouyang et al. 2022 (InstructGPT), eq. 1, per pair (their 1 / C(K, 2) averaging over the K
    responses of a prompt is left to the caller). The optional margin is Touvron et al. 2023
    (Llama 2), eq. 2.

    Shapes: chosen_rewards (B,), rejected_rewards (B,), margin (B,) or scalar -> losses (B,).
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def _mean_logp(logps: torch.Tensor, lengths: torch.Tensor | float) -> torch.Tensor:
    """Length-normalised log-prob ``log pi(y) / |y|``; lengths (B,) token counts (or a number)."""
    return logps / torch.as_tensor(lengths, dtype=logps.dtype, device=logps.device)


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _smoothing(label_smoothing: float | torch.Tensor) -> float | torch.Tensor:
    """One eps as a float, or per-pair eps as a (B,) tensor (kept as given)."""
    if isinstance(label_smoothing, torch.Tensor) and label_smoothing.dim() > 0:
        return label_smoothing
    return float(label_smoothing)


def _range(eps: float | torch.Tensor) -> tuple[float, float]:
    if isinstance(eps, torch.Tensor):
        return (float(eps.min()), float(eps.max())) if eps.numel() else (0.0, 0.0)
    return eps, eps


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO and its pairwise variants, as a function of the log-ratio difference

        h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).

    loss_type:
      - ``"sigmoid"``: ``-log sigmoid(beta h)``, Rafailov et al. 2023, eq. 7. With
        ``label_smoothing = eps > 0`` this is conservative DPO (cDPO, Mitchell 2023, "A note on
        DPO with noisy preferences"): ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``,
        the cross-entropy against soft labels (1 - eps, eps); eps in [0, 0.5].
      - ``"ipo"``: ``(h - 1 / (2 beta))^2``, Azar et al. 2023, eq. 17 (their tau is our beta).
        Deviation from some libraries: h uses whatever log-probs the caller passes (summed, per
        the contract), not per-token averages.
      - ``"hinge"``: ``relu(1 - beta h)``, the SLiC calibration loss (Zhao et al. 2023, eq. 1)
        on the DPO log-ratio margin, with margin delta = 1 on the beta-scaled difference and no
        regulariser term.
      - ``"robust"``: robust DPO (rDPO), Chowdhury et al. 2024, Sec. 3 (the de-biased loss):
        ``((1 - eps) * l(h) - eps * l(-h)) / (1 - 2 eps)`` with ``l(z) = -log sigmoid(beta z)``
        and eps = ``label_smoothing`` the assumed label-flip rate, eps in [0, 0.5). Unlike cDPO
        it subtracts the flipped-label term; it is unbiased for the clean loss and can be
        negative.

    ``label_smoothing`` must be 0 for ``"ipo"`` and ``"hinge"`` (it has no meaning there). It is
    one number for the batch, or a (B,) tensor with one eps per pair: e.g. a judge's confidence
    p_i in the chosen response gives eps_i = 1 - p_i (soft labels; online DPO's ``soft_labels``).

    Gradient (sigmoid): dL/d log pi(y_w) = -beta sigmoid(-beta h) (Rafailov et al. 2023, Sec. 4).

    Shapes: each input (B,) summed sequence log-probs ->
        (losses (B,), chosen_rewards (B,), rejected_rewards (B,)),
    rewards = beta * (policy - ref), detached.
    """
    _check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    eps = _smoothing(label_smoothing)
    lo, hi = _range(eps)
    if loss_type == "sigmoid" and not 0.0 <= lo <= hi <= 0.5:
        raise ValueError(f"label_smoothing for cDPO must be in [0, 0.5], got {label_smoothing}")
    if loss_type == "robust" and not 0.0 <= lo <= hi < 0.5:
        raise ValueError(
            f"label_smoothing (flip rate) for robust DPO must be in [0, 0.5), got {label_smoothing}"
        )
    if loss_type in ("ipo", "hinge") and (lo, hi) != (0.0, 0.0):
        raise ValueError(f"label_smoothing is not used by loss_type {loss_type!r}; set it to 0")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)

    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    else:  # robust
        loss_as_labelled = -F.logsigmoid(beta * h)  # l(h)
        loss_if_flipped = -F.logsigmoid(-beta * h)  # l(-h)
        losses = ((1.0 - eps) * loss_as_labelled - eps * loss_if_flipped) / (1.0 - 2.0 * eps)

    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    return losses, chosen_rewards, rejected_rewards


def reference_free_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO with a uniform reference (log pi_ref = 0), so h = log pi(y_w) - log pi(y_l).

    The reference-free ablation discussed with DPO (Rafailov et al. 2023, reference code's
    ``reference_free`` flag); delegates to :func:`dpo_loss` with zero references, so every
    ``loss_type`` is available. Rewards are then ``beta * log pi(y)``.

    Shapes: (B,), (B,) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B,)).
    """
    zeros = torch.zeros_like(policy_chosen_logps)
    return dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        zeros,
        zeros,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
    )


def rpo_loss(
    dpo_losses: torch.Tensor,
    chosen_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    *,
    alpha: float,
) -> torch.Tensor:
    """DPO + NLL ("RPO"): ``dpo_losses + alpha * (-log pi(y_w) / |y_w|)``.

    Pang et al. 2024 ("Iterative Reasoning Preference Optimization"), Sec. 2, L_DPO+NLL; Liu et
    al. 2024 ("Provably Mitigating Overoptimization in RLHF", RPO) use the same SFT-regularised
    form. Deviation: Pang et al. normalise the NLL by the length of prompt + response; here
    ``chosen_lengths`` is whatever the caller passes (the recipe passes response tokens).

    Shapes: dpo_losses (B,), chosen_logps (B,) summed log-probs of the chosen response,
    chosen_lengths (B,) token counts -> losses (B,).
    """
    nll = -_mean_logp(chosen_logps, chosen_lengths)
    return dpo_losses + alpha * nll


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO: reference-free, length-normalised reward with a target margin.

    Meng et al. 2024, eq. 6:
        ``-log sigmoid(beta / |y_w| log pi(y_w) - beta / |y_l| log pi(y_l) - gamma)``.
    With ``label_smoothing = eps > 0`` the same soft-label cross-entropy as cDPO is applied to the
    SimPO logit (extension, not in the paper; eps = 0 is the paper's loss).

    Shapes: chosen_logps, rejected_logps (B,) summed log-probs; chosen_lengths, rejected_lengths
    (B,) response token counts -> (losses (B,), chosen_rewards (B,), rejected_rewards (B,)),
    rewards = beta * log pi(y) / |y|, detached.
    """
    _check_beta(beta)
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {eps}")
    chosen_rewards = beta * _mean_logp(chosen_logps, chosen_lengths)  # (B,)
    rejected_rewards = beta * _mean_logp(rejected_logps, rejected_lengths)  # (B,)
    logits = chosen_rewards - rejected_rewards - gamma  # (B,)
    losses = -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO: SFT on the chosen response plus an odds-ratio penalty, no reference model.

    Hong et al. 2024, eqs. 6-7: ``L = L_SFT + lam * L_OR`` with
    ``L_OR = -log sigmoid(log odds(y_w) - log odds(y_l))``, ``odds(y) = P(y) / (1 - P(y))`` and
    ``P(y) = exp(log pi(y) / |y|)`` (the length-averaged log-likelihood, their eq. 4). So with
    ``a = log pi(y) / |y|``: ``log odds(y) = a - log(1 - exp(a))``, computed with a stable
    ``log1mexp``. L_SFT is the chosen response's mean token NLL, ``-a_w``.

    Shapes: chosen_logps, rejected_logps (B,) summed log-probs; lengths (B,) response token counts
    -> (losses (B,), log_odds_ratio (B,) detached, for logging).
    """
    avg_chosen = _mean_logp(chosen_logps, chosen_lengths)  # (B,), < 0
    avg_rejected = _mean_logp(rejected_logps, rejected_lengths)  # (B,), < 0
    log_odds_ratio = (avg_chosen - log1mexp(avg_chosen)) - (avg_rejected - log1mexp(avg_rejected))
    or_loss = -F.logsigmoid(log_odds_ratio)
    sft = -avg_chosen
    return sft + lam * or_loss, log_odds_ratio.detach()


def kto_kl_reference_point(
    policy_logps_mismatched: torch.Tensor, ref_logps_mismatched: torch.Tensor
) -> torch.Tensor:
    """KTO's reference point z0: ``max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))``, detached.

    Ethayarajh et al. 2024, Sec. 4: a biased estimate of KL(pi || pi_ref) from mismatched pairs
    (x, y') in the microbatch (y' the completion of another prompt), clamped at 0 and not
    back-propagated through.

    Shapes: (M,), (M,) summed log-probs -> scalar.
    """
    kl = (policy_logps_mismatched - ref_logps_mismatched).mean()
    return kl.clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_ref_point: torch.Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO on unpaired desirable / undesirable completions.

    Ethayarajh et al. 2024, eq. 8, with r = log pi(y|x) - log pi_ref(y|x) and z0 the KL reference
    point (see :func:`kto_kl_reference_point`; clamped at >= 0 and detached here too):

        desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))

    i.e. ``lambda_y - v(x, y)`` per example. The paper's expectation over the data is left to the
    caller (the recipe takes the mean).

    Shapes: policy_logps, ref_logps (B,) summed log-probs; desirable (B,) bool; kl_ref_point
    scalar -> (losses (B,), rewards (B,) = beta * r, detached).
    """
    _check_beta(beta)
    logratios = policy_logps - ref_logps  # (B,)
    z0 = torch.as_tensor(kl_ref_point, dtype=logratios.dtype, device=logratios.device)
    z0 = z0.clamp(min=0).detach()
    desirable = desirable.to(torch.bool)
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - z0)))
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratios)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return losses, (beta * logratios).detach()


# Losses whose paper has a label-noise parameter, so a soft label p (probability that the chosen
# response is preferred) has a principled meaning: the flip rate eps = 1 - p.
SOFT_LABEL_LOSS_TYPES = ("sigmoid", "robust")


def soft_label_problem(loss_type: str, p_chosen: float) -> str | None:
    """Why ``loss_type`` cannot train a pair labelled ``p_chosen`` (None: it can).

    - ``sigmoid``: conservative DPO (Mitchell 2023) with eps = 1 - p: any p in [0.5, 1];
    - ``robust``: rDPO (Chowdhury et al. 2024) with flip rate eps = 1 - p < 0.5: p in (0.5, 1]
      (a tie would divide by 1 - 2 eps = 0);
    - every other loss (ipo, hinge, simpo, orpo, unlikelihood, kto): its paper has no label-noise
      parameter, so only certain pairs (p = 1). (IPO's population loss could take the expectation
      over the label, target h = (p - 1/2) / beta; not implemented.)
    """
    if p_chosen == 1.0:
        return None
    if loss_type not in SOFT_LABEL_LOSS_TYPES:
        return (
            f"loss_type {loss_type} has no soft-label form (its paper has no label-noise "
            f"parameter), so p_chosen must be 1 (got {p_chosen:g}); use sigmoid or robust"
        )
    if loss_type == "robust" and p_chosen <= 0.5:
        return "robust DPO's flip rate 1 - p must be < 0.5, so it cannot train ties (p = 0.5)"
    return None


def soft_label_smoothing(
    p_chosen: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor | float:
    """Per-pair cDPO / rDPO eps from soft labels p (B,): the probability that the label is wrong
    when the data say P(chosen preferred) = p and, on top, every label flips with probability
    ``label_smoothing`` = e: ``eps_i = (1 - p_i)(1 - e) + p_i e`` (p = 1: e; e = 0: 1 - p).

    Returns ``label_smoothing`` unchanged (a float) when every p is 1, so certain data compute
    exactly as before. Shapes: (B,) -> (B,) or float.
    """
    if bool((p_chosen == 1.0).all()):
        return label_smoothing
    return (1.0 - p_chosen) * (1.0 - label_smoothing) + p_chosen * label_smoothing


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per pair 1 where the chosen response's reward is higher, 0.5 for a tie, else 0 (float64);
    its mean is the pairwise accuracy (``rewards/accuracies``, ``eval/accuracy``).

    A tie counts half, so a policy equal to its reference (every implicit reward 0) or a reward
    model that cannot separate a pair scores 0.5, chance, not 0.

    Shapes: (B,), (B,) -> (B,).
    """
    return (chosen_rewards > rejected_rewards).double() + 0.5 * (
        chosen_rewards == rejected_rewards
    ).double()


def preference_loss(
    policy,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float | torch.Tensor = 0.0,
    rpo_alpha: float = 0.0,
    simpo_gamma: float = 0.5,
    orpo_lambda: float = 0.1,
    unlikelihood_alpha: float = 1.0,
    p_chosen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))`` of any ``loss_type`` in
    :data:`PREFERENCE_LOSS_TYPES`: the one dispatch from a loss name to the functions above.

    ``policy`` holds the policy's log-probs of a pair batch (``posttrain.models.PairLogps``):
    ``chosen``, ``rejected`` (B,) summed, ``chosen_lengths``, ``rejected_lengths`` (B,), and for
    ``unlikelihood`` the per-token ``chosen_tokens``, ``rejected_tokens`` with their masks.
    ``ref_chosen``/``ref_rejected`` (B,) are the reference's summed log-probs, or None for DPO
    with a uniform reference (:func:`reference_free_dpo_loss`). ``rpo_alpha`` > 0 adds
    :func:`rpo_loss`'s NLL to a DPO loss.

    Rewards are the implicit rewards beta * log(pi / pi_ref) (reference-free losses: their own
    reward, e.g. SimPO's length-normalised one; orpo and unlikelihood: beta * log pi), detached,
    for metrics.

    ``p_chosen`` (B,): soft labels (P(chosen preferred)); sigmoid and robust take them as the
    per-pair eps of :func:`soft_label_smoothing`, every other loss raises ValueError unless all
    are 1 (:func:`soft_label_problem`).
    """
    if p_chosen is not None and not bool((p_chosen == 1.0).all()):
        problem = soft_label_problem(loss_type, float(p_chosen.min()))
        if problem:
            raise ValueError(problem)
        label_smoothing = soft_label_smoothing(
            p_chosen.to(policy.chosen.dtype), float(label_smoothing)
        )
    if loss_type == "simpo":
        return simpo_loss(
            policy.chosen,
            policy.rejected,
            policy.chosen_lengths,
            policy.rejected_lengths,
            beta=beta,
            gamma=simpo_gamma,
            label_smoothing=label_smoothing,
        )
    if loss_type in ("orpo", "unlikelihood"):
        if loss_type == "orpo":
            losses, _ = orpo_loss(
                policy.chosen,
                policy.rejected,
                policy.chosen_lengths,
                policy.rejected_lengths,
                lam=orpo_lambda,
            )
        else:
            losses = unlikelihood_loss(
                policy.chosen_tokens,
                policy.rejected_tokens,
                policy.chosen_mask,
                policy.rejected_mask,
                alpha=unlikelihood_alpha,
            )
        return losses, beta * policy.chosen.detach(), beta * policy.rejected.detach()
    if ref_chosen is None:
        losses, rc, rr = reference_free_dpo_loss(
            policy.chosen,
            policy.rejected,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
        )
    else:
        losses, rc, rr = dpo_loss(
            policy.chosen,
            policy.rejected,
            ref_chosen,
            ref_rejected,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
        )
    if rpo_alpha:
        losses = rpo_loss(losses, policy.chosen, policy.chosen_lengths, alpha=rpo_alpha)
    return losses, rc, rr
