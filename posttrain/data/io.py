"""Reading records from JSONL, Parquet and `datasets` directories, each with its location.

Every record keeps where it came from (``file:line`` for JSONL, ``file:row`` for Parquet and
`datasets`), so that validation errors point at the exact line: ``error: train.jsonl:17: ...``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import UserError


@dataclass(frozen=True)
class Record:
    data: dict[str, Any]
    path: str
    line: int  # 1-based line (JSONL) or row (Parquet, datasets)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_records(path: str | os.PathLike) -> list[Record]:
    """All records of a data file or directory; raises UserError on anything unreadable or empty."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if p.is_dir() and _parquet_shards(p):
        records = [r for shard in _parquet_shards(p) for r in _read_parquet(shard)]
    elif p.is_dir():
        records = _read_datasets_dir(p)
    elif p.suffix == ".parquet":
        records = _read_parquet(p)
    else:
        records = _read_jsonl(p)
    if not records:
        raise UserError(f"{p}: no records (the file is empty)")
    return records


def find_lone_surrogate(value: Any) -> str | None:
    """The first lone UTF-16 surrogate (e.g. from a JSON escape ``\\ud83d`` without its pair) in
    the strings of ``value``, as ``"\\ud83d"``, or None. Such a string cannot be written as UTF-8,
    so it would break every later step (tokenizers, the annotation app, exports)."""
    stack = [value]
    while stack:  # iterative: the JSON may be nested as deep as the decoder allows
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"\\u{ord(item[exc.start]):04x}"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def iter_jsonl(p: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded JSON value)`` for each non-blank line of a JSONL file.

    Lines end at ``"\\n"`` only (an optional ``"\\r"`` before it is JSON whitespace): U+2028,
    U+2029 and U+0085, which ``str.splitlines`` would split on, are ordinary characters inside a
    JSON string. Raises ``UserError("FILE:LINE: ...")`` for a line that is not UTF-8, not JSON, or
    holds a lone surrogate."""
    with open(p, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"{p}:{number}: not UTF-8 text (byte {exc.start + 1} of the line: {exc.reason})"
                ) from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{p}:{number}: not valid JSON ({exc.msg})") from None
            except ValueError as exc:  # e.g. an integer of more than 4300 digits
                raise UserError(f"{p}:{number}: not valid JSON ({exc})") from None
            except RecursionError:
                raise UserError(f"{p}:{number}: JSON nested too deeply") from None
            surrogate = find_lone_surrogate(data)
            if surrogate:
                raise UserError(
                    f"{p}:{number}: a lone surrogate {surrogate} is not valid Unicode text "
                    "(a \\ud800-\\udfff escape must come in a high-low pair)"
                )
            yield number, data


def _read_jsonl(p: Path) -> list[Record]:
    records = []
    for number, data in iter_jsonl(p):
        if not isinstance(data, dict):
            raise UserError(f"{p}:{number}: expected a JSON object, got {type(data).__name__}")
        records.append(Record(data, str(p), number))
    return records


def _read_parquet(p: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a broken file
        raise UserError(f"{p}: cannot read Parquet ({exc})") from None
    return [Record(row, str(p), i) for i, row in enumerate(rows, start=1)]


def _parquet_shards(p: Path) -> list[Path]:
    """The Parquet shards of a directory as the hub lays them out (``data/train-00000-of-00002
    .parquet`` ..., or ``*.parquet`` at the top), in order; only the train split when the names
    say which split they hold. Empty for a ``datasets.save_to_disk`` directory."""
    if any((p / name).exists() for name in ("state.json", "dataset_dict.json")):
        return []
    shards = sorted(p.rglob("*.parquet"))
    train = [s for s in shards if s.name.startswith("train") or s.parent.name == "train"]
    return train or shards


def _read_datasets_dir(p: Path) -> list[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise UserError(f"{p}: not a `datasets` directory ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserError(f"{p}: a DatasetDict needs a 'train' split (has {', '.join(ds)})")
        ds = ds["train"]
    return [Record(dict(row), str(p), i) for i, row in enumerate(ds, start=1)]


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSONL atomically: readers never see a half-written file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(dumps_line(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Characters that some line readers (Python's str.splitlines, JavaScript before ES2019) treat as
# line ends; escaped in our output so that every reader sees one record per line.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}


def dumps_line(row: Any) -> str:
    """One JSONL line (without its newline): UTF-8 text, with U+2028, U+2029 and U+0085 escaped."""
    text = json.dumps(row, ensure_ascii=False)
    for char, escape in _LINE_BREAKS.items():
        text = text.replace(char, escape)
    return text
