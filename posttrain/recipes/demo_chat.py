"""``posttrain demo --model smollm2-135m-instruct``: the controlled-sentiment experiment on a real
pretrained chat model, SmolLM2-135M-Instruct, with LoRA adapters in bfloat16.

The user turn is exactly ``Continue this movie review: {opening}`` (the openings of the built-in
``sentiment`` task); the reply is the continuation; the gold reward is VADER's compound score of
the reply. The instruction-tuned model itself is the reference policy (no SFT stage).

 1. sample   four replies per prompt from SmolLM2 itself (temperature 1);
 2. label    of each prompt's replies the best and the worst by gold reward make its pair
             (:func:`extreme_pairs`), which the default demo's simulated annotator
             (``demo.label_pairs``) labels: it prefers the reply with the higher gold reward,
             flips a share of its labels, drops ties and empty replies;
 3. rm       a Bradley–Terry reward model with a LoRA trunk on those pairs;
 4. ppo      PPO (LoRA) against the reward model, KL-penalised towards SmolLM2;
 5. dpo      DPO (LoRA) on the same pairs, reference = SmolLM2 (adapters off);
    rloo     with ``--rloo true`` only (outside the 30-minute budget): RLOO (LoRA) against the
             same reward model, prompts and sizes as PPO, KL in the reward;
 6. eval     the final PPO and DPO (and RLOO) policies against SmolLM2 on unseen openings
             (``posttrain eval`` frontier mode): gold reward, KL, win rate, distinct-n, length,
             empty replies;
 7. capability  greedy answers to ``posttrain/assets/factual_qa.jsonl`` (22 simple factual
             questions with accepted answers) and the NLL per token of held-out ordinary text
             (``posttrain/assets/heldout_text.txt``), base vs each policy (the alignment tax);
 8. report   ``report.html`` / ``report.md``: headline, stage times, tables, replies side by side.

``D/ppo/final`` and ``D/dpo/final`` (and ``D/rloo/final``) are merged Hugging Face model
directories (LoRA folded in). Called from ``posttrain.recipes.demo`` with its Config (``--model``,
``--output_dir``, ``--quick``, ``--seed``, ``--label_noise``, ``--ppo_kl_coef``,
``--ppo_kl_target``, ``--ppo_reward_clip``, ``--ppo_missing_eos_penalty``, ``--ppo_ptx_coef``,
``--ppo_ptx_loss``, ``--ppo_lam``, ``--dpo_beta``, ``--dpo_ptx_coef``, ``--rloo``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain import metrics as M
from posttrain.config import LoraConfig
from posttrain.data import write_jsonl
from posttrain.errors import UserError
from posttrain.evaluation.tables import gain_text
from posttrain.training.run import prepare_output_dir, read_metrics

ASSETS = Path(__file__).resolve().parents[1] / "assets"
USER_TURN = "Continue this movie review: {opening}"
DTYPE = "bfloat16"
# Learning rates of the LoRA adapters (r 16, alpha 32) and PPO's KL coefficient, chosen from runs
# of this experiment (docs/demo.md): the reward model at 3e-4 stayed near chance; PPO at 5e-4
# with KL coef 0.05 passed KL 4.9 by step 7, at 3e-4 with 0.1 ended at KL 2.3 (+0.19 gold) after
# 24 steps; DPO on best-vs-worst pairs at 4e-4 ended at KL 10.6 (+0.54 gold); on 459 pairs
# (512 prompts) at 2.5e-4 KL 4.7 (+0.52) with 2 factual answers lost, at 2e-4 KL 3.2 (+0.40),
# none lost, at 1.5e-4 KL 1.9 (+0.25); on another draw of 461 pairs at 2e-4 KL 2.7 (+0.24), at
# 2.25e-4 KL 3.6 (+0.32), at 2.5e-4 KL 4.2 (+0.35), at 3e-4 KL 5.1 (+0.42) with 2 lost. With
# DPO's ptx term (below) 3e-4: runs 13 and 12 at 2.25e-4 without it gave +0.255 at KL 2.67 and
# +0.225 at 1.95 (0 and 3 lost); at 3e-4 with it +0.288 at 2.17 and +0.307 at 2.16 (2 and 0 lost)
RM_LR, PPO_LR, DPO_LR = 1e-3, 4e-4, 3e-4
# RLOO (--rloo): PPO's sizes and KL coefficient, ppo_epochs passes of one update over the batch.
# At 5e-4 its training KL passed 7 by step 8; 2e-4 ended at KL 4.5 (+0.42 gold), 1.5e-4 at KL
# 5.0 (+0.49), both losing 2 factual answers (docs/demo.md)
RLOO_LR = 2e-4
PPO_KL_COEF = 0.1  # --ppo_kl_coef's default here
# PPO's score: the reward model's normalised score clipped to [-1, 1] (--ppo_reward_clip), so a
# canned reply it overrates (run 8: 3.1 sd) pays no more than a good ordinary one, and a bonus of
# 1 for a reply that runs to the token limit (--ppo_missing_eos_penalty -1), as all the reward
# model's replies did: it rates short replies high, and PPO learned to stop early (docs/demo.md)
PPO_REWARD_CLIP, PPO_MISSING_EOS_PENALTY = 1.0, -1.0
# The value head reads the policy's hidden states detached (value_trunk_grad false): on run 8's
# draw, with the value loss's gradients in the LoRA trunk PPO reached +0.22 gold at KL 3.2 (no
# factual answer lost), +0.27 at 5.0 (coef 0.08, 2 lost), +0.34 at 4.9 (0.07, 3 lost); detached,
# +0.32 and +0.18 at KL 2.5 (none lost), +0.28 at 5.0 (0.07, 1 lost) (docs/demo.md)
PPO_VALUE_TRUNK_GRAD = False
# PPO-ptx (--ppo_ptx_coef, 1 by default; 0 turns it off): a term per token of SmolLM2's own
# replies to the shipped ordinary chat requests (base_chat_replies), PTX_BATCH of them per
# optimizer step, is mixed into PPO's loss. Without it every PPO or RLOO run that gained more
# than +0.35 gold lost two or three factual answers to the review style ("The sky on a clear
# day is a beautiful sight"), which the KL, measured on review openings only, does not see.
# Run 11 (docs/demo.md; their NLL): with it +0.292 gold at KL 3.48, none lost, 28.0 minutes in
# all; the same draw without it +0.205 at KL 2.00, ~5 minutes faster
PPO_PTX_COEF, PTX_BATCH, PTX_SAMPLES, PTX_TOKENS = 1.0, 4, 4, 64
# Its term (--ppo_ptx_loss): the exact KL from the reference at those replies' tokens, not their
# NLL: on run 12's draw (seed 1) the NLL of the 110 replies fell from 2.33 to 1.40 over PPO (they
# were being fitted), and PPO gained +0.269 at KL 5.01 with 3 factual answers lost and text NLL
# 3.956; with the KL term +0.269 at KL 1.63, none lost, text NLL 3.856 (base 3.855). Run 13
# (seed 0): +0.248 at KL 1.74, one lost, NLL 3.863, against run 11's NLL term +0.292 at 3.48, 3.989
PPO_PTX_LOSS = "kl"
# GAE's lambda (--ppo_lam): 1, the advantage the whole reply's return minus the value: with the
# KL term, on seeds 1 and 0, +0.482 gold at KL 4.26 and +0.357 at 2.93, none lost, no tax, against
# +0.269 at 1.63 and +0.248 at 1.74 at 0.95, and PPO's stage no slower (792-828 s against 858-903)
PPO_LAM = 1.0
# DPO's ptx term (--dpo_ptx_coef, 1; 0 turns it off): PPO-ptx's KL term on the same replies,
# four per DPO step, ~60 s more DPO. On seeds 0 / 1 at 3e-4: coef 1 +0.288 / +0.307 gold, 2 / 0
# factual answers lost; coef 3 held the KL lower (1.77 / 1.91) for less gold (+0.257 / +0.177,
# 4e-4), 1 lost on each; coef 2 (seed 0) +0.197, 2 lost. On seed 0 the Paris answer flips in
# nearly every run that moves (docs/demo.md).
DPO_PTX_COEF = 1.0
# The factual check decodes greedily in float32 and lets answers finish: in bfloat16, SmolLM2's
# greedy answers changed with the thread count alone (base: "is: 8." vs "is indeed a spider's
# legs"), and 16 new tokens cut answers off before the fact ("designated by the IAU ...").
CAPABILITY_DTYPE, CAPABILITY_TOKENS = "float32", 48


@dataclass(frozen=True)
class ChatBudget:
    """Sizes of every stage. ``FULL`` took 28.7 minutes (run 8, PPO's replies collapsed to ~10
    tokens), 32.2 (run 9, ~31 tokens) and 28.3 (run 10, the same computation at another hour) on
    2 idle CPU cores running at under half their usual speed, and 28.0 with PPO-ptx after the
    LoRA and attention speed-ups (run 11; without PPO-ptx ~23), 25.6 (run 12, seed 1) and 26.9
    with PPO-ptx's KL term (run 13), 27.1 with GAE's lambda 1 (run 14), 28.6 and 29.4 with
    DPO's ptx term (runs 15 and 16, seeds 1 and 0) (docs/demo.md; budget: 30); 512 prompts rather than 256 cost ~75 s
    of sampling and lifted the reward model's held-out accuracy from 0.68 to 0.77
    (docs/demo.md)."""

    pair_prompts: int  # prompts whose replies make the preference pairs
    pair_samples: int  # replies per prompt; the pair is the best and worst by gold of them
    max_new_tokens: int
    rm_steps: int
    rm_batch: int
    ppo_steps: int
    ppo_prompts: int  # prompts per PPO step
    ppo_samples: int  # replies per prompt
    ppo_epochs: int
    dpo_steps: int
    dpo_batch: int
    eval_prompts: int
    ptx_prompts: int  # PPO-ptx: the first this many of assets/chat_prompts.jsonl
    batch_size: int  # generation batch
    lora_r: int


FULL = ChatBudget(
    pair_prompts=512,
    pair_samples=4,
    max_new_tokens=32,
    rm_steps=40,
    rm_batch=16,
    ppo_steps=30,
    ppo_prompts=8,
    ppo_samples=4,
    ppo_epochs=2,
    dpo_steps=54,
    dpo_batch=8,
    eval_prompts=128,
    ptx_prompts=64,
    batch_size=64,
    lora_r=16,
)
QUICK = ChatBudget(
    pair_prompts=12,
    pair_samples=2,
    max_new_tokens=8,
    rm_steps=2,
    rm_batch=4,
    ppo_steps=1,
    ppo_prompts=4,
    ppo_samples=2,
    ppo_epochs=1,
    dpo_steps=2,
    dpo_batch=2,
    eval_prompts=4,
    ptx_prompts=4,
    batch_size=8,
    lora_r=4,
)


def _micro(rows: int, size: int) -> int:
    """Gradient-accumulation steps that split ``rows`` into micro-batches of ``size`` (or one):
    on a CPU, forward/backward in micro-batches of ~8 sequences is several times faster per token
    than in one large batch (``benchmarks/README.md``: a PPO iteration's training 436 s -> 86 s)."""
    return rows // size if rows % size == 0 and rows > size else 1


def extreme_pairs(replies: list[list[str]], gold: list[list[float]]):
    """Per prompt, of its replies the one the gold reward rates highest and the one it rates
    lowest, as ``(pairs, gold pairs)`` in that order (the simulated annotator then labels each
    pair with its noise). Like UltraFeedback's binarisation (the best-rated response against a
    worse one), the pair is the most informative one a set of replies offers: two random replies
    of the same model often differ too little in sentiment for a label to teach anything."""
    pairs, gold_pairs = [], []
    for reps, g in zip(replies, gold):
        hi = max(range(len(reps)), key=g.__getitem__)
        lo = min(range(len(reps)), key=g.__getitem__)
        pairs.append([reps[hi], reps[lo]])
        gold_pairs.append((g[hi], g[lo]))
    return pairs, gold_pairs


def chat_prompts(openings: list[str]) -> list[str]:
    """The user turns of the experiment: ``Continue this movie review: {opening}``."""
    return [USER_TURN.format(opening=o) for o in openings]


def load_factual_qa(path: Path = ASSETS / "factual_qa.jsonl") -> list[dict]:
    """``[{"question", "answers": [accepted, ...]}]`` of the shipped factual questions."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def answer_correct(answer: str, accepted: list[str]) -> bool:
    """Whether ``answer`` contains one of ``accepted`` as a whole word/number (case-insensitive):
    "100 degrees" accepts "100"; "1000", "7,200" and "2.5" do not accept "100", "7" and "2"."""
    text = answer.lower()
    return any(
        re.search(rf"(?<!\w)(?<!\d[.,]){re.escape(a.lower())}(?!\w)(?![.,]\d)", text)
        for a in accepted
    )


def ptx_data(cfg, b: ChatBudget, data: Path) -> Path | None:
    """``data/ptx.jsonl``, the ptx data of PPO and DPO (:func:`base_chat_replies`), sampled by
    the first stage that needs it and then reused; None if no reply ended (tiny budgets)."""
    path = data / "ptx.jsonl"
    if not path.exists():
        rows = base_chat_replies(cfg.model, b.ptx_prompts, cfg.seed + 4, b.batch_size)
        if not rows:
            return None
        write_jsonl(path, rows)
    return path


def ptx_args(cfg, b: ChatBudget, data: Path, coef: float, loss: str) -> dict:
    """The ptx settings of PPO's or DPO's recipe on :func:`ptx_data` (PTX_BATCH replies per
    step); {} when ``coef`` is 0 or no reply ended."""
    path = ptx_data(cfg, b, data) if coef else None
    if path is None:
        return {}
    return dict(ptx_data=str(path), ptx_coef=coef, ptx_loss=loss, ptx_batch_size=PTX_BATCH)


def _ptx_note(label: str, ptx: dict) -> str:
    """The stage's closing note on its ptx term ("" without one)."""
    if not ptx:
        return ""
    rows = len(Path(ptx["ptx_data"]).read_text().splitlines())
    return f"{label} {ptx['ptx_coef']:g} on {rows} of its own chat replies"


def base_chat_replies(model_name: str, n: int, seed: int, batch_size: int) -> list[dict]:
    """PPO-ptx's data: ``{"prompt", "completion"}`` rows, ``model_name``'s own replies sampled
    at temperature 1 (PTX_SAMPLES to each of the first ``n`` shipped ordinary chat requests),
    those that ended within PTX_TOKENS only: a cut reply would teach the model to stop there.
    Samples, not greedy replies: the NLL of the base model's samples is lowest at the base model
    itself (its cross-entropy; the excess is the KL from the base), so the term pulls the policy
    back towards the base on these requests without sharpening it (greedy replies did: PPO's
    entropy fell from 3.3 to 2.0 in six steps). Keeping the replies that ended favours short
    ones: 103 of 256 in the full demo."""
    from posttrain.data import read_records
    from posttrain.models import load_policy
    from posttrain.rollout.generate import SamplingParams, decode_responses
    from posttrain.rollout.sampler import sample_rollouts

    prompts = [r.data["prompt"] for r in read_records(ASSETS / "chat_prompts.jsonl")][:n]
    model, tok = load_policy(model_name, dtype=DTYPE)
    rollouts = sample_rollouts(
        model,
        tok,
        prompts,
        SamplingParams(max_new_tokens=PTX_TOKENS, temperature=1.0),
        n=PTX_SAMPLES,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    texts = [t for r in rollouts for t in decode_responses(tok, r)]
    ended = [e for r in rollouts for e in r.ended_with_eos.tolist()]
    asked = [p for p in prompts for _ in range(PTX_SAMPLES)]  # rows grouped by prompt
    return [
        {"prompt": p, "completion": t} for p, t, e in zip(asked, texts, ended) if e and t.strip()
    ]


def heldout_texts(path: Path = ASSETS / "heldout_text.txt") -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@torch.no_grad()
def text_nll(model, tokenizer, texts: list[str], batch_size: int = 16) -> float:
    """Mean NLL per token (nats) of plain ``texts`` (no chat template; every token after the
    first is predicted): the alignment tax on ordinary text when compared across models."""
    from posttrain.data import collate
    from posttrain.data.collate import Encoded
    from posttrain.models import forward_logprobs

    model.eval()
    encs = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        encs.append(Encoded(input_ids=ids, response_start=1, truncated=False))
    total, count = 0.0, 0.0
    for i in range(0, len(encs), batch_size):
        b = collate(encs[i : i + batch_size], tokenizer.pad_token_id)
        out = forward_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"])
        total -= float(out.logps.sum())
        count += float(out.mask.sum())
    return total / max(count, 1.0)


def capability(model_name: str, qa: list[dict], texts: list[str], max_new_tokens: int) -> dict:
    """Greedy answers to the factual questions (with correctness) and held-out text NLL, both
    in ``CAPABILITY_DTYPE``."""
    from posttrain.models import load_policy
    from posttrain.rollout.sampler import sample_texts

    model, tok = load_policy(model_name, dtype=CAPABILITY_DTYPE)
    answers = sample_texts(
        model,
        tok,
        [q["question"] for q in qa],
        n=1,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        batch_size=32,
    )
    answers = [a[0] for a in answers]
    correct = [answer_correct(a, q["answers"]) for a, q in zip(answers, qa)]
    return {"answers": answers, "correct": correct, "nll": text_nll(model, tok, texts)}


def run_chat_demo(cfg, flags: dict[str, bool]) -> dict:
    """The experiment (see the module doc); ``cfg`` is ``posttrain.recipes.demo.Config``.
    Returns the facts the report shows."""
    from posttrain.models import check_model_name, load_policy
    from posttrain.recipes import dpo, ppo, rloo, rm
    from posttrain.recipes.demo import (
        BEFORE_PPO,
        Progress,
        Stages,
        _run_recipe,
        label_pairs,
        or_default,
    )
    from posttrain.rollout.sampler import sample_texts
    from posttrain.tasks import get_task

    check_model_name(cfg.model)
    b = QUICK if cfg.quick else FULL
    out = Path(cfg.output_dir)
    resume = flags.get("resume", False) and out.is_dir()
    if not resume:
        prepare_output_dir(out, resume=False, overwrite=flags.get("overwrite", False))
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    task = get_task("sentiment")
    lora = LoraConfig(enabled=True, r=b.lora_r, alpha=2.0 * b.lora_r)
    clock = Progress(9 if cfg.rloo else 8)
    done_already = Stages(out, clock, resume).done_already
    facts: dict = {"budget": b.__dict__, "quick": cfg.quick, "model": cfg.model}
    common = dict(dtype=DTYPE, lora=lora, seed=cfg.seed, max_length=128)

    # 1.-2. (--resume: kept when data/labels.json exists)
    if done_already("sample", data / "labels.json") and done_already("label", data / "labels.json"):
        facts["labels"] = json.loads((data / "labels.json").read_text())
    else:
        # 1. replies from the model itself
        clock.start(
            "sample",
            f"{b.pair_samples} replies to each of {b.pair_prompts} prompts from {cfg.model}",
        )
        openings = task.prompts(b.pair_prompts + b.eval_prompts + 64, seed=cfg.seed + 2)
        prompts = chat_prompts(openings[: b.pair_prompts])
        eval_prompts = chat_prompts(openings[b.pair_prompts : b.pair_prompts + b.eval_prompts])
        model, tok = load_policy(cfg.model, dtype=DTYPE)
        replies = sample_texts(
            model,
            tok,
            prompts,
            n=b.pair_samples,
            max_new_tokens=b.max_new_tokens,
            temperature=1.0,
            batch_size=b.batch_size,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        del model
        clock.done(f"{b.pair_samples * len(prompts)} replies")

        # 2. simulated annotator: of each prompt's replies the best and the worst, labelled with noise
        clock.start("label", f"gold-reward annotator with {cfg.label_noise:.0%} label noise")
        k = b.pair_samples
        g = task.reward([p for p in prompts for _ in range(k)], [c for r in replies for c in r])
        pairs, gold = extreme_pairs(replies, [g[k * i : k * (i + 1)] for i in range(len(prompts))])
        n_held = max(2, len(prompts) // 10)
        cut = len(prompts) - n_held
        rows, stats = label_pairs(
            prompts[:cut], pairs[:cut], gold[:cut], noise=cfg.label_noise, seed=cfg.seed
        )
        held, _ = label_pairs(prompts[cut:], pairs[cut:], gold[cut:], noise=0.0, seed=cfg.seed)
        if len(rows) < 4 or not held:
            raise UserError("demo: too few preference pairs from the model's replies")
        write_jsonl(data / "pairs.jsonl", rows)
        write_jsonl(data / "pairs_heldout.jsonl", held)
        write_jsonl(data / "eval_prompts.jsonl", [{"prompt": p} for p in eval_prompts])
        stats["base_sample_gold_mean"] = sum(g) / len(g)
        stats["heldout_pairs"] = len(held)
        facts["labels"] = stats
        (data / "labels.json").write_text(json.dumps(stats) + "\n")  # the stages' marker, last
        clock.done(f"{stats['pairs']} pairs ({stats['ties_dropped']} ties dropped)")

    # 3. reward model with a LoRA trunk
    if not done_already("rm", out / "rm" / "final"):
        clock.start("rm", f"reward model (LoRA r {b.lora_r}), {b.rm_steps} steps")
        _run_recipe(
            rm,
            model=cfg.model,
            train_data=str(data / "pairs.jsonl"),
            eval_data=str(data / "pairs_heldout.jsonl"),
            output_dir=str(out / "rm"),
            max_steps=b.rm_steps,
            batch_size=b.rm_batch,
            gradient_accumulation_steps=_micro(b.rm_batch, 4),
            learning_rate=RM_LR,
            logging_steps=max(1, b.rm_steps // 5),
            **common,
        )
        clock.done()

    # PPO's and RLOO's settings: prompts, reward model, sizes, KL coefficient
    online = dict(
        model=cfg.model,
        train_data=str(data / "prompts.jsonl"),
        reward=str(out / "rm" / "final"),
        normalize_reward=True,
        max_steps=b.ppo_steps,
        batch_size=b.ppo_prompts,
        num_samples=b.ppo_samples,
        ppo_epochs=b.ppo_epochs,
        kl_coef=or_default(cfg.ppo_kl_coef, PPO_KL_COEF),
        reward_clip=or_default(cfg.ppo_reward_clip, PPO_REWARD_CLIP),
        missing_eos_penalty=or_default(cfg.ppo_missing_eos_penalty, PPO_MISSING_EOS_PENALTY),
        max_new_tokens=b.max_new_tokens,
        logging_steps=1,
        samples_every=max(1, b.ppo_steps // 4),
        **common,
    )

    # 4. PPO against the reward model
    if not done_already("ppo", out / "ppo" / "final"):
        ppo_openings = task.prompts(max(b.ppo_prompts * b.ppo_steps, 64), seed=cfg.seed + 3)
        write_jsonl(data / "prompts.jsonl", [{"prompt": p} for p in chat_prompts(ppo_openings)])
        clock.start(
            "ppo", f"{b.ppo_steps} PPO steps, {b.ppo_prompts} x {b.ppo_samples} replies each"
        )
        ptx_loss = or_default(cfg.ppo_ptx_loss, PPO_PTX_LOSS)
        ptx = ptx_args(cfg, b, data, or_default(cfg.ppo_ptx_coef, PPO_PTX_COEF), ptx_loss)
        _run_recipe(
            ppo,
            output_dir=str(out / "ppo"),
            num_minibatches=2,
            gradient_accumulation_steps=_micro(b.ppo_prompts * b.ppo_samples // 2, 8),
            learning_rate=PPO_LR,
            whiten_rewards=True,
            value_trunk_grad=PPO_VALUE_TRUNK_GRAD,
            kl_target=cfg.ppo_kl_target,
            kl_horizon=4 * b.ppo_prompts * b.ppo_samples,  # up to 5% a step (with kl_target)
            lam=or_default(cfg.ppo_lam, PPO_LAM),
            **ptx,
            **online,
        )
        clock.done(_ptx_note("PPO-ptx", ptx))

    # 5. DPO on the same pairs
    if not done_already("dpo", out / "dpo" / "final", after=BEFORE_PPO):
        clock.start("dpo", f"{b.dpo_steps} DPO steps (beta {cfg.dpo_beta}) on the same pairs")
        # the KL from the reference at the model's own chat replies, as PPO's
        ptx = ptx_args(cfg, b, data, or_default(cfg.dpo_ptx_coef, DPO_PTX_COEF), "kl")
        _run_recipe(
            dpo,
            model=cfg.model,
            train_data=str(data / "pairs.jsonl"),
            output_dir=str(out / "dpo"),
            max_steps=b.dpo_steps,
            batch_size=b.dpo_batch,
            gradient_accumulation_steps=_micro(b.dpo_batch, 4),
            learning_rate=DPO_LR,
            beta=cfg.dpo_beta,
            logging_steps=max(1, b.dpo_steps // 10),
            **ptx,
            **common,
        )
        clock.done(_ptx_note("ptx", ptx))

    # 5b. RLOO against the same reward model (--rloo)
    systems = ["ppo", "dpo"] + (["rloo"] if cfg.rloo else [])
    if cfg.rloo and not done_already("rloo", out / "rloo" / "final", after=(*BEFORE_PPO, "rm")):
        clock.start(
            "rloo", f"{b.ppo_steps} RLOO steps, {b.ppo_prompts} x {b.ppo_samples} replies each"
        )
        _run_recipe(
            rloo,
            output_dir=str(out / "rloo"),
            gradient_accumulation_steps=_micro(b.ppo_prompts * b.ppo_samples, 8),
            learning_rate=RLOO_LR,
            **online,
        )
        clock.done()

    # 6. evaluation on unseen openings (again when it lacks a system asked for)
    if _evaluated(out, systems) and done_already("eval", out / "eval" / "eval.json"):
        facts["eval"] = json.loads((out / "eval" / "eval.json").read_text())
    else:
        clock.start(
            "eval",
            f"{', '.join(s.upper() for s in systems)} against {cfg.model} on {b.eval_prompts} "
            "unseen openings",
        )
        from posttrain.recipes import eval as ev

        ecfg = ev.Config(
            output_dir=str(out / "eval"),
            mode="frontier",
            models=[str(out / name / "final") for name in systems],
            reference=cfg.model,
            task="sentiment",
            prompts=str(data / "eval_prompts.jsonl"),
            reward_model=str(out / "rm" / "final"),
            n_prompts=b.eval_prompts,
            capability=False,
            max_new_tokens=b.max_new_tokens,
            batch_size=b.batch_size,
            dtype=DTYPE,
            seed=cfg.seed,
            title="posttrain demo (SmolLM2): evaluation",
        )
        ecfg.validate()
        facts["eval"] = ev.run(ecfg, {"overwrite": True})
        clock.done()

    # 7. capability kept: factual answers and held-out text NLL
    clock.start("capability", "greedy factual answers and held-out text NLL, before and after")
    qa, texts = load_factual_qa(), heldout_texts()
    facts["capability"] = {
        name: capability(path, qa, texts, CAPABILITY_TOKENS)
        for name, path in [("base", cfg.model)] + [(n, str(out / n / "final")) for n in systems]
    }
    facts["questions"] = qa
    clock.done(
        ", ".join(f"{k} {sum(v['correct'])}/{len(qa)}" for k, v in facts["capability"].items())
    )

    # 8. report
    clock.start("report", "report.html and report.md")
    write_chat_report(out, facts, clock.times, clock.t0, cfg)
    clock.done(str(out / "report.html"))
    for line in facts["headline"]:
        print(f"[demo {clock.clock()}] {line}", file=sys.stderr)
    total = time.time() - clock.t0
    facts["total_s"] = total
    (out / "facts.json").write_text(json.dumps(facts, indent=1, default=str) + "\n")
    print(f"[demo {clock.clock()}] finished in {total / 60:.1f} min", file=sys.stderr)
    return facts


def _evaluated(out: Path, systems: list[str]) -> bool:
    """Whether ``out/eval/eval.json`` has a final point of each of ``systems``."""
    path = out / "eval" / "eval.json"
    return path.is_file() and set(systems) <= set(_finals(json.loads(path.read_text())))


def _finals(res: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for p in res["points"]:
        name = "ppo" if "/ppo/" in str(p.get("model", "")) or p["name"] == "ppo" else p["name"]
        out[name] = p
    return out


def empty_replies(samples: Path) -> dict[str, tuple[int, int]]:
    """Per system of an evaluation's ``samples.jsonl`` (``reference``, ``ppo``, ``dpo``: a
    column ``name@step`` counts as ``name``): (replies that are empty or whitespace, replies)."""
    counts: dict[str, tuple[int, int]] = {}
    for line in samples.read_text().splitlines():
        for key, reply in json.loads(line).items():
            if key != "prompt" and isinstance(reply, str):
                name = key.split("@")[0]
                empty, n = counts.get(name, (0, 0))
                counts[name] = (empty + (not reply.strip()), n + 1)
    return counts


def headline(
    ref: dict, finals: dict[str, dict], cap: dict, empty: dict[str, tuple[int, int]]
) -> list[str]:
    """Whether alignment happened, at what KL, and what it cost (targets of issue 20)."""

    def n_empty(name: str) -> str:
        e, n = empty.get(name, (0, 0))
        return f"empty replies {e}/{n}" if n else "empty replies not counted"

    lines = [
        f"Gold reward (VADER compound of the reply) of the base model: "
        f"{ref['gold_reward']:.3f} ± {ref['gold_reward_se']:.3f}; distinct-2 "
        f"{ref.get('distinct_2', float('nan')):.3f}; {n_empty('reference')}; factual answers right "
        f"{sum(cap['base']['correct'])}/{len(cap['base']['correct'])}."
    ]
    for name, p in finals.items():
        c = cap.get(name.lower())
        lost = sum(a and not b for a, b in zip(cap["base"]["correct"], c["correct"])) if c else None
        lines.append(
            f"{name.upper()}: gold {p['gold_reward']:.3f} ± {p['gold_reward_se']:.3f} "
            f"({gain_text(p, ref, 'base')}; target +0.3) at KL "
            f"{p['kl_k3']:.2f} nats/sequence (k3; target <= 6); distinct-2 "
            f"{p.get('distinct_2', float('nan')):.3f} (base x "
            f"{p.get('distinct_2', float('nan')) / max(ref.get('distinct_2', 1e-9), 1e-9):.2f}; "
            f"target >= 0.8); {n_empty(name.lower())} (target 0); factual answers lost {lost} "
            "(target <= 1); held-out text NLL "
            f"{c['nll']:.3f} vs base {cap['base']['nll']:.3f}."
        )
    return lines


def _rm_accuracy(out: Path) -> str:
    """The reward model's last held-out accuracy in ``out/rm/metrics.jsonl``, or "not measured"."""
    path = out / "rm" / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    values = [r[M.EVAL_ACCURACY] for r in rows if r.get(M.EVAL_ACCURACY) is not None]
    return f"{values[-1]:.2f}" if values else "not measured"


def write_chat_report(out: Path, facts: dict, stage_times, t0: float, cfg) -> None:
    from posttrain.evaluation import tables as ev
    from posttrain.evaluation.demo_report import side_by_side
    from posttrain.evaluation.report import Report, Samples, Table, write_report

    res = json.loads((out / "eval" / "eval.json").read_text())
    ref = res["reference_metrics"]
    finals = _finals(res)
    cap = facts["capability"]
    facts["headline"] = headline(ref, finals, cap, empty_replies(out / "eval" / "samples.jsonl"))
    stats = facts["labels"]
    intro = [
        f"The controlled sentiment experiment on {facts['model']} in chat form: the user turn is "
        "'Continue this movie review: {opening}', the reply is the continuation, the gold reward "
        "is VADER's compound score of the reply. LoRA adapters, bfloat16; the instruction-tuned "
        "model is the reference.",
        *facts["headline"],
        f"Preference data: {stats['pairs']} pairs, each the best and the worst reply by gold "
        f"reward of the model's {facts['budget']['pair_samples']} to a prompt, labelled by a "
        f"simulated annotator flipping {cfg.label_noise:.0%} of its labels "
        f"({stats['ties_dropped']} ties and {stats['empty_dropped']} pairs with an empty reply "
        f"dropped). The reward model's accuracy on {stats['heldout_pairs']} held-out pairs "
        f"(noise-free): {_rm_accuracy(out)}.",
    ]
    if facts["quick"]:
        intro.append("--quick run: budgets too small for alignment to show; the code path only.")
    stage_rows = [[n, f"{t:.1f}"] for n, t in stage_times]
    stage_rows.append(["total (before the report)", f"{time.time() - t0:.1f}"])
    tables = [
        Table("Pipeline stages", ["stage", "seconds"], stage_rows, note=json.dumps(facts["budget"]))
    ]
    rows = [ev._row("base (reference)", ref, ev.POLICY_KEYS)] + [
        ev._row(n.upper(), p, ev.POLICY_KEYS) for n, p in finals.items()
    ]
    tables.append(
        Table(
            "Final policies against the base model",
            ["system", *[h for _, h in ev.POLICY_KEYS]],
            rows,
            note=f"{res['n_prompts']} unseen openings, one reply each at temperature 1.",
        )
    )
    qa = facts["questions"]
    names = list(cap)
    tables.append(
        Table(
            "Capability kept: greedy answers to simple factual questions",
            ["question", "accepted", *names],
            [
                [q["question"], "/".join(q["answers"])]
                + [
                    ("✓ " if cap[n]["correct"][i] else "✗ ") + cap[n]["answers"][i][:60]
                    for n in names
                ]
                for i, q in enumerate(qa)
            ]
            + [["right", ""] + [f"{sum(cap[n]['correct'])}/{len(qa)}" for n in names]]
            + [["held-out text NLL (nats/token)", ""] + [f"{cap[n]['nll']:.3f}" for n in names]],
        )
    )
    shown = side_by_side(out, finals)
    report = Report(
        title=f"posttrain demo: controlled sentiment on {facts['model']}",
        paragraphs=intro,
        tables=tables,
        images=[("Reward–KL frontier", "eval/frontier.png")]
        if (out / "eval" / "frontier.png").exists()
        else [],
        samples=[
            Samples(
                "Replies side by side",
                ["base", *[n.upper() for n in finals]],
                shown,
                score_name="gold",
            )
        ],
    )
    write_report(report, out)
