"""One PPO iteration on SmolLM2-135M-Instruct, old code path and new side by side.

    .venv/bin/python benchmarks/bench_ppo_smollm2.py                 # the issue's iteration
    .venv/bin/python benchmarks/bench_ppo_smollm2.py --size reduced  # 16 prompts x 24 tokens
    .venv/bin/python benchmarks/bench_ppo_smollm2.py --size demo \
        --variants bf16-lora-unshared-ga2,bf16-lora-new-ga2       # the SmolLM2 demo's PPO step

The iteration (issue 20): ``posttrain ppo --max_steps 1`` on the sentiment task's prompts in chat
form, VADER gold reward, 64 prompts x 1 sample x 48 new tokens, 4 epochs x 2 minibatches (``demo``:
the SmolLM2 demo's PPO step, 8 prompts x 4 samples x 32 new tokens, 2 epochs x 2 minibatches), each
variant in a fresh process (so the peak RSS is its own), the variants one after the other in one
invocation (``--repeats`` rounds, alternating). Reported per variant: seconds in generation,
scoring, log-probs (policy + reference after the rollout) and training (values, GAE, the epochs),
as the recipe logs them (``time/*_s``), the mean response length, the process's peak RSS, and the
whole process's wall and CPU seconds (on a loaded machine the CPU seconds compare better).

Variants (``--variants``, comma-separated):

- ``fp32-full-old``: float32, every parameter trained, whole logits (the code before issue 20);
- ``fp32-full-new``: float32, every parameter trained, chunked response-only logits;
- ``fp32-full-new-ga4``: the same in micro-batches of a quarter minibatch (see ``-ga4`` below);
- ``bf16-lora-old``: bfloat16 weights, LoRA r 16 (the demo's configuration), whole logits;
- ``bf16-lora-old-ga4``: the same command as ``bf16-lora-new-ga4`` below on the old code path;
- ``bf16-lora-new``: the same with chunked response-only logits (``posttrain.models.chunked``);
- ``bf16-lora-new-ga4``: the same, each minibatch's forward/backward in 4 micro-batches
  (``--gradient_accumulation_steps 4``: the same update, a quarter of the activations at a time);
- ``bf16-lora-new-ga2``: in 2 micro-batches (the demo's);
- ``bf16-lora-unshared-ga2``: the same with every row's prompt computed for itself
  (``posttrain.models.logprobs.SHARE_PREFIX = False``: the padded rows, as before prompts were
  shared between a prompt's samples);
- ``bf16-lora-multinomial-ga2``: ``bf16-lora-new-ga2`` with the sampler of before: each token
  drawn by ``torch.multinomial`` (an exponential draw per vocabulary entry) instead of by one
  uniform per row (``sample_tokens``), and every row's prompt prefilled, a prompt's samples too
  (``posttrain.rollout.generate.PREFILL_ONCE = False``).

"old" undoes, in the child process, the levers of issue 20 that are on by default now: it sets
``posttrain.models.chunked.DEFAULT_CHUNK_SIZE = 0`` (``forward_logprobs`` computes every
position's logits at once), samples from the LoRA model itself instead of a merged copy
(``MergedLoraBackend``), backpropagates through the entropy although ``entropy_coef`` is 0, and
lets peft compute the LoRA products in float32 (``posttrain.models.lora.COMPUTE_IN_INPUT_DTYPE``)
and SDPA's fused kernel every attention (``segment_attention.MATMUL_ATTENTION``).
"new" is the code as it is.
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

LAUNCH = """
import sys
if sys.argv[1] == "unshared":  # each row's prompt computed for itself
    import posttrain.models.logprobs as logprobs
    logprobs.SHARE_PREFIX = False
if sys.argv[1] == "multinomial":  # the sampler before inverse-CDF draws and one prefill
    import torch
    import posttrain.rollout.generate
    generate_module = sys.modules["posttrain.rollout.generate"]
    generate_module.PREFILL_ONCE = False
    generate_module.sample_tokens = lambda p, g=None: torch.multinomial(p, 1, generator=g)[:, 0]
if sys.argv[1] == "old":  # the code path before issue 20's levers
    import posttrain.models.chunked as chunked
    import posttrain.recipes._online as online
    import posttrain.recipes.ppo as ppo
    from posttrain.rollout.generate import EngineBackend
    chunked.DEFAULT_CHUNK_SIZE = 0  # every position's logits at once
    import posttrain.models.lora as lora
    lora.COMPUTE_IN_INPUT_DTYPE = False  # peft's float32 adapter products
    import posttrain.models.segment_attention as segment_attention
    segment_attention.MATMUL_ATTENTION = False  # SDPA's fused attention on short rows too
    online.MergedLoraBackend = EngineBackend  # sample with the adapters unmerged
    def with_entropy_grad(*args, _f=ppo.forward_logprobs, **kwargs):
        return _f(*args, **{**kwargs, "entropy_grad": True})
    ppo.forward_logprobs = with_entropy_grad
from posttrain.cli import main
sys.exit(main(sys.argv[2:]))
"""

FP32 = ["--dtype", "float32", "--learning_rate", "1e-6"]
BF16_LORA = [
    "--dtype",
    "bfloat16",
    "--lora.enabled",
    "true",
    "--lora.r",
    "16",
    "--learning_rate",
    "1e-4",
]
GA4 = ["--gradient_accumulation_steps", "4"]
GA2 = ["--gradient_accumulation_steps", "2"]
VARIANTS = {
    "fp32-full-old": ("old", FP32),
    "fp32-full-new": ("new", FP32),
    "fp32-full-new-ga4": ("new", FP32 + GA4),
    "bf16-lora-old": ("old", BF16_LORA),
    "bf16-lora-old-ga4": ("old", BF16_LORA + GA4),
    "bf16-lora-new": ("new", BF16_LORA),
    "bf16-lora-new-ga4": ("new", BF16_LORA + GA4),
    "bf16-lora-new-ga2": ("new", BF16_LORA + GA2),
    "bf16-lora-unshared-ga2": ("unshared", BF16_LORA + GA2),
    "bf16-lora-multinomial-ga2": ("multinomial", BF16_LORA + GA2),
}
# prompts, samples per prompt, new tokens, epochs
SIZES = {"full": (64, 1, 48, 4), "reduced": (16, 1, 24, 4), "demo": (8, 4, 32, 2)}
PHASES = ("generation", "scoring", "logprobs", "training")


def run_variant(
    name: str, prompts: int, samples: int, new_tokens: int, epochs: int, workdir: Path
) -> dict:
    mode, extra = VARIANTS[name]
    out = workdir / name
    cmd = [
        sys.executable, "-c", LAUNCH, mode, "ppo", "--model", "smollm2-135m-instruct",
        "--task", "sentiment", "--num_prompts", str(prompts), "--batch_size", str(prompts),
        "--num_samples", str(samples), "--max_new_tokens", str(new_tokens), "--max_steps", "1",
        "--ppo_epochs", str(epochs), "--num_minibatches", "2", "--max_length", "256",
        "--progress", "false", "--save_steps", "0", "--output_dir", str(out), "--overwrite", *extra,
    ]  # fmt: skip
    t0, c0 = time.time(), _children_cpu()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.time() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    m = [r for r in rows if "time/generation_s" in r][-1]
    res = {k: m[f"time/{k}_s"] for k in PHASES}
    res["iteration"] = sum(res[k] for k in PHASES)
    res["length"] = m.get("response/length_mean", float("nan"))
    res["rss_mb"] = m["memory/peak_rss_mb"]
    res["wall"] = wall
    res["cpu"] = cpu
    return res


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--variants", default="fp32-full-old,bf16-lora-old,bf16-lora-new")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="where the runs go (default: a temp dir)")
    args = ap.parse_args()
    prompts, samples, new_tokens, epochs = SIZES[args.size]
    names = args.variants.split(",")
    for n in names:
        if n not in VARIANTS:
            raise SystemExit(f"--variants: unknown {n!r} (one of {', '.join(VARIANTS)})")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ppo_smollm2_"))
    best: dict[str, dict] = {}
    for r in range(args.repeats):
        for n in names:
            res = run_variant(n, prompts, samples, new_tokens, epochs, workdir)
            print(f"round {r + 1} {n}: " + json.dumps({k: round(v, 1) for k, v in res.items()}))
            sys.stdout.flush()
            if n not in best or res["iteration"] < best[n]["iteration"]:
                best[n] = res
    print(
        f"\nSmolLM2-135M-Instruct, one PPO iteration: {prompts} prompts x {samples} samples x "
        f"{new_tokens} new tokens, {epochs} epochs x 2 minibatches (best of {args.repeats})\n"
    )
    print(
        "| variant | " + " | ".join(PHASES) + " | **iteration** | mean length | peak RSS "
        "| process wall / CPU |"
    )
    print("|---" * (len(PHASES) + 5) + "|")
    for n, res in best.items():
        cells = " | ".join(f"{res[k]:.1f} s" for k in PHASES)
        print(
            f"| {n} | {cells} | **{res['iteration']:.1f} s** | {res['length']:.1f} | "
            f"{res['rss_mb'] / 1024:.2f} GB | {res['wall']:.0f} s / {res['cpu']:.0f} s |"
        )


if __name__ == "__main__":
    main()
