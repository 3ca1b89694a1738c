"""Online-RL speed: posttrain rloo / grpo vs TRL's RLOOTrainer / GRPOTrainer, and one PPO
iteration on SmolLM2-135M-Instruct broken down by phase.

    .venv/bin/python benchmarks/bench_rl.py vs-trl --trl_python /tmp/trlvenv-rl/bin/python
    .venv/bin/python benchmarks/bench_rl.py smollm2

``vs-trl``: tiny-llama saved as one HF directory; the same prompts (the counting task's), the same
reward function (``tests.helpers_rl.count_e``), 8 prompts x 4 samples per step, 16 new tokens,
temperature 1, beta 0.05 (RLOO: KL in the reward; GRPO: k3 KL loss term, token-mean loss), one
pass per batch, lr 1e-3, float32, no checkpoints. Each program runs in its own process,
alternately, ``--repeats`` times; reported: samples (completions) per second of the training
loop, timed from the end of step 1 to the end of the last step (so loading, the first step's
warm-up and saving are left out on both sides: posttrain's ``time/elapsed_s`` per step, a TRL
callback's ``on_step_end``), whole-process wall time and CPU time, and the ratios.

``smollm2``: one ``posttrain ppo`` iteration on SmolLM2-135M-Instruct (64 prompts of the
sentiment task, 48 new tokens, VADER gold reward, 4 epochs x 2 minibatches, float32) in a fresh
process: seconds in generation, scoring, policy/reference log-probs and training, and peak RSS.
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
sys.path.insert(0, sys.argv[1])
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from tests.helpers_rl import count_e
root, algo, model_dir, prompts, out, steps, b, k, new, lr, beta = sys.argv[1:12]
b, k, steps = int(b), int(k), int(steps)
ds = Dataset.from_list([{"prompt": p} for p in json.load(open(prompts))])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)

def reward(prompts, completions, **kw):
    return count_e(prompts, completions)

common = dict(output_dir=out, max_steps=steps, per_device_train_batch_size=b * k, num_generations=k,
              steps_per_generation=1, gradient_accumulation_steps=1, max_completion_length=int(new),
              temperature=1.0, learning_rate=float(lr), beta=float(beta), num_iterations=1,
              logging_steps=steps, save_strategy="no", report_to=[], use_cpu=True, seed=0,
              lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
              dataloader_num_workers=0, disable_tqdm=True, disable_dropout=True)
if algo == "rloo":
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=RLOOConfig(**common),
                          train_dataset=ds, processing_class=tok)
else:
    trainer = GRPOTrainer(model=model, reward_funcs=reward,
                          args=GRPOConfig(**common, loss_type="dapo", scale_rewards="group"),
                          train_dataset=ds, processing_class=tok)
from transformers import TrainerCallback

class StepTimes(TrainerCallback):
    times = []

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.time())

trainer.add_callback(StepTimes())
t1 = time.time()
trainer.train()
t = StepTimes.times
print(json.dumps({"loop_s": t[-1] - t[0], "steps": len(t) - 1, "setup_s": t1 - t0}))
"""


def run_timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, stdout) of one subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, out


def cmd_vs_trl(args) -> None:
    sys.path.insert(0, str(ROOT))
    from posttrain.models import load_policy, save_pretrained
    from posttrain.tasks import get_task
    from posttrain.training import read_metrics

    work = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    model, tok = load_policy("tiny-llama")
    save_pretrained(model, tok, work / "tiny")
    prompts = get_task("counting").prompts(96, seed=0)
    (work / "prompts.json").write_text(json.dumps(prompts))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (work / "run_trl.py").write_text(TRL_SCRIPT)
    b, k, new, lr, beta = 8, 4, 16, "1e-3", "0.05"
    samples = (args.steps - 1) * b * k  # timed: from the end of step 1 to the end of the last
    print(
        f"tiny-llama, {args.steps} steps x {b} prompts x {k} samples, {new} new tokens, "
        f"beta {beta}, float32, best of {args.repeats}\n"
    )
    print(
        "| algorithm | program | loop s | samples/s | wall s | CPU s |\n|---|---|---|---|---|---|"
    )
    for algo in ("rloo", "grpo"):
        best: dict[str, dict[str, float]] = {}
        for rep in range(args.repeats):
            for name in ("posttrain", "trl"):
                out = work / f"{algo}-{name}-{rep}"
                if name == "posttrain":
                    cmd = [
                        sys.executable, "-m", "posttrain.cli", algo, "--model", str(work / "tiny"),
                        "--train_data", str(work / "prompts.jsonl"),
                        "--reward", "tests.helpers_rl:count_e", "--max_steps", str(args.steps),
                        "--batch_size", str(b), "--num_samples", str(k),
                        "--max_new_tokens", str(new), "--learning_rate", lr, "--kl_coef", beta,
                        "--lr_schedule", "constant", "--logging_steps", "1",
                        "--progress", "false", "--output_dir", str(out),
                    ]  # fmt: skip
                else:
                    cmd = [
                        args.trl_python, str(work / "run_trl.py"), str(ROOT), algo,
                        str(work / "tiny"), str(work / "prompts.json"), str(out),
                        str(args.steps), str(b), str(k), str(new), lr, beta,
                    ]  # fmt: skip
                wall, cpu, stdout = run_timed(cmd)
                if name == "posttrain":  # end of step 1 -> end of the last step
                    elapsed = [r["time/elapsed_s"] for r in read_metrics(out / "metrics.jsonl")]
                    loop = elapsed[-1] - elapsed[0]
                else:
                    loop = json.loads(stdout.strip().splitlines()[-1])["loop_s"]
                row = {"loop": loop, "wall": wall, "cpu": cpu}
                print(f"  {algo} {name} run {rep}: {row}", file=sys.stderr, flush=True)
                if name not in best or loop < best[name]["loop"]:
                    best[name] = row
        for name in ("posttrain", "trl"):
            r = best[name]
            label = name if name == "posttrain" else f"TRL {algo.upper()}Trainer"
            print(
                f"| {algo} | {label} | {r['loop']:.1f} | {samples / r['loop']:.1f} | "
                f"{r['wall']:.1f} | {r['cpu']:.1f} |",
                flush=True,
            )
        p, t = best["posttrain"], best["trl"]
        print(
            f"| {algo} | **ratio** | | **{t['loop'] / p['loop']:.2f}x** | "
            f"{t['wall'] / p['wall']:.2f}x | {t['cpu'] / p['cpu']:.2f}x |",
            flush=True,
        )


def cmd_smollm2(args) -> None:
    sys.path.insert(0, str(ROOT))
    from posttrain.training import read_metrics

    out = Path(tempfile.mkdtemp(prefix="bench_ppo_")) / "ppo"
    cmd = [
        sys.executable, "-m", "posttrain.cli", "ppo", "--model", "smollm2-135m-instruct",
        "--task", "sentiment", "--num_prompts", str(args.prompts), "--batch_size",
        str(args.prompts), "--max_new_tokens", str(args.new_tokens), "--max_steps", "1",
        "--ppo_epochs", "4", "--num_minibatches", "2", "--learning_rate", "1e-6",
        "--max_length", "256", "--progress", "false", "--output_dir", str(out),
    ]  # fmt: skip
    wall, cpu, stdout = run_timed(cmd)
    m = read_metrics(out / "metrics.jsonl")[-1]
    parts = {k: m[f"time/{k}_s"] for k in ("generation", "scoring", "logprobs", "training")}
    print(
        f"SmolLM2-135M-Instruct, one PPO iteration: {args.prompts} prompts x {args.new_tokens} "
        f"new tokens (mean response {m['response/length_mean']:.1f} tokens), float32\n"
    )
    print("| phase | seconds |\n|---|---|")
    for k, v in parts.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| **iteration** | **{sum(parts.values()):.1f}** |")
    print(
        f"\nwhole process {wall:.1f}s wall, {cpu:.1f}s CPU; peak RSS {m['memory/peak_rss_mb']:.0f} MB "
        f"({stdout.strip().splitlines()[-1]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vs-trl")
    v.add_argument("--trl_python", default="/tmp/trlvenv-rl/bin/python")
    v.add_argument("--steps", type=int, default=20)
    v.add_argument("--repeats", type=int, default=2)
    s = sub.add_parser("smollm2")
    s.add_argument("--prompts", type=int, default=64)
    s.add_argument("--new_tokens", type=int, default=48)
    args = parser.parse_args()
    {"vs-trl": cmd_vs_trl, "smollm2": cmd_smollm2}[args.cmd](args)


if __name__ == "__main__":
    main()
