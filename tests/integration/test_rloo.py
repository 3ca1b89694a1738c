"""RLOO and REINFORCE on tiny-llama with a programmatic reward: the mean reward rises by a large
margin while the KL to the reference stays bounded; the REINFORCE baseline is checkpointed; bad
settings exit 2 before anything is written."""

from __future__ import annotations

import pytest
import torch

from tests.helpers_rl import COMMON, reward_curve

PG = [
    "--batch_size",
    "8",
    "--num_samples",
    "4",
    "--learning_rate",
    "1e-2",
    "--lr_schedule",
    "constant",
]


def test_rloo_raises_the_reward_while_kl_stays_bounded(cli, tmp_path):
    out = tmp_path / "rloo"
    code, _, err = cli(
        "rloo", *COMMON, *PG, "--kl_coef", "0.1", "--max_steps", "20", "--output_dir", out
    )
    assert code == 0, err
    start, end, max_kl = reward_curve(out)
    assert end > 1.6 * start, (start, end)  # ~0.7 -> 1.6+ 'e's per 10 characters
    assert max_kl < 20, max_kl  # nats per response (~9 here; ~40 with --kl_coef 0)
    assert (out / "final" / "model.safetensors").exists()


def test_reinforce_keeps_its_baseline_in_checkpoints(cli, tmp_path):
    out = tmp_path / "reinforce"
    code, _, err = cli(
        "reinforce", *COMMON, "--batch_size", "8", "--max_steps", "2", "--save_steps", "1",
        "--gradient_accumulation_steps", "2", "--output_dir", out,
    )  # fmt: skip
    assert code == 0, err
    state = torch.load(out / "checkpoint-1" / "state.pt", weights_only=False)
    assert isinstance(state["estimator"]["baseline"], float)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reward", "nowhere"], "--reward: 'nowhere' is neither"),
        (["--reward", "tests.helpers_rl:nothing"], "--reward: cannot import"),
        (["--num_samples", "1"], "--num_samples: must be >= 2"),
        (["--task", "unknown"], "unknown task 'unknown'"),
        (["--gradient_accumulation_steps", "3"], "--gradient_accumulation_steps: must divide"),
        (["--max_new_tokens", "600"], "--max_new_tokens: must be below max_length"),
    ],
)
def test_bad_settings_exit_2(cli, tmp_path, extra, message):
    out = tmp_path / "out"
    code, _, err = cli("rloo", *COMMON, "--output_dir", out, *extra)
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
