"""Build a judge from its command-line name: ``llm``, ``generative``, ``reward-model``, ``task:NAME``,
or ``module:function`` (a pairwise function, :class:`posttrain.judges.pairwise.FunctionJudge`).

Used by ``posttrain judge``, ``posttrain online-dpo`` and the RLAIF configs, so the names mean
the same everywhere (one parser: ``posttrain.judges.sources.parse_spec``; ``judge:KIND`` is
accepted as KIND). :func:`check_judge` validates the name and its model before anything is
loaded or written; :func:`build_judge` loads it.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.errors import UserError
from posttrain.judges.sources import parse_spec

KINDS = ("llm", "generative", "reward-model", "task:NAME", "module:function")


def _is_function_spec(kind: str) -> bool:
    return parse_spec(kind).kind == "function"


def _judge_kind(kind: str) -> str:
    """``judge:KIND`` (the form a reward spec uses) means KIND here too."""
    parsed = parse_spec(kind)
    return parsed.name if parsed.kind == "judge" else kind


def check_judge(kind: str, model: str | None, *, field: str = "judge", model_field: str = "model"):
    """Fail fast on an unknown judge kind or a missing / unloadable judge model."""
    kind = _judge_kind(kind)
    if parse_spec(kind).kind == "task":
        from posttrain.tasks import TASKS

        name = kind.split(":", 1)[1]
        if name not in TASKS:
            raise UserError(f"--{field}: unknown task {name!r}; known: {', '.join(TASKS)}")
        return
    if _is_function_spec(kind):
        from posttrain.judges.pairwise import load_function_judge

        load_function_judge(kind, field=field)
        return
    if kind not in ("llm", "generative", "reward-model"):
        raise UserError(f"--{field}: must be one of {', '.join(KINDS)} (got {kind!r})")
    if not model:
        raise UserError(f"--{model_field}: a {kind} judge needs a model")
    if kind == "reward-model":
        if not Path(model).is_dir():
            raise UserError(f"--{model_field}: {model}: no such reward-model directory")
        return
    from posttrain.models import check_model_name

    check_model_name(model)


def build_judge(
    kind: str,
    model: str | None,
    *,
    constitution: str | None = None,
    seed: int = 0,
    swap: bool = False,
    chat: str = "auto",
    batch_size: int = 8,
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    dtype: str = "float32",
    policy=None,
    device=None,
):
    """A judge object (``compare``, ``verdicts``, maybe ``score``).

    ``constitution``: a file, or None for the shipped default (llm / generative). ``temperature``:
    sampling temperature of a generative judge; for ``task:`` judges the Bradley-Terry temperature
    of soft labels (0: hard). ``policy``: ``(model, tokenizer)`` already loaded under the same
    name, reused instead of loading a second copy. ``device``: where a loaded judge model goes
    (None: the CPU).
    """
    kind = _judge_kind(kind)
    check_judge(kind, model)
    if _is_function_spec(kind):
        from posttrain.judges.pairwise import load_function_judge

        return load_function_judge(kind, swap=swap)
    if parse_spec(kind).kind == "task":
        from posttrain.judges.gold import task_judge

        return task_judge(kind, temperature=temperature)
    if kind == "reward-model":
        from posttrain.judges.reward_model import RewardModelJudge

        return RewardModelJudge.from_path(model, device=device)
    from posttrain.judges.constitution import load_constitution
    from posttrain.models import load_policy

    principles = load_constitution(constitution)
    if policy is not None:
        judge_model, tokenizer = policy
    else:
        judge_model, tokenizer = load_policy(model, dtype=dtype, device=device)
    if kind == "llm":
        from posttrain.judges.llm import LLMJudge

        return LLMJudge(
            judge_model,
            tokenizer,
            principles,
            seed=seed,
            swap=swap,
            chat=chat,
            batch_size=batch_size,
        )
    from posttrain.judges.generative import GenerativeJudge

    return GenerativeJudge(
        judge_model,
        tokenizer,
        principles,
        seed=seed,
        swap=swap,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
    )
