"""Votes -> JSONL that ``posttrain rm`` and ``posttrain dpo`` read, keeping what annotators said.

Preference records (DESIGN.md) have ``prompt``, ``chosen``, ``rejected`` plus ``annotator`` (the
account name), ``task_id`` and, per vote, ``elapsed_ms`` (time spent on the task; a revised vote's
time adds up over its visits). Strength and ties use DESIGN.md's keys:

- A / B votes carry ``p_chosen`` from their confidence (``CONFIDENCE_P``: 1 "slightly better"
  -> 0.6, 2 "better" -> 0.75, 3 "much better" -> 0.9) and the raw ``confidence``. Rankings and
  A / B votes without a confidence carry no ``p_chosen`` (certain, p = 1).
- A tie (an A = B vote, or ``=`` inside a ranking) is a record with ``tie: true`` (chosen / rejected
  in file order); the trainers drop ties by default and count them (``--ties soft`` trains them).

Modes:

- ``"all"``: one record per response pair per vote (a ranking of K gives K(K-1)/2 records).
- ``"majority"``: the votes on a task are pooled pair by pair. ``p_chosen`` is the majority share:
  (votes for the chosen side + half the tie votes) / all votes on that pair; chosen is the side
  with the larger share, and an even split is ``tie: true``. ``annotator`` is ``"majority"``,
  ``annotators`` lists the voters, ``votes`` counts them and ``vote_counts`` splits them
  (``chosen`` / ``rejected`` / ``tie``).
- ``"scored"``: Likert ratings as scored records (``prompt``, ``completions``, ``scores``: one
  ``{aspect: score}`` per completion, in file order) for ``posttrain rm --heads
  helpfulness,presentation``; one record per vote whose every completion got a score on a common
  aspect (only the aspects rated for all completions are kept; other votes are left out).

Only the latest version of a revised vote is exported (``revisions`` says how many earlier versions
the database keeps). Gold (screening) items are left out unless ``include_gold``;
``min_gold_agreement`` drops every vote of annotators whose gold agreement is below it (annotators
with no gold answers are kept).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from posttrain.annotate import quality
from posttrain.annotate.db import Account, Task, Vote, VoteRevision
from posttrain.annotate.tasks import loads_stored
from posttrain.data.io import dumps_line

MODES = ("all", "majority", "scored")
# Confidence of an A / B vote -> probability that the chosen response is preferred. The scale's
# words ("slightly better", "better", "much better") are read as 60 %, 75 % and 90 %; a choice is
# never exported as certain, since the annotator could have been wrong.
CONFIDENCE_P = {1: 0.6, 2: 0.75, 3: 0.9}


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
    """Records from all stored votes in a stable order (task, then vote): preference records, or
    scored records for ``mode="scored"``."""
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
    revisions = dict(
        db.execute(select(VoteRevision.vote_id, func.count()).group_by(VoteRevision.vote_id)).all()
    )
    if mode == "all":
        return [record for row in rows for record in _all_records(*row, revisions)]
    if mode == "scored":
        return [record for row in rows for record in _scored_records(*row, revisions)]
    return _majority_records(rows)


def _about(vote: Vote, task: Task, name: str, revisions: dict[int, int]) -> dict:
    about = {"annotator": name, "task_id": task.ext_id}
    if vote.elapsed_ms is not None:
        about["elapsed_ms"] = vote.elapsed_ms
    if revisions.get(vote.id):
        about["revisions"] = revisions[vote.id]
    return about


def _all_records(vote: Vote, task: Task, name: str, revisions: dict[int, int]) -> list[dict]:
    prompt, completions = loads_stored(task.prompt), loads_stored(task.completions)
    records = []
    for (i, j), relation in quality.pair_relations(vote.ranking).items():
        better, worse = (j, i) if relation == "<" else (i, j)
        record = {"prompt": prompt, "chosen": completions[better], "rejected": completions[worse]}
        if relation == "=":
            record["tie"] = True
        elif vote.kind == "choice" and vote.confidence is not None:
            record["p_chosen"] = CONFIDENCE_P[vote.confidence]
            record["confidence"] = vote.confidence
        record.update(_about(vote, task, name, revisions))
        records.append(record)
    return records


def _scored_records(vote: Vote, task: Task, name: str, revisions: dict[int, int]) -> list[dict]:
    ratings = json.loads(vote.ratings) if vote.ratings else {}
    completions = loads_stored(task.completions)
    letters = [chr(ord("A") + k) for k in range(len(completions))]
    per_completion = [ratings.get(letter, {}) for letter in letters]
    common = set.intersection(*(set(scores) for scores in per_completion))
    if not common:
        return []
    scores = [{aspect: s[aspect] for aspect in sorted(common)} for s in per_completion]
    record = {"prompt": loads_stored(task.prompt), "completions": completions, "scores": scores}
    record.update(_about(vote, task, name, revisions))
    return [record]


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
            p_first = (ahead + ties / 2) / total
            if p_first >= 0.5:
                better, worse, p, wins, losses = i, j, p_first, ahead, behind
            else:
                better, worse, p, wins, losses = j, i, 1 - p_first, behind, ahead
            record = {
                "prompt": prompt,
                "chosen": completions[better],
                "rejected": completions[worse],
            }
            if p == 0.5:
                record["tie"] = True
            record.update(
                {
                    "p_chosen": p,
                    "annotator": "majority",
                    "annotators": names,
                    "task_id": task.ext_id,
                    "votes": total,
                    "vote_counts": {"chosen": wins, "rejected": losses, "tie": ties},
                }
            )
            records.append(record)
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
