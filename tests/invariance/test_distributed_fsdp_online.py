"""Online recipes under ``torchrun --nproc_per_node 2 ... --distributed fsdp`` (float32): the
policy (and PPO's value head, and the frozen reference) is sharded, so every forward gathers each
layer's weights from both processes. Sampling therefore runs until both processes' rows have ended
(``posttrain.rollout.generate.all_finished``), and every other forward and backward is made as
often on each process; a mismatch would hang (the helper's timeout) or fail. Each run learns as its
DDP run does (``test_distributed_{rloo,ppo,online}.py``, same settings) and resumes from a
checkpoint (written from gathered full weights)."""

from __future__ import annotations

import shutil

import pytest
import torch

from posttrain.training import latest_checkpoint, read_metrics
from tests.helpers_rl import COMMON, reward_curve
from tests.integration.test_online_dpo import sft_model  # noqa: F401  (the fixture)
from tests.invariance.helpers_distributed import assert_moved, final_weights, torchrun
from tests.invariance.test_distributed_online import oaif_args, run_and_check_gain
from tests.invariance.test_distributed_ppo import ARGS as PPO  # the DDP tests' settings
from tests.invariance.test_distributed_rloo import ARGS as RLOO

FSDP = ["--distributed", "fsdp", "--dtype", "float32"]


def assert_learns(out, name: str, max_kl: float) -> None:
    """The mean reward rises by a large margin while the KL to the reference stays bounded."""
    start, end, kl = reward_curve(out)
    print(f"2-process FSDP {name}: reward {start:.3f} -> {end:.3f}, max KL {kl:.2f}")
    assert end > 1.6 * start, (start, end)
    assert kl < max_kl, kl


def assert_resumes_exactly(args: list, out, keys: tuple[str, ...]) -> None:
    """``--resume`` from the last checkpoint repeats the last two logged steps (``keys``) and
    the final weights bit for bit."""
    rows, weights = read_metrics(out / "metrics.jsonl"), final_weights(out)
    # every run also saves its last step: resume from the periodic checkpoint before it
    shutil.rmtree(latest_checkpoint(out))
    proc = torchrun(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_metrics(out / "metrics.jsonl")
    for key in keys:
        assert [r.get(key) for r in again[-2:]] == [r.get(key) for r in rows[-2:]], key
    resumed = final_weights(out)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def ddp_and_fsdp(args: list, tmp_path) -> tuple[list[dict], list[dict]]:
    """The logged metrics of the same 2-process run under DDP, then under FSDP."""
    runs = []
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        proc = torchrun(*args, "--distributed", strategy, "--output_dir", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(read_metrics(out / "metrics.jsonl"))
    return runs[0], runs[1]


def test_rloo_under_fsdp_learns_and_resumes(tmp_path):
    out = tmp_path / "rloo"
    args = [*RLOO, *FSDP, "--output_dir", out]
    proc = torchrun(*args, "--max_steps", "20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_learns(out, "RLOO", max_kl=20)
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
    ddp, fsdp = ddp_and_fsdp(args, tmp_path)
    assert [r["response/truncated_rate"] for r in ddp] == [0.0] * 3  # every row stopped early
    for key in ("objective/scores", "response/length_mean"):
        assert [r[key] for r in fsdp] == [r[key] for r in ddp], key
    for key in ("objective/kl", "loss/policy"):
        assert [r[key] for r in fsdp] == pytest.approx([r[key] for r in ddp], rel=1e-4, abs=1e-6)


def test_ppo_under_fsdp_learns_and_resumes_exactly(tmp_path):
    out = tmp_path / "ppo"
    args = [*PPO, *FSDP, "--output_dir", out]  # 20 steps, checkpoints every 9
    proc = torchrun(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_learns(out, "PPO", max_kl=15)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 21))
    assert_moved(final_weights(out))
    # from checkpoint-18 (policy and value head, both sharded): steps 19-20 again
    keys = ("objective/scores", "objective/kl", "objective/kl_coef", "loss/policy")
    assert_resumes_exactly(args, out, keys)


def test_online_dpo_under_fsdp_learns_and_resumes(sft_model, tmp_path):  # noqa: F811
    """The judge's ties leave the processes different numbers of pairs (even none): the process
    with fewer makes weight-0 passes so both make the same forwards and backwards."""
    out = tmp_path / "oaif"
    args = [*oaif_args(sft_model, out, steps=20, save_steps=18), *FSDP]
    rows = run_and_check_gain(args, out, "2-process FSDP online DPO")
    pairs = [r["train/pairs"] for r in rows[1:]]
    assert any(p % 2 for p in pairs), pairs  # an odd number of pairs: the processes' differ
    # from checkpoint-18: steps 19-20 again
    assert_resumes_exactly(args, out, ("train/loss", "objective/scores", "eval/scores"))


def test_ppo_ptx_with_checkpointing_under_fsdp_steps_as_under_ddp(tmp_path):
    """PPO-ptx with gradient checkpointing: under FSDP (the policy, value head and reference
    sharded, each process taking a slice of the ptx batch) the rollouts and the steps are DDP's
    (up to the order of gradient sums)."""
    ptx = tmp_path / "ptx.jsonl"
    ptx.write_text('{"prompt": "Say hi:", "completion": " hi there"}\n' * 8)
    args = [*PPO, "--dtype", "float32", "--max_steps", "3", "--save_steps", "0"]
    args += ["--ptx_data", ptx, "--ptx_coef", "0.5", "--ptx_batch_size", "4"]
    args += ["--gradient_checkpointing", "true"]
    ddp, fsdp = ddp_and_fsdp(args, tmp_path)
    assert len(ddp) == len(fsdp) == 3 and all(r["loss/ptx"] > 0 for r in fsdp)
    assert [r["objective/scores"] for r in fsdp] == [r["objective/scores"] for r in ddp]
    for key in ("objective/kl", "loss/policy", "loss/value", "loss/ptx"):
        assert [r[key] for r in fsdp] == pytest.approx([r[key] for r in ddp], rel=1e-4, abs=1e-6)
