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


def test_a_section_given_as_yaml_on_the_command_line_is_typed_like_fields():
    base = ["--model", "tiny-llama", "--train_data", "a.jsonl", "--output_dir", "o"]
    cfg, _ = parse_args(Config, [*base, "--lora", "{enabled: true, r: 4, alpha: 1e1}"])
    assert cfg.lora.enabled is True and cfg.lora.r == 4 and cfg.lora.alpha == 10.0
    with pytest.raises(UserError, match=r"--lora\.r: expected int \(got 'four'\)"):
        parse_args(Config, [*base, "--lora", "{r: four}"])
    with pytest.raises(UserError, match="--lora: expected a section"):
        parse_args(Config, [*base, "--lora", "8"])


def test_expert_iteration_sft_section_is_typed_and_validated(tmp_path, capsys):
    """The documented ``--sft '{max_steps: 100, learning_rate: 1e-5}'`` (YAML reads 1e-5 as a
    string) gives a typed SFT config; a bad section is one error line, exit 2, nothing written."""
    from posttrain.cli import main
    from posttrain.recipes import expert_iteration
    from posttrain.recipes.best_of_n import sft_config

    args = ["--model", "tiny-llama", "--prompts", "p.jsonl", "--reward", "task:counting"]
    cfg, _ = parse_args(
        expert_iteration.Config,
        [*args, "--output_dir", "o", "--sft", "{max_steps: 100, learning_rate: 1e-5}"],
    )
    sft_cfg = sft_config(cfg.model, tmp_path / "d.jsonl", tmp_path / "s", cfg.sft, cfg.seed)
    assert sft_cfg.max_steps == 100 and sft_cfg.learning_rate == 1e-5
    assert isinstance(sft_cfg.learning_rate, float) and sft_cfg.batch_size == 8
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Count:"}\n')
    args[3] = str(prompts)
    for sft, message in [
        ("{learning_rate: fast}", "error: --sft.learning_rate: expected float (got 'fast')"),
        ("{max_steps: 0}", "error: --sft.max_steps: must be >= 1 (got 0)"),
        ("{bogus: 1}", "error: unknown setting --sft.bogus"),
    ]:
        out = tmp_path / "out"
        assert main(["expert-iteration", *args, "--output_dir", str(out), "--sft", sft]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and "Traceback" not in err, err
        assert not out.exists()
