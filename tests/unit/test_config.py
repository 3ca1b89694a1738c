"""Typed config: YAML + command-line overrides, documented --help, clear errors."""

from __future__ import annotations

import pytest

from posttrain.config import field_docs, help_text, parse_args
from posttrain.errors import UserError
from posttrain.recipes.sft import Config


def test_cli_overrides_yaml_and_sections(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "model: tiny-llama\ntrain_data: a.jsonl\noutput_dir: out\nlearning_rate: 0.5\nlora:\n  r: 4\n"
    )
    cfg, flags = parse_args(
        Config,
        [
            "--config",
            str(f),
            "--learning_rate",
            "0.25",
            "--lora.enabled",
            "--lora.alpha=8",
            "--resume",
        ],
    )
    assert (
        cfg.learning_rate == 0.25 and cfg.lora.r == 4 and cfg.lora.enabled and cfg.lora.alpha == 8.0
    )
    assert flags == {"resume": True, "overwrite": False}
    assert cfg.max_steps == 100  # default kept


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_data", "a", "--output_dir", "o"], "--model is required"),
        (
            ["--model", "m", "--train_data", "a", "--output_dir", "o", "--max_steps", "ten"],
            "--max_steps: expected int (got 'ten')",
        ),
        (
            ["--model", "m", "--train_data", "a", "--output_dir", "o", "--max_length", "0"],
            "--max_length: must be >= 1 (got 0)",
        ),
        (
            ["--model", "m", "--train_data", "a", "--output_dir", "o", "--learning_rate", "-1"],
            "--learning_rate: must be > 0",
        ),
        (
            ["--model", "m", "--train_data", "a", "--output_dir", "o", "--dtype", "fp8"],
            "--dtype: must be one of float32, bfloat16, float64",
        ),
        (
            ["--model", "m", "--train_data", "a", "--output_dir", "o", "--batch_sise", "3"],
            "did you mean --batch_size?",
        ),
        (
            [
                "--model",
                "m",
                "--train_data",
                "a",
                "--output_dir",
                "o",
                "--batch_size",
                "6",
                "--gradient_accumulation_steps",
                "4",
            ],
            "must divide batch_size=6",
        ),
    ],
)
def test_bad_values_give_one_clear_message(args, message):
    with pytest.raises(UserError) as info:
        parse_args(Config, args)
    assert message in str(info.value)


def test_help_lists_every_field_with_its_doc():
    text = help_text(Config, "posttrain sft")
    for name in (
        "--model",
        "--train_data",
        "--eval_data",
        "--output_dir",
        "--max_steps",
        "--batch_size",
        "--learning_rate",
        "--seed",
        "--save_steps",
        "--logging_steps",
        "--max_length",
        "--dtype",
        "--lora.r",
        "--packing",
        "--resume",
        "--overwrite",
    ):
        assert name in text, name
    docs = field_docs(Config)
    assert docs["packing"].startswith("Pack several short examples")
    assert docs["model"].startswith("Model to start from")  # inherited doc


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match=r"c.yaml:\d*: not valid YAML"):
        parse_args(Config, ["--config", str(f)])


@pytest.mark.parametrize("recipe", ["rloo", "grpo", "reinforce", "ppo", "online_dpo"])
def test_online_recipes_take_fsdp(recipe):
    """Online recipes run under FSDP too (tests/invariance/test_distributed_fsdp_online.py)."""
    import importlib

    module = importlib.import_module(f"posttrain.recipes.{recipe}")
    args = ["--model", "tiny-llama", "--task", "sentiment", "--output_dir", "o"]
    if recipe == "online_dpo":
        args = ["--model", "tiny-llama", "--train_data", "p.jsonl", "--judge", "task:sentiment"]
        args += ["--output_dir", "o", "--beta", "0.1"]
    config, _ = parse_args(module.Config, [*args, "--distributed", "fsdp"])
    assert config.distributed == "fsdp"
