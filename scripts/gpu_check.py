#!/usr/bin/env python
"""GPU check: does posttrain train, sample and evaluate on this machine's GPU(s)?

    bash scripts/gpu_check.sh                      # smollm2-135m-instruct on cuda, ~5 minutes
    bash scripts/gpu_check.sh --device cuda:1      # another GPU
    bash scripts/gpu_check.sh --dry-run            # print the commands, run nothing
    bash scripts/gpu_check.sh --device cpu --model tiny-llama --quick   # the same checks on a CPU

What it does (every part prints PASS / FAIL / SKIP and a line of numbers; the exit code is 1 if
any part failed):

1. log-probs: ``forward_logprobs`` of the model in float32 on the device equals the CPU's to
   1e-4 (max over response tokens; TF32 off), and the result lives on the device; shared-prefix:
   on the device, rows laid out as an online batch's (left-padded prompts, each repeated for 2
   samples) give the same log-probs, entropies and hidden states with each prompt computed once
   (``forward_logprobs(share_prefix=True)``, segment attention) as padded, to 1e-4;
2. sft, rm, dpo, kto, ppo, rloo, grpo, online-dpo: a few steps each with ``--device``, asserting
   every logged loss is finite, that the run used the GPU (``memory/peak_allocated_mb`` > 0 in
   its metrics) and printing its peak GPU memory and seconds per step;
3. sample, and eval (reward-model accuracy of the rm just trained; implicit-reward accuracy of
   the dpo policy) with ``--device``;
4. DDP: sft and dpo under ``torchrun --nproc_per_node N`` over every visible GPU (N >= 2);
5. vLLM (when ``import vllm`` works): the engine's log-probs of its own samples agree with the
   training forward's; after changing the policy's weights they disagree until
   ``sync_weights``, then agree again.

Everything goes under ``--workdir`` (default: a new temporary directory, removed at the end
unless ``--keep``). Nothing here needs the network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("train/loss", "loss/policy", "loss/value", "eval/loss")
PEAK = "memory/peak_allocated_mb"


class Report:
    """PASS / FAIL / SKIP lines, and the exit code."""

    def __init__(self):
        self.failed: list[str] = []

    def line(self, status: str, name: str, detail: str = "") -> None:
        print(f"{status:<5} {name:<22} {detail}", flush=True)
        if status == "FAIL":
            self.failed.append(name)

    def check(self, name: str, fn) -> None:
        """Run ``fn() -> detail``; an exception is a FAIL with its message."""
        t0 = time.time()
        try:
            detail = fn()
        except Skip as skip:
            self.line("SKIP", name, str(skip))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next part
            self.line("FAIL", name, f"{type(exc).__name__}: {exc}"[:2000])
        else:
            self.line("PASS", name, f"{detail} [{time.time() - t0:.0f} s]")


class Skip(Exception):
    pass


# ----------------------------------------------------------------------------- data


def write_data(d: Path) -> dict[str, Path]:
    """Small files of each kind the recipes read."""
    d.mkdir(parents=True, exist_ok=True)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "boring", "poor", "sad"]
    topics = ["film", "book", "song", "play", "meal", "trip"]
    rows = {
        "sft": [
            {"prompt": f"What is {a} plus {b}?", "completion": f" {a} plus {b} is {a + b}."}
            for a in range(6)
            for b in range(4)
        ],
        "pairs": [
            {"prompt": f"The {t} was", "chosen": f" {g} and {g2}.", "rejected": f" {b} and {b2}."}
            for t in topics
            for g, g2, b, b2 in zip(good, good[1:] + good[:1], bad, bad[1:] + bad[:1])
        ],
        "unpaired": [
            {"prompt": f"The {t} was", "completion": f" {w}.", "label": w in good}
            for t in topics
            for w in good + bad
        ],
        "prompts": [{"prompt": f"Count from 1 to {n}:"} for n in range(2, 18)],
    }
    paths = {}
    for name, items in rows.items():
        paths[name] = d / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in items))
    return paths


# ----------------------------------------------------------------------------- running commands


def posttrain(recipe: str, *args) -> list[str]:
    return [sys.executable, "-m", "posttrain.cli", recipe, *map(str, args)]


def torchrun(nproc: int, recipe: str, *args) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(nproc), "-m", "posttrain.cli", recipe, *map(str, args),
    ]  # fmt: skip


def run(cmd: list, dry: bool) -> str:
    cmd = [str(c) for c in cmd]
    print("  $ " + " ".join(cmd), flush=True)
    if dry:
        raise Skip("dry run")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return proc.stdout


def read_metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def summarize(rows: list[dict], device: str) -> str:
    """Assert finite losses (and GPU use on CUDA); the numbers to print."""
    logged = [(r["step"], k, r[k]) for r in rows for k in LOSSES if k in r]
    if not logged:
        raise AssertionError("no loss was logged")
    bad = [(s, k, v) for s, k, v in logged if v is None or not math.isfinite(v)]
    if bad:  # metrics.jsonl writes NaN / inf as null
        raise AssertionError(f"non-finite losses (step, name, value): {bad[:5]}")
    peaks = [r[PEAK] for r in rows if r.get(PEAK) is not None]
    if device.startswith("cuda") and not (peaks and max(peaks) > 0):
        raise AssertionError(f"no {PEAK} in the metrics: did the run use the GPU?")
    times = [r["time/elapsed_s"] for r in rows if r.get("step", 0) > 0 and "time/elapsed_s" in r]
    steps = [r["step"] for r in rows if r.get("step", 0) > 0 and "time/elapsed_s" in r]
    per_step = (
        statistics.median(
            (b - a) / (sb - sa) for a, b, sa, sb in zip(times, times[1:], steps, steps[1:])
        )
        if len(times) > 1
        else float("nan")
    )
    last = {k: round(v, 4) for s, k, v in logged if s == logged[-1][0]}
    peak = f"{max(peaks):.0f} MB" if peaks else "n/a"
    return f"losses finite {last}; peak GPU {peak}; {per_step:.3f} s/step"


# ----------------------------------------------------------------------------- in-process checks


def check_logprobs(model_name: str, device: str, tol: float) -> str:
    import torch

    from posttrain.data import collate, encode_example
    from posttrain.models import forward_logprobs, load_policy
    from posttrain.training.device import describe, resolve, to_device

    dev = resolve(device)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32
    torch.backends.cudnn.allow_tf32 = False
    model, tok = load_policy(model_name, dtype="float32")
    texts = [("What is 2 plus 3?", " 2 plus 3 is 5."), ("Name a colour:", " Blue, like the sea.")]
    batch = collate([encode_example(tok, p, c, 256) for p, c in texts], tok.pad_token_id)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        cpu = forward_logprobs(model, *args)
        model.to(dev)
        on_dev = forward_logprobs(model, *to_device(args, dev))
    if on_dev.logps.device.type != dev.type or next(model.parameters()).device.type != dev.type:
        raise AssertionError(f"log-probs on {on_dev.logps.device}, expected {dev}")
    diff = float((on_dev.logps.cpu() - cpu.logps).abs()[cpu.mask.bool()].max())
    if diff > tol:
        raise AssertionError(f"max |log p({dev}) - log p(cpu)| = {diff:.2e} > {tol}")
    return f"{describe(dev)}: max |diff| vs CPU {diff:.1e} (<= {tol})"


def check_shared_prefix(model_name: str, device: str, tol: float) -> str:
    import torch

    from posttrain.data.chat import encode_prompt
    from posttrain.models import forward_logprobs, load_policy, logprobs
    from posttrain.rollout.backend import rollout_from_tokens
    from posttrain.training.device import describe, resolve

    dev = resolve(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, tok = load_policy(model_name, dtype="float32")
    model.to(dev)
    samples = {
        "What is 2 plus 3?": [" 5.", " 2 plus 3 is 5, as 2 + 3 = 5."],
        "Name a colour:": [" Blue, like the sea on a clear day.", " Red."],
    }
    rows = [
        (encode_prompt(tok, p), tok.encode(r, add_special_tokens=False))
        for p, replies in samples.items()
        for r in replies
    ]
    r = rollout_from_tokens(  # the online recipes' layout: prompts left-padded, then replies
        [p for p, _ in rows],
        [s for _, s in rows],
        [[0.0] * len(s) for _, s in rows],
        pad_id=tok.pad_token_id,
        finished=[True] * len(rows),
    )
    ids, attend = r.input_ids.to(dev), r.attention_mask.to(dev)
    args, kwargs = (ids, attend, r.response_mask.to(dev)), dict(with_entropy=True, with_hidden=True)
    with torch.no_grad():
        shared = logprobs.forward_shared_prefix(model, *args, **kwargs)
        if shared is None:
            raise Skip(
                f"{model_name}: prefixes are not shared for this model (no segment attention)"
            )
        padded = forward_logprobs(model, *args, **kwargs)
    if shared.logps.device.type != dev.type:
        raise AssertionError(f"log-probs on {shared.logps.device}, expected {dev}")
    mask, real = padded.mask.bool(), attend.bool()
    diffs = {
        "log-probs": (shared.logps - padded.logps).abs()[mask].max(),
        "entropy": (shared.entropy - padded.entropy).abs()[mask].max(),
        "hidden": (shared.hidden - padded.hidden).abs()[real].max(),
    }
    worst = max(diffs, key=lambda k: float(diffs[k]))
    if float(diffs[worst]) > tol:
        raise AssertionError(f"{worst}: max |shared - padded| = {float(diffs[worst]):.2e} > {tol}")
    shown = ", ".join(f"{k} {float(v):.1e}" for k, v in diffs.items())
    return f"{describe(dev)}: max |shared - padded| {shown} (<= {tol})"


def check_vllm(model_name: str, device: str, workdir: Path, tol: float) -> str:
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm is not installed")
    import torch

    from posttrain.models import forward_logprobs, load_policy
    from posttrain.rollout.backend import VLLMBackend
    from posttrain.rollout.generate import SamplingParams
    from posttrain.training.device import resolve

    dev = resolve(device)
    model, tok = load_policy(model_name, dtype="float32")
    model.to(dev).eval()
    backend = VLLMBackend.from_model(
        model, tok, workdir, dtype="float32", gpu_memory_utilization=0.25, enforce_eager=True
    )
    ids = [tok(f"Count from 1 to {n}:")["input_ids"] for n in range(2, 10)]
    params = SamplingParams(max_new_tokens=16, temperature=1.0)

    def gap() -> float:
        """Mean |vLLM's log-prob - the training forward's| over the sampled tokens."""
        r = backend.generate(ids, params, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = forward_logprobs(
                model, r.input_ids.to(dev), r.attention_mask.to(dev), r.response_mask.to(dev)
            )
        m = out.mask.bool()
        return float(
            (out.logps[m].cpu() - r.sample_logps.to(out.logps.device)[m].cpu()).abs().mean()
        )

    before = gap()
    with torch.no_grad():  # a different policy: logits scaled by 1.5 (sharper)
        model.get_decoder().norm.weight.mul_(1.5)
    stale = gap()
    backend.sync_weights(model)
    after = gap()
    detail = f"mean |diff| before {before:.1e}, stale {stale:.1e}, after sync {after:.1e}"
    if before > tol or after > tol or stale < 4 * max(after, tol / 10):
        raise AssertionError(detail)
    return detail


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, mps, cpu or auto (cuda)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per recipe (4)")
    p.add_argument("--workdir", default=None, help="where runs go (a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    p.add_argument("--quick", action="store_true", help="shorter sequences (CPU smoke test)")
    p.add_argument("--only", default="", help="comma-separated parts to run (e.g. sft,dpo)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--logprob-tol", type=float, default=1e-4)
    p.add_argument("--vllm-tol", type=float, default=0.05, help="mean |log p| gap allowed")
    args = p.parse_args(argv)

    import torch

    from posttrain.training.device import describe, resolve

    dev = resolve(args.device)  # a missing device ends here, with its name
    ngpu = torch.cuda.device_count() if dev.type == "cuda" else 0
    print(f"posttrain GPU check: torch {torch.__version__}, device {describe(dev)}, {ngpu} GPU(s)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="posttrain-gpu-check-"))
    data = write_data(work / "data")
    m, d, s = args.model, args.device, args.steps
    new = 8 if args.quick else 24
    length = 64 if args.quick else 192
    common = ["--model", m, "--device", d, "--max_steps", s, "--logging_steps", 1]
    common += ["--progress", "false", "--max_length", length, "--learning_rate", "1e-5"]
    online = [*common, "--max_new_tokens", new, "--task", "counting", "--batch_size", 4]
    recipes = {
        "sft": ["sft", *common, "--train_data", data["sft"], "--batch_size", 8],
        "rm": ["rm", *common, "--train_data", data["pairs"], "--batch_size", 8],
        "dpo": ["dpo", *common, "--train_data", data["pairs"], "--batch_size", 8, "--beta", 0.1],
        "kto": ["kto", *common, "--train_data", data["unpaired"], "--batch_size", 8, "--beta", 0.1],
        "ppo": ["ppo", *online, "--num_minibatches", 1],
        "rloo": ["rloo", *online, "--num_samples", 2],
        "grpo": ["grpo", *online, "--num_samples", 2],
        "online-dpo": [
            "online-dpo", *common, "--train_data", data["prompts"], "--judge", "task:sentiment",
            "--batch_size", 4, "--max_new_tokens", new, "--beta", 0.1,
        ],
    }  # fmt: skip
    only = {x for x in args.only.split(",") if x}
    report = Report()

    def want(name: str) -> bool:
        return not only or name in only

    def in_process(fn):
        if args.dry_run:
            raise Skip("dry run")
        return fn()

    if want("logprobs"):
        report.check("logprobs", lambda: in_process(lambda: check_logprobs(m, d, args.logprob_tol)))
    if want("shared-prefix"):
        report.check(
            "shared-prefix",
            lambda: in_process(lambda: check_shared_prefix(m, d, args.logprob_tol)),
        )
    for name, (recipe, *rest) in recipes.items():
        if want(name):
            out = work / name

            def one(recipe=recipe, rest=rest, out=out):
                run(posttrain(recipe, *rest, "--output_dir", out, "--overwrite"), args.dry_run)
                return summarize(read_metrics(out), d)

            report.check(name, one)
    if want("sample"):

        def sample():
            out = work / "samples.jsonl"
            cmd = posttrain("sample", "--model", m, "--device", d, "--prompts", data["prompts"])
            run([*cmd, "--output", out, "--n", 2, "--max_new_tokens", new], args.dry_run)
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert len(rows) == 16 and all(len(r["completions"]) == 2 for r in rows)
            return f"{len(rows)} prompts x 2 completions"

        report.check("sample", sample)
    if want("eval"):

        def evaluate():
            found = []
            for mode, extra in (
                ("reward-model", ["--reward_model", work / "rm" / "final"]),
                ("implicit-reward", ["--model", work / "dpo" / "final", "--reference", m]),
            ):
                out = work / f"eval-{mode}"
                cmd = posttrain("eval", "--mode", mode, *extra, "--data", data["pairs"])
                run([*cmd, "--device", d, "--output_dir", out], args.dry_run)
                res = json.loads((out / "eval.json").read_text())
                assert 0 <= res["accuracy"] <= 1, res
                found.append(f"{mode} accuracy {res['accuracy']:.2f}")
            return "; ".join(found)

        report.check("eval", evaluate)
    if want("ddp"):

        def ddp():
            if ngpu < 2:
                raise Skip(f"{ngpu} GPU(s) visible: DDP needs 2 or more")
            found = []
            for name in ("sft", "dpo"):
                recipe, *rest = recipes[name]
                rest = [x if x != d else "cuda" for x in rest]  # each rank: cuda:LOCAL_RANK
                out = work / f"ddp-{name}"
                run(torchrun(ngpu, recipe, *rest, "--output_dir", out, "--overwrite"), args.dry_run)
                found.append(f"{name} x{ngpu}: {summarize(read_metrics(out), 'cuda')}")
            return "; ".join(found)

        report.check("ddp", ddp)
    if want("vllm"):
        report.check(
            "vllm", lambda: in_process(lambda: check_vllm(m, d, work / "vllm", args.vllm_tol))
        )

    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    elif not args.dry_run:
        print(f"runs kept in {work}")
    print("FAILED: " + ", ".join(report.failed) if report.failed else "all checks passed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from posttrain.errors import UserError

    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
