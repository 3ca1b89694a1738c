"""PPO under ``torchrun --nproc_per_node 2``: each process samples its half of the prompts (its
own seed) and trains on its rows' share of every minibatch with globally whitened advantages;
gradients of the policy and the value head are summed. The run learns as the one-process run
does (``tests/integration/test_ppo.py``): the mean reward rises by a large margin while the KL to
the reference stays bounded; the adaptive KL controller moves; rank 0 writes the outputs; it
resumes exactly under 2 processes."""

from __future__ import annotations

import json
import shutil

import torch

from posttrain.training import read_metrics
from tests.helpers_rl import COMMON, reward_curve
from tests.invariance.helpers_distributed import assert_moved, final_weights, torchrun

ARGS = ["ppo", *COMMON, "--batch_size", "16", "--learning_rate", "5e-3", "--kl_coef", "0.02"]
ARGS += ["--num_minibatches", "1", "--kl_target", "6", "--max_steps", "20", "--save_steps", "9"]
ARGS += ["--samples_every", "5"]


def test_ppo_on_two_processes_learns_and_resumes(tmp_path):
    out = tmp_path / "ppo"
    proc = torchrun(*ARGS, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, end, max_kl = reward_curve(out)
    print(f"2-process PPO: reward {start:.3f} -> {end:.3f}, max KL {max_kl:.2f}")
    assert end > 1.6 * start, (start, end)
    assert max_kl < 15, max_kl
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert len({r["objective/kl_coef"] for r in rows}) > 1  # the controller moved
    weights = final_weights(out)
    assert_moved(weights)
    samples = (out / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 * 4 and json.loads(samples[0])["step"] == 5  # rank 0's table only
    # resume from checkpoint-18 under the same number of processes: steps 19-20 again, exactly
    # every run also saves its last step: resume from the periodic checkpoint before it
    shutil.rmtree(out / "checkpoint-20")
    proc = torchrun(*ARGS, "--output_dir", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in again] == list(range(1, 21))
    for key in ("objective/scores", "objective/kl", "objective/kl_coef", "loss/policy"):
        assert [r[key] for r in again[-2:]] == [r[key] for r in rows[-2:]], key
    resumed = final_weights(out)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
