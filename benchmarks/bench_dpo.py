"""DPO speed: posttrain dpo vs TRL's DPOTrainer, and seconds/step on SmolLM2-135M.

    .venv/bin/python benchmarks/bench_dpo.py vs-trl --trl_python /tmp/trlvenv/bin/python \
        [--size tiny|small|smollm2] [--data short|varied|dialogue] [--steps 200]
    .venv/bin/python benchmarks/bench_dpo.py smollm2 [--padded]
    .venv/bin/python benchmarks/bench_dpo.py keep-logits [--rounds 4]
    .venv/bin/python benchmarks/bench_dpo.py logps [--dtype bfloat16] [--responses short] \
        [--against /tmp/segment_attention_before.py]

``vs-trl``: the same model directory (a random llama with tiny-llama's tokenizer: ``tiny`` is
2 x 64 wide, where every step is framework overhead; ``small`` is 4 x 256; or ``smollm2``, the
real SmolLM2-135M-Instruct, with rows in chat form so both programs apply its chat template),
preference data (``short``: ~9-token sequences; ``varied``: a 3-word prompt and responses of
1-60 words, as real responses vary; ``dialogue``: a dialogue history of ~10-280 words before
responses of 1-60 words, as in multi-turn preference data), batch, steps, precision
(``--precision``: float32 by default — TRL's DPOConfig defaults to bf16 autocast and gradient
checkpointing, both turned off here —, bfloat16 autocast, or bfloat16 weights in both), lr
schedule and beta through ``posttrain dpo`` and TRL's ``DPOTrainer`` (TRL in its own venv): each
with a frozen reference copy (TRL's default) and with precomputed reference log-probs
(posttrain's default), and posttrain also with a frozen copy and padded batches instead of its
default padding-free rows (each prompt once), and precomputed with the packed rows' attention
through their 4-D mask instead of segment attention (``posttrain.models.segment_attention``: the
layout before it, for a before/after in the same invocation); whole process wall
time (imports, data, training, saving) and its CPU time, the programs alternately in one
invocation, best of ``--repeats`` (``--programs``: a subset), every program with the hub
libraries offline (``HF_HUB_OFFLINE``: no waiting on connection attempts); prints the ratios.

``smollm2``: one DPO step (4 pairs of a 64-token prompt and two 192-token responses, so 4 x 256
tokens per side: forward of policy and reference, backward, AdamW) on SmolLM2-135M-Instruct in
float32 and bfloat16, with and without LoRA, each in a fresh subprocess; seconds/step (median)
and the process's peak RSS; in the recipe's default padding-free layout, or ``--padded``.

``keep-logits``: the output layer's logits kept for the backward (the default when they are
small, ``posttrain.models.chunked.KEEP_LOGITS_MAX``) against recomputed under checkpointing, on
the small llama: CPU time of the policy's forward + backward, alternated in one process.

``logps``: segment attention against the 4-D mask path (and other versions of
``segment_attention.py``): the CPU time of SmolLM2's policy forward + backward (``pair_logps``) on 4
padding-free pairs, one thread, each variant in a fresh subprocess, alternated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
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
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
model_dir, data, out, steps, bs, lr, maxlen, beta, precompute, precision = sys.argv[1:11]
rows = [json.loads(l) for l in open(data)]
ds = Dataset.from_list(rows)
tok = AutoTokenizer.from_pretrained(model_dir)
dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
cfg = DPOConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(bs), learning_rate=float(lr),
                max_length=int(maxlen), beta=float(beta), logging_steps=10, save_strategy="no", report_to=[],
                use_cpu=True, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                dataloader_num_workers=0, disable_tqdm=True, seed=0, bf16=precision == "autocast",
                gradient_checkpointing=False, precompute_ref_log_probs=precompute == "1")
DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok).train()
print(json.dumps({"seconds": time.time() - t0}))
"""


# posttrain with segment attention off (packed rows through their 4-D mask): argv as the CLI's
MASKED = (
    "import sys; from posttrain.models import segment_attention; "
    "segment_attention.ENABLED = False; from posttrain.cli import main; sys.exit(main())"
)

# model sizes: overrides of tiny-llama's config (same tokenizer, 833 tokens)
SIZES = {
    "tiny": {},  # 2 layers x 64: every step is framework overhead
    "small": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}


def varied_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs whose responses vary in length (1-60 words, ~2-120 tokens), as real ones do."""
    from tests.helpers_pref import BAD, GOOD, TOPICS

    rng = random.Random(seed)

    def review(words: list[str]) -> str:
        return " " + ", ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) + "."

    return [
        {"prompt": f"The {rng.choice(TOPICS)} was", "chosen": review(GOOD), "rejected": review(BAD)}
        for _ in range(n)
    ]


def dialogue_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs after a dialogue history: 1-3 earlier exchanges then a question (each turn 5-40
    words, ~10-280 words in all) and responses of 1-60 words, as in multi-turn preference data
    (HH-RLHF-style), where the shared history is most of a pair's tokens."""
    from tests.helpers_pref import BAD, GOOD, TOPICS

    rng = random.Random(seed)
    words = ["the", "was", "a", "and", "it", "of", *TOPICS, *GOOD, *BAD]

    def turn(lo: int = 5, hi: int = 40) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    def review(good: list[str]) -> str:
        return " " + ", ".join(rng.choice(good) for _ in range(rng.randint(1, 60))) + "."

    rows = []
    for _ in range(n):
        history = "".join(
            f"Human: {turn()}\n\nAssistant: {turn()}\n\n" for _ in range(rng.randint(1, 3))
        )
        prompt = f"{history}Human: {turn()}\n\nAssistant:"
        rows.append({"prompt": prompt, "chosen": review(GOOD), "rejected": review(BAD)})
    return rows


DATA = {"short": None, "varied": varied_rows, "dialogue": dialogue_rows}
PRECISIONS = {
    "float32": "float32",
    "autocast": "bfloat16 autocast over float32 weights",
    "bfloat16": "bfloat16 weights (no autocast)",
}


def cmd_vs_trl(args) -> None:
    sys.path.insert(0, str(ROOT))
    from posttrain.models import load_tokenizer, save_pretrained
    from posttrain.models.tiny import build_tiny_llama
    from tests.helpers_pref import preference_rows

    work = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    if args.size == "smollm2":  # the real model's directory and tokenizer (chat template)
        from safetensors import safe_open

        from posttrain.models.smollm2 import smollm2_dir

        (work / "model").symlink_to(smollm2_dir())
        with safe_open(str(work / "model" / "model.safetensors"), "pt") as f:
            n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    else:
        tok = load_tokenizer("tiny-llama")
        model = build_tiny_llama(tok, **SIZES[args.size])
        save_pretrained(model, tok, work / "model")
        n_params = sum(p.numel() for p in model.parameters())
    data = work / "pairs.jsonl"
    rows = DATA[args.data](args.pairs) if DATA[args.data] else preference_rows(args.pairs)
    if args.size == "smollm2":  # conversational rows: both programs apply the chat template
        rows = [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "run_trl_dpo.py").write_text(TRL_SCRIPT)
    # a real model wants DPO's usual small lr (a large one drives the loss to ~0 within a few
    # steps, after which float32 denormals make every CPU step many times slower)
    lr = "5e-6" if args.size == "smollm2" else "5e-4"
    steps, bs, maxlen, beta = str(args.steps), str(args.batch), "256", "0.1"
    ours = ["dpo", "--model", str(work / "model")]
    ours += ["--train_data", str(data), "--max_steps", steps, "--batch_size", bs]
    ours += ["--learning_rate", lr, "--max_length", maxlen, "--beta", beta]
    ours += ["--logging_steps", "10", "--save_steps", "0", "--progress", "false"]
    ours += {
        "float32": [],
        "autocast": ["--bf16_autocast", "true"],
        "bfloat16": ["--dtype", "bfloat16"],
    }[args.precision]
    # the same with packed rows through the 4-D mask instead of segment attention (before/after)
    masked = [sys.executable, "-c", MASKED, *ours]
    ours = [sys.executable, "-m", "posttrain.cli", *ours]
    trl = [args.trl_python, str(work / "run_trl_dpo.py"), str(work / "model"), str(data)]
    programs = {  # name -> command given its output directory
        "posttrain (frozen copy)": lambda out: [*ours, "--reference", "model", "--output_dir", out],
        "posttrain (precomputed)": lambda out: [
            *ours, "--reference", "precomputed", "--output_dir", out
        ],
        "posttrain (frozen copy, padded)": lambda out: [
            *ours, "--reference", "model", "--padding_free", "false", "--output_dir", out
        ],
        "posttrain (precomputed, 4-D mask)": lambda out: [
            *masked, "--reference", "precomputed", "--output_dir", out
        ],
        "TRL (frozen copy)": lambda out: [*trl, out, steps, bs, lr, maxlen, beta, "0", args.precision],
        "TRL (precomputed)": lambda out: [*trl, out, steps, bs, lr, maxlen, beta, "1", args.precision],
    }  # fmt: skip
    if args.programs:  # a subset, by name
        unknown = set(args.programs) - set(programs)
        if unknown:
            sys.exit(f"error: --programs: unknown {sorted(unknown)}; known: {list(programs)}")
        programs = {name: programs[name] for name in args.programs}
    # offline for every program: with no network (this machine) the hub libraries otherwise
    # wait on connection attempts (TRL's process: ~6 s of wall time, ~2 s of CPU a run)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    wall: dict[str, list[float]] = {name: [] for name in programs}
    cpu: dict[str, list[float]] = {name: [] for name in programs}
    for rep in range(args.repeats):
        for k, (name, cmd) in enumerate(programs.items()):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(
                cmd(str(work / f"run{k}-{rep}")),
                check=True,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wall[name].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            print(
                f"{name} run {rep}: {wall[name][-1]:.1f}s wall, {cpu[name][-1]:.1f}s CPU",
                flush=True,
            )
    best = {name: (min(wall[name]), min(cpu[name])) for name in programs}
    print(
        f"\n{args.size} llama ({n_params / 1e6:.2f}M parameters), {args.pairs} {args.data} pairs, "
        f"{steps} steps x {bs} pairs ({args.steps * args.batch / args.pairs:.1f} epochs), "
        f"{PRECISIONS[args.precision]}, {args.threads or 'all'} threads, "
        f"whole process, best of {args.repeats}:\n"
        "| program | wall | CPU |\n|---|---|---|"
    )
    for name, (w, c) in best.items():
        print(f"| {name} | {w:.1f} s | {c:.1f} s |")
    print("\n| comparison | ratio (wall / CPU) |\n|---|---|")
    for trl_name, ours_name in (
        ("TRL (frozen copy)", "posttrain (frozen copy)"),
        ("TRL (precomputed)", "posttrain (precomputed)"),
        ("TRL (frozen copy)", "posttrain (precomputed)"),
        ("TRL (frozen copy)", "posttrain (frozen copy, padded)"),
        ("TRL (frozen copy)", "posttrain (precomputed, 4-D mask)"),
        ("posttrain (precomputed, 4-D mask)", "posttrain (precomputed)"),
    ):
        if trl_name not in best or ours_name not in best:
            continue
        a, b = best[ours_name], best[trl_name]
        print(f"| {trl_name} / {ours_name} | {b[0] / a[0]:.2f}x / {b[1] / a[1]:.2f}x |")


def one_config(dtype: str, lora: bool, steps: int, padding_free: bool) -> None:
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

    def tokens(n: int) -> list[int]:
        return torch.randint(0, len(tok), (n,), generator=gen).tolist()

    pairs = []
    for _ in range(4):  # a 64-token prompt, then two 192-token responses
        prompt = tokens(64)
        pairs.append(
            EncodedPair(
                Encoded(prompt + tokens(192), 64, False), Encoded(prompt + tokens(192), 64, False)
            )
        )
    batch = collate_pairs(pairs, tok.pad_token_id, padding_free=padding_free)
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


def one_logps(dtype: str, responses: str, variant: str, steps: int) -> None:
    """Run in a subprocess, one thread: CPU time of ``steps`` policy forward + backward passes
    (``pair_logps``) on SmolLM2 over 4 padding-free pairs of a 64-token prompt and two responses
    (``long``: 192 tokens; ``short``: 2-120), after one warm-up; print JSON. ``variant``: ``mask``
    (the 4-D mask path), ``segments`` (segment attention), or a path to another
    ``segment_attention.py`` (e.g. the committed one from ``git show``) used instead."""
    sys.path.insert(0, str(ROOT))
    import importlib.util

    import torch

    from posttrain.data.chat import Encoded
    from posttrain.data.preference import EncodedPair, collate_pairs
    from posttrain.models import load_model, load_tokenizer, logprobs, pair_logps, segment_attention

    torch.set_num_threads(1)
    if variant == "mask":
        segment_attention.ENABLED = False
    elif variant != "segments":
        spec = importlib.util.spec_from_file_location("segment_attention_other", variant)
        other = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = other  # dataclasses look their module up
        spec.loader.exec_module(other)
        logprobs.segment_attention = other  # what forward_packed_logprobs calls
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", dtype=dtype, tokenizer=tok)
    model.train()
    gen = torch.Generator().manual_seed(0)

    def tokens(n: int) -> list[int]:
        return torch.randint(0, len(tok), (n,), generator=gen).tolist()

    def length() -> int:
        return 192 if responses == "long" else int(torch.randint(2, 121, (), generator=gen))

    pairs = []
    for _ in range(4):
        prompt = tokens(64)
        chosen, rejected = prompt + tokens(length()), prompt + tokens(length())
        pairs.append(EncodedPair(Encoded(chosen, 64, False), Encoded(rejected, 64, False)))
    batch = collate_pairs(pairs, tok.pad_token_id, padding_free=True)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = pair_logps(model, batch)
        (out.chosen.sum() - out.rejected.sum()).backward()

    step()  # warm-up
    t0 = time.process_time()
    for _ in range(steps):
        step()
    print(json.dumps({"cpu_s": time.process_time() - t0, "rows": list(batch["input_ids"].shape)}))


def cmd_logps(args) -> None:
    variants = ["mask", "segments", *args.against]
    print(
        f"SmolLM2 pair_logps forward + backward, {args.responses} responses, {args.dtype}, "
        f"1 thread, CPU time of {args.steps} steps, {args.rounds} rounds alternated"
    )
    for rnd in range(args.rounds):
        for variant in variants:
            out = subprocess.run(
                [sys.executable, __file__, "one-logps", args.dtype, args.responses, variant]
                + [str(args.steps)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"round {rnd} {variant}: {r['cpu_s']:.2f} s CPU (rows {r['rows']})", flush=True)


def cmd_smollm2(args) -> None:
    layout = "padded (8, 256)" if args.padded else "padding-free, prompts once"
    print(f"{layout}\n| dtype | LoRA | s/step | peak RSS |\n|---|---|---|---|")
    for dtype in ("float32", "bfloat16"):
        for lora in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "one", dtype, str(int(lora)), str(args.steps)]
                + [str(int(not args.padded))],
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


def cmd_keep_logits(args) -> None:
    """The output layer's logits kept for the backward vs recomputed under checkpointing
    (``posttrain.models.chunked.KEEP_LOGITS_MAX``): CPU seconds of the small llama's
    ``pair_logps`` forward + backward over 20 batches of 8 varied pairs, one thread, the two
    alternating in one process, best of ``--rounds``."""
    sys.path.insert(0, str(ROOT))
    import torch

    from posttrain.data import load_examples
    from posttrain.data.preference import collate_pairs, encode_pairs
    from posttrain.models import chunked, load_tokenizer
    from posttrain.models.logprobs import pair_logps
    from posttrain.models.tiny import build_tiny_llama

    torch.set_num_threads(1)
    tok = load_tokenizer("tiny-llama")
    model = build_tiny_llama(tok, **SIZES["small"]).float().train()
    data = Path(tempfile.mkdtemp(prefix="bench_keep_")) / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in varied_rows(160)))
    enc, _ = encode_pairs(tok, load_examples(str(data), ["preference"]), 256)
    batches = [
        collate_pairs(enc[i : i + 8], tok.pad_token_id, padding_free=True)
        for i in range(0, len(enc), 8)
    ]

    def one_pass() -> float:
        t = time.process_time()
        for b in batches:
            out = pair_logps(model, b)
            (out.chosen.sum() - out.rejected.sum()).backward()
        model.zero_grad(set_to_none=True)
        return time.process_time() - t

    one_pass()  # warm-up
    default = chunked.KEEP_LOGITS_MAX
    times: dict[str, list[float]] = {"recomputed (checkpointed)": [], "kept (default)": []}
    for _ in range(args.rounds):
        for name, keep in (("recomputed (checkpointed)", 0), ("kept (default)", default)):
            chunked.KEEP_LOGITS_MAX = keep
            times[name].append(one_pass())
    chunked.KEEP_LOGITS_MAX = default
    print(f"| logits | CPU s (best of {args.rounds}) |\n|---|---|")
    for name, v in times.items():
        print(f"| {name} | {min(v):.2f} |")
    ratio = min(times["recomputed (checkpointed)"]) / min(times["kept (default)"])
    print(f"\nrecomputed / kept: {ratio:.3f}x")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one-logps":
        one_logps(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one_config(sys.argv[2], bool(int(sys.argv[3])), int(sys.argv[4]), bool(int(sys.argv[5])))
        return
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vs-trl")
    v.add_argument("--trl_python", required=True)
    v.add_argument("--steps", type=int, default=200)
    v.add_argument("--batch", type=int, default=8)
    v.add_argument("--repeats", type=int, default=2)
    v.add_argument("--size", choices=[*SIZES, "smollm2"], default="tiny")
    v.add_argument("--data", choices=list(DATA), default="short")
    v.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="float32",
        help="float32; autocast: bfloat16 autocast over float32 weights; bfloat16: bfloat16 weights",
    )
    v.add_argument(
        "--pairs", type=int, default=2000, help="dataset size (epochs = steps x batch / pairs)"
    )
    v.add_argument(
        "--programs",
        nargs="*",
        default=[],
        help='run only these (by name, e.g. "posttrain (precomputed)" "TRL (frozen copy)")',
    )
    v.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for every program (0: their default, all cores); 1 keeps CPU times "
        "comparable on a machine other jobs share",
    )
    s = sub.add_parser("smollm2")
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--padded", action="store_true", help="2B padded rows instead of the default")
    g = sub.add_parser("logps", help="segment attention: policy forward + backward only")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    g.add_argument("--responses", choices=["short", "long"], default="short")
    g.add_argument("--steps", type=int, default=2)
    g.add_argument("--rounds", type=int, default=2)
    g.add_argument(
        "--against",
        nargs="*",
        default=[],
        help="other segment_attention.py files to time too (e.g. git show HEAD:... > /tmp/x.py)",
    )
    k = sub.add_parser("keep-logits", help="small llama: logits kept vs recomputed in backward")
    k.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    commands = {
        "vs-trl": cmd_vs_trl,
        "smollm2": cmd_smollm2,
        "logps": cmd_logps,
        "keep-logits": cmd_keep_logits,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
