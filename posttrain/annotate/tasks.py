"""Reading a tasks file: JSONL lines with ``prompt`` and ``completions`` (2..26), as ``posttrain sample``
writes them, optionally with ``id`` and ``gold`` (a ranking over the completion letters, e.g.
``"B > A"`` or ``"C > A = B"``; gold items are mixed into every annotator's queue for screening).

Tasks are checked with the trainers' own rules (``posttrain.data.formats``), so everything loaded
exports as preference records that ``rm`` / ``dpo`` accept. Every problem is reported as
``TaskFileError("FILE:LINE: what is wrong")``.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

from posttrain.data.formats import parse_example
from posttrain.data.io import Record, find_lone_surrogate, iter_jsonl
from posttrain.data.pairs import parse_ranking
from posttrain.errors import UserError

MAX_COMPLETIONS = 26  # display letters A..Z


class TaskFileError(ValueError):
    """A tasks file cannot be read; the message is ``FILE:LINE: what is wrong``."""


@dataclass(frozen=True)
class TaskSpec:
    ext_id: str
    prompt: str | list  # a string or a list of {role, content} messages
    completions: list[str]
    gold: str | None  # canonical ranking over original letters, or None
    source: str  # "FILE:LINE"


def loads_stored(text: str):
    """``json.loads`` of a stored prompt / completions column, with any lone surrogate (in a
    database loaded before the load-time check refused them) replaced by U+FFFD, so that pages and
    exports can still be written as UTF-8."""
    value = json.loads(text)
    return value if find_lone_surrogate(value) is None else _repair(value)


def _repair(value):
    if isinstance(value, str):
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    if isinstance(value, list):
        return [_repair(item) for item in value]
    if isinstance(value, dict):
        return {_repair(key): _repair(item) for key, item in value.items()}
    return value


def letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def normalize_ranking(ranking: str, n: int) -> str:
    """Check that ``ranking`` orders exactly the letters of ``n`` completions; return it spaced
    canonically (``"b>a"`` is rejected, ``"B>A"`` -> ``"B > A"``). Raises ``ValueError``."""
    tiers = parse_ranking(ranking)
    named = sorted(name for tier in tiers for name in tier)
    expected = letters(n)
    if named != expected:
        raise ValueError(
            f"ranking {ranking!r} must name each of {', '.join(expected)} exactly once"
        )
    return " > ".join(" = ".join(tier) for tier in tiers)


def _check_with_trainers_rules(obj: dict, where: str) -> None:
    """Refuse what ``posttrain rm`` / ``dpo`` would refuse once exported: the prompt must pass the
    trainers' prompt rules (roles system / user / assistant, non-empty content) and every
    completion must be a valid preference response (not empty). Uses ``data.formats`` itself."""
    path, _, line = where.rpartition(":")
    at = int(line) if line.isdigit() else line
    prompt, completions = obj["prompt"], obj["completions"]
    try:
        parse_example(
            Record({"prompt": prompt, "completions": completions}, path, at), "completions"
        )
        for i, completion in enumerate(completions):
            pair = {"prompt": prompt, "chosen": completion, "rejected": completions[0]}
            try:
                parse_example(Record(pair, path, at), "preference")
            except UserError as exc:
                name = f'"completions"[{i}] ({letters(i + 1)[-1]})'
                raise UserError(str(exc).replace('"chosen"', name)) from None
    except UserError as exc:
        raise TaskFileError(str(exc)) from None


def _content_id(prompt, completions: list[str]) -> str:
    blob = json.dumps([prompt, completions], sort_keys=True, ensure_ascii=False)
    return "sha1-" + hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def parse_task_line(obj, where: str) -> TaskSpec:
    """One decoded JSON line -> ``TaskSpec``; raises ``TaskFileError`` naming ``where``."""
    if not isinstance(obj, dict):
        raise TaskFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise TaskFileError(f'{where}: "prompt" is missing')
    completions = obj.get("completions")
    if completions is None:
        raise TaskFileError(f'{where}: "completions" is missing')
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise TaskFileError(f'{where}: "completions" must be a list of strings')
    if not 2 <= len(completions) <= MAX_COMPLETIONS:
        raise TaskFileError(
            f'{where}: "completions" must hold 2 to {MAX_COMPLETIONS} strings, got {len(completions)}'
        )
    _check_with_trainers_rules(obj, where)
    gold = obj.get("gold")
    if gold is not None:
        if not isinstance(gold, str):
            raise TaskFileError(f'{where}: "gold" must be a ranking string like "A > B"')
        try:
            gold = normalize_ranking(gold, len(completions))
        except ValueError as exc:
            raise TaskFileError(f'{where}: "gold": {exc}') from None
    ext_id = obj.get("id")
    if ext_id is None:
        ext_id = _content_id(obj["prompt"], completions)
    elif isinstance(ext_id, (str, int)) and not isinstance(ext_id, bool) and str(ext_id).strip():
        ext_id = str(ext_id)
        if len(ext_id) > 200:
            raise TaskFileError(f'{where}: "id" is longer than 200 characters')
    else:
        raise TaskFileError(f'{where}: "id" must be a non-empty string or an integer')
    return TaskSpec(ext_id, obj["prompt"], list(completions), gold, where)


def read_tasks(path: str | Path) -> list[TaskSpec]:
    """All tasks of a JSONL file (blank lines ignored). Raises ``TaskFileError`` on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    specs: list[TaskSpec] = []
    seen: dict[str, int] = {}
    try:
        for number, obj in iter_jsonl(path):  # "\n" ends a line; UTF-8, JSON, no lone surrogate
            spec = parse_task_line(obj, f"{path}:{number}")
            if spec.ext_id in seen:
                raise TaskFileError(
                    f"{path}:{number}: task id {spec.ext_id!r} already used on line "
                    f"{seen[spec.ext_id]}"
                )
            seen[spec.ext_id] = number
            specs.append(spec)
    except UserError as exc:
        raise TaskFileError(str(exc)) from None
    if not specs:
        raise TaskFileError(f"{path}:1: the file holds no tasks")
    return specs
