"""Typed configuration: dataclasses whose attribute docstrings become ``--help``.

A recipe declares its settings as a dataclass. Each field is documented by the string literal
right below it (as in CleanRL), and that text is what ``posttrain RECIPE --help`` prints.
Values come from, in order of precedence: the command line (``--field value``,
``--section.field value``), the YAML file given with ``--config``, the field's default. Fields
without a default (the model, the data) must be given. Config objects stop at the recipe boundary:
components take plain arguments.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from posttrain.errors import UserError

FLAGS = ("resume", "overwrite")  # command-line switches, not saved in config.yaml


# ----------------------------------------------------------------------------- field docs


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases: ``{field name: doc}``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# ----------------------------------------------------------------------------- type handling


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    if typing.get_origin(tp) is Literal:
        name = "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    elif typing.get_origin(tp) in (list, dict):
        name = str(tp).replace("typing.", "")
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} | None" if optional else name


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise UserError."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise UserError(f"--{name}: a value is required")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return (
                int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            )
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                raise UserError(
                    f"--{name}: must be one of {', '.join(map(str, choices))} (got {value!r})"
                )
            return value
        if origin is list:
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else value.split(",")
            (item_tp,) = typing.get_args(tp) or (str,)
            return [_convert(v, item_tp, name) for v in value]
        if origin is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            key_tp, val_tp = typing.get_args(tp) or (str, Any)
            return {
                _convert(k, key_tp, name): (v if val_tp is Any else _convert(v, val_tp, name))
                for k, v in value.items()
            }
    except UserError:
        raise
    except (ValueError, TypeError, json.JSONDecodeError, yaml.YAMLError):
        raise UserError(f"--{name}: expected {_type_name(tp)} (got {value!r})") from None
    return value


# ----------------------------------------------------------------------------- building


def _known(cls: type) -> list[str]:
    names = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(_hints(cls)[f.name]):
            names += [f"{f.name}.{sub}" for sub in _known(_hints(cls)[f.name])]
        else:
            names.append(f.name)
    return names


def _unknown(cls: type, key: str) -> UserError:
    close = difflib.get_close_matches(key, _known(cls), n=1)
    hint = f"; did you mean --{close[0]}?" if close else ""
    return UserError(f"unknown setting --{key}{hint} (see --help)")


def section_values(value: Any, name: str) -> dict[str, Any]:
    """A section's settings: a mapping, or a mapping written as YAML on the command line
    (``--lora '{enabled: true, r: 4}'``)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--{name}: not valid YAML (got {value!r})") from None
    if not isinstance(value, dict):
        raise UserError(f"--{name}: expected a section of settings, e.g. '{{key: value}}'")
    return value


def build_section(cls: type, value: Any, name: str, **fixed: Any) -> Any:
    """Another command's config (e.g. expert-iteration's ``--sft``) from a mapping or a YAML
    string, typed and checked like top-level fields (errors name ``--NAME.field``), with the
    ``fixed`` values set over it; ``validate()`` is called."""
    config = build(cls, {**section_values(value, name), **fixed}, prefix=f"{name}.")
    if hasattr(config, "validate"):
        try:
            config.validate()
        except UserError as exc:  # "--field: ..." of the section -> "--name.field: ..."
            message = str(exc)
            if message.startswith("--") and not message.startswith(f"--{name}."):
                raise UserError(f"--{name}.{message[2:]}") from None
            raise
    return config


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, converting and checking every value."""
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown(cls, prefix + key)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            value = section_values(value, prefix + key)
            kwargs[key] = build(tp, value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _convert(value, tp, prefix + key)
    missing = [
        prefix + f.name
        for f in names.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"--{missing[0]} is required (give it on the command line or in --config)")
    return cls(**kwargs)


def _set_nested(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"--{dotted}: {p} is not a section")
        tree = node
    tree[leaf] = value


def _is_bool_field(cls: type, dotted: str) -> bool:
    tp: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return False
        hints = _hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return _strip_optional(tp)[0] is bool


def parse_args(cls: type, argv: list[str]) -> tuple[Any, dict[str, bool]]:
    """Parse ``[--config FILE] [--field value ...] [--resume] [--overwrite]`` into ``cls``.

    Returns ``(config, flags)``; calls ``config.validate()`` when the class defines it.
    """
    values: dict[str, Any] = {}
    overrides: list[tuple[str, Any]] = []
    flags = {name: False for name in FLAGS}
    config_file = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: settings are given as --name value")
        key, eq, inline = arg[2:].partition("=")
        if key in FLAGS and not eq:
            flags[key] = True
            i += 1
            continue
        if eq:
            value, i = inline, i + 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 2
        elif key != "config" and _is_bool_field(cls, key):
            value, i = "true", i + 1
        else:
            raise UserError(f"--{key} needs a value")
        if key == "config":
            config_file = value
        else:
            overrides.append((key.replace("-", "_"), value))
    if config_file is not None:
        values = load_yaml(config_file)
    for key, value in overrides:
        _set_nested(values, key, value)
    config = build(cls, values)
    if hasattr(config, "validate"):
        config.validate()
    return config, flags


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise UserError(f"{path}:{'' if line is None else line + 1}: not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a config file must be a mapping of settings")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def help_text(cls: type, prog: str, summary: str = "") -> str:
    """The ``--help`` page: every field with its type, default and doc."""
    lines = [f"usage: {prog} [--config FILE.yaml] [--field value ...]", ""]
    if summary:
        lines += [summary, ""]
    lines += ["Command-line values override the config file. Sections use dots: --lora.r 8.", ""]

    def walk(klass: type, prefix: str) -> None:
        docs, hints = field_docs(klass), _hints(klass)
        fields = dataclasses.fields(klass)
        if isinstance(klass, type) and issubclass(klass, GenerationConfig):  # command's own first
            shared = {f.name for f in dataclasses.fields(SamplingConfig)}
            fields = sorted(fields, key=lambda f: f.name in shared)
        for f in fields:
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                lines.append(f"[{prefix}{f.name}] {docs.get(f.name, '')}")
                walk(tp, f"{prefix}{f.name}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = f"default: {f.default!r}"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"default: {f.default_factory()!r}"
            else:
                default = "required"
            lines.append(f"  --{prefix}{f.name} {_type_name(tp)}  ({default})")
            if docs.get(f.name):
                lines.extend("      " + line for line in textwrap.wrap(docs[f.name], 88))

    walk(cls, "")
    if issubclass(cls, TrainConfig):
        lines += [
            "",
            "flags:",
            "  --resume     continue from the newest complete checkpoint in output_dir",
            "  --overwrite  replace a non-empty output_dir",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- common fields


def check(condition: bool, name: str, message: str, value: Any) -> None:
    """Raise ``UserError('--name: message (got value)')`` unless ``condition``."""
    if not condition:
        raise UserError(f"--{name}: {message} (got {value!r})")


@dataclass(kw_only=True)
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights; merged into the saved final model."""
    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    """Module names that get adapters."""


@dataclass(kw_only=True)
class GenerationConfig:
    """The sampling settings of every command that generates (sample, best-of-n,
    expert-iteration, cai, online-dpo and the online RL recipes): one definition of the fields,
    their docs and checks, given flat on the command line (``--max_new_tokens 32``). A command
    may re-declare a field to change its default."""

    max_new_tokens: int = 64
    """Longest response in tokens (a response not ended by then is cut)."""
    temperature: float = 1.0
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability (1: off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: off)."""

    def check_sampling(self, *, greedy: bool = True, why: str = "") -> None:
        """Check the sampling fields; ``greedy=False``: temperature must be > 0 (``why``)."""
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", self.max_new_tokens)
        if greedy:
            check(self.temperature >= 0, "temperature", "must be >= 0", self.temperature)
        else:
            message = f"must be > 0 {why}" if why else "must be > 0"
            check(self.temperature > 0, "temperature", message, self.temperature)
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        check(self.top_k >= 0, "top_k", "must be >= 0", self.top_k)

    def sampling_args(self) -> dict[str, Any]:
        """The fields as keyword arguments of ``posttrain.rollout.sampler.sample_texts``."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }


@dataclass(kw_only=True)
class SamplingConfig(GenerationConfig):
    """:class:`GenerationConfig` plus the number of samples per prompt (``--n``)."""

    n: int = 1
    """Samples per prompt."""

    def check_sampling(self, *, greedy: bool = True, why: str = "") -> None:
        check(self.n >= 1, "n", "must be >= 1", self.n)
        super().check_sampling(greedy=greedy, why=why)


@dataclass(kw_only=True)
class TrainConfig:
    """Fields every training recipe has (DESIGN.md)."""

    model: str
    """Model to start from: `tiny-llama`, `smollm2-135m-instruct`, or a local Hugging Face directory."""
    train_data: str
    """Training data: a .jsonl or .parquet file, or a `datasets` directory."""
    eval_data: str | None = None
    """Held-out data of the same kind, evaluated every eval_steps and at the end."""
    output_dir: str
    """Where config.yaml, metrics.jsonl, checkpoint-STEP/ and final/ go."""
    max_steps: int = 100
    """Optimizer steps to take."""
    batch_size: int = 8
    """Examples per optimizer step (before gradient accumulation splits it)."""
    gradient_accumulation_steps: int = 1
    """Split each batch into this many micro-batches (same result, less memory)."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to learning_rate over this many steps."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Learning-rate schedule after warm-up."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 turns clipping off)."""
    seed: int = 0
    """Seed for data order, initialisation and sampling."""
    save_steps: int = 0
    """Write checkpoint-STEP/ every this many steps (0: only the final model)."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (oldest removed first)."""
    logging_steps: int = 10
    """Append a line to metrics.jsonl every this many steps."""
    eval_steps: int = 0
    """Evaluate on eval_data every this many steps (0: only at the end)."""
    max_length: int = 512
    """Maximum prompt + response tokens; longer examples are truncated (and counted)."""
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    """Precision of weights and compute."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    bf16_autocast: bool = False
    """Run forward passes under torch.autocast to bfloat16 (weights and AdamW stay in dtype)."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun with several processes: `ddp` (a full replica per process) or `fsdp`
    (weights, gradients and AdamW states sharded across processes). Ignored for one process."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters."""
    progress: bool = True
    """Show a progress bar with ETA on stderr."""
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    """Also send the logged metrics to TensorBoard (event files in output_dir/runs) or to an
    offline wandb run (output_dir/wandb); metrics.jsonl is written either way."""
    device: str = "auto"
    """Where to compute: auto (CUDA if available, then MPS, else CPU), cpu, cuda, cuda:N or mps.
    Under torchrun each process takes cuda:LOCAL_RANK (auto / cuda) or the CPU."""

    def validate(self) -> None:
        from posttrain.training.device import check_dtype, resolve
        from posttrain.training.trackers import check_available

        check_available(self.report_to)  # a missing package fails before output_dir exists
        device = resolve(self.device)  # an absent device: exit 2, nothing written
        check_dtype(device, self.dtype)
        if self.bf16_autocast:
            check_dtype(device, "bfloat16", field="bf16_autocast")
        check(self.max_steps >= 1, "max_steps", "must be >= 1", self.max_steps)
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        check(
            self.gradient_accumulation_steps >= 1,
            "gradient_accumulation_steps",
            "must be >= 1",
            self.gradient_accumulation_steps,
        )
        check(
            self.batch_size % self.gradient_accumulation_steps == 0,
            "gradient_accumulation_steps",
            f"must divide batch_size={self.batch_size}",
            self.gradient_accumulation_steps,
        )
        processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate
        check(
            self.batch_size % (processes * self.gradient_accumulation_steps) == 0,
            "batch_size",
            f"must be divisible by processes x gradient_accumulation_steps = {processes} x "
            f"{self.gradient_accumulation_steps}",
            self.batch_size,
        )
        check(self.learning_rate > 0, "learning_rate", "must be > 0", self.learning_rate)
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0", self.warmup_steps)
        check(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0", self.max_grad_norm)
        check(self.save_steps >= 0, "save_steps", "must be >= 0", self.save_steps)
        check(self.save_total_limit >= 1, "save_total_limit", "must be >= 1", self.save_total_limit)
        check(self.logging_steps >= 1, "logging_steps", "must be >= 1", self.logging_steps)
        check(self.eval_steps >= 0, "eval_steps", "must be >= 0", self.eval_steps)
        check(self.max_length >= 1, "max_length", "must be >= 1", self.max_length)
        check(self.lora.r >= 1, "lora.r", "must be >= 1", self.lora.r)
        check(0 <= self.lora.dropout < 1, "lora.dropout", "must be in [0, 1)", self.lora.dropout)
