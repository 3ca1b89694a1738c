"""Quality on the `sentiment` task: DPO, PPO and RLOO from posttrain and from TRL, one frontier.

    .venv/bin/posttrain demo --output_dir demo_out            # the SFT policy, pairs and RM
    .venv/bin/python benchmarks/bench_sentiment_quality.py --demo_dir demo_out \\
        --trl_python /tmp/trlvenv-q/bin/python --output_dir /tmp/bench_quality

Every method starts from the demo's SFT policy and uses its data: DPO trains on its preference
pairs, PPO and RLOO optimise its reward model (the proxy). The same settings go to both libraries
(steps, batch, learning rate, beta / KL coefficient, response length, seed). Then
``posttrain eval --mode frontier`` scores every final policy against the SFT policy on the same
prompts (gold reward, KL, win rate) and draws them as points on one reward–KL plot. Wall time of
each training run (whole process) is printed with the TRL / posttrain ratio.

TRL lives in its own venv (never a posttrain dependency); its RLOO reward function loads the same
reward model through posttrain (the repository is put on ``sys.path``). TRL >= 1.13 has no PPO
trainer, so PPO runs in posttrain only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Matched settings (both libraries).
DPO = dict(steps=200, batch_size=32, learning_rate=2e-4, beta=0.1, max_length=96)
RLOO = dict(steps=60, batch_size=16, k=4, learning_rate=1e-4, kl_coef=0.05, max_new_tokens=40)
PPO = dict(steps=60, batch_size=64, learning_rate=1e-4, kl_coef=0.05, max_new_tokens=40)

TRL_WORKER = r"""
import json, sys, time
t0 = time.time()
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
spec = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(spec["model"])
model = AutoModelForCausalLM.from_pretrained(spec["model"])
common = dict(output_dir=spec["output_dir"], max_steps=spec["steps"], learning_rate=spec["learning_rate"],
              logging_steps=max(1, spec["steps"] // 10), save_strategy="no", report_to=[], use_cpu=True,
              lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, dataloader_num_workers=0,
              disable_tqdm=True, seed=spec["seed"])
rows = [json.loads(line) for line in open(spec["data"])]
if spec["method"] == "dpo":
    from trl import DPOConfig, DPOTrainer
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    cfg = DPOConfig(beta=spec["beta"], max_length=spec["max_length"],
                    per_device_train_batch_size=spec["batch_size"], **common)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
else:
    from trl import RLOOConfig, RLOOTrainer
    sys.path.insert(0, spec["repo"])
    from posttrain.models.reward import load_reward_model
    score = load_reward_model(spec["reward"]).score
    def reward(prompts, completions, **kw):
        return [float(x) for x in score(list(prompts), list(completions))]
    ds = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    k = spec["k"]
    cfg = RLOOConfig(num_generations=k, max_completion_length=spec["max_new_tokens"], temperature=1.0,
                     beta=spec["kl_coef"], per_device_train_batch_size=spec["batch_size"] * k, **common)
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds,
                          processing_class=tok)
trainer.train()
trainer.save_model(spec["output_dir"] + "/final")
tok.save_pretrained(spec["output_dir"] + "/final")
print(json.dumps({"seconds": time.time() - t0}))
"""


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def posttrain_cmd(recipe: str, **fields) -> list[str]:
    cmd = [sys.executable, "-m", "posttrain.cli", recipe, "--progress", "false", "--overwrite"]
    for k, v in fields.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--demo_dir", required=True, help="output of `posttrain demo`")
    p.add_argument(
        "--trl_python", default=None, help="python of a venv with trl (skip TRL if unset)"
    )
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_prompts", type=int, default=256)
    p.add_argument("--methods", default="dpo,ppo,rloo", help="comma-separated subset")
    args = p.parse_args()
    demo = Path(args.demo_dir).resolve()
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sft, rm = demo / "sft" / "final", demo / "rm" / "final"
    pairs, prompts = demo / "data" / "pairs.jsonl", demo / "data" / "prompts.jsonl"
    methods = args.methods.split(",")
    needed = [sft, pairs] + ([rm, prompts] if {"ppo", "rloo"} & set(methods) else [])
    for path in needed:
        if not path.exists():
            sys.exit(f"error: {path} is missing: run `posttrain demo --output_dir {demo}` first")
    seconds: dict[str, float] = {}
    common = dict(model=sft, seed=args.seed)

    runs = {
        "posttrain-dpo": posttrain_cmd(
            "dpo", **common, train_data=pairs, output_dir=out / "posttrain-dpo",
            max_steps=DPO["steps"], batch_size=DPO["batch_size"],
            learning_rate=DPO["learning_rate"], beta=DPO["beta"], max_length=DPO["max_length"],
        ),
        "posttrain-ppo": posttrain_cmd(
            "ppo", **common, train_data=prompts, reward=rm, output_dir=out / "posttrain-ppo",
            max_steps=PPO["steps"], batch_size=PPO["batch_size"],
            learning_rate=PPO["learning_rate"], kl_coef=PPO["kl_coef"],
            max_new_tokens=PPO["max_new_tokens"],
        ),
        "posttrain-rloo": posttrain_cmd(
            "rloo", **common, train_data=prompts, reward=rm, output_dir=out / "posttrain-rloo",
            max_steps=RLOO["steps"], batch_size=RLOO["batch_size"], num_samples=RLOO["k"],
            learning_rate=RLOO["learning_rate"], kl_coef=RLOO["kl_coef"],
            max_new_tokens=RLOO["max_new_tokens"],
        ),
    }  # fmt: skip
    if args.trl_python:
        worker = out / "trl_worker.py"
        worker.write_text(TRL_WORKER)
        specs = {
            "trl-dpo": dict(method="dpo", data=str(pairs), **DPO),
            "trl-rloo": dict(
                method="rloo", data=str(prompts), reward=str(rm), repo=str(ROOT), **RLOO
            ),
        }
        for name, spec in specs.items():
            spec.update(model=str(sft), output_dir=str(out / name), seed=args.seed)
            runs[name] = [args.trl_python, str(worker), json.dumps(spec)]
    runs = {name: cmd for name, cmd in runs.items() if name.split("-", 1)[1] in methods}
    for name, cmd in runs.items():
        print(f"{name}: training ...", flush=True)
        seconds[name] = timed(cmd, out / f"{name}.log")
        print(f"{name}: {seconds[name]:.0f}s", flush=True)

    models = ",".join(str(out / name / "final") for name in runs)
    ev = out / "frontier"
    subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "eval", "--mode", "frontier", "--models", models,
         "--reference", str(sft), "--task", "sentiment",
         *(["--reward_model", str(rm)] if rm.exists() else []),
         "--n_prompts", str(args.eval_prompts), "--max_new_tokens", "40", "--capability", "false",
         "--output_dir", str(ev), "--overwrite", "--title", "sentiment: posttrain vs TRL"],
        check=True, cwd=ROOT,
    )  # fmt: skip
    res = json.loads((ev / "eval.json").read_text())
    ref = res["reference_metrics"]
    print(f"\nSFT reference: gold {ref['gold_reward']:.3f} ± {ref['gold_reward_se']:.3f}")
    print("| run | train s | gold reward | KL k3 (nats) | win rate vs SFT | proxy (RM) |")
    print("|---|---|---|---|---|---|")
    for pt in res["points"]:
        print(
            f"| {pt['name']} | {seconds[pt['name']]:.0f} | {pt['gold_reward']:.3f} ± "
            f"{pt['gold_reward_se']:.3f} | {pt['kl_k3']:.2f} ± {pt['kl_k3_se']:.2f} | "
            f"{pt['win_rate']:.3f} | {pt['proxy_reward'] if pt['proxy_reward'] is None else round(pt['proxy_reward'], 3)} |"
        )
    for method in ("dpo", "rloo"):
        a, b = seconds.get(f"posttrain-{method}"), seconds.get(f"trl-{method}")
        if a and b:
            print(f"{method}: TRL / posttrain wall time = {b / a:.2f}x")
    dest = ROOT / "benchmarks" / "results"
    dest.mkdir(exist_ok=True)
    shutil.copy(ev / "frontier.png", dest / "sentiment_quality_frontier.png")
    print(f"frontier plot: {ev / 'frontier.png'} (copied to {dest})")


if __name__ == "__main__":
    main()
