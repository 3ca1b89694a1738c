"""SFT speed: step time and model FLOP utilisation on SmolLM2-135M, and posttrain sft vs TRL.

    .venv/bin/python benchmarks/bench_sft.py mfu                  # smollm2, batch 4 x 256, fp32 + bf16
    .venv/bin/python benchmarks/bench_sft.py vs-trl --trl_python /tmp/trlvenv-sft/bin/python

``mfu``: this machine's matmul FLOP/s per dtype is measured first (2048^3 matmuls), then an SFT
step (forward + backward + AdamW) on 4 x 256 tokens; MFU = 6 * params * tokens / step time /
measured matmul FLOP/s.

``vs-trl``: the same tiny model directory, data and settings through ``posttrain sft`` and TRL's
``SFTTrainer`` (TRL lives in its own venv, never a posttrain dependency), whole process wall time,
run alternately in one invocation; prints the ratio.
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


def matmul_flops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sft_step_time(
    model_name: str, dtype: str, batch: int, length: int, steps: int
) -> tuple[float, int]:
    from posttrain.models import load_model, load_tokenizer
    from posttrain.recipes.sft import nll_sum
    from posttrain.training import make_optimizer, optimizer_step

    tok = load_tokenizer(model_name)
    model = load_model(model_name, dtype=dtype, tokenizer=tok)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (batch, length), generator=gen)
    batch_in = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "response_mask": torch.ones_like(ids),
    }
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        nll, n = nll_sum(model, batch_in)
        (nll / n).backward()
        optimizer_step(model.parameters(), opt, None, 1.0)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2], params


def cmd_mfu(args) -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for dtype, tdt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        peak = matmul_flops(tdt)
        step, params = sft_step_time(args.model, dtype, args.batch, args.length, args.steps)
        tokens = args.batch * args.length
        mfu = 6 * params * tokens / step / peak
        rows.append((dtype, peak / 1e9, step, tokens / step, mfu))
    print(
        f"model {args.model}: batch {args.batch} x {args.length} tokens, median of {args.steps} steps"
    )
    print("| dtype | matmul GFLOP/s | s/step | tokens/s | MFU |")
    print("|---|---|---|---|---|")
    for dtype, gflops, step, tps, mfu in rows:
        print(f"| {dtype} | {gflops:.0f} | {step:.2f} | {tps:.0f} | {mfu:.0%} |")


TRL_SCRIPT = r"""
import json, sys, time
t0 = time.time()
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
model_dir, data, out, steps, bs, lr, maxlen = sys.argv[1:8]
rows = [json.loads(l) for l in open(data)]
ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
cfg = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(bs), learning_rate=float(lr),
                max_length=int(maxlen), logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
                completion_only_loss=True, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                dataloader_num_workers=0, disable_tqdm=True, seed=0)
SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok).train()
print(json.dumps({"seconds": time.time() - t0}))
"""


def cmd_vs_trl(args) -> None:
    from posttrain.models import load_policy, save_pretrained
    from tests.helpers_sft import addition_rows

    work = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    model, tok = load_policy("tiny-llama")
    save_pretrained(model, tok, work / "tiny")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in addition_rows(2000)))
    (work / "run_trl_sft.py").write_text(TRL_SCRIPT)
    common = dict(steps=str(args.steps), bs=str(args.batch), lr="3e-4", maxlen="128")
    ours_cmd = [
        sys.executable,
        "-m",
        "posttrain.cli",
        "sft",
        "--model",
        str(work / "tiny"),
        "--train_data",
        str(data),
        "--max_steps",
        common["steps"],
        "--batch_size",
        common["bs"],
        "--learning_rate",
        common["lr"],
        "--max_length",
        common["maxlen"],
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
                    str(work / "run_trl_sft.py"),
                    str(work / "tiny"),
                    str(data),
                    str(out),
                    common["steps"],
                    common["bs"],
                    common["lr"],
                    common["maxlen"],
                ]
            t0 = time.perf_counter()
            subprocess.run(
                cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            results[name].append(time.perf_counter() - t0)
            print(f"{name} run {rep}: {results[name][-1]:.1f}s", flush=True)
    ours, theirs = min(results["posttrain"]), min(results["trl"])
    print(
        f"tiny-llama, {args.steps} steps x batch {args.batch}, whole process, best of {args.repeats}:"
    )
    print(f"posttrain sft {ours:.1f}s | TRL SFTTrainer {theirs:.1f}s | ratio {theirs / ours:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mfu")
    m.add_argument("--model", default="smollm2-135m-instruct")
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--length", type=int, default=256)
    m.add_argument("--steps", type=int, default=3)
    v = sub.add_parser("vs-trl")
    v.add_argument("--trl_python", required=True)
    v.add_argument("--steps", type=int, default=200)
    v.add_argument("--batch", type=int, default=8)
    v.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    {"mfu": cmd_mfu, "vs-trl": cmd_vs_trl}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
