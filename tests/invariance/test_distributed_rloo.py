"""RLOO under ``torchrun --nproc_per_node 2``: each process samples its half of the prompts (its
own seed), gradients are summed, and the run learns as the one-process run does: the mean reward
rises by a large margin while the KL to the reference stays bounded; rank 0 writes the outputs;
it resumes under 2 processes."""

from __future__ import annotations

from posttrain.training import read_metrics
from tests.helpers_rl import COMMON, reward_curve
from tests.invariance.helpers_distributed import assert_moved, final_weights, torchrun

ARGS = ["rloo", *COMMON, "--batch_size", "8", "--num_samples", "4", "--learning_rate", "1e-2"]
ARGS += ["--lr_schedule", "constant", "--kl_coef", "0.1", "--save_steps", "10"]


def test_rloo_on_two_processes_learns_and_resumes(tmp_path):
    out = tmp_path / "rloo"
    proc = torchrun(*ARGS, "--max_steps", "20", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, end, max_kl = reward_curve(out)
    assert end > 1.6 * start, (start, end)
    assert max_kl < 20, max_kl
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 21))
    assert_moved(final_weights(out))
    # two more steps from checkpoint-20 under the same number of processes
    proc = torchrun(*ARGS, "--max_steps", "22", "--output_dir", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")][-2:] == [21, 22]
