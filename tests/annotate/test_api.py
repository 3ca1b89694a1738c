"""The JSON API and the service behind it: assignment, shuffling, votes, idempotency, skip,
progress, the dashboard and export. Runs on SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import json
import threading

from sqlalchemy import func, select

from posttrain.annotate import service
from posttrain.annotate.db import Account, Assignment, Task, Vote, session
from posttrain.annotate.export import preference_records


def _assignment_ids(setup, name: str) -> list[int]:
    with session(setup.engine) as db:
        account = db.scalar(select(Account).where(Account.name == name))
        return list(
            db.scalars(
                select(Assignment.id)
                .where(Assignment.account_id == account.id)
                .order_by(Assignment.position)
            )
        )


def _view_for(client, setup, name: str, ext_id: str) -> dict:
    """The view of task ``ext_id`` in ``name``'s queue."""
    with session(setup.engine) as db:
        aid = db.scalar(
            select(Assignment.id)
            .join(Task, Task.id == Assignment.task_id)
            .join(Account, Account.id == Assignment.account_id)
            .where(Account.name == name, Task.ext_id == ext_id)
        )
    response = client.get(f"/api/tasks/{aid}", headers=setup.headers(name))
    assert response.status_code == 200, response.text
    return response.json()


def _letter_of(view: dict, text: str) -> str:
    (letter,) = [r["letter"] for r in view["responses"] if r["text"] == text]
    return letter


def _vote(client, setup, name, view, key, **body):
    return client.post(
        f"/api/tasks/{view['assignment_id']}/vote",
        headers=setup.headers(name),
        json={"vote_key": key, **body},
    )


def _count(setup, model) -> int:
    with session(setup.engine) as db:
        return db.scalar(select(func.count()).select_from(model))


def test_assignment_gold_to_everyone_overlap_and_recorded_shuffle(setup):
    with session(setup.engine) as db:
        rows = db.execute(
            select(Account.name, Task.ext_id, Assignment.order, Task.completions)
            .join(Account, Account.id == Assignment.account_id)
            .join(Task, Task.id == Assignment.task_id)
        ).all()
        # running assign again adds nothing
        assert service.assign(db, overlap=2, seed=1) == 0
    assert len(rows) == 8  # 4 tasks x 2 annotators (overlap 2, gold to all)
    for _, _, order, completions in rows:
        assert sorted(json.loads(order)) == list(range(len(json.loads(completions))))
    orders = {(name, ext): order for name, ext, order, _ in rows}
    assert any(orders[("alice", t)] != orders[("bob", t)] for t in ("t1", "t2", "g1", "t3"))


def test_view_shows_shuffled_responses_and_no_gold(client, setup):
    view = _view_for(client, setup, "alice", "g1")
    assert sorted(r["text"] for r in view["responses"]) == ["4", "5"]
    assert [r["letter"] for r in view["responses"]] == ["A", "B"]
    assert "gold" not in json.dumps(view)
    view = _view_for(client, setup, "alice", "t3")
    assert view["prompt"] == [{"role": "user", "content": "Say hello politely."}]


def test_vote_maps_display_letters_to_original_and_is_idempotent(client, setup):
    view = _view_for(client, setup, "alice", "t1")
    red = _letter_of(view, "Red.")
    first = _vote(client, setup, "alice", view, "key-t1-alice", choice=red, confidence=3)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    again = _vote(client, setup, "alice", view, "key-t1-alice", choice=red, confidence=3)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["vote_id"] == first.json()["vote_id"]
    other_key = _vote(client, setup, "alice", view, "key-t1-other", choice="tie")
    assert other_key.status_code == 409
    assert _count(setup, Vote) == 1
    with session(setup.engine) as db:
        vote = db.scalar(select(Vote))
    assert vote.ranking == "A > B"  # "Red." is completion A in the file, whatever was shown
    assert vote.shown_ranking == ("A > B" if red == "A" else "B > A")
    (record,) = [r for r in _export(setup) if r["task_id"] == "t1"]
    assert (record["chosen"], record["rejected"], record["confidence"]) == (
        "Red.",
        "Purple, probably.",
        3,
    )
    assert record["annotator"] == "alice" and record["prompt"] == "Name a primary colour."


def _export(setup, mode="all", **kwargs):
    with session(setup.engine) as db:
        return preference_records(db, mode, **kwargs)


def test_ranking_ratings_and_ties(client, setup):
    view = _view_for(client, setup, "alice", "t2")
    quick, slow, rapid = (_letter_of(view, t) for t in ("Quick.", "Slow.", "Rapid."))
    response = _vote(
        client,
        setup,
        "alice",
        view,
        "key-t2-alice",
        ranking=f"{rapid} = {quick} > {slow}".lower(),
        ratings={slow: {"helpfulness": 1, "presentation": 2}},
    )
    assert response.status_code == 200, response.text
    with session(setup.engine) as db:
        vote = db.scalar(select(Vote))
    assert vote.ranking == "A = C > B"
    assert json.loads(vote.ratings) == {"B": {"helpfulness": 1, "presentation": 2}}
    records = _export(setup)
    pairs = {(r["chosen"], r["rejected"]) for r in records if not r.get("tie")}
    assert pairs == {("Quick.", "Slow."), ("Rapid.", "Slow.")}
    ties = [(r["chosen"], r["rejected"]) for r in records if r.get("tie")]
    assert ties == [("Quick.", "Rapid.")]  # the tie is kept as tie: true (file order)


def test_invalid_votes_are_rejected(client, setup):
    pair = _view_for(client, setup, "alice", "t1")
    three = _view_for(client, setup, "alice", "t2")
    bad = [
        (pair, {"choice": "C"}),
        (pair, {"choice": "A", "confidence": 4}),
        (pair, {"choice": "A", "ranking": "A > B"}),
        (pair, {}),
        (three, {"choice": "A"}),
        (three, {"ranking": "A > B"}),
        (three, {"ranking": "A > B > D"}),
        (pair, {"choice": "A", "ratings": {"A": {"helpfulness": 6}}}),
        (pair, {"choice": "A", "ratings": {"A": {"tone": 1}}}),
        (pair, {"choice": "A", "ratings": {"Z": {"helpfulness": 1}}}),
    ]
    for n, (view, body) in enumerate(bad):
        response = _vote(client, setup, "alice", view, f"bad-vote-{n:02d}", **body)
        assert response.status_code == 422, (body, response.text)
    response = client.post(
        f"/api/tasks/{pair['assignment_id']}/vote",
        headers=setup.headers("alice"),
        json={"vote_key": "short", "choice": "A"},
    )
    assert response.status_code == 422
    assert _count(setup, Vote) == 0


def test_vote_key_cannot_be_reused_for_another_task(client, setup):
    t1 = _view_for(client, setup, "alice", "t1")
    g1 = _view_for(client, setup, "alice", "g1")
    assert (
        _vote(client, setup, "alice", t1, "shared-key-1", choice="A", confidence=1).status_code
        == 200
    )
    assert (
        _vote(client, setup, "alice", g1, "shared-key-1", choice="A", confidence=1).status_code
        == 409
    )
    assert _count(setup, Vote) == 1


def test_concurrent_identical_submits_store_one_vote(setup):
    """Eight threads send the same vote at once (a frantic double click on a slow server)."""
    with session(setup.engine) as db:
        alice = db.scalar(select(Account).where(Account.name == "alice"))
    (aid, *_) = _assignment_ids(setup, "alice")
    results, barrier = [], threading.Barrier(8)

    def submit():
        barrier.wait()
        with session(setup.engine) as db:
            results.append(
                service.record_vote(
                    db, alice, aid, {"vote_key": "same-key-123", "ranking": _full(setup, aid)}
                )
            )

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert len({summary["vote_id"] for summary, _ in results}) == 1
    assert _count(setup, Vote) == 1


def _full(setup, aid: int) -> str:
    with session(setup.engine) as db:
        n = len(json.loads(db.get(Assignment, aid).order))
    return " > ".join("ABCDEFGH"[:n])


def test_next_skip_and_progress(client, setup):
    headers = setup.headers("bob")
    data = client.get("/api/next", headers=headers).json()
    assert data["progress"] == {"pending": 4, "done": 0, "skipped": 0, "total": 4}
    first = data["task"]["assignment_id"]
    assert client.post(f"/api/tasks/{first}/skip", headers=headers).json() == {"status": "skipped"}
    seen = [first]
    for n in range(3):
        task = client.get("/api/next", headers=headers).json()["task"]
        assert task["assignment_id"] not in seen
        seen.append(task["assignment_id"])
        body = {"vote_key": f"bob-key-{n:04d}", "ranking": _full(setup, task["assignment_id"])}
        assert (
            client.post(f"/api/tasks/{seen[-1]}/vote", headers=headers, json=body).status_code
            == 200
        )
    data = client.get("/api/next", headers=headers).json()
    assert data["task"]["assignment_id"] == first  # the skipped task comes back at the end
    assert data["progress"] == {"pending": 0, "done": 3, "skipped": 1, "total": 4}
    body = {"vote_key": "bob-key-last", "ranking": "A > B"}
    assert client.post(f"/api/tasks/{first}/vote", headers=headers, json=body).status_code == 200
    data = client.get("/api/next", headers=headers).json()
    assert data["task"] is None
    assert data["progress"] == {"pending": 0, "done": 4, "skipped": 0, "total": 4}
    # skipping an answered task changes nothing
    assert client.post(f"/api/tasks/{first}/skip", headers=headers).json() == {"status": "done"}


def test_dashboard_gold_agreement_and_kappa(client, setup):
    for name, gold_choice in (("alice", "4"), ("bob", "5")):
        for ext in ("g1", "t1", "t3"):
            view = _view_for(client, setup, name, ext)
            texts = [r["text"] for r in view["responses"]]
            wanted = gold_choice if ext == "g1" else texts[0]  # t1/t3: whatever was shown first
            letter = _letter_of(view, wanted)
            assert (
                _vote(
                    client, setup, name, view, f"{name}-{ext}-k", choice=letter, confidence=2
                ).status_code
                == 200
            )
    summary = client.get("/api/admin/summary", headers=setup.headers("admin")).json()
    rows = {row["name"]: row for row in summary["annotators"]}
    assert rows["alice"]["gold_agreement"] == 1.0 and not rows["alice"]["below_threshold"]
    assert rows["bob"]["gold_agreement"] == 0.0 and rows["bob"]["below_threshold"]
    assert rows["alice"]["done"] == 3 and rows["alice"]["assigned"] == 4
    agreement = summary["agreement"]
    assert agreement["items"] == 2  # t1 and t3 (gold items are not counted)
    assert agreement["pairs"][0]["a"] == "alice" and agreement["pairs"][0]["items"] == 2
    # export: gold items left out by default; screening drops bob entirely
    assert {r["task_id"] for r in _export(setup)} == {"t1", "t3"}
    assert {r["task_id"] for r in _export(setup, include_gold=True)} == {"t1", "t3", "g1"}
    assert {r["annotator"] for r in _export(setup, min_gold_agreement=0.75)} == {"alice"}


def test_majority_export(client, setup, tmp_path):
    from posttrain.annotate import auth

    with session(setup.engine) as db:
        setup.tokens["carol"] = auth.create_account(db, "carol")
        service.assign(db, overlap=3, seed=2)
        db.commit()
    # t1: alice and bob prefer "Red.", carol prefers the other -> Red. wins 2/3
    # t3: alice A, bob B, carol tie -> an even split: a tie record (p = (1 + 1/2) / 3 = 0.5)
    plan = {
        "t1": {"alice": "Red.", "bob": "Red.", "carol": "Purple, probably."},
        "t3": {"alice": "Hello! How can I help?", "bob": "What do you want.", "carol": "tie"},
    }
    for ext, votes in plan.items():
        for name, text in votes.items():
            view = _view_for(client, setup, name, ext)
            choice = "tie" if text == "tie" else _letter_of(view, text)
            body = {"choice": choice} if choice == "tie" else {"choice": choice, "confidence": 1}
            assert _vote(client, setup, name, view, f"{name}-{ext}-m", **body).status_code == 200
    record, tie = _export(setup, "majority")
    assert (record["task_id"], record["chosen"], record["rejected"]) == (
        "t1",
        "Red.",
        "Purple, probably.",
    )
    assert record["annotators"] == ["alice", "bob", "carol"] and record["votes"] == 3
    assert abs(record["p_chosen"] - 2 / 3) < 1e-12  # the majority share
    assert record["vote_counts"] == {"chosen": 2, "rejected": 1, "tie": 0}
    assert (tie["task_id"], tie["tie"], tie["p_chosen"]) == ("t3", True, 0.5)
    everything = _export(setup, "all")  # t1: 3 pairs, t3: 2 pairs and the tie
    assert len(everything) == 6 and sum(r.get("tie", False) for r in everything) == 1
    assert all(r["p_chosen"] == 0.6 for r in everything if not r.get("tie"))  # confidence 1
    response = client.get("/api/admin/export?mode=majority", headers=setup.headers("admin"))
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [record, tie]


def test_admin_api_creates_annotators_and_assigns(client, setup):
    headers = setup.headers("admin")
    made = client.post("/api/admin/annotators", headers=headers, json={"name": "dave"}).json()
    assert made["name"] == "dave" and made["token"].startswith("pt_")
    assert (
        client.post("/api/admin/annotators", headers=headers, json={"name": "dave"}).status_code
        == 422
    )
    assert (
        client.post("/api/admin/annotators", headers=headers, json={"name": "<b>"}).status_code
        == 422
    )
    result = client.post("/api/admin/assign", headers=headers, json={"overlap": 3}).json()
    assert result["assigned"] == 4  # dave: the gold item + the 3 others (overlap 3 of 3)
    me = client.get("/api/me", headers={"Authorization": f"Bearer {made['token']}"}).json()
    assert me == {
        "name": "dave",
        "progress": {"pending": 4, "done": 0, "skipped": 0, "total": 4},
        "guidelines_read": False,
    }


def test_sqlite_runs_in_wal_mode_with_full_sync(setup):
    if not setup.url.startswith("sqlite"):
        return
    with setup.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_custom_guidelines_are_served_escaped(setup):
    from fastapi.testclient import TestClient

    from posttrain.annotate.server import create_app

    app = create_app(
        setup.engine, guidelines="# Our rules\n\nPrefer **short** answers. <script>x</script>"
    )
    with TestClient(app) as test_client:
        assert test_client.get("/api/guidelines").status_code == 401  # login first
        data = test_client.get("/api/guidelines", headers=setup.headers("alice")).json()
    assert "<h1>Our rules</h1>" in data["html"] and "<strong>short</strong>" in data["html"]
    assert "<script>" not in data["html"]
    assert data["aspects"] == {"helpfulness": 5, "presentation": 3} and data["max_confidence"] == 3
