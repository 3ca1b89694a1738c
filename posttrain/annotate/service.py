"""What the annotation app does, as plain functions over a SQLAlchemy session: load tasks, assign
them, hand an annotator their next task (shuffled per annotator), record a vote (one transaction,
idempotent by ``vote_key``), skip, progress and the admin dashboard.

Letters: completions are stored in file order and named A, B, C, ... ("original letters"). Each
assignment records ``order``, the original index shown in each display slot, so display letter
``A`` means completion ``order[0]``. Votes arrive in display letters and are stored in original
letters (``ranking``) next to what the annotator saw (``shown_ranking``).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from posttrain.annotate import markdown, quality
from posttrain.annotate.db import (
    ROLE_ANNOTATOR,
    STATUS_DONE,
    STATUS_PENDING,
    STATUS_SKIPPED,
    Account,
    Assignment,
    GuidelinesRead,
    Task,
    Vote,
    VoteRevision,
)
from posttrain.annotate.tasks import (
    TaskFileError,
    TaskSpec,
    letters,
    loads_stored,
    normalize_ranking,
)
from posttrain.data.pairs import letter_index, parse_ranking

# Likert aspects an annotator may rate per response, with the top of each scale (1 = worst):
# helpfulness from "not at all helpful" (1) to "extremely helpful" (5); presentation poor (1),
# adequate (2), excellent (3).
ASPECTS = {"helpfulness": 5, "presentation": 3}
# Confidence of an A / B choice: 1 = slightly better, 2 = better, 3 = much better.
MAX_CONFIDENCE = 3
_VOTE_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}")  # used with fullmatch: "$" would allow a final "\n"
_MAX_ID = 2**31 - 1  # ids are 32-bit INTEGER columns on PostgreSQL


class NotFound(LookupError):
    """No such object for this account (also used for other annotators' tasks: we do not say
    whether an id exists)."""


class Conflict(ValueError):
    """The request clashes with what is stored (an answered task, a reused vote key)."""


class Invalid(ValueError):
    """A malformed vote."""


# ---------------------------------------------------------------------------------------------
# tasks and assignments


def load_tasks(db: Session, specs: list[TaskSpec]) -> tuple[int, int]:
    """Insert new tasks; a task whose id is already stored must be identical. -> (added, present)."""
    existing = {task.ext_id: task for task in db.scalars(select(Task))}
    added = present = 0
    for spec in specs:
        prompt, completions = json.dumps(spec.prompt), json.dumps(spec.completions)
        old = existing.get(spec.ext_id)
        if old is not None:
            if (old.prompt, old.completions, old.gold) != (prompt, completions, spec.gold):
                raise TaskFileError(
                    f"{spec.source}: task id {spec.ext_id!r} is already in the database "
                    f"with different content (loaded from {old.source})"
                )
            present += 1
            continue
        db.add(
            Task(
                ext_id=spec.ext_id,
                prompt=prompt,
                completions=completions,
                gold=spec.gold,
                source=spec.source,
            )
        )
        added += 1
    db.flush()
    return added, present


def annotators(db: Session, names: list[str] | None = None) -> list[Account]:
    """Active annotator accounts, all or the named ones (``NotFound`` for an unknown name)."""
    query = select(Account).where(Account.role == ROLE_ANNOTATOR, Account.active.is_(True))
    found = list(db.scalars(query.order_by(Account.id)))
    if names is None:
        return found
    by_name = {account.name: account for account in found}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise NotFound(f"no annotator named {missing[0]!r}")
    return [by_name[name] for name in names]


def assign(db: Session, names: list[str] | None = None, *, overlap: int = 1, seed: int = 0) -> int:
    """Assign tasks to annotators; returns the number of new assignments.

    Every gold task goes to every annotator (for screening); every other task gets ``overlap``
    distinct annotators in total (fewer if there are fewer annotators), least-loaded first, so
    overlapping items exist for inter-annotator agreement. Safe to run again: existing assignments
    stay, new tasks and new annotators are filled in. Each annotator's new items are shuffled into
    the end of their queue, and each assignment draws its own display order of the completions.
    """
    if overlap < 1:
        raise Invalid("overlap must be at least 1")
    people = annotators(db, names)
    if not people:
        raise NotFound("there are no annotators; add one first")
    rng = random.Random(seed)
    taken: dict[int, set[int]] = {}
    load = Counter()
    for task_id, account_id in db.execute(select(Assignment.task_id, Assignment.account_id)):
        taken.setdefault(task_id, set()).add(account_id)
        load[account_id] += 1
    new: dict[int, list[Task]] = {account.id: [] for account in people}
    for task in db.scalars(select(Task).order_by(Task.id)):
        have = taken.get(task.id, set())
        free = [account for account in people if account.id not in have]
        if task.gold is not None:
            chosen = free
        else:
            want = max(0, min(overlap, len(people)) - len(have))
            rng.shuffle(free)
            chosen = sorted(free, key=lambda account: load[account.id])[:want]
        for account in chosen:
            new[account.id].append(task)
            load[account.id] += 1
    count = 0
    for account in people:
        batch = new[account.id]
        rng.shuffle(batch)
        start = db.scalar(
            select(func.coalesce(func.max(Assignment.position), -1)).where(
                Assignment.account_id == account.id
            )
        )
        for offset, task in enumerate(batch, start=start + 1):
            n = len(json.loads(task.completions))
            order = list(range(n))
            random.Random(f"{seed}:{account.id}:{task.id}").shuffle(order)
            db.add(
                Assignment(
                    task_id=task.id,
                    account_id=account.id,
                    position=offset,
                    order=json.dumps(order),
                    status=STATUS_PENDING,
                )
            )
            count += 1
    db.flush()
    return count


def _owned(db: Session, account: Account, assignment_id: int) -> Assignment:
    if not isinstance(assignment_id, int) or not 1 <= assignment_id <= _MAX_ID:
        raise NotFound(f"no task {assignment_id} for you")  # the database cannot hold such an id
    assignment = db.get(Assignment, assignment_id)
    if assignment is None or assignment.account_id != account.id:
        raise NotFound(f"no task {assignment_id} for you")
    return assignment


def progress(db: Session, account: Account) -> dict:
    rows = db.execute(
        select(Assignment.status, func.count())
        .where(Assignment.account_id == account.id)
        .group_by(Assignment.status)
    )
    counts = {STATUS_PENDING: 0, STATUS_DONE: 0, STATUS_SKIPPED: 0}
    counts.update(dict(rows.all()))
    counts["total"] = sum(counts.values())
    return counts


def next_assignment(db: Session, account: Account) -> Assignment | None:
    """The first pending task in the queue; once none is left, the first skipped one."""
    for status in (STATUS_PENDING, STATUS_SKIPPED):
        found = db.scalar(
            select(Assignment)
            .where(Assignment.account_id == account.id, Assignment.status == status)
            .order_by(Assignment.position)
            .limit(1)
        )
        if found is not None:
            return found
    return None


def task_view(db: Session, account: Account, assignment_id: int) -> dict:
    """What the annotator sees: the prompt and the responses in this assignment's display order.
    Never includes the gold answer or the original order."""
    assignment = _owned(db, account, assignment_id)
    task = db.get(Task, assignment.task_id)
    completions = loads_stored(task.completions)
    order = json.loads(assignment.order)
    shown = letters(len(order))
    vote = db.scalar(select(Vote).where(Vote.assignment_id == assignment.id))
    return {
        "assignment_id": assignment.id,
        "position": assignment.position,
        "status": assignment.status,
        "prompt": loads_stored(task.prompt),
        "responses": [
            # html: the same renderer as the guidelines (raw HTML is not passed through)
            {
                "letter": letter,
                "text": completions[index],
                "html": markdown.render(completions[index]),
            }
            for letter, index in zip(shown, order)
        ],
        "vote": None if vote is None else _shown_vote(vote, order),
    }


def _shown_vote(vote: Vote, order: list[int]) -> dict:
    """A stored vote as its annotator saw it (display letters), to show it again for revising."""
    shown = letters(len(order))
    display_of = {letters(len(order))[index]: shown[slot] for slot, index in enumerate(order)}
    ratings = json.loads(vote.ratings) if vote.ratings else {}
    return {
        "kind": vote.kind,
        "ranking": vote.shown_ranking,
        "confidence": vote.confidence,
        "ratings": {display_of[letter]: scores for letter, scores in ratings.items()},
        "elapsed_ms": vote.elapsed_ms,
    }


def recent_answers(db: Session, account: Account, limit: int = 200) -> list[dict]:
    """The annotator's answered tasks, most recently first answered first (for "previous")."""
    rows = db.execute(
        select(Vote.assignment_id, Vote.shown_ranking)
        .where(Vote.account_id == account.id)
        .order_by(Vote.id.desc())
        .limit(limit)
    )
    return [{"assignment_id": a, "ranking": r} for a, r in rows]


def vote_history(db: Session, assignment_id: int) -> list[dict]:
    """Superseded versions of the vote on an assignment, oldest first."""
    rows = db.scalars(
        select(VoteRevision)
        .where(VoteRevision.assignment_id == assignment_id)
        .order_by(VoteRevision.id)
    )
    return [
        {
            "vote_key": r.vote_key,
            "kind": r.kind,
            "ranking": r.ranking,
            "shown_ranking": r.shown_ranking,
            "confidence": r.confidence,
            "ratings": r.ratings,
            "elapsed_ms": r.elapsed_ms,
            "created_at": r.created_at,
            "superseded_at": r.superseded_at,
        }
        for r in rows
    ]


# ---------------------------------------------------------------------------------------------
# votes


def spell_ranking(text: str) -> str:
    """Compact rankings in full: ``"cadb"`` and ``"C A D B"`` -> ``"C > A > D > B"``; two letters
    with no ``>`` or ``=`` between them are in that order. ``"C > A = D"`` stays as it is; commas
    count as spaces. Raises ``ValueError`` on any other character."""
    spelled: list[str] = []
    for token in re.findall(r"\S", text.upper().replace(",", " ")):
        if token not in ">=":
            if not "A" <= token <= "Z":
                raise ValueError(f"ranking {text!r}: {token!r} is not a letter, '>' or '='")
            if spelled and spelled[-1] not in ">=":
                spelled.append(">")
        spelled.append(token)
    return " ".join(spelled)


def _to_original(shown_ranking: str, order: list[int]) -> str:
    original = letters(len(order))
    tiers = parse_ranking(shown_ranking)
    return " > ".join(
        " = ".join(sorted(original[order[letter_index(name)]] for name in tier)) for tier in tiers
    )


def _check_vote(payload: dict, order: list[int]) -> dict:
    """Validate a vote in display letters; return the columns to store (original letters)."""
    n = len(order)
    choice, ranking = payload.get("choice"), payload.get("ranking")
    if (choice is None) == (ranking is None):
        raise Invalid('give exactly one of "choice" (A, B or tie) and "ranking"')
    if choice is not None:
        if n != 2:
            raise Invalid(f'"choice" is for two responses; this task has {n}, send a "ranking"')
        shown = (
            {"A": "A > B", "B": "B > A", "tie": "A = B"}.get(choice)
            if isinstance(choice, str)
            else None
        )
        if shown is None:
            raise Invalid('"choice" must be "A", "B" or "tie"')
        kind = "choice"
    else:
        if not isinstance(ranking, str):
            raise Invalid('"ranking" must be a string like "B > A = C"')
        try:
            shown = normalize_ranking(spell_ranking(ranking), n)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        kind = "rank"
    confidence = payload.get("confidence")
    if confidence is not None and (
        not isinstance(confidence, int)
        or isinstance(confidence, bool)
        or not 1 <= confidence <= MAX_CONFIDENCE
    ):
        raise Invalid(f'"confidence" must be an integer from 1 to {MAX_CONFIDENCE}')
    ratings = payload.get("ratings") or {}
    if not isinstance(ratings, dict):
        raise Invalid('"ratings" must map a response letter to {aspect: score}')
    stored_ratings = {}
    original = letters(n)
    for letter, scores in ratings.items():
        if letter not in original:
            raise Invalid(f'"ratings": no response {letter!r}')
        if not isinstance(scores, dict):
            raise Invalid(f'"ratings"[{letter!r}] must map an aspect to a score')
        checked = {}
        for aspect, score in scores.items():
            top = ASPECTS.get(aspect)
            if top is None:
                raise Invalid(f'"ratings": unknown aspect {aspect!r} (known: {", ".join(ASPECTS)})')
            if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= top:
                raise Invalid(f'"ratings": {aspect} must be an integer from 1 to {top}')
            checked[aspect] = score
        if checked:
            stored_ratings[original[order[letter_index(letter)]]] = checked
    elapsed = payload.get("elapsed_ms")
    if elapsed is not None and (not isinstance(elapsed, int) or isinstance(elapsed, bool)):
        raise Invalid('"elapsed_ms" must be an integer')
    return {
        "kind": kind,
        "shown_ranking": shown,
        "ranking": _to_original(shown, order),
        "confidence": confidence,
        "ratings": json.dumps(stored_ratings, sort_keys=True) if stored_ratings else None,
        "elapsed_ms": None if elapsed is None else max(0, min(elapsed, 2**31 - 1)),
    }


def _replay(db: Session, account: Account, assignment_id: int, key: str) -> Vote | None:
    """The vote already stored under ``key`` if it is this same submission; ``Conflict`` if the key
    was used for something else. A key of a superseded version (a late retry of a vote that has
    since been revised) returns the current vote: it must not undo the revision."""
    vote = db.scalar(select(Vote).where(Vote.vote_key == key))
    if vote is None:
        old = db.scalar(select(VoteRevision).where(VoteRevision.vote_key == key))
        if old is None:
            return None
        if old.account_id != account.id or old.assignment_id != assignment_id:
            raise Conflict("this vote key was already used for another task")
        return db.get(Vote, old.vote_id)
    if vote.account_id != account.id or vote.assignment_id != assignment_id:
        raise Conflict("this vote key was already used for another task")
    return vote


def _summary(vote: Vote) -> dict:
    return {
        "vote_id": vote.id,
        "kind": vote.kind,
        "ranking": vote.shown_ranking,
        "confidence": vote.confidence,
    }


def record_vote(
    db: Session, account: Account, assignment_id: int, payload: dict
) -> tuple[dict, bool]:
    """Store one vote in one transaction; returns ``(summary, created)``.

    Idempotent: a submit repeated with the same ``vote_key`` (a double click, a retry after a lost
    response or a server restart) returns the stored vote with ``created=False``. A second vote on
    an answered task under a different key is a ``Conflict``. The unique constraints on
    ``vote_key`` and ``assignment_id`` settle races between concurrent identical submits.
    """
    key = payload.get("vote_key")
    if not isinstance(key, str) or not _VOTE_KEY.fullmatch(key):
        raise Invalid('"vote_key" must be 8-64 characters of letters, digits, "-" or "_"')
    try:
        vote = _replay(db, account, assignment_id, key)
        if vote is not None:
            return _summary(vote), False
        assignment = _owned(db, account, assignment_id)
        stored = db.scalar(
            select(Vote).where(Vote.assignment_id == assignment.id).with_for_update()
        )
        if stored is not None:
            # committed by a concurrent identical submit after our key lookup, or a different vote
            if stored.vote_key == key:
                return _summary(stored), False
            if payload.get("revise") is not True:
                raise Conflict("this task is already answered")
            return _revise(db, stored, assignment, key, payload), True
        columns = _check_vote(payload, json.loads(assignment.order))
        vote = Vote(
            vote_key=key,
            assignment_id=assignment.id,
            account_id=account.id,
            task_id=assignment.task_id,
            **columns,
        )
        db.add(vote)
        assignment.status = STATUS_DONE
        db.commit()
        return _summary(vote), True
    except IntegrityError:
        db.rollback()
        vote = _replay(db, account, assignment_id, key)
        if vote is not None:
            return _summary(vote), False
        raise Conflict("this task is already answered") from None
    finally:
        db.rollback()  # ends the transaction (a no-op after commit); loaded values stay readable


def _revise(db: Session, vote: Vote, assignment: Assignment, key: str, payload: dict) -> dict:
    """Replace ``vote`` with a revised answer (new key) and keep the old version in
    ``vote_revisions``. ``elapsed_ms`` adds up: the stored time is the time spent on the task over
    every visit. Commits."""
    columns = _check_vote(payload, json.loads(assignment.order))
    db.add(
        VoteRevision(
            vote_id=vote.id,
            vote_key=vote.vote_key,
            assignment_id=vote.assignment_id,
            account_id=vote.account_id,
            kind=vote.kind,
            ranking=vote.ranking,
            shown_ranking=vote.shown_ranking,
            confidence=vote.confidence,
            ratings=vote.ratings,
            elapsed_ms=vote.elapsed_ms,
            created_at=vote.created_at,
        )
    )
    if columns["elapsed_ms"] is not None and vote.elapsed_ms is not None:
        columns["elapsed_ms"] = min(columns["elapsed_ms"] + vote.elapsed_ms, 2**31 - 1)
    elif columns["elapsed_ms"] is None:
        columns["elapsed_ms"] = vote.elapsed_ms
    for name, value in columns.items():
        setattr(vote, name, value)
    vote.vote_key = key
    vote.created_at = datetime.now(timezone.utc)
    db.commit()
    return _summary(vote)


def skip(db: Session, account: Account, assignment_id: int) -> str:
    """Move a pending task behind the rest of the queue; an answered task stays answered. Skipping
    a task that was skipped before (only skipped ones are left) moves it behind the other skipped
    ones, so that S cycles through them instead of showing the same task again."""
    assignment = _owned(db, account, assignment_id)
    if assignment.status == STATUS_PENDING:
        assignment.status = STATUS_SKIPPED
    elif assignment.status == STATUS_SKIPPED:
        last = db.scalar(
            select(func.max(Assignment.position)).where(Assignment.account_id == account.id)
        )
        if last is not None and assignment.position != last:
            assignment.position = last + 1
    db.commit()
    return assignment.status


# ---------------------------------------------------------------------------------------------
# dashboard


def dashboard(db: Session) -> dict:
    """Progress and agreement for the admin page and ``posttrain annotate stats``."""
    people = list(
        db.scalars(select(Account).where(Account.role == ROLE_ANNOTATOR).order_by(Account.name))
    )
    status_counts = Counter()
    for account_id, status, count in db.execute(
        select(Assignment.account_id, Assignment.status, func.count()).group_by(
            Assignment.account_id, Assignment.status
        )
    ):
        status_counts[(account_id, status)] = count
    rows = db.execute(
        select(Vote.account_id, Vote.task_id, Vote.ranking, Task.gold).join(
            Task, Task.id == Vote.task_id
        )
    ).all()
    name_of = {account.id: account.name for account in people}
    gold_scores: dict[int, list[float]] = {}
    overlap_votes = []
    for account_id, task_id, ranking, gold in rows:
        if gold is not None:
            gold_scores.setdefault(account_id, []).append(quality.gold_agreement(ranking, gold))
        elif account_id in name_of:
            overlap_votes.append((task_id, name_of[account_id], ranking))
    table = []
    for account in people:
        done = status_counts[(account.id, STATUS_DONE)]
        skipped = status_counts[(account.id, STATUS_SKIPPED)]
        pending = status_counts[(account.id, STATUS_PENDING)]
        scores = gold_scores.get(account.id, [])
        agreement = sum(scores) / len(scores) if scores else None
        table.append(
            {
                "name": account.name,
                "active": account.active,
                "assigned": done + skipped + pending,
                "done": done,
                "skipped": skipped,
                "pending": pending,
                "gold_items": len(scores),
                "gold_agreement": agreement,
                "below_threshold": agreement is not None and agreement < quality.GOLD_THRESHOLD,
            }
        )
    total_tasks = db.scalar(select(func.count()).select_from(Task))
    gold_tasks = db.scalar(select(func.count()).select_from(Task).where(Task.gold.is_not(None)))
    return {
        "tasks": total_tasks,
        "gold_tasks": gold_tasks,
        "votes": len(rows),
        "gold_threshold": quality.GOLD_THRESHOLD,
        "annotators": table,
        "agreement": quality.inter_annotator(overlap_votes),
    }


def assignment_counts(db: Session) -> dict[str, int]:
    """Assignments so far on gold (screening) tasks and on the rest."""
    rows = db.execute(
        select(Task.gold.is_not(None), func.count())
        .select_from(Assignment)
        .join(Task, Task.id == Assignment.task_id)
        .group_by(Task.gold.is_not(None))
    )
    counts = {"gold": 0, "regular": 0}
    for is_gold, count in rows:
        counts["gold" if is_gold else "regular"] += count
    return counts


def quality_report(db: Session, *, top: int = 10) -> dict:
    """The admin's quality view: the ``top`` most-disagreed tasks (two or more votes) with each
    annotator's vote, and per annotator the habits of ``quality.annotator_habits`` plus how many
    answers they revised."""
    rows = db.execute(
        select(Vote, Task, Account.name)
        .join(Task, Task.id == Vote.task_id)
        .join(Account, Account.id == Vote.account_id)
        .order_by(Task.id, Account.name)
    ).all()
    revised = Counter(
        dict(
            db.execute(
                select(Account.name, func.count(func.distinct(VoteRevision.vote_id)))
                .join(Account, Account.id == VoteRevision.account_id)
                .group_by(Account.name)
            ).all()
        )
    )
    by_task: dict[int, list] = {}
    by_name: dict[str, list[dict]] = {}
    for vote, task, name in rows:
        by_task.setdefault(task.id, []).append((vote, task, name))
        by_name.setdefault(name, []).append(
            {
                "kind": vote.kind,
                "shown_ranking": vote.shown_ranking,
                "confidence": vote.confidence,
                "elapsed_ms": vote.elapsed_ms,
            }
        )
    contested = []
    for group in by_task.values():
        if len(group) < 2:
            continue
        task = group[0][1]
        prompt = loads_stored(task.prompt)
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        contested.append(
            {
                "task_id": task.ext_id,
                "prompt": text[:200],
                "gold": task.gold,
                "disagreement": quality.disagreement([vote.ranking for vote, _, _ in group]),
                "votes": [
                    {"annotator": name, "ranking": vote.ranking, "confidence": vote.confidence}
                    for vote, _, name in group
                ],
            }
        )
    contested.sort(key=lambda item: (-item["disagreement"], item["task_id"]))
    return {
        "disagreed": [item for item in contested if item["disagreement"] > 0][:top],
        "annotators": [
            {"name": name, **quality.annotator_habits(votes), "revised": revised[name]}
            for name, votes in sorted(by_name.items())
        ],
    }


def guidelines_read(db: Session, account: Account, version: str) -> bool:
    """Whether ``account`` acknowledged this version of the guidelines."""
    found = db.scalar(
        select(GuidelinesRead.id).where(
            GuidelinesRead.account_id == account.id, GuidelinesRead.version == version
        )
    )
    return found is not None


def mark_guidelines_read(db: Session, account: Account, version: str) -> None:
    """Record the acknowledgement (idempotent: a repeat or a concurrent twin is a no-op)."""
    if guidelines_read(db, account, version):
        return
    try:
        db.add(GuidelinesRead(account_id=account.id, version=version))
        db.commit()
    except IntegrityError:
        db.rollback()
