"""The export keeps what annotators said: strength (confidence -> p_chosen, majority share), ties,
Likert ratings as scored records, annotator and time, revised votes (latest only, history kept),
the admin's quality view, and the files load with the trainers' own reader. SQLite, and PostgreSQL
when configured."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from posttrain.annotate import service
from posttrain.annotate.db import Account, Assignment, Task, VoteRevision, session
from posttrain.annotate.export import CONFIDENCE_P, preference_records, write_jsonl
from posttrain.data.formats import load_examples


def _account(db, name):
    return db.scalar(select(Account).where(Account.name == name))


def _vote_on(db, name, ext_id, shown_of_file, **body):
    """Vote as ``name`` on task ``ext_id``; ``shown_of_file`` maps a file-order ranking (original
    letters) to the letters this annotator saw. Returns the assignment id."""
    account = _account(db, name)
    task = db.scalar(select(Task).where(Task.ext_id == ext_id))
    assignment = db.scalar(
        select(Assignment).where(Assignment.task_id == task.id, Assignment.account_id == account.id)
    )
    order = json.loads(assignment.order)  # display slot -> file index
    display = {chr(65 + index): chr(65 + slot) for slot, index in enumerate(order)}
    if "ranking" in body:
        body["ranking"] = "".join(display.get(c, c) for c in body["ranking"])
    if "choice" in body and body["choice"] in "AB":
        body["choice"] = display[body["choice"]]
    if "ratings" in body:
        body["ratings"] = {display[k]: v for k, v in body["ratings"].items()}
    service.record_vote(db, account, assignment.id, body)
    return assignment.id


def test_confidence_ties_time_and_revisions_in_the_all_export(setup, tmp_path):
    with session(setup.engine) as db:
        # t1 (Red. / Purple): alice A much better (3), bob a tie
        a1 = _vote_on(db, "alice", "t1", None, vote_key="alice-t1-1", choice="A", confidence=3,
                      elapsed_ms=5000)  # fmt: skip
        _vote_on(db, "bob", "t1", None, vote_key="bob-t1-001", choice="tie", elapsed_ms=800)
        # t2 (Quick. / Slow. / Rapid.): alice ranks C = A > B with full ratings
        ratings = {
            "A": {"helpfulness": 4, "presentation": 3},
            "B": {"helpfulness": 1, "presentation": 2},
            "C": {"helpfulness": 5, "presentation": 3},
        }
        _vote_on(db, "alice", "t2", None, vote_key="alice-t2-1", ranking="C = A > B",
                 ratings=ratings, elapsed_ms=9000)  # fmt: skip
        # alice revises t1: B slightly better (1); 2000 ms more on it
        _vote_on(db, "alice", "t1", None, vote_key="alice-t1-2", choice="B", confidence=1,
                 elapsed_ms=2000, revise=True)  # fmt: skip
        records = preference_records(db, "all")
        scored = preference_records(db, "scored")
        assert db.scalar(select(func.count()).select_from(VoteRevision)) == 1
        assert [h["shown_ranking"] for h in service.vote_history(db, a1)] in (["A > B"], ["B > A"])

    t1 = [r for r in records if r["task_id"] == "t1"]
    alice = [r for r in t1 if r["annotator"] == "alice"]
    bob = [r for r in t1 if r["annotator"] == "bob"]
    # only the revised vote: Purple over Red., slightly -> p 0.6; time adds up over both visits
    assert len(alice) == 1
    assert (alice[0]["chosen"], alice[0]["rejected"]) == ("Purple, probably.", "Red.")
    assert (alice[0]["p_chosen"], alice[0]["confidence"]) == (CONFIDENCE_P[1], 1) == (0.6, 1)
    assert alice[0]["elapsed_ms"] == 7000 and alice[0]["revisions"] == 1
    # bob's tie is kept as tie: true, in file order, with his time
    assert bob == [
        {"prompt": "Name a primary colour.", "chosen": "Red.", "rejected": "Purple, probably.",
         "tie": True, "annotator": "bob", "task_id": "t1", "elapsed_ms": 800}
    ]  # fmt: skip
    # a ranking: certain pairs (no p_chosen) and its tie
    t2 = [r for r in records if r["task_id"] == "t2"]
    assert {(r["chosen"], r["rejected"], r.get("tie", False)) for r in t2} == {
        ("Quick.", "Slow.", False),
        ("Rapid.", "Slow.", False),
        ("Quick.", "Rapid.", True),
    }
    assert not any("p_chosen" in r for r in t2) and all(r["elapsed_ms"] == 9000 for r in t2)
    # Likert ratings -> one scored record in file order
    assert scored == [
        {"prompt": "Give a synonym for 'fast'.", "completions": ["Quick.", "Slow.", "Rapid."],
         "scores": [{"helpfulness": 4, "presentation": 3}, {"helpfulness": 1, "presentation": 2},
                    {"helpfulness": 5, "presentation": 3}],
         "annotator": "alice", "task_id": "t2", "elapsed_ms": 9000}
    ]  # fmt: skip

    # the trainers' reader takes both files and sees the strength
    prefs, rated = tmp_path / "prefs.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(records, prefs)
    write_jsonl(scored, rated)
    examples = load_examples(str(prefs), accept=["preference"])
    assert len(examples) == len(records)
    by_text = {(e.chosen, e.rejected): e for e in examples}
    assert by_text[("Purple, probably.", "Red.")].p_chosen == pytest.approx(0.6, abs=1e-12)
    assert by_text[("Red.", "Purple, probably.")].tie
    assert by_text[("Quick.", "Slow.")].p_chosen is None  # certain
    (example,) = load_examples(str(rated), accept=["scored"])
    assert example.scores[2] == {"helpfulness": 5, "presentation": 3}


def test_majority_share_is_p_chosen(setup):
    from posttrain.annotate import auth

    with session(setup.engine) as db:
        auth.create_account(db, "carol")
        auth.create_account(db, "dave")
        service.assign(db, overlap=4, seed=3)
        db.commit()
        # t1: A, A, B, tie -> A's share (2 + 1/2) / 4 = 0.625
        for name, choice in (("alice", "A"), ("bob", "A"), ("carol", "B"), ("dave", "tie")):
            body = {"choice": choice} if choice == "tie" else {"choice": choice, "confidence": 2}
            _vote_on(db, name, "t1", None, vote_key=f"{name}-t1-maj", **body)
        # t3: B, B, B, A -> B's share 3 / 4
        for name, choice in (("alice", "B"), ("bob", "B"), ("carol", "B"), ("dave", "A")):
            _vote_on(db, name, "t3", None, vote_key=f"{name}-t3-maj", choice=choice, confidence=3)
        t1, t3 = preference_records(db, "majority")
    assert (t1["chosen"], t1["rejected"]) == ("Red.", "Purple, probably.")
    assert t1["p_chosen"] == pytest.approx(0.625, abs=1e-12) and "tie" not in t1
    assert t1["vote_counts"] == {"chosen": 2, "rejected": 1, "tie": 1} and t1["votes"] == 4
    assert t1["annotators"] == ["alice", "bob", "carol", "dave"]
    assert (t3["chosen"], t3["p_chosen"]) == ("What do you want.", 0.75)


def test_quality_report_by_hand(setup):
    with session(setup.engine) as db:
        # t1: alice A(3) vs bob B(1): full disagreement on one pair -> 1 - 1/2 = 0.5
        _vote_on(db, "alice", "t1", None, vote_key="q-alice-t1", choice="A", confidence=3,
                 elapsed_ms=1000)  # fmt: skip
        _vote_on(db, "bob", "t1", None, vote_key="q-bob-t1-1", choice="B", confidence=1,
                 elapsed_ms=3000)  # fmt: skip
        # t3: both tie -> no disagreement
        _vote_on(db, "alice", "t3", None, vote_key="q-alice-t3", choice="tie", elapsed_ms=2000)
        _vote_on(db, "bob", "t3", None, vote_key="q-bob-t3-1", choice="tie", elapsed_ms=5000)
        report = service.quality_report(db)
    (top,) = report["disagreed"]
    assert top["task_id"] == "t1" and top["disagreement"] == 0.5
    assert sorted((v["annotator"], v["ranking"]) for v in top["votes"]) == [
        ("alice", "A > B"),
        ("bob", "B > A"),
    ]
    habits = {a["name"]: a for a in report["annotators"]}
    # alice: 2 votes, 1 tie of 2 pairs; median of 1000, 2000 = 1500; one confidence-3 choice
    assert habits["alice"]["tie_rate"] == 0.5 and habits["alice"]["median_ms"] == 1500
    assert habits["alice"]["confidence"] == {1: 0, 2: 0, 3: 1}
    assert habits["bob"]["median_ms"] == 4000 and habits["bob"]["confidence"] == {1: 1, 2: 0, 3: 0}
    # position A: alice chose file-A "Red."; whether she saw it first depends on her shuffle
    assert habits["alice"]["position_a_rate"] in (0.0, 1.0)


def test_assign_reports_gold_only_additions(client, setup):
    from posttrain.annotate import auth

    headers = setup.headers("admin")
    with session(setup.engine) as db:
        auth.create_account(db, "erin")
        db.commit()
    # every regular task already has its 2 annotators: erin gets only the gold task
    response = client.post("/api/admin/assign", headers=headers, json={"overlap": 2})
    assert response.json() == {"assigned": 1, "gold": 1, "regular": 0}


def test_a_database_made_before_revisions_gains_the_table(setup):
    from posttrain.annotate.db import make_engine

    with session(setup.engine) as db:
        _vote_on(db, "alice", "t1", None, vote_key="old-db-first", choice="A", confidence=2)
    VoteRevision.__table__.drop(setup.engine)  # as a database from before this table existed
    engine = make_engine(setup.url)  # what `posttrain annotate serve --db ...` does on start
    try:
        with session(engine) as db:
            _vote_on(db, "alice", "t1", None, vote_key="old-db-second", choice="B", confidence=3,
                     revise=True)  # fmt: skip
            (record,) = [r for r in preference_records(db) if r["task_id"] == "t1"]
            assert record["p_chosen"] == 0.9 and record["revisions"] == 1
            assert record["chosen"] == "Purple, probably."
    finally:
        engine.dispose()


def test_guidelines_acknowledgement_is_kept_per_annotator(client, setup):
    alice, bob = setup.headers("alice"), setup.headers("bob")
    assert client.get("/api/me", headers=alice).json()["guidelines_read"] is False
    for _ in range(2):  # idempotent
        response = client.post("/api/guidelines/read", headers=alice)
        assert response.status_code == 200 and response.json() == {"read": True}
    assert client.get("/api/me", headers=alice).json()["guidelines_read"] is True
    assert client.get("/api/me", headers=bob).json()["guidelines_read"] is False
    assert client.post("/api/guidelines/read", headers=setup.headers("admin")).status_code == 403


def test_skipping_when_only_skipped_tasks_are_left_cycles_through_them(setup):
    with session(setup.engine) as db:
        alice = _account(db, "alice")
        seen = []
        for _ in range(4):  # skip the whole queue once
            assignment = service.next_assignment(db, alice)
            seen.append(assignment.task_id)
            service.skip(db, alice, assignment.id)
        again = []
        for _ in range(4):  # then S keeps moving on instead of showing one task forever
            assignment = service.next_assignment(db, alice)
            again.append(assignment.task_id)
            service.skip(db, alice, assignment.id)
    assert sorted(again) == sorted(seen) and again == seen
