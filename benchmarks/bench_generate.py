"""Sampling speed on SmolLM2-135M-Instruct: the sampler before and now, side by side.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 32] [--samples 4] [--new_tokens 32] \
        [--batch 64] [--repeats 2]

The work of the SmolLM2 demo's sample stage (``posttrain demo --model smollm2-135m-instruct``):
``sample_texts`` of ``--samples`` replies to each of ``--prompts`` sentiment openings in chat form
(``Continue this movie review: ...``), temperature 1, bfloat16, ``--batch`` rows per batch. Each
variant runs in a fresh process, the variants alternately, ``--repeats`` rounds; reported: the
sampling seconds (model loading excluded), the best of the rounds, and replies per second.

- ``before``: each token drawn by ``torch.multinomial`` (an exponential draw per vocabulary
  entry: 49,152 per row per step) and every row's prompt prefilled, a prompt's samples too;
- ``now``: the code as it is: one uniform per row inverted through the CDF in two levels
  (``posttrain.rollout.generate.sample_tokens``), and a prompt's samples prefilled once
  (``PREFILL_ONCE``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
import posttrain.rollout.generate
from posttrain.models import load_policy
from posttrain.recipes.demo_chat import chat_prompts
from posttrain.rollout.sampler import sample_texts
from posttrain.tasks import get_task

variant, prompts, samples, new_tokens, batch = sys.argv[1], *map(int, sys.argv[2:6])
if variant == "before":
    module = sys.modules["posttrain.rollout.generate"]
    module.PREFILL_ONCE = False
    module.sample_tokens = lambda p, g=None: torch.multinomial(p, 1, generator=g)[:, 0]
model, tok = load_policy("smollm2-135m-instruct", dtype="bfloat16")
texts = chat_prompts(get_task("sentiment").prompts(prompts, seed=2))
t0 = time.perf_counter()
replies = sample_texts(model, tok, texts, n=samples, max_new_tokens=new_tokens, temperature=1.0,
                       batch_size=batch, generator=torch.Generator().manual_seed(0))
seconds = time.perf_counter() - t0
words = sum(len(r.split()) for rs in replies for r in rs) / (prompts * samples)
print(json.dumps({"seconds": seconds, "words": words}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    sizes = [str(x) for x in (args.prompts, args.samples, args.new_tokens, args.batch)]
    seconds: dict[str, list[float]] = {"before": [], "now": []}
    words: dict[str, float] = {}
    for rep in range(args.repeats):
        for variant in seconds:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, variant, *sizes],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            seconds[variant].append(res["seconds"])
            words[variant] = res["words"]
            print(f"{variant} round {rep}: {res['seconds']:.1f} s", flush=True)
    rows = args.prompts * args.samples
    print(
        f"\nSmolLM2-135M-Instruct, bfloat16, {args.prompts} prompts x {args.samples} replies x "
        f"{args.new_tokens} new tokens, {args.batch} rows a batch, best of {args.repeats}:\n"
        "| sampler | seconds | replies/s | mean words |\n|---|---|---|---|"
    )
    for variant, values in seconds.items():
        best = min(values)
        print(f"| {variant} | {best:.1f} | {rows / best:.2f} | {words[variant]:.1f} |")
    print(f"\nbefore / now: {min(seconds['before']) / min(seconds['now']):.2f}x")


if __name__ == "__main__":
    main()
