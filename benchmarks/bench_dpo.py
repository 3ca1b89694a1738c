"""DPO speed: posttrain dpo vs TRL's DPOTrainer, and seconds/step on SmolLM2-135M.

    .venv/bin/python benchmarks/bench_dpo.py vs-trl --trl_python /tmp/trlvenv/bin/python
    .venv/bin/python benchmarks/bench_dpo.py smollm2

``vs-trl``: the same tiny model directory, preference data, batch, steps, precision (float32 —
TRL's DPOConfig defaults to bf16 autocast and gradient checkpointing, both turned off here), lr
schedule and beta through ``posttrain dpo`` and TRL's ``DPOTrainer`` (TRL in its own venv), each
with a frozen reference copy (``--precomputed``: both precompute the reference log-probs
instead); whole process wall time (imports, data, training, saving) and its CPU time,
alternately in one invocation; prints the ratios. CPU time is the steadier number on a shared
machine.

``smollm2``: one DPO step (4 pairs x 256 tokens: forward of policy and reference, backward,
AdamW) on SmolLM2-135M-Instruct in float32 and bfloat16, with and without LoRA, each in a fresh
subprocess; seconds/step (median) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRL_SCRIPT = r"""
import json, sys, time
t0 = time.time()
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
model_dir, data, out, steps, bs, lr, maxlen, beta, precompute = sys.argv[1:10]
rows = [json.loads(l) for l in open(data)]
ds = Dataset.from_list(rows)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
cfg = DPOConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(bs), learning_rate=float(lr),
                max_length=int(maxlen), beta=float(beta), logging_steps=10, save_strategy="no", report_to=[],
                use_cpu=True, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                dataloader_num_workers=0, disable_tqdm=True, seed=0, bf16=False,
                gradient_checkpointing=False, precompute_ref_log_probs=precompute == "1")
DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok).train()
print(json.dumps({"seconds": time.time() - t0}))
"""


def cmd_vs_trl(args) -> None:
    sys.path.insert(0, str(ROOT))
    from posttrain.models import load_policy, save_pretrained
    from tests.helpers_pref import preference_rows

    work = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    model, tok = load_policy("tiny-llama")
    save_pretrained(model, tok, work / "tiny")
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_rows(2000)))
    (work / "run_trl_dpo.py").write_text(TRL_SCRIPT)
    steps, bs, lr, maxlen, beta = str(args.steps), str(args.batch), "5e-4", "128", "0.1"
    reference = "precomputed" if args.precomputed else "model"
    ours = [
        sys.executable,
        "-m",
        "posttrain.cli",
        "dpo",
        "--model",
        str(work / "tiny"),
        "--train_data",
        str(data),
        "--max_steps",
        steps,
        "--batch_size",
        bs,
        "--learning_rate",
        lr,
        "--max_length",
        maxlen,
        "--beta",
        beta,
        "--reference",
        reference,
        "--logging_steps",
        "10",
        "--save_steps",
        "0",
        "--progress",
        "false",
    ]
    wall: dict[str, list[float]] = {"posttrain": [], "trl": []}
    cpu: dict[str, list[float]] = {"posttrain": [], "trl": []}
    for rep in range(args.repeats):
        for name in ("posttrain", "trl"):
            out = work / f"{name}-{rep}"
            cmd = (
                [*ours, "--output_dir", str(out)]
                if name == "posttrain"
                else [
                    args.trl_python,
                    str(work / "run_trl_dpo.py"),
                    str(work / "tiny"),
                    str(data),
                    str(out),
                    steps,
                    bs,
                    lr,
                    maxlen,
                    beta,
                    str(int(args.precomputed)),
                ]
            )
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(
                cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wall[name].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            print(
                f"{name} run {rep}: {wall[name][-1]:.1f}s wall, {cpu[name][-1]:.1f}s CPU",
                flush=True,
            )
    a, b = min(wall["posttrain"]), min(wall["trl"])
    ca, cb = min(cpu["posttrain"]), min(cpu["trl"])
    print(
        f"tiny-llama DPO, {steps} steps x {bs} pairs, float32, reference {reference}, whole process, "
        f"best of {args.repeats}: posttrain {a:.1f}s ({ca:.1f}s CPU) | TRL DPOTrainer {b:.1f}s ({cb:.1f}s CPU) "
        f"| ratio {b / a:.2f}x wall, {cb / ca:.2f}x CPU"
    )


def one_config(dtype: str, lora: bool, steps: int) -> None:
    """Run in a subprocess: time DPO steps on smollm2 with the recipe's own pieces, print JSON."""
    sys.path.insert(0, str(ROOT))
    import copy

    import torch

    from posttrain.config import LoraConfig
    from posttrain.data.chat import Encoded
    from posttrain.data.preference import EncodedPair, collate_pairs
    from posttrain.models import load_model, load_tokenizer
    from posttrain.models.lora import apply_lora
    from posttrain.recipes.dpo import make_reference, pair_logps, preference_loss
    from posttrain.training import make_optimizer, optimizer_step

    tok = load_tokenizer("smollm2-135m-instruct")
    base = load_model("smollm2-135m-instruct", dtype=dtype, tokenizer=tok)
    frozen = None if lora else copy.deepcopy(base).requires_grad_(False)
    model = apply_lora(base, LoraConfig(enabled=lora, r=16, alpha=32))
    model.train()
    ref = make_reference("lora" if lora else "model", model, frozen, None)
    opt = make_optimizer(model, lr=1e-6)
    gen = torch.Generator().manual_seed(0)

    def seq():  # 64 prompt + 192 response tokens
        return torch.randint(0, len(tok), (256,), generator=gen).tolist()

    pairs = [EncodedPair(Encoded(seq(), 64, False), Encoded(seq(), 64, False)) for _ in range(4)]
    batch = collate_pairs(pairs, tok.pad_token_id)  # (8, 256)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        policy = pair_logps(model, batch)
        losses, _, _ = preference_loss(
            policy, *ref(batch, "train", []), loss_type="sigmoid", beta=0.1
        )
        losses.mean().backward()
        optimizer_step(model.parameters(), opt, None, 1.0)
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = sorted(times[1:])
    print(
        json.dumps(
            {"dtype": dtype, "lora": lora, "s_per_step": timed[len(timed) // 2], "peak_rss_mb": rss}
        )
    )


def cmd_smollm2(args) -> None:
    print("| dtype | LoRA | s/step | peak RSS |\n|---|---|---|---|")
    for dtype in ("float32", "bfloat16"):
        for lora in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "one", dtype, str(int(lora)), str(args.steps)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"| {dtype} | {'yes (r=16)' if lora else 'no'} | {r['s_per_step']:.2f} | {r['peak_rss_mb']:.0f} MB |",
                flush=True,
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one_config(sys.argv[2], bool(int(sys.argv[3])), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vs-trl")
    v.add_argument("--trl_python", required=True)
    v.add_argument("--steps", type=int, default=200)
    v.add_argument("--batch", type=int, default=8)
    v.add_argument("--repeats", type=int, default=2)
    v.add_argument("--precomputed", action="store_true", help="both precompute reference log-probs")
    s = sub.add_parser("smollm2")
    s.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    {"vs-trl": cmd_vs_trl, "smollm2": cmd_smollm2}[args.cmd](args)


if __name__ == "__main__":
    main()
