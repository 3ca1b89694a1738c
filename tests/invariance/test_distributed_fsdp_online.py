"""Online recipes under ``torchrun --nproc_per_node 2 ... --distributed fsdp`` (float32): the
policy (and PPO's value head, and the frozen reference) is sharded, so every forward gathers each
layer's weights from both processes. Sampling therefore runs until both processes' rows have ended
(``posttrain.rollout.generate.all_finished``), and every other forward and backward is made as
often on each process; a mismatch would hang (the helper's timeout) or fail. Each run learns as its
DDP run does (``test_distributed_{rloo,ppo,online}.py``, same settings) and resumes from a
checkpoint (written from gathered full weights)."""

from __future__ import annotations

import pytest
import torch

from posttrain.training import read_metrics
from tests.helpers_rl import COMMON, reward_curve
from tests.integration.test_online_dpo import sft_model  # noqa: F401  (the fixture)
from tests.invariance.helpers_distributed import assert_moved, final_weights, torchrun

FSDP = ["--distributed", "fsdp", "--dtype", "float32"]


def test_rloo_under_fsdp_learns_and_resumes(tmp_path):
    out = tmp_path / "rloo"
    args = ["rloo", *COMMON, *FSDP, "--batch_size", "8", "--num_samples", "4"]
    args += ["--learning_rate", "1e-2", "--lr_schedule", "constant", "--kl_coef", "0.1"]
    args += ["--save_steps", "10", "--output_dir", out]
    proc = torchrun(*args, "--max_steps", "20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, end, max_kl = reward_curve(out)
    print(f"2-process FSDP RLOO: reward {start:.3f} -> {end:.3f}, max KL {max_kl:.2f}")
    assert end > 1.6 * start, (start, end)
    assert max_kl < 20, max_kl
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 21))
    assert_moved(final_weights(out))
    # two more steps from checkpoint-20 (full weights, loaded back into the shards)
    proc = torchrun(*args, "--max_steps", "22", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")][-2:] == [21, 22]


def test_grpo_under_fsdp_samples_and_steps_as_under_ddp(tmp_path):
    """With a frequent stop string each process's rows end after a different number of tokens:
    under FSDP the process that is done keeps making forwards (and samples nothing more) until
    the other is, so the rollouts, and the steps, are DDP's (up to the order of gradient sums)."""
    args = ["grpo", *COMMON, "--dtype", "float32", "--batch_size", "8", "--num_samples", "4"]
    args += ["--learning_rate", "1e-2", "--max_steps", "3", "--stop_strings", " "]
    runs = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        proc = torchrun(*args, "--distributed", strategy, "--output_dir", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = read_metrics(out / "metrics.jsonl")
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    assert [r["response/truncated_rate"] for r in ddp] == [0.0] * 3  # every row stopped early
    for key in ("objective/scores", "response/length_mean"):
        assert [r[key] for r in fsdp] == [r[key] for r in ddp], key
    for key in ("objective/kl", "loss/policy"):
        assert [r[key] for r in fsdp] == pytest.approx([r[key] for r in ddp], rel=1e-4, abs=1e-6)


def test_ppo_under_fsdp_learns_and_resumes_exactly(tmp_path):
    out = tmp_path / "ppo"
    args = ["ppo", *COMMON, *FSDP, "--batch_size", "16", "--learning_rate", "5e-3"]
    args += ["--kl_coef", "0.02", "--num_minibatches", "1", "--kl_target", "6"]
    args += ["--max_steps", "20", "--save_steps", "9", "--output_dir", out]
    proc = torchrun(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, end, max_kl = reward_curve(out)
    print(f"2-process FSDP PPO: reward {start:.3f} -> {end:.3f}, max KL {max_kl:.2f}")
    assert end > 1.6 * start, (start, end)
    assert max_kl < 15, max_kl
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 21))
    weights = final_weights(out)
    assert_moved(weights)
    # resume from checkpoint-18 (policy and value head): steps 19-20 again, exactly
    proc = torchrun(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_metrics(out / "metrics.jsonl")
    for key in ("objective/scores", "objective/kl", "objective/kl_coef", "loss/policy"):
        assert [r[key] for r in again[-2:]] == [r[key] for r in rows[-2:]], key
    resumed = final_weights(out)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_online_dpo_under_fsdp_learns_and_resumes(sft_model, tmp_path):  # noqa: F811
    """The judge's ties leave the processes different numbers of pairs (even none): the process
    with fewer makes weight-0 passes so both make the same forwards and backwards."""
    model, prompts, held_out = sft_model
    out = tmp_path / "oaif"
    args = ["online-dpo", "--model", model, "--train_data", prompts, "--judge", "task:counting"]
    args += [*FSDP, "--batch_size", "8", "--learning_rate", "5e-4", "--beta", "0.1"]
    args += ["--max_steps", "20", "--max_new_tokens", "16", "--max_length", "48"]
    args += ["--lr_schedule", "constant", "--logging_steps", "1", "--progress", "false"]
    args += ["--eval_data", held_out, "--save_steps", "18", "--output_dir", out]
    proc = torchrun(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    sft, online = rows[0]["eval/scores"], rows[-1]["eval/scores"]  # gold reward, held-out
    print(f"2-process FSDP online DPO: gold reward sft {sft:.3f} -> {online:.3f}")
    assert online > sft + 0.05, (sft, online)
    pairs = [r["train/pairs"] for r in rows[1:]]
    assert any(p % 2 for p in pairs), pairs  # an odd number of pairs: the processes' differ
    weights = final_weights(out)
    # resume from checkpoint-18: steps 19-20 again, exactly
    proc = torchrun(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_metrics(out / "metrics.jsonl")
    for key in ("train/loss", "objective/scores", "eval/scores"):
        assert [r.get(key) for r in again[-2:]] == [r.get(key) for r in rows[-2:]], key
    resumed = final_weights(out)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
