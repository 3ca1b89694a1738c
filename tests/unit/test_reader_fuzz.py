"""Fuzzing the readers (issue 22, item 9): a seeded generator breaks valid records of every data
kind, and annotation tasks, in many ways (keys dropped, values of the wrong type, odd numbers,
empty or odd text, nesting, bytes that are not UTF-8 or not JSON, lone surrogates). The readers
must either accept the file or raise their one-line error naming ``FILE:LINE`` — never another
exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

import pytest

from posttrain.annotate.tasks import TaskFileError, read_tasks
from posttrain.data.formats import load_examples, select_pairs, to_preference_pairs
from posttrain.errors import UserError

SEED = 22
CASES_PER_KIND = 150

MESSAGES = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
VALID = {
    "sft": [
        {"prompt": "What is 2 + 2?", "completion": " 4."},
        {"messages": MESSAGES},
    ],
    "preference": [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "margin": 1.5},
        {"prompt": [MESSAGES[0]], "chosen": [MESSAGES[1]], "rejected": "x", "p_chosen": 0.8},
        {"prompt": "Vote.", "chosen": "a", "rejected": "b", "chosen_votes": 3, "rejected_votes": 1},
    ],
    "ranked": [
        {"prompt": "Rank.", "completions": ["a", "b", "c"], "ranking": "C > A = B"},
        {"prompt": "Wins.", "completions": ["a", "b"], "wins": [[0, 3], [1, 0]]},
    ],
    "scored": [
        {"prompt": "Score.", "completions": ["a", "b"], "scores": [{"help": 4}, {"help": 2}]},
    ],
    "unpaired": [{"prompt": "Q?", "completion": "A.", "label": True}],
    "prompt": [{"prompt": "Tell me a story."}, {"prompt": [MESSAGES[0]]}],
    "completions": [{"prompt": "Q?", "completions": ["a", "b"]}],
}
TASKS = [
    {"id": "t1", "prompt": "Q?", "completions": ["a", "b"]},
    {"prompt": [MESSAGES[0]], "completions": ["x", "y", "z"], "gold": "B > A = C"},
]

WEIRD_VALUES = [
    None, True, False, 0, -1, 1e308, -1e308, 2**70, 0.5, float("nan"), float("inf"), "", " ",
    "\n", "\u2028", "\x00", "A", "Z > A", "A > A", "A >", "a > b", ">", "\ud83d", [], {}, [[]],
    [None], [1, 2], ["", ""], [{}], [{"role": "tool", "content": "x"}],
    [{"role": "user", "content": 5}], [{"role": "user"}], {"role": "user", "content": "x"},
    {"help": "4"}, [{"help": float("nan")}], [[1]], [[0, -1], [1, 0]], [[0, 1, 2]], "\u202e\u200b",
    "x" * 5000, [["a"]], {"a": {"b": {"c": []}}},
]  # fmt: skip

BROKEN_LINES = [
    b"{", b"}", b"[", b"null", b"1", b'"text"', b"[1, 2]", b'{"prompt": }', b'{"prompt": "a",}',
    b'{"prompt": "caf\xe9"}', b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"prompt": "\\ud83d"}',
    b'{"prompt": "\\udc00x"}', b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e99999}',
    b"[" * 3000 + b"]" * 3000, b'{"a": ' + b"9" * 5000 + b"}", b"\x00", b'{"prompt": "a"} x',
    b'{"prompt": "a", "prompt": 1}', b"\x80\x81",
]  # fmt: skip


def _weird(rng: random.Random):
    return copy.deepcopy(rng.choice(WEIRD_VALUES))  # a copy: later mutations must not alias it


def _mutate(record: dict, rng: random.Random) -> dict:
    """One or more random changes to a copy of ``record``."""
    record = json.loads(json.dumps(record))
    for _ in range(rng.randint(1, 3)):
        keys = list(record)
        choice = rng.random()
        if choice < 0.25 and keys:
            record.pop(rng.choice(keys))
        elif choice < 0.7 and keys:
            record[rng.choice(keys)] = _weird(rng)
        elif choice < 0.85:
            name = rng.choice(["prompt", "chosen", "completions", "label", "id", "gold", "wins"])
            record[name] = _weird(rng)
        else:  # reach into a nested list or message
            for key in keys:
                value = record[key]
                if isinstance(value, list) and value:
                    index = rng.randrange(len(value))
                    if isinstance(value[index], dict) and value[index] and rng.random() < 0.5:
                        inner = rng.choice(list(value[index]))
                        value[index][inner] = _weird(rng)
                    else:
                        value[index] = _weird(rng)
                    break
    return record


def _line(record: dict) -> bytes:
    # allow_nan: NaN / Infinity as Python's json writes them (a reader must refuse them cleanly)
    text = json.dumps(record, ensure_ascii=rng_ascii(record))
    return text.encode("utf-8", "surrogatepass")


def rng_ascii(record: dict) -> bool:
    return len(json.dumps(record)) % 2 == 0  # half the lines raw UTF-8, half \u-escaped


def _write(path: Path, good: list[dict], bad_line: bytes, rng: random.Random) -> int:
    """A file of valid lines with ``bad_line`` at a random place; returns its 1-based number."""
    lines = [_line(r) for r in good]
    at = rng.randint(0, len(lines))
    lines.insert(at, bad_line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return at + 1


def _check_error(message: str, path: Path) -> None:
    assert len(message.splitlines()) == 1, message
    assert re.match(rf"{re.escape(str(path))}:\d+: ", message), message


def _load_like_a_recipe(path: Path, kind: str) -> None:
    examples = load_examples(str(path), [kind])
    if kind in ("preference", "ranked", "scored"):
        pairs = to_preference_pairs(examples, {"help": 1.0})
        select_pairs(pairs, ties="soft", what="train data")


@pytest.mark.parametrize("kind", sorted(VALID))
def test_broken_records_of_every_kind_are_data_or_a_file_line_error(tmp_path, kind):
    rng = random.Random(f"{SEED}:{kind}")
    accepted = refused = 0
    for case in range(CASES_PER_KIND):
        path = tmp_path / f"{kind}-{case}.jsonl"
        good = [rng.choice(VALID[kind]) for _ in range(rng.randint(1, 4))]
        if case % 5 == 4:
            bad = rng.choice(BROKEN_LINES)
        else:
            bad = _line(_mutate(rng.choice(VALID[kind]), rng))
        _write(path, good, bad, rng)
        try:
            _load_like_a_recipe(path, kind)
            accepted += 1
        except UserError as exc:
            refused += 1
            message = str(exc)
            if "no pairs left" in message or "no records" in message:
                assert message.startswith(str(path)), message  # about the whole file
            else:
                _check_error(message, path)
    print(f"{kind}: {accepted} broken files still valid data, {refused} refused with FILE:LINE")
    assert refused > CASES_PER_KIND // 2  # the generator does break things


def test_broken_tasks_are_tasks_or_a_file_line_error(tmp_path):
    rng = random.Random(f"{SEED}:tasks")
    accepted = refused = 0
    for case in range(3 * CASES_PER_KIND):
        path = tmp_path / f"tasks-{case}.jsonl"
        good = [dict(rng.choice(TASKS), id=f"g{k}") for k in range(rng.randint(1, 3))]
        if case % 5 == 4:
            bad = rng.choice(BROKEN_LINES)
        else:
            bad = _line(_mutate(rng.choice(TASKS), rng))
        _write(path, good, bad, rng)
        try:
            specs = read_tasks(path)
        except TaskFileError as exc:
            refused += 1
            _check_error(str(exc), path)
            continue
        accepted += 1
        for spec in specs:  # what the app stores and exports must be writable as UTF-8
            json.dumps([spec.prompt, spec.completions], ensure_ascii=False).encode("utf-8")
    print(f"tasks: {accepted} broken files still valid, {refused} refused with FILE:LINE")
    assert refused > CASES_PER_KIND


def test_the_cli_prints_one_error_line_for_a_broken_file(tmp_path, capsys):
    """Through ``posttrain annotate load`` and ``posttrain sft``: exit 2, one line, no traceback."""
    from posttrain.annotate.cli import main as annotate_main
    from posttrain.cli import main

    rng = random.Random(SEED)
    for bad in (b'{"prompt": "\\ud83d", "completions": ["a", "b"]}', b"\xff", b"[" * 3000):
        tasks = tmp_path / "tasks.jsonl"
        _write(tasks, TASKS[:1], bad, rng)
        assert annotate_main(["load", "--db", str(tmp_path / "v.db"), "--tasks", str(tasks)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tasks}:") and len(err.splitlines()) == 1, err
        train = tmp_path / "train.jsonl"
        _write(train, VALID["sft"], bad, rng)
        code = main(["sft", "--model", "tiny-llama", "--train_data", str(train),
                     "--output_dir", str(tmp_path / "out"), "--progress", "false"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and f"error: {train}:" in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()
