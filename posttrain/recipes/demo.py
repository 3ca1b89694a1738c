"""``posttrain demo``: the whole RLHF pipeline on the built-in ``sentiment`` task, on a laptop CPU.

The controlled sentiment experiment of the DPO paper (Rafailov et al. 2023, sec. 6.1), in
miniature and with nothing to download:

 1. build    a byte-level BPE tokenizer trained on the task corpus and a small random llama;
 2. pretrain next-token prediction on review texts (the ``sft`` recipe, loss on all but the
             first word of each text) — the "base model";
 3. sft      supervised fine-tuning on (opening, continuation) records — the reference policy;
 4. sample   two continuations per prompt from the SFT policy;
 5. label    a simulated annotator (as AlpacaFarm does) prefers the continuation with the higher
             gold reward (VADER compound), flipping a share of its labels at random (label noise);
 6. rm       a Bradley–Terry reward model on those pairs, initialised from the SFT policy;
 7. ppo      PPO against the reward model (the proxy), KL-penalised towards the SFT policy;
 8. dpo      DPO on the same pairs, reference = the SFT policy;
 9. eval     every saved checkpoint of PPO and DPO against the SFT policy: gold and proxy reward,
             KL, win rate (gold judge), length, diversity, alignment tax, calibration;
10. report   ``report.html`` / ``report.md`` with the tables, the reward–KL frontier and the
             over-optimisation plot, and sample completions side by side.

Every stage calls a recipe's ``run(Config(...), flags)`` in this process, exactly as the command
line would. ``--quick`` runs the same code path with tiny budgets (about a minute; for tests).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import check
from posttrain.data import write_jsonl
from posttrain.errors import UserError
from posttrain.evaluation.demo_report import write_demo_report
from posttrain.training.device import resolve, validated
from posttrain.training.run import prepare_output_dir

SUMMARY = (
    "Run the whole pipeline (pretrain, SFT, pairs, RM, PPO, DPO, eval, report) on `sentiment`."
)


@dataclass(kw_only=True)
class Config:
    output_dir: str = "demo_out"
    """Where everything goes: data/, pretrain/, sft/, rm/, ppo/, dpo/, eval/, report.html. A
    non-empty directory needs --overwrite (start again) or --resume (keep the stages that
    finished, run the rest)."""
    quick: bool = False
    """Tiny budgets (about a minute): the same code path, for tests. Alignment barely shows."""
    seed: int = 0
    """Seed of every stage."""
    label_noise: float = 0.1
    """Share of the simulated annotator's labels flipped at random (AlpacaFarm uses 0.25)."""
    ppo_kl_coef: float | None = None
    """PPO's KL penalty coefficient (towards the reference policy); default 0.05, and 0.1 with
    ``--model smollm2-135m-instruct`` (there 0.05 let the KL pass 6 nats within 10 steps)."""
    ppo_kl_target: float | None = None
    """With --model: PPO's KL coefficient adapts (Ziegler et al. 2019) to hold the training KL near
    this many nats per reply, starting from --ppo_kl_coef and moving by up to 5% a step (horizon:
    four steps' replies); None: the coefficient stays fixed."""
    ppo_reward_clip: float | None = None
    """With --model: clip the reward model's scores, in standard deviations of its training set
    from their mean, to [-C, C] before PPO (and RLOO) see them: a bounded reward, so that a
    reply the reward model overrates (far outside the replies it was trained on) earns no more
    than a good ordinary one; default 1.0 (a large value turns it off)."""
    ppo_missing_eos_penalty: float | None = None
    """With --model: subtracted from the reward model's (normalised, clipped) score of a PPO (and
    RLOO) reply cut at the token limit; negative, a bonus for not stopping early. The pairs'
    replies all run to the limit, so the reward model never saw a short one and rates short
    ones high; without the bonus PPO learns to stop early (docs/demo.md). Default -1.0."""
    ppo_ptx_coef: float | None = None
    """With --model: PPO-ptx's weight: a term per token (--ppo_ptx_loss) of the model's own
    sampled replies to ordinary chat requests (``posttrain/assets/chat_prompts.jsonl``, none of
    them a question of the factual check) is mixed into PPO's loss, against the review style
    leaking into factual answers (docs/demo.md, run 11: +0.292 gold against +0.205 without it,
    ~300 s more PPO); default 1.0, 0 turns it off."""
    ppo_ptx_loss: Literal["nll", "kl"] | None = None
    """With --model: PPO-ptx's term (the ppo recipe's --ptx_loss): ``kl`` (default), the exact
    KL from the model at those replies' tokens, which fitting the replies cannot lower, or
    ``nll``, their NLL (docs/demo.md, run 12: on one draw the same gold at KL 1.63 against 5.01,
    no factual answer lost against 3)."""
    ppo_lam: float | None = None
    """With --model: PPO's GAE lambda; default 1 (docs/demo.md: at 1 PPO went further along the
    same reward-KL frontier in 30 steps than at 0.95, with no factual answer lost)."""
    dpo_beta: float = 0.1
    """DPO's beta."""
    dpo_ptx_coef: float | None = None
    """With --model: DPO's ptx weight: the exact KL from the model at its own chat replies (the
    data and term of PPO-ptx's KL) per token, added to DPO's loss against the review style
    leaking into factual answers; default 1.0 (docs/demo.md, run 15), 0 turns it off."""
    device: str = "auto"
    """Where every stage runs: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps. The
    --model and --experiment overoptimization runs use the CPU (auto means cpu there)."""
    experiment: Literal["pipeline", "overoptimization"] = "pipeline"
    """pipeline: the whole RLHF pipeline; overoptimization: a weak proxy reward model optimised by
    best-of-n and PPO, gold and proxy reward vs sqrt(KL) with Gao et al.'s fits
    (``posttrain.recipes.overoptimization``; ~5 minutes, --quick <1)."""

    model: str | None = None
    """Run the experiment on a pretrained chat model instead (``smollm2-135m-instruct``): the
    model itself is the reference, LoRA + bfloat16 (``posttrain.recipes.demo_chat``; ~30 minutes
    on 2 idle cores, --quick ~1-2)."""

    rloo: bool = False
    """With --model: also RLOO against the same reward model, with PPO's prompts, sizes and KL
    coefficient (not in the ~30-minute budget: about as long again as PPO's stage)."""

    def validate(self) -> None:
        validated(self.device)  # an absent device: exit 2, nothing written
        check(not self.rloo or self.model is not None, "rloo", "needs --model", self.rloo)
        check(0 <= self.label_noise < 0.5, "label_noise", "must be in [0, 0.5)", self.label_noise)
        check(
            self.ppo_kl_coef is None or self.ppo_kl_coef >= 0,
            "ppo_kl_coef",
            "must be >= 0",
            self.ppo_kl_coef,
        )
        check(
            self.ppo_kl_target is None or (self.ppo_kl_target > 0 and self.model is not None),
            "ppo_kl_target",
            "must be > 0, with --model",
            self.ppo_kl_target,
        )
        check(
            self.ppo_reward_clip is None or (self.ppo_reward_clip > 0 and self.model is not None),
            "ppo_reward_clip",
            "must be > 0, with --model",
            self.ppo_reward_clip,
        )
        check(
            self.ppo_missing_eos_penalty is None or self.model is not None,
            "ppo_missing_eos_penalty",
            "needs --model",
            self.ppo_missing_eos_penalty,
        )
        check(
            self.ppo_ptx_coef is None or (self.ppo_ptx_coef >= 0 and self.model is not None),
            "ppo_ptx_coef",
            "must be >= 0, with --model",
            self.ppo_ptx_coef,
        )
        check(
            self.ppo_ptx_loss is None or self.model is not None,
            "ppo_ptx_loss",
            "needs --model",
            self.ppo_ptx_loss,
        )
        check(
            self.ppo_lam is None or (0 <= self.ppo_lam <= 1 and self.model is not None),
            "ppo_lam",
            "must be in [0, 1], with --model",
            self.ppo_lam,
        )
        check(self.dpo_beta > 0, "dpo_beta", "must be > 0", self.dpo_beta)
        check(
            self.dpo_ptx_coef is None or (self.dpo_ptx_coef >= 0 and self.model is not None),
            "dpo_ptx_coef",
            "must be >= 0, with --model",
            self.dpo_ptx_coef,
        )
        check(
            self.model is None or self.experiment == "pipeline",
            "model",
            "runs the pipeline experiment only (drop --experiment)",
            self.model,
        )
        check(
            (self.model is None and self.experiment == "pipeline")
            or self.device in ("auto", "cpu"),
            "device",
            "the chat-model and over-optimisation experiments run on the CPU only for now "
            "(use --device cpu or auto)",
            self.device,
        )


@dataclass(frozen=True)
class Budget:
    """Sizes of every stage. ``FULL`` aims at ~8-10 minutes on 2 CPU cores, ``QUICK`` at ~1."""

    corpus: int  # pretraining texts
    vocab: int  # tokenizer vocabulary
    hidden: int  # model width (2 layers)
    pretrain_steps: int
    sft_records: int
    sft_steps: int
    pair_prompts: int  # prompts sampled twice for preference pairs
    rm_steps: int
    ppo_steps: int
    ppo_prompts: int
    dpo_steps: int
    eval_prompts: int
    save_every: int  # PPO / DPO checkpoint interval (frontier points)
    max_new_tokens: int
    batch_size: int


FULL = Budget(
    corpus=20000,
    vocab=768,
    hidden=128,
    pretrain_steps=400,
    sft_records=8000,
    sft_steps=150,
    pair_prompts=2000,
    rm_steps=250,
    ppo_steps=120,
    ppo_prompts=2000,
    dpo_steps=150,
    eval_prompts=256,
    save_every=30,
    max_new_tokens=40,
    batch_size=64,
)
QUICK = Budget(
    corpus=2000,
    vocab=512,
    hidden=64,
    pretrain_steps=40,
    sft_records=500,
    sft_steps=10,
    pair_prompts=96,
    rm_steps=10,
    ppo_steps=4,
    ppo_prompts=64,
    dpo_steps=10,
    eval_prompts=32,
    save_every=2,
    max_new_tokens=24,
    batch_size=16,
)


class Progress:
    """One line per stage with the elapsed time, on stderr."""

    def __init__(self, n_stages: int):
        self.t0 = time.time()
        self.n = n_stages
        self.i = 0
        self.stage_t0 = self.t0
        self.times: list[tuple[str, float]] = []

    def clock(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def start(self, name: str, what: str) -> None:
        self.i += 1
        self.stage_t0 = time.time()
        self.name = name
        print(
            f"[demo {self.clock()}] {self.i}/{self.n} {name}: {what}", file=sys.stderr, flush=True
        )

    def done(self, summary: str = "") -> None:
        took = time.time() - self.stage_t0
        self.times.append((self.name, took))
        tail = f" — {summary}" if summary else ""
        print(
            f"[demo {self.clock()}] {self.i}/{self.n} {self.name} done in {took:.1f}s{tail}",
            file=sys.stderr,
            flush=True,
        )


def or_default(value, default):
    """An option left unset (``None``) takes the demo's own default."""
    return default if value is None else value


# the stages DPO reads in both demos (the policy and the labelled pairs; not the reward model)
BEFORE_PPO = ("build", "pretrain", "sft", "sample", "label")


class Stages:
    """``--resume`` over a pipeline of stages: a stage whose output is complete (its marker file
    exists) is not run again; once one stage runs, every later stage that reads it runs too
    (its inputs changed). A stage reads every earlier one unless ``after`` names those it reads."""

    def __init__(self, out: Path, prog: Progress, resume: bool):
        self.out, self.prog, self.resume = out, prog, resume
        self.reran: list[str] = []

    def done_already(self, name: str, marker: Path, after: tuple[str, ...] | None = None) -> bool:
        stale = self.reran if after is None else [s for s in self.reran if s in after]
        if self.resume and not stale and marker.exists():
            self.prog.start(name, f"already done ({marker.relative_to(self.out)} exists, --resume)")
            self.prog.done()
            return True
        self.reran.append(name)
        return False


# ---------------------------------------------------------------------------------- stages


def build_base(out: Path, texts: list[str], b: Budget, seed: int) -> Path:
    """Tokenizer trained on the corpus + a random 2-layer llama, saved as an HF dir."""
    from posttrain.models import save_pretrained
    from posttrain.models.tiny import build_tiny_llama, build_tokenizer

    tok = build_tokenizer(texts, b.vocab)
    model = build_tiny_llama(
        tok,
        seed=seed,
        hidden_size=b.hidden,
        intermediate_size=2 * b.hidden,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    path = out / "init"
    save_pretrained(model, tok, path)
    return path


def label_pairs(
    prompts: list[str],
    pairs: list[list[str]],
    gold: list[tuple[float, float]],
    *,
    noise: float,
    seed: int,
    tie: float = 0.05,
) -> tuple[list[dict], dict]:
    """Simulated annotator: prefer the higher gold reward; a difference below ``tie`` is no
    preference (the pair is dropped, as is a pair with an empty response); each label is flipped
    with probability ``noise``."""
    rng = random.Random(seed)
    rows, n_ties, n_flipped, n_empty = [], 0, 0, 0
    for prompt, (a, b), (ga, gb) in zip(prompts, pairs, gold):
        if not a.strip() or not b.strip():  # an empty response is not a valid record
            n_empty += 1
            continue
        if abs(ga - gb) < tie or a == b:
            n_ties += 1
            continue
        chosen, rejected = (a, b) if ga > gb else (b, a)
        if rng.random() < noise:
            chosen, rejected = rejected, chosen
            n_flipped += 1
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows, {
        "pairs": len(rows),
        "ties_dropped": n_ties,
        "empty_dropped": n_empty,
        "flipped": n_flipped,
    }


def _run_recipe(module, flags=None, **fields) -> None:
    """``module.run(module.Config(**fields), flags)``, validating like the command line."""
    cfg = module.Config(**fields)
    if hasattr(cfg, "validate"):
        cfg.validate()
    module.run(cfg, flags or {"overwrite": True})


def run(cfg: Config, flags: dict[str, bool]) -> None:
    from posttrain.tasks import get_task

    if cfg.model is not None:
        from posttrain.recipes.demo_chat import run_chat_demo

        run_chat_demo(cfg, flags)
        return
    if cfg.experiment == "overoptimization":
        from posttrain.recipes.overoptimization import run_experiment

        run_experiment(cfg, flags)
        return

    b = QUICK if cfg.quick else FULL
    out = Path(cfg.output_dir)
    resume = flags.get("resume", False) and out.is_dir()
    if not resume:
        prepare_output_dir(out, resume=False, overwrite=flags.get("overwrite", False))
    data = out / "data"
    data.mkdir(exist_ok=True)
    task = get_task("sentiment")
    prog = Progress(10)
    facts: dict = {"budget": b.__dict__, "quick": cfg.quick}

    done_already = Stages(out, prog, resume).done_already

    # 1. tokenizer + random model
    corpus = task.corpus(b.corpus, seed=cfg.seed)
    init = out / "init"
    if not done_already("build", init / "config.json"):
        prog.start("build", f"tokenizer ({b.vocab} tokens) and a {b.hidden}-wide 2-layer llama")
        init = build_base(out, corpus, b, cfg.seed)
        prog.done(f"{init}")

    # 2. pretrain on the corpus: loss on every word but the first
    if not done_already("pretrain", out / "pretrain" / "final" / "config.json"):
        stage_pretrain(cfg, b, out, init, corpus, data, prog)
    sft_dir = out / "sft" / "final"
    if not done_already("sft", sft_dir / "config.json"):
        stage_sft(cfg, b, out, task, data, prog)
    if done_already("sample", data / "labels.json") and done_already("label", data / "labels.json"):
        facts["labels"] = json.loads((data / "labels.json").read_text())
    else:
        stage_pairs(cfg, b, out, task, sft_dir, data, prog, facts)

    # 6-8: reward model, PPO, DPO
    if not done_already("rm", out / "rm" / "final" / "config.json"):
        stage_rm(cfg, b, out, sft_dir, data, prog, facts)
    if not done_already("ppo", out / "ppo" / "final" / "config.json"):
        stage_ppo(cfg, b, out, sft_dir, data, prog, facts)
    if not done_already("dpo", out / "dpo" / "final" / "config.json", after=BEFORE_PPO):
        stage_dpo(cfg, b, out, sft_dir, data, prog, facts)
    # 9. evaluation of every checkpoint against the SFT policy
    stage_eval(cfg, b, out, sft_dir, prog, facts)

    # 10. report
    prog.start("report", "report.html and report.md")
    write_demo_report(out, facts, label_noise=cfg.label_noise, stage_times=prog.times, t0=prog.t0)
    prog.done(f"{out / 'report.html'}")
    for line in facts["headline"]:
        print(f"[demo {prog.clock()}] {line}", file=sys.stderr)
    total = time.time() - prog.t0
    print(
        f"[demo {prog.clock()}] finished in {total / 60:.1f} min; open {out / 'report.html'}",
        file=sys.stderr,
    )


def stage_pretrain(cfg, b, out, init, corpus, data, prog):
    from posttrain.recipes import sft

    prog.start("pretrain", f"{b.pretrain_steps} steps on {len(corpus)} review texts")
    rows = []
    for text in corpus:
        first, rest = text.split(" ", 1)
        rows.append({"prompt": first, "completion": " " + rest})
    write_jsonl(data / "pretrain.jsonl", rows)
    _run_recipe(
        sft,
        model=str(init),
        train_data=str(data / "pretrain.jsonl"),
        output_dir=str(out / "pretrain"),
        max_steps=b.pretrain_steps,
        batch_size=b.batch_size,
        learning_rate=3e-3,
        warmup_steps=max(1, b.pretrain_steps // 20),
        lr_schedule="cosine",
        logging_steps=1,
        max_length=96,
        seed=cfg.seed,
        device=cfg.device,
    )
    prog.done(_last_loss(out / "pretrain"))


def stage_sft(cfg, b, out, task, data, prog):
    from posttrain.recipes import sft

    prog.start("sft", f"{b.sft_steps} steps on {b.sft_records} (opening, continuation) records")
    write_jsonl(data / "sft.jsonl", task.sft_records(b.sft_records, seed=cfg.seed + 1))
    _run_recipe(
        sft,
        model=str(out / "pretrain" / "final"),
        train_data=str(data / "sft.jsonl"),
        output_dir=str(out / "sft"),
        max_steps=b.sft_steps,
        batch_size=b.batch_size,
        learning_rate=5e-4,
        lr_schedule="cosine",
        logging_steps=1,
        max_length=96,
        seed=cfg.seed,
        device=cfg.device,
    )
    prog.done(_last_loss(out / "sft"))


def stage_pairs(cfg, b, out, task, sft_dir, data, prog, facts):
    """Two SFT samples per prompt, labelled by the simulated annotator."""
    from posttrain.models import load_policy
    from posttrain.rollout.sampler import sample_texts

    prog.start(
        "sample", f"2 continuations for each of {b.pair_prompts} prompts from the SFT policy"
    )
    model, tok = load_policy(str(sft_dir), device=resolve(cfg.device))
    prompts = task.prompts(b.pair_prompts, seed=cfg.seed + 2)
    pairs = sample_texts(
        model,
        tok,
        prompts,
        n=2,
        max_new_tokens=b.max_new_tokens,
        temperature=1.0,
        batch_size=b.batch_size * 2,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    del model
    prog.done(f"{2 * len(prompts)} continuations")

    # 5. simulated annotator
    prog.start("label", f"gold-reward annotator with {cfg.label_noise:.0%} label noise")
    flat = [c for pair in pairs for c in pair]
    g = task.reward([p for p in prompts for _ in range(2)], flat)
    gold = [(g[2 * i], g[2 * i + 1]) for i in range(len(prompts))]
    n_held = max(8, len(prompts) // 10)  # the last 10% of prompts: held-out pairs, noise-free
    cut = len(prompts) - n_held
    rows, stats = label_pairs(
        prompts[:cut], pairs[:cut], gold[:cut], noise=cfg.label_noise, seed=cfg.seed
    )
    held, _ = label_pairs(prompts[cut:], pairs[cut:], gold[cut:], noise=0.0, seed=cfg.seed)
    if len(rows) < 8 or len(held) < 2:
        raise UserError("demo: too few preference pairs (the SFT policy did not learn to write?)")
    write_jsonl(data / "pairs.jsonl", rows)
    write_jsonl(data / "pairs_heldout.jsonl", held)
    stats["heldout_pairs"] = len(held)
    write_jsonl(
        data / "prompts.jsonl",
        [{"prompt": p} for p in task.prompts(b.ppo_prompts, seed=cfg.seed + 3)],
    )
    stats["sft_sample_gold_mean"] = sum(g) / len(g)
    facts["labels"] = stats
    (data / "labels.json").write_text(json.dumps(stats) + "\n")  # written last: the stage is done
    prog.done(
        f"{stats['pairs']} pairs ({stats['ties_dropped']} ties dropped, {stats['flipped']} flipped)"
    )


def _last_loss(run_dir: Path) -> str:
    lines = [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()
    ]
    losses = [r["train/loss"] for r in lines if r.get("train/loss") is not None]
    if not losses:
        return ""
    k = max(1, len(losses) // 10)  # single batches are noisy: mean of the first and last tenth
    return f"train loss {sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f}"


def stage_rm(cfg, b, out, sft_dir, data, prog, facts):
    from posttrain.recipes import rm

    prog.start("rm", f"reward model, {b.rm_steps} steps on the labelled pairs")
    _run_recipe(
        rm,
        model=str(sft_dir),
        train_data=str(data / "pairs.jsonl"),
        eval_data=str(data / "pairs_heldout.jsonl"),
        output_dir=str(out / "rm"),
        max_steps=b.rm_steps,
        batch_size=32 if not cfg.quick else 8,
        learning_rate=1e-4,
        logging_steps=max(1, b.rm_steps // 5),
        max_length=96,
        seed=cfg.seed,
        device=cfg.device,
    )
    prog.done()


def stage_ppo(cfg, b, out, sft_dir, data, prog, facts):
    from posttrain.recipes import ppo

    kl_coef = or_default(cfg.ppo_kl_coef, 0.05)
    prog.start("ppo", f"{b.ppo_steps} PPO steps against the reward model (KL coef {kl_coef})")
    _run_recipe(
        ppo,
        model=str(sft_dir),
        train_data=str(data / "prompts.jsonl"),
        reward=str(out / "rm" / "final"),
        output_dir=str(out / "ppo"),
        max_steps=b.ppo_steps,
        batch_size=b.batch_size,
        learning_rate=1e-4,
        kl_coef=kl_coef,
        max_new_tokens=b.max_new_tokens,
        save_steps=b.save_every,
        save_total_limit=100,
        logging_steps=max(1, b.ppo_steps // 10),
        max_length=96,
        seed=cfg.seed,
        device=cfg.device,
    )
    prog.done()


def stage_dpo(cfg, b, out, sft_dir, data, prog, facts):
    from posttrain.recipes import dpo

    prog.start("dpo", f"{b.dpo_steps} DPO steps (beta {cfg.dpo_beta}) on the same pairs")
    _run_recipe(
        dpo,
        model=str(sft_dir),
        train_data=str(data / "pairs.jsonl"),
        output_dir=str(out / "dpo"),
        max_steps=b.dpo_steps,
        batch_size=32 if not cfg.quick else 8,
        learning_rate=2e-4,
        beta=cfg.dpo_beta,
        save_steps=b.save_every,
        save_total_limit=100,
        logging_steps=max(1, b.dpo_steps // 10),
        max_length=96,
        seed=cfg.seed,
        device=cfg.device,
    )
    prog.done()


def stage_eval(cfg, b, out, sft_dir, prog, facts):
    from posttrain.evaluation.tables import point_key
    from posttrain.recipes import eval as ev

    models = [
        str(out / "ppo" / "checkpoint-*"),
        str(out / "ppo" / "final"),
        str(out / "dpo" / "checkpoint-*"),
        str(out / "dpo" / "final"),
    ]
    prog.start("eval", "every PPO / DPO checkpoint against the SFT policy")
    ecfg = ev.Config(
        output_dir=str(out / "eval"),
        mode="frontier",
        models=models,
        reference=str(sft_dir),
        task="sentiment",
        reward_model=str(out / "rm" / "final"),
        n_prompts=b.eval_prompts,
        n_heldout=b.eval_prompts,
        max_new_tokens=b.max_new_tokens,
        batch_size=b.batch_size,
        seed=cfg.seed,
        device=cfg.device,
        title="posttrain demo: evaluation",
    )
    ecfg.validate()
    res = ev.run(ecfg, {"overwrite": True})
    facts["eval"] = res
    # the reward model and DPO's implicit reward, scored on held-out noise-free pairs
    held = str(out / "data" / "pairs_heldout.jsonl")
    for mode, extra in (
        ("reward-model", dict(reward_model=str(out / "rm" / "final"))),
        ("implicit-reward", dict(model=str(out / "dpo" / "final"), reference=str(sft_dir))),
    ):
        mcfg = ev.Config(
            output_dir=str(out / f"eval-{mode}"),
            mode=mode,
            data=held,
            beta=cfg.dpo_beta,
            batch_size=b.batch_size,
            device=cfg.device,
            title=f"posttrain demo: {mode}",
            **extra,
        )
        mcfg.validate()
        facts[mode] = ev.run(mcfg, {"overwrite": True})
    best = max(res["points"], key=lambda p: p["gold_reward"])
    prog.done(f"best gold {best['gold_reward']:.3f} ({point_key(best)})")
