"""Online DPO and expert iteration under ``torchrun --nproc_per_node 2``: each process samples
(and judges or scores) its half of the prompts with its own seed, the results are gathered, and
training splits the batch over the processes with gradients summed. Each run learns as its
one-process run does (``tests/integration/test_online_dpo.py``, ``test_best_of_n.py``), rank 0
writes the outputs, and it resumes under 2 processes."""

from __future__ import annotations

import json
import shutil

import torch

from posttrain.training import read_metrics
from tests.integration.test_online_dpo import sft_model  # noqa: F401  (the fixture)
from tests.invariance.helpers_distributed import assert_moved, final_weights, torchrun


def oaif_args(sft: tuple, out, *, steps: int, save_steps: int) -> list:
    """online-dpo from the SFT model on its prompts, judged by the counting task, with the gold
    reward of held-out prompts logged every step. ``sft``: the ``sft_model`` fixture."""
    model, prompts, held_out = sft
    args = ["online-dpo", "--model", model, "--train_data", prompts, "--judge", "task:counting"]
    args += ["--batch_size", "8", "--learning_rate", "5e-4", "--beta", "0.1", "--max_steps", steps]
    args += ["--max_new_tokens", "16", "--max_length", "48", "--lr_schedule", "constant"]
    args += ["--logging_steps", "1", "--progress", "false", "--eval_data", held_out]
    return [*args, "--save_steps", save_steps, "--output_dir", out]


def run_and_check_gain(args: list, out, label: str) -> list[dict]:
    """Run ``args`` under torchrun; the held-out gold reward must rise clearly above the SFT
    model's (step 0). Returns the metrics rows."""
    proc = torchrun(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    sft, online = rows[0]["eval/scores"], rows[-1]["eval/scores"]
    print(f"{label}: gold reward sft {sft:.3f} -> {online:.3f}")
    assert online > sft + 0.05, (sft, online)
    return rows


def test_online_dpo_on_two_processes_learns_and_resumes(sft_model, tmp_path):  # noqa: F811
    out = tmp_path / "oaif"
    args = oaif_args(sft_model, out, steps=30, save_steps=28)
    rows = run_and_check_gain(args, out, "2-process online DPO")
    assert [r["step"] for r in rows] == list(range(31))
    assert all(r["train/pairs"] <= 8 for r in rows[1:])  # the global batch's pairs
    weights = final_weights(out)
    # resume from checkpoint-28 under the same number of processes: steps 29-30 again, exactly
    # every run also saves its last step: resume from the periodic checkpoint before it
    shutil.rmtree(out / "checkpoint-30")
    proc = torchrun(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_metrics(out / "metrics.jsonl")
    for key in ("train/loss", "objective/scores", "eval/scores"):
        assert [r.get(key) for r in again[-2:]] == [r.get(key) for r in rows[-2:]], key
    resumed = final_weights(out)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_expert_iteration_on_two_processes_improves_and_resumes(tmp_path):
    prompts = tmp_path / "p.jsonl"
    texts = ("The movie was", "I think that", "Today the", "Hello") * 2
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    out, config = tmp_path / "ei", tmp_path / "ei.yaml"
    config.write_text("n: 8\n")  # torchrun would take --n for an abbreviation of its own options
    args = ["expert-iteration", "--config", config, "--model", "tiny-llama", "--prompts", prompts]
    args += ["--reward", "tests.helpers_rl:count_e", "--output_dir", out, "--max_new_tokens", "16"]
    args += ["--sft", "{max_steps: 40, learning_rate: 0.01, lr_schedule: constant}"]
    proc = torchrun(*args, "--rounds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    print(f"2-process expert iteration: {rounds}")
    # round 2 samples from the model SFT'd on round 1's best: its average sample is better
    assert rounds[1]["mean"] > 1.3 * rounds[0]["mean"], rounds
    best = [json.loads(line) for line in (out / "round-1" / "best.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in best] == list(texts)  # both processes' rows, in order
    assert_moved(final_weights(out))
    # --resume with one more round: rounds 1-2 are kept, round 3 starts from round 2's model
    proc = torchrun(*args, "--rounds", "3", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert again[:2] == rounds and len(again) == 3
    assert (out / "round-3" / "sft" / "final").is_dir()


def test_expert_iteration_samples_the_same_with_its_model_sharded(tmp_path):
    """With ``sft: {distributed: fsdp}`` the sampling model is sharded too: each process's
    forwards gather the weights, so the slices must make as many. Five prompts split 2 + 3; the
    short slice is topped up (a whole extra batch: batch_size = n) and its extra rows dropped.
    The rows are those of the unsharded (DDP) run, sample for sample."""
    prompts = tmp_path / "p.jsonl"
    texts = ("The movie was", "I think that", "Today the", "Hello", "My friend")
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    config = tmp_path / "ei.yaml"
    config.write_text("n: 4\n")  # torchrun would take --n for an abbreviation of its own options
    best = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        args = ["expert-iteration", "--config", config, "--model", "tiny-llama"]
        args += ["--prompts", prompts, "--reward", "tests.helpers_rl:count_e", "--rounds", "1"]
        args += ["--output_dir", out, "--max_new_tokens", "12", "--batch_size", "4"]
        args += ["--sft", f"{{max_steps: 2, batch_size: 4, distributed: {strategy}}}"]
        proc = torchrun(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("sampling with the model sharded over 2" in proc.stdout) == (strategy == "fsdp")
        lines = (out / "round-1" / "best.jsonl").read_text().splitlines()
        best[strategy] = [json.loads(line) for line in lines]
        assert (out / "final" / "config.json").is_file()
    assert [r["prompt"] for r in best["fsdp"]] == list(texts)  # in order, the filler dropped
    assert best["fsdp"] == best["ddp"]
    print(f"expert-iteration sampling, FSDP == DDP over {len(texts)} prompts x 4 samples")
