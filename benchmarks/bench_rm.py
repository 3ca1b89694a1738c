"""Reward-model speed: posttrain rm vs TRL's RewardTrainer, and RM scoring throughput.

    .venv/bin/python benchmarks/bench_rm.py vs-trl --trl_python /tmp/trlvenv-sft/bin/python
    .venv/bin/python benchmarks/bench_rm.py throughput          # smollm2-135m-instruct, sequences/s
    .venv/bin/python benchmarks/bench_rm.py demo [--steps 10]   # the SmolLM2 demo's rm, padded or not

``vs-trl``: the same tiny-llama HF directory, the same synthetic preference pairs and settings
(batch, lr, max_length, linear schedule, no warm-up, grad clip 1.0, float32) through ``posttrain
rm`` and TRL's ``RewardTrainer`` (TRL lives in its own venv, never a posttrain dependency); whole
process wall time, run alternately in one invocation; prints the ratio. Both runs report their
final training-batch accuracy so a fast-but-broken run would show.

``throughput``: ``RewardModel.score`` (text in, tokenized with the RM's own tokenizer, batched,
right-padded, no grad) on SmolLM2-135M-Instruct; sequences/s after one warm-up batch.

``demo``: ``posttrain rm`` as the SmolLM2 demo runs it (LoRA r 16, bfloat16, batch 16 pairs in
micro-batches of 4, max_length 128) on pairs like the demo's: the user turn ``Continue this movie
review: {opening}`` in SmolLM2's chat template, replies of 3-25 words; with ``--padding_free
false`` (2B padded rows, the recipe before) and ``true`` (each prompt once, then both replies:
the default), each in a fresh process, alternately, ``--repeats`` rounds. Reported: the training
steps' seconds (16 pairs over ``train/pairs_per_s``, summed, from the recipe's log) and the whole process's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

TRL_SCRIPT = r"""
import json, sys, time
t0 = time.time()
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer
model_dir, data, out, steps, bs, lr, maxlen = sys.argv[1:8]
rows = [json.loads(l) for l in open(data)]
ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
model.config.pad_token_id = tok.pad_token_id
cfg = RewardConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(bs),
                   learning_rate=float(lr), max_length=int(maxlen), logging_steps=10, save_strategy="no",
                   report_to=[], use_cpu=True, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                   dataloader_num_workers=0, disable_tqdm=True, seed=0)
trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
trainer.train()
trainer.save_model(out + "/final")
acc = [h["accuracy"] for h in trainer.state.log_history if "accuracy" in h]
print(json.dumps({"seconds": time.time() - t0, "last_accuracy": acc[-1] if acc else None}))
"""


def cmd_vs_trl(args) -> None:
    from posttrain.models import load_policy, save_pretrained
    from posttrain.training import read_metrics
    from tests.helpers_pref import preference_rows

    work = Path(tempfile.mkdtemp(prefix="bench_rm_"))
    model, tok = load_policy("tiny-llama")
    save_pretrained(model, tok, work / "tiny")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_rows(2000, seed=0)))
    (work / "run_trl_rm.py").write_text(TRL_SCRIPT)
    c = dict(steps=str(args.steps), bs=str(args.batch), lr=args.lr, maxlen="128")
    ours_cmd = [
        sys.executable,
        "-m",
        "posttrain.cli",
        "rm",
        "--model",
        str(work / "tiny"),
        "--train_data",
        str(data),
        "--max_steps",
        c["steps"],
        "--batch_size",
        c["bs"],
        "--learning_rate",
        c["lr"],
        "--max_length",
        c["maxlen"],
        "--warmup_steps",
        "0",
        "--lr_schedule",
        "linear",
        "--logging_steps",
        "10",
        "--progress",
        "false",
    ]
    results: dict[str, list[float]] = {"posttrain": [], "trl": []}
    for rep in range(args.repeats):
        for name in ("posttrain", "trl"):
            out = work / f"{name}-{rep}"
            if name == "posttrain":
                cmd = [*ours_cmd, "--output_dir", str(out)]
            else:
                cmd = [
                    args.trl_python,
                    str(work / "run_trl_rm.py"),
                    str(work / "tiny"),
                    str(data),
                    str(out),
                    c["steps"],
                    c["bs"],
                    c["lr"],
                    c["maxlen"],
                ]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
            results[name].append(time.perf_counter() - t0)
            if name == "posttrain":
                acc = read_metrics(out / "metrics.jsonl")[-1].get("rewards/accuracies")
            else:
                acc = json.loads(proc.stdout.strip().splitlines()[-1])["last_accuracy"]
            print(
                f"{name} run {rep}: {results[name][-1]:.1f}s (last logged batch accuracy {acc})",
                flush=True,
            )
    ours, theirs = min(results["posttrain"]), min(results["trl"])
    print(
        f"tiny-llama, {args.steps} steps x batch {args.batch} pairs, whole process, best of {args.repeats}:"
    )
    print(
        f"posttrain rm {ours:.1f}s | TRL RewardTrainer {theirs:.1f}s | ratio {theirs / ours:.2f}x"
    )


def cmd_demo(args) -> None:
    import random

    from posttrain.metrics import TRAIN_PAIRS_PER_S as PAIRS_PER_S
    from posttrain.recipes.demo_chat import chat_prompts
    from posttrain.tasks import get_task
    from tests.helpers_pref import BAD, GOOD

    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="bench_rm_demo_"))
    prompts = chat_prompts(get_task("sentiment").prompts(16 * args.steps, seed=3))

    def reply(words: list[str]) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(3, 25))) + "."

    rows = [{"prompt": p, "chosen": reply(GOOD), "rejected": reply(BAD)} for p in prompts]
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [
        sys.executable, "-m", "posttrain.cli", "rm", "--model", "smollm2-135m-instruct",
        "--train_data", str(data), "--max_steps", str(args.steps), "--batch_size", "16",
        "--gradient_accumulation_steps", "4", "--learning_rate", "1e-3", "--max_length", "128",
        "--dtype", "bfloat16", "--lora.enabled", "true", "--lora.r", "16", "--lora.alpha", "32",
        "--logging_steps", "1", "--save_steps", "0", "--progress", "false",
    ]  # fmt: skip
    results: dict[str, list[tuple[float, float]]] = {"false": [], "true": []}
    for rep in range(args.repeats):
        for flag in results:
            out = work / f"run-{flag}-{rep}"
            t0 = time.perf_counter()
            cmd = [*base, "--padding_free", flag, "--output_dir", str(out)]
            subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
            wall = time.perf_counter() - t0
            metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            steps = sum(16 / m[PAIRS_PER_S] for m in metrics if PAIRS_PER_S in m)
            results[flag].append((steps, wall))
            print(f"padding_free {flag} round {rep}: steps {steps:.1f} s, wall {wall:.1f} s")
    print(
        f"\nposttrain rm, SmolLM2 demo settings, {args.steps} steps x 16 pairs, best of "
        f"{args.repeats}:\n| padding_free | training steps | whole process |\n|---|---|---|"
    )
    for flag, values in results.items():
        print(f"| {flag} | {min(v[0] for v in values):.1f} s | {min(v[1] for v in values):.1f} s |")
    ratio = min(v[0] for v in results["false"]) / min(v[0] for v in results["true"])
    print(f"\npadded / padding-free (training steps): {ratio:.2f}x")


def cmd_throughput(args) -> None:
    from posttrain.models import load_model, load_tokenizer
    from posttrain.models.reward import RewardModel
    from tests.helpers_pref import preference_rows

    tok = load_tokenizer(args.model)
    rm = RewardModel(load_model(args.model, dtype=args.dtype, tokenizer=tok), tok).eval()
    rows = preference_rows(args.n + args.batch, seed=1)
    prompts = [r["prompt"] for r in rows]
    texts = [r["chosen"] * args.repeat_text for r in rows]
    rm.score(prompts[: args.batch], texts[: args.batch], batch_size=args.batch)  # warm-up
    n_tokens = sum(
        len(tok(p + t).input_ids) for p, t in zip(prompts[args.batch :], texts[args.batch :])
    )
    t0 = time.perf_counter()
    rm.score(prompts[args.batch :], texts[args.batch :], batch_size=args.batch)
    dt = time.perf_counter() - t0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{args.model} {args.dtype}: {args.n} sequences (~{n_tokens / args.n:.0f} tokens each incl. "
        f"chat template), batch {args.batch}: {args.n / dt:.1f} sequences/s, {dt:.1f}s"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vs-trl")
    v.add_argument("--trl_python", required=True)
    v.add_argument("--steps", type=int, default=200)
    v.add_argument("--batch", type=int, default=8)
    v.add_argument("--lr", default="1e-3")
    v.add_argument("--repeats", type=int, default=2)
    d = sub.add_parser("demo")
    d.add_argument("--steps", type=int, default=10)
    d.add_argument("--repeats", type=int, default=2)
    t = sub.add_parser("throughput")
    t.add_argument("--model", default="smollm2-135m-instruct")
    t.add_argument("--dtype", default="float32")
    t.add_argument("--n", type=int, default=128)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument(
        "--repeat_text", type=int, default=4, help="repeat each completion to lengthen it"
    )
    args = p.parse_args()
    {"vs-trl": cmd_vs_trl, "throughput": cmd_throughput, "demo": cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
