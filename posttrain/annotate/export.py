"""Votes -> preference JSONL that ``posttrain rm`` and ``posttrain dpo`` read.

Each record has ``prompt``, ``chosen``, ``rejected`` (the preference format of DESIGN.md) plus
``annotator`` and ``task_id``. Rankings become pairs with ``ranking_to_pairs``; ties give no pair.

- ``mode="all"``: one record per pair per vote; A / B votes carry their ``confidence`` (1 slightly
  better, 2 better, 3 much better).
- ``mode="majority"``: votes on the same task are pooled pair by pair; a pair is kept when one
  side got strictly more votes than the other side and than "tie". ``annotator`` is
  ``"majority"``, ``annotators`` lists who voted, ``confidence`` is the winning share of the votes.

Gold (screening) items are left out unless ``include_gold``; ``min_gold_agreement`` drops every
vote of annotators whose gold agreement is below it (annotators with no gold answers are kept).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from posttrain.annotate import quality
from posttrain.annotate.db import Account, Task, Vote
from posttrain.annotate.tasks import loads_stored
from posttrain.data.io import dumps_line
from posttrain.data.pairs import letter_index, ranking_to_pairs

MODES = ("all", "majority")


def _screened_out(rows, threshold: float | None) -> set[str]:
    if threshold is None:
        return set()
    scores: dict[str, list[float]] = {}
    for vote, task, name in rows:
        if task.gold is not None:
            scores.setdefault(name, []).append(quality.gold_agreement(vote.ranking, task.gold))
    return {name for name, s in scores.items() if sum(s) / len(s) < threshold}


def preference_records(
    db: Session,
    mode: str = "all",
    *,
    include_gold: bool = False,
    min_gold_agreement: float | None = None,
) -> list[dict]:
    """Preference records from all stored votes, in a stable order (task, then vote)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    rows = db.execute(
        select(Vote, Task, Account.name)
        .join(Task, Task.id == Vote.task_id)
        .join(Account, Account.id == Vote.account_id)
        .order_by(Task.id, Vote.id)
    ).all()
    dropped = _screened_out(rows, min_gold_agreement)
    rows = [
        (vote, task, name)
        for vote, task, name in rows
        if name not in dropped and (include_gold or task.gold is None)
    ]
    if mode == "all":
        return [record for row in rows for record in _all_records(*row)]
    return _majority_records(rows)


def _all_records(vote: Vote, task: Task, name: str) -> list[dict]:
    prompt, completions = loads_stored(task.prompt), loads_stored(task.completions)
    records = []
    for better, worse in ranking_to_pairs(vote.ranking):
        record = {
            "prompt": prompt,
            "chosen": completions[letter_index(better)],
            "rejected": completions[letter_index(worse)],
            "annotator": name,
            "task_id": task.ext_id,
        }
        if vote.kind == "choice" and vote.confidence is not None:
            record["confidence"] = vote.confidence
        records.append(record)
    return records


def _majority_records(rows) -> list[dict]:
    by_task: dict[int, list] = {}
    for vote, task, name in rows:
        by_task.setdefault(task.id, []).append((vote, task, name))
    records = []
    for group in by_task.values():
        task = group[0][1]
        prompt, completions = loads_stored(task.prompt), loads_stored(task.completions)
        counts: dict[tuple[int, int], Counter] = {}
        for vote, _, _ in group:
            for (i, j), relation in quality.pair_relations(vote.ranking).items():
                counts.setdefault((i, j), Counter())[relation] += 1
        names = sorted({name for _, _, name in group})
        for (i, j), tally in sorted(counts.items()):
            ahead, behind, ties = tally[">"], tally["<"], tally["="]
            total = ahead + behind + ties
            if ahead > behind and ahead > ties:
                better, worse, wins = i, j, ahead
            elif behind > ahead and behind > ties:
                better, worse, wins = j, i, behind
            else:
                continue  # a tie won, or no side has a plurality
            records.append(
                {
                    "prompt": prompt,
                    "chosen": completions[better],
                    "rejected": completions[worse],
                    "annotator": "majority",
                    "annotators": names,
                    "task_id": task.ext_id,
                    "votes": total,
                    "confidence": wins / total,
                }
            )
    return records


def write_jsonl(records: list[dict], path: str | Path) -> None:
    """Write atomically: a temporary file in the same directory, renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(dumps_line(record) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonl(records: list[dict]) -> str:
    return "".join(dumps_line(record) + "\n" for record in records)
