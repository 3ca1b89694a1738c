"""Reward-model speed: posttrain rm vs TRL's RewardTrainer, and RM scoring throughput.

    .venv/bin/python benchmarks/bench_rm.py vs-trl --trl_python /tmp/trlvenv-sft/bin/python
    .venv/bin/python benchmarks/bench_rm.py throughput          # smollm2-135m-instruct, sequences/s

``vs-trl``: the same tiny-llama HF directory, the same synthetic preference pairs and settings
(batch, lr, max_length, linear schedule, no warm-up, grad clip 1.0, float32) through ``posttrain
rm`` and TRL's ``RewardTrainer`` (TRL lives in its own venv, never a posttrain dependency); whole
process wall time, run alternately in one invocation; prints the ratio. Both runs report their
final training-batch accuracy so a fast-but-broken run would show.

``throughput``: ``RewardModel.score`` (text in, tokenized with the RM's own tokenizer, batched,
right-padded, no grad) on SmolLM2-135M-Instruct; sequences/s after one warm-up batch.
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
    t = sub.add_parser("throughput")
    t.add_argument("--model", default="smollm2-135m-instruct")
    t.add_argument("--dtype", default="float32")
    t.add_argument("--n", type=int, default=128)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument(
        "--repeat_text", type=int, default=4, help="repeat each completion to lengthen it"
    )
    args = p.parse_args()
    {"vs-trl": cmd_vs_trl, "throughput": cmd_throughput}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
