"""``posttrain annotate ...`` in-process: the whole flow from a tasks file to preference JSONL, and
one-line ``error: FILE:LINE: ...`` messages with exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest

from posttrain.annotate.cli import main
from posttrain.annotate.db import make_engine, session
from posttrain.annotate.service import next_assignment, record_vote, task_view

from .conftest import TASKS, write_tasks


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_flow_from_tasks_to_preference_file(tmp_path, capsys):
    db = str(tmp_path / "votes.db")  # a plain path means SQLite
    tasks = write_tasks(tmp_path / "tasks.jsonl", TASKS)
    code, out, _ = _run(capsys, "load", "--db", db, "--tasks", str(tasks))
    assert code == 0 and "loaded 4 new tasks" in out
    code, out, _ = _run(capsys, "load", "--db", db, "--tasks", str(tasks))  # again: nothing new
    assert code == 0 and "loaded 0 new tasks (4 already present)" in out
    code, out, _ = _run(capsys, "create-admin", "--db", db)
    assert code == 0 and out.startswith("admin pt_")
    code, out, _ = _run(capsys, "add-annotator", "--db", db, "alice", "bob")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["alice", "bob"]
    code, out, _ = _run(capsys, "assign", "--db", db, "--overlap", "2")
    assert code == 0 and "made 8 new assignments" in out

    engine = make_engine(db)
    with session(engine) as s:
        from sqlalchemy import select

        from posttrain.annotate.db import Account

        for account in s.scalars(select(Account).where(Account.role == "annotator")):
            for n in range(4):
                assignment = next_assignment(s, account)
                view = task_view(s, account, assignment.id)
                ranking = " > ".join(r["letter"] for r in view["responses"])
                record_vote(
                    s,
                    account,
                    assignment.id,
                    {"vote_key": f"{account.name}-{n}-key", "ranking": ranking},
                )
    engine.dispose()

    out_file = tmp_path / "out" / "prefs.jsonl"
    code, out, _ = _run(capsys, "export", "--db", db, "--output", str(out_file))
    assert code == 0 and "wrote" in out
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert records and all(
        isinstance(r["chosen"], str)
        and isinstance(r["rejected"], str)
        and r["chosen"] != r["rejected"]
        for r in records
    )
    assert {"prompt", "chosen", "rejected", "annotator", "task_id"} <= set(records[0])
    code, _, _ = _run(capsys, "export", "--db", db, "--output", str(out_file), "--mode", "majority")
    assert code == 0
    code, out, _ = _run(capsys, "stats", "--db", db)
    stats = json.loads(out)
    assert code == 0 and stats["votes"] == 8 and stats["agreement"]["items"] > 0

    # the exported file is readable by the shared data reader (what rm / dpo use)
    from posttrain.data.io import read_records

    assert len(read_records(out_file)) == len([line for line in out_file.read_text().splitlines()])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '{"prompt": "p", "completions": ["only one"]}\n',
            ':1: "completions" must hold 2 to 26 strings, got 1',
        ),
        ('{"prompt": "p", "completions": ["a", "b"]}\n{"prompt": \n', ":2: not valid JSON"),
        ('{"prompt": "p", "completions": ["a", "b"], "gold": "A > Q"}\n', ':1: "gold": '),
    ],
)
@pytest.mark.parametrize("command", ["load", "serve"])
def test_bad_tasks_file_is_one_error_line_and_exit_2(tmp_path, capsys, content, expected, command):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(content)
    code, out, err = _run(capsys, command, "--db", str(tmp_path / "v.db"), "--tasks", str(tasks))
    assert code == 2 and out == ""
    assert err.startswith(f"error: {tasks}{expected}")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "v.db").exists()  # nothing touched


def test_other_bad_input_is_one_error_line(tmp_path, capsys):
    db = str(tmp_path / "v.db")
    cases = [
        (
            ["load", "--db", db, "--tasks", str(tmp_path / "missing.jsonl")],
            "missing.jsonl: no such file",
        ),
        (["export", "--db", db, "--output", "x.jsonl", "--mode", "best"], "invalid choice"),
        (["assign", "--db", db], "no annotators"),
        (["add-annotator", "--db", db, "bad name!"], "must be 1-64 characters"),
        (["reset-token", "--db", db, "nobody"], "no account named 'nobody'"),
        (["serve", "--db", db, "--port", "x"], "invalid int value"),
        (["serve", "--db", db, "--guidelines", "nope.md"], "nope.md: no such file"),
        (["frobnicate"], "invalid choice"),
        (["stats", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"], "cannot open database"),
    ]
    for argv, expected in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2, argv
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, (
            argv,
            err,
        )
    code, _, err = _run(capsys, "add-annotator", "--db", db, "alice")
    code, _, err = _run(capsys, "add-annotator", "--db", db, "alice")
    assert code == 2 and err == "error: account 'alice' already exists\n"


def test_reset_token_replaces_the_old_token(tmp_path, capsys):
    from posttrain.annotate.auth import account_for_token

    db = str(tmp_path / "v.db")
    _, out, _ = _run(capsys, "add-annotator", "--db", db, "alice")
    old = out.split()[1]
    _, out, _ = _run(capsys, "reset-token", "--db", db, "alice")
    new = out.split()[1]
    engine = make_engine(db)
    with session(engine) as s:
        assert account_for_token(s, old) is None
        assert account_for_token(s, new).name == "alice"
    engine.dispose()


def test_serve_on_a_taken_port_is_one_error_line(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = _run(capsys, "serve", "--db", str(tmp_path / "v.db"), "--port", str(port))
    assert (
        code == 2 and err == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_assign_says_when_it_added_only_gold_tasks(tmp_path, capsys):
    db = str(tmp_path / "votes.db")
    tasks = write_tasks(tmp_path / "tasks.jsonl", TASKS)
    assert _run(capsys, "load", "--db", db, "--tasks", str(tasks))[0] == 0
    assert _run(capsys, "add-annotator", "--db", db, "alice", "bob")[0] == 0
    code, out, _ = _run(capsys, "assign", "--db", db, "--overlap", "1")
    assert code == 0 and "regular)" in out and "only gold" not in out
    assert _run(capsys, "add-annotator", "--db", db, "carol")[0] == 0
    code, out, _ = _run(capsys, "assign", "--db", db, "--overlap", "1")  # carol: the gold item
    assert code == 0 and "made 1 new assignments (1 gold, 0 regular)" in out
    assert "note: only gold tasks were added" in out
