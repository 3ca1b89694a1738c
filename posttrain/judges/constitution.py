"""A constitution: the written principles AI feedback is given under (Bai et al. 2022, CAI).

A constitution file is YAML (``name`` and a list ``principles``) or JSONL (one principle per
line). A principle has

- ``id``: a short name, unique in the file;
- ``choose``: the question a pairwise judge answers ("Which of these assistant responses is less
  harmful? ...") — the [PRINCIPLE] slot of the multiple-choice judge prompt;
- ``critique`` / ``revision`` (needed by ``posttrain cai``): the paired requests of the
  supervised CAI stage;
- ``tags`` (optional): e.g. helpful, honest, harmless, balance.

Every problem is a :class:`~posttrain.errors.UserError` pointing at ``FILE:LINE`` (the line of the
offending principle, or of ``principles:`` when the list is empty). The default constitution ships
in ``posttrain/assets/constitution.yaml``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from posttrain.errors import UserError

FIELDS = ("id", "choose", "critique", "revision", "tags")


def default_constitution_path() -> Path:
    return Path(str(resources.files("posttrain.assets").joinpath("constitution.yaml")))


@dataclass(frozen=True)
class Principle:
    id: str
    choose: str
    critique: str | None = None
    revision: str | None = None
    tags: tuple[str, ...] = ()
    where: str = ""  # FILE:LINE it came from


@dataclass
class Constitution:
    principles: list[Principle]
    name: str = ""
    path: str = ""
    by_id: dict[str, Principle] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {p.id: p for p in self.principles}

    def __len__(self) -> int:
        return len(self.principles)

    def sample(self, rng: random.Random) -> Principle:
        """One principle, uniformly at random (the caller owns and seeds ``rng``)."""
        return self.principles[rng.randrange(len(self.principles))]

    def require(self, keys: Sequence[str], what: str) -> None:
        """Every principle must have ``keys`` (e.g. ``critique``, ``revision`` for cai)."""
        for p in self.principles:
            for key in keys:
                if not getattr(p, key):
                    raise UserError(
                        f'{p.where}: principle {p.id!r} has no "{key}" ({what} needs it)'
                    )


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution (YAML or JSONL); ``None`` loads the shipped default."""
    path = Path(path) if path is not None else default_constitution_path()
    if not path.is_file():
        raise UserError(f"{path}: no such constitution file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if path.suffix == ".jsonl":
        raw, name, empty_line = _read_jsonl(path, text), "", 1
    else:
        raw, name, empty_line = _read_yaml(path, text)
    if not raw:
        raise UserError(f"{path}:{empty_line}: the constitution has no principles")
    principles = [_principle(path, line, i, item) for i, (line, item) in enumerate(raw, start=1)]
    seen: dict[str, str] = {}
    for p in principles:
        if p.id in seen:
            raise UserError(f"{p.where}: principle id {p.id!r} repeats the one at {seen[p.id]}")
        seen[p.id] = p.where
    return Constitution(principles, name=name, path=str(path))


def _read_jsonl(path: Path, text: str) -> list[tuple[int, object]]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return out


def _read_yaml(path: Path, text: str) -> tuple[list[tuple[int, object]], str, int]:
    """(line, principle) pairs, the constitution's name, and the line of ``principles:``."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{path}:{'' if mark is None else mark.line + 1}: not valid YAML") from None
    if data is None:
        return [], "", 1
    if isinstance(data, list):  # a bare list of principles
        lines = [n.start_mark.line + 1 for n in node.value]
        return list(zip(lines, data)), "", 1
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a constitution is a mapping with a list of `principles`")
    key_line, items = 1, []
    for key, value in node.value:
        if key.value == "principles":
            key_line = key.start_mark.line + 1
            items = [n.start_mark.line + 1 for n in value.value] if hasattr(value, "value") else []
    principles = data.get("principles")
    if principles is None:
        principles = []
    if not isinstance(principles, list):
        raise UserError(f"{path}:{key_line}: `principles` must be a list")
    return list(zip(items, principles)), str(data.get("name") or ""), key_line


def _principle(path: Path, line: int, index: int, item: object) -> Principle:
    where = f"{path}:{line}"
    if isinstance(item, str):  # a bare string is a `choose` text
        item = {"choose": item}
    if not isinstance(item, dict):
        raise UserError(f"{where}: a principle must be a mapping with `choose` (got {item!r})")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise UserError(f"{where}: unknown principle field {unknown[0]!r} (fields: {FIELDS})")
    texts = {}
    for key in ("choose", "critique", "revision"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UserError(f'{where}: "{key}" must be non-empty text')
        texts[key] = " ".join(value.split()) if value else None
    if not texts["choose"]:
        raise UserError(f'{where}: principle {index} has no "choose" text')
    tags = item.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise UserError(f'{where}: "tags" must be a list of words')
    return Principle(
        id=str(item.get("id") or f"principle-{index}"),
        tags=tuple(tags),
        where=where,
        **texts,
    )
