"""Gold / rule judges from the built-in tasks (``task:NAME``), e.g. ``task:sentiment`` (VADER).

The task's ``reward(prompts, completions)`` is the score; pairwise, the higher reward wins:
hard labels by default (1, 0, and 0.5 for equal rewards), or Bradley-Terry soft labels
``sigmoid((r_a - r_b) / temperature)`` with ``temperature > 0``. No position bias by construction.
"""

from __future__ import annotations

from posttrain.errors import UserError
from posttrain.judges.reward_model import ScoreJudge
from posttrain.tasks import get_task


class TaskJudge(ScoreJudge):
    kind = "task"


def task_judge(spec: str, *, temperature: float = 0.0) -> TaskJudge:
    """``task:NAME`` (or just ``NAME``) -> a judge whose score is the task's gold reward."""
    name = spec.split(":", 1)[1] if spec.startswith("task:") else spec
    if not name:
        raise UserError(f"--judge: {spec!r} names no task (use task:NAME, e.g. task:sentiment)")
    try:
        task = get_task(name)
    except UserError as exc:
        raise UserError(f"--judge: {exc}") from None
    return TaskJudge(task.reward, temperature=temperature, name=f"task:{name}")
