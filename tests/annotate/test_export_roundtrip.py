"""annotate -> export -> train: votes cast through the served app, downloaded from the admin export,
go straight into ``posttrain rm`` and ``posttrain dpo`` (strength, ties and Likert ratings
included). tiny-llama, a few steps: this checks that the files are taken and read right, not how
well the models learn (tests/integration/test_soft_labels.py does that)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from posttrain.annotate.db import Account, Assignment, Task, session
from posttrain.data.formats import load_examples
from posttrain.training import read_metrics

FAST = ["--model", "tiny-llama", "--batch_size", "4", "--progress", "false", "--max_steps", "2"]


def _vote(client, setup, name, ext_id, **body):
    """Vote as ``name`` on task ``ext_id`` through the API; choices, rankings and ratings name the
    responses by their text (the page shows them shuffled)."""
    with session(setup.engine) as db:
        assignment_id = db.scalar(
            select(Assignment.id)
            .join(Task, Task.id == Assignment.task_id)
            .join(Account, Account.id == Assignment.account_id)
            .where(Task.ext_id == ext_id, Account.name == name)
        )
    view = client.get(f"/api/tasks/{assignment_id}", headers=setup.headers(name)).json()
    letter = {r["text"]: r["letter"] for r in view["responses"]}
    if body.get("choice", "tie") != "tie":
        body["choice"] = letter[body["choice"]]
    if "ranking" in body:
        body["ranking"] = " > ".join(letter[t] for t in body["ranking"])
    if "ratings" in body:
        body["ratings"] = {letter[t]: s for t, s in body["ratings"].items()}
    response = client.post(
        f"/api/tasks/{assignment_id}/vote",
        headers=setup.headers(name),
        json={"vote_key": f"{name}-{ext_id}-roundtrip", "elapsed_ms": 4000, **body},
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def exported(client, setup, tmp_path):
    """Both annotators answer every task through the app; the admin downloads the exports."""
    synonyms = ["Rapid.", "Quick.", "Slow."]
    scores = {"Rapid.": (5, 3), "Quick.": (4, 2), "Slow.": (1, 1)}
    ratings = {t: {"helpfulness": h, "presentation": p} for t, (h, p) in scores.items()}
    _vote(client, setup, "alice", "t1", choice="Red.", confidence=3)
    _vote(client, setup, "bob", "t1", choice="tie")
    _vote(client, setup, "alice", "t2", ranking=synonyms, ratings=ratings)
    _vote(client, setup, "bob", "t2", ranking=synonyms, ratings=ratings)
    _vote(client, setup, "alice", "t3", choice="Hello! How can I help?", confidence=1)
    _vote(client, setup, "bob", "t3", choice="Hello! How can I help?", confidence=2)
    paths = {}
    for mode in ("all", "majority", "scored"):
        response = client.get(f"/api/admin/export?mode={mode}", headers=setup.headers("admin"))
        assert response.status_code == 200
        paths[mode] = tmp_path / f"{mode}.jsonl"
        paths[mode].write_text(response.text)
    return paths


def test_export_of_a_served_session_trains_rm_and_dpo(cli, exported, tmp_path):
    records = [json.loads(line) for line in exported["all"].read_text().splitlines()]
    # t1: alice's p 0.9 pair and bob's tie; t2: 3 pairs each; t3: p 0.6 and 0.75
    assert len(records) == 10 and sum(r.get("tie", False) for r in records) == 1
    assert sorted(r["p_chosen"] for r in records if "p_chosen" in r) == [0.6, 0.75, 0.9]
    assert all(r["elapsed_ms"] == 4000 and r["annotator"] in ("alice", "bob") for r in records)
    examples = load_examples(str(exported["all"]), accept=["preference"])
    assert sorted(e.p_chosen for e in examples if e.p_chosen is not None and not e.tie) == [
        0.6,
        0.75,
        0.9,
    ]

    code, _, err = cli(
        "rm", *FAST, "--train_data", exported["all"], "--output_dir", tmp_path / "rm"
    )  # fmt: skip
    assert code == 0, err
    assert "1 of 10 pairs are ties: dropped" in err
    assert read_metrics(tmp_path / "rm" / "metrics.jsonl")[0]["train/ties"] == 1

    code, _, err = cli(
        "dpo", *FAST, "--train_data", exported["majority"], "--output_dir", tmp_path / "dpo",
        "--beta", "0.1",
    )  # fmt: skip
    assert code == 0, err


def test_likert_export_trains_a_two_head_rm(cli, exported, tmp_path):
    (first, second) = [json.loads(line) for line in exported["scored"].read_text().splitlines()]
    assert first["completions"] == ["Quick.", "Slow.", "Rapid."]  # file order
    assert first["scores"][2] == {"helpfulness": 5, "presentation": 3}
    code, _, err = cli(
        "rm", *FAST, "--train_data", exported["scored"], "--output_dir", tmp_path / "heads",
        "--heads", "helpfulness,presentation",
    )  # fmt: skip
    assert code == 0, err
    assert second["annotator"] == "bob"
