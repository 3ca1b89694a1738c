"""The annotation app under hostile input (issue 22): exports that training must accept, lone
surrogates, unhashable or huge values, oversized bodies, sessions that end at logout, and the lesser
findings. Runs on SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from posttrain.annotate import auth, service
from posttrain.annotate.cli import main as annotate_main
from posttrain.annotate.db import Account, Assignment, Task, Vote, session
from posttrain.data.formats import load_examples

from .conftest import write_tasks

HUGE_ID = 99999999999999999999999


def _count(setup, model) -> int:
    with session(setup.engine) as db:
        return db.scalar(select(func.count()).select_from(model))


def _first_task(client, setup, name="alice") -> dict:
    response = client.get("/api/next", headers=setup.headers(name))
    assert response.status_code == 200, response.text
    return response.json()["task"]


def _full_ranking(task: dict) -> str:
    return " > ".join(r["letter"] for r in task["responses"])


def _login(client, token):
    client.get("/login")
    csrf = client.cookies.get("pt_csrf")
    return client.post("/login", data={"token": token, "csrf_token": csrf}, follow_redirects=False)


# ---------------------------------------------------------------------------------------------
# 1, 2: tasks that training would refuse, line separators, lone surrogates


def test_exported_line_separators_survive_the_trainers_reader(tmp_path, capsys):
    db = str(tmp_path / "votes.db")
    odd = ["one\u2028two", "three\u2029four\u0085five"]
    tasks = write_tasks(
        tmp_path / "t.jsonl", [{"id": "u", "prompt": "p\u2028q", "completions": odd}]
    )
    assert annotate_main(["load", "--db", db, "--tasks", str(tasks)]) == 0
    assert annotate_main(["add-annotator", "--db", db, "alice"]) == 0
    assert annotate_main(["assign", "--db", db]) == 0
    from posttrain.annotate.db import make_engine

    engine = make_engine(db)
    with session(engine) as s:
        account = s.scalar(select(Account).where(Account.name == "alice"))
        assignment = service.next_assignment(s, account)
        view = service.task_view(s, account, assignment.id)
        first = next(r["letter"] for r in view["responses"] if r["text"] == odd[0])
        service.record_vote(s, account, assignment.id, {"vote_key": "sep-key-1", "choice": first})
    engine.dispose()
    out = tmp_path / "prefs.jsonl"
    assert annotate_main(["export", "--db", db, "--output", str(out)]) == 0
    capsys.readouterr()
    (example,) = load_examples(str(out), ["preference"])
    assert (example.prompt, example.chosen, example.rejected) == ("p\u2028q", odd[0], odd[1])


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "Hi?", "completions": ["Hello.", ""]}, '"completions"[1]'),
        ({"prompt": "Hi?", "completions": ["Hello.", "   \n"]}, '"completions"[1]'),
        (
            {"prompt": [{"role": "tool", "content": "x"}], "completions": ["a", "b"]},
            "role 'tool'",
        ),
        (
            {"prompt": [{"role": "user", "content": ""}], "completions": ["a", "b"]},
            "content must be a non-empty string",
        ),
    ],
)
def test_load_refuses_tasks_the_trainers_would_refuse(tmp_path, capsys, row, expected):
    good = {"id": "ok", "prompt": "Fine?", "completions": ["yes", "no"]}
    tasks = write_tasks(tmp_path / "t.jsonl", [good, row])
    code = annotate_main(["load", "--db", str(tmp_path / "v.db"), "--tasks", str(tasks)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {tasks}:2: ") and expected in err and len(err.splitlines()) == 1


def test_load_refuses_a_lone_surrogate_with_its_line(tmp_path, capsys):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(
        '{"prompt": "ok", "completions": ["a", "b"]}\n'
        '{"prompt": "bad", "completions": ["a \\ud83d", "b"]}\n',
        encoding="utf-8",
    )
    code = annotate_main(["load", "--db", str(tmp_path / "v.db"), "--tasks", str(tasks)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {tasks}:2: ") and "surrogate" in err, err


def test_a_stored_lone_surrogate_does_not_break_next_or_export(client, setup):
    """A database loaded before the check: /api/next and export answer, never a 500."""
    with session(setup.engine) as db:
        db.execute(update(Task).values(completions=json.dumps(["bad \ud83d", "worse \udfff", "x"])))
        db.commit()
    for name in ("alice", "bob"):
        response = client.get("/api/next", headers=setup.headers(name))
        assert response.status_code == 200, response.text
        task = response.json()["task"]
        if task is None:
            continue
        vote = client.post(
            f"/api/tasks/{task['assignment_id']}/vote",
            headers=setup.headers(name),
            json={"vote_key": f"surrogate-{name}", "ranking": _full_ranking(task)},
        )
        assert vote.status_code == 200, vote.text
    export = client.get("/api/admin/export?mode=all", headers=setup.headers("admin"))
    assert export.status_code == 200
    export.content.decode("utf-8")  # valid UTF-8 throughout


# ---------------------------------------------------------------------------------------------
# 3: values that used to raise inside the server


@pytest.mark.parametrize("choice", [["A"], {"x": 1}, 1, None])
def test_unhashable_or_odd_choice_is_422(client, setup, choice):
    task = _first_task(client, setup)
    body = {"vote_key": "choice-key-1", "choice": choice}
    if choice is None:
        body["ranking"] = ["A"]
    response = client.post(
        f"/api/tasks/{task['assignment_id']}/vote", headers=setup.headers("alice"), json=body
    )
    assert response.status_code == 422, response.text
    assert _count(setup, Vote) == 0


def test_huge_task_ids_are_404(client, setup):
    headers = setup.headers("alice")
    for huge in (HUGE_ID, 2**31, 2**63, -(2**63) - 1, -1, 0):
        assert client.get(f"/api/tasks/{huge}", headers=headers).status_code == 404
        body = {"vote_key": "huge-id-key", "choice": "A"}
        assert client.post(f"/api/tasks/{huge}/vote", headers=headers, json=body).status_code == 404
        assert client.post(f"/api/tasks/{huge}/skip", headers=headers).status_code == 404


# ---------------------------------------------------------------------------------------------
# 4: request size


def test_oversized_bodies_are_refused_before_parsing_or_storing(client, setup):
    from posttrain.annotate.server import MAX_BODY_BYTES

    task = _first_task(client, setup)
    path = f"/api/tasks/{task['assignment_id']}/vote"
    big = {"vote_key": "big-body-key", "ranking": _full_ranking(task), "pad": "x" * MAX_BODY_BYTES}
    response = client.post(path, headers=setup.headers("alice"), json=big)
    assert response.status_code == 413
    # chunked (no Content-Length): still refused
    blob = json.dumps(big).encode()

    def chunks():
        for start in range(0, len(blob), 65536):
            yield blob[start : start + 65536]

    response = client.post(
        path,
        headers={**setup.headers("alice"), "Content-Type": "application/json"},
        content=chunks(),
    )
    assert response.status_code == 413
    assert _count(setup, Vote) == 0
    # without credentials: 401 before the body is read (a malformed body would be 422 if parsed)
    for body in (b"{not json", b"[" * 5000):
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 401
    response = client.post("/api/admin/annotators", content=b"{bad")
    assert response.status_code == 401


# ---------------------------------------------------------------------------------------------
# 5: sessions, expiring tokens, deactivation


def test_the_session_cookie_is_not_the_token_and_logout_ends_it(client, setup):
    token = setup.tokens["alice"]
    assert _login(client, token).status_code == 303
    cookie = client.cookies.get("pt_session")
    assert cookie and cookie != token and token not in cookie
    assert client.get("/api/me").status_code == 200
    csrf = client.cookies.get("pt_csrf")
    assert (
        client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    )
    client.cookies.clear()
    client.cookies.set("pt_session", cookie)  # a copy kept by an attacker
    assert client.get("/api/me").status_code == 401
    assert client.get("/annotate", follow_redirects=False).status_code == 303
    client.cookies.set("pt_session", token)  # the login token is not a session id
    assert client.get("/api/me").status_code == 401
    client.cookies.clear()
    assert client.get("/api/me", headers=setup.headers("alice")).status_code == 200


def test_sessions_expire(client, setup):
    from posttrain.annotate.db import LoginSession

    assert _login(client, setup.tokens["alice"]).status_code == 303
    assert client.get("/api/me").status_code == 200
    with session(setup.engine) as db:
        db.execute(
            update(LoginSession).values(
                expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)
            )
        )
        db.commit()
    assert client.get("/api/me").status_code == 401


def test_tokens_can_expire(client, setup):
    with session(setup.engine) as db:
        auth.set_token_expiry(db, "alice", datetime.now(timezone.utc) - timedelta(seconds=1))
        db.commit()
    response = client.get("/api/me", headers=setup.headers("alice"))
    assert response.status_code == 401 and "expired" in response.text
    assert _login(client, setup.tokens["alice"]).status_code == 401
    assert client.get("/api/me", headers=setup.headers("bob")).status_code == 200


def test_new_tokens_expire_after_the_given_days(tmp_path, capsys):
    db = str(tmp_path / "v.db")
    assert annotate_main(["add-annotator", "--db", db, "--token-days", "3", "carol"]) == 0
    assert annotate_main(["reset-token", "--db", db, "--token-days", "0", "carol"]) == 2
    assert "--token-days" in capsys.readouterr().err
    from posttrain.annotate.db import make_engine

    engine = make_engine(db)
    with session(engine) as s:
        expires = s.scalar(select(Account.token_expires_at).where(Account.name == "carol"))
    engine.dispose()
    left = auth.as_utc(expires) - datetime.now(timezone.utc)
    assert timedelta(days=2, hours=23) < left <= timedelta(days=3)


def test_deactivate_ends_tokens_and_sessions(client, setup, capsys):
    assert _login(client, setup.tokens["alice"]).status_code == 303
    assert client.get("/api/me").status_code == 200
    assert annotate_main(["deactivate", "--db", setup.url, "alice"]) == 0
    assert "deactivated alice" in capsys.readouterr().out
    assert client.get("/api/me").status_code == 401  # the open session
    client.cookies.clear()
    assert client.get("/api/me", headers=setup.headers("alice")).status_code == 401
    assert _login(client, setup.tokens["alice"]).status_code == 401
    assert annotate_main(["deactivate", "--db", setup.url, "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 6: the lesser findings


def test_vote_key_with_a_trailing_newline_is_refused(client, setup):
    task = _first_task(client, setup)
    body = {"vote_key": "k" * 64 + "\n", "ranking": _full_ranking(task)}
    response = client.post(
        f"/api/tasks/{task['assignment_id']}/vote", headers=setup.headers("alice"), json=body
    )
    assert response.status_code == 422
    assert _count(setup, Vote) == 0


def test_guidelines_and_export_need_login_first(client, setup):
    assert client.get("/api/guidelines").status_code == 401
    assert client.get("/api/guidelines", headers=setup.headers("alice")).status_code == 200
    assert client.get("/api/guidelines", headers=setup.headers("admin")).status_code == 200
    assert client.get("/api/admin/export?mode=nonsense").status_code == 401
    response = client.get("/api/admin/export?mode=nonsense", headers=setup.headers("admin"))
    assert response.status_code == 422


def test_origin_check_compares_the_scheme(client, setup):
    assert _login(client, setup.tokens["alice"]).status_code == 303
    task = client.get("/api/next").json()["task"]
    path = f"/api/tasks/{task['assignment_id']}/skip"
    csrf = {"X-CSRF-Token": client.cookies.get("pt_csrf")}
    assert client.post(path, headers={**csrf, "Origin": "https://testserver"}).status_code == 403
    assert client.post(path, headers={**csrf, "Origin": "null"}).status_code == 403
    assert client.post(path, headers={**csrf, "Origin": "http://testserver"}).status_code == 200


def test_a_replayed_key_with_another_payload_says_duplicate(client, setup):
    task = _first_task(client, setup)
    path = f"/api/tasks/{task['assignment_id']}/vote"
    letters = [r["letter"] for r in task["responses"]]
    first = {"vote_key": "replay-key-1", "ranking": " > ".join(letters)}
    response = client.post(path, headers=setup.headers("alice"), json=first)
    assert response.json()["stored"] is True and response.json()["duplicate"] is False
    second = {"vote_key": "replay-key-1", "ranking": " > ".join(reversed(letters))}
    response = client.post(path, headers=setup.headers("alice"), json=second)
    assert response.status_code == 200
    data = response.json()
    assert data["stored"] is False and data["duplicate"] is True
    assert data["ranking"] == " > ".join(letters)  # the vote that is kept
    with session(setup.engine) as db:
        assert db.scalar(select(Vote.shown_ranking)) == " > ".join(letters)
        assert db.scalar(select(func.count()).select_from(Assignment)) > 0


def test_an_older_database_gains_the_token_expiry_column(db_url):
    from sqlalchemy import inspect

    from posttrain.annotate.db import make_engine

    engine = make_engine(db_url)
    with engine.begin() as conn:  # as a database made before tokens could expire
        conn.exec_driver_sql("ALTER TABLE accounts DROP COLUMN token_expires_at")
    engine.dispose()
    engine = make_engine(db_url)
    assert "token_expires_at" in {c["name"] for c in inspect(engine).get_columns("accounts")}
    with session(engine) as db:
        token = auth.create_account(db, "dora", token_days=1)
        db.commit()
        assert auth.account_for_token(db, token).name == "dora"
    engine.dispose()
