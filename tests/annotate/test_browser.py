"""The pages in headless Chromium (Playwright, sync API): log in, annotate with keys and clicks,
progress, skip, a double click and a lost response, hostile model text, the admin dashboard and
export. Screenshots go to $POSTTRAIN_SCREENSHOTS (default /tmp/posttrain-annotate-screenshots).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from posttrain.annotate import service
from posttrain.annotate.db import Account, Vote, session

from .conftest import ServerProcess, build_setup, free_port

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("POSTTRAIN_SCREENSHOTS", "/tmp/posttrain-annotate-screenshots"))


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def login(page, base: str, token: str, landing: str) -> None:
    page.goto(base + "/login")
    page.fill("#token", token)
    page.click("#login-button")
    page.wait_for_url(base + landing)
    page.wait_for_selector("body[data-ready='1']")
    if page.is_visible("#guidelines-ack"):  # first login: the guidelines are open until read
        page.click("#guidelines-ack")


def votes(setup) -> list[Vote]:
    with session(setup.engine) as db:
        return list(db.scalars(select(Vote).order_by(Vote.id)))


def wait_moved_on(page, assignment: str | None) -> None:
    """Wait until the page shows another task than ``assignment`` (or the "all done" view).
    Predicates are functions: the page's CSP forbids evaluating strings."""
    page.wait_for_function(
        "(old) => { const t = document.querySelector('#task');"
        " return t.hidden || t.dataset.assignment !== old; }",
        arg=assignment,
    )


def progress_text(page) -> str:
    return page.text_content("#progress-text")


def test_annotate_with_keys_and_clicks(page, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    page.goto(base + "/login")
    page.fill("#token", "pt_wrong-token")
    page.click("#login-button")
    assert "not valid" in page.text_content("#login-error")
    login(page, base, setup.tokens["alice"], "/annotate")
    assert page.text_content("#who") == "alice"
    assert progress_text(page) == "0 / 4 done"

    page.keyboard.press("g")  # guidelines open and close by key
    assert page.is_visible("#guidelines") and "Harmless" in page.text_content("#guidelines")
    shot(page, "annotate-guidelines")
    page.keyboard.press("g")
    assert not page.is_visible("#guidelines")

    first = page.get_attribute("#task", "data-assignment")
    page.keyboard.press("s")  # skip the first task; it comes back at the end
    wait_moved_on(page, first)
    assert progress_text(page) == "0 / 4 done · 1 skipped"

    done = 0
    use_keys = True
    while page.is_visible("#task"):
        current = page.get_attribute("#task", "data-assignment")
        if page.is_visible("#pair-controls"):
            if use_keys:
                page.keyboard.press("Enter")  # nothing chosen yet: a hint, no vote
                assert "Choose A, B or tie" in page.text_content("#status")
                page.keyboard.press("b")
                page.keyboard.press("3")
                assert "chosen" in page.get_attribute("#response-B", "class")
                if done == 0:
                    shot(page, "annotate-pair")
                page.keyboard.press("Enter")
            else:
                page.click("#choose-A")
                page.click("#conf-1")
                page.select_option("#rate-A-helpfulness", "4")
                page.select_option("#rate-B-presentation", "2")
                page.click("#submit")
        else:  # three responses: a ranking, by clicks (letter buttons) or typed after "r"
            if use_keys:
                page.keyboard.press("r")
                page.keyboard.type("c > a = b")
                shot(page, "annotate-rank")
                page.keyboard.press("Enter")
            else:
                page.click(".rank-letter[data-letter='B']")
                page.click(".rank-letter[data-letter='A']")
                page.click(".rank-letter[data-letter='C']", modifiers=["Shift"])
                assert page.input_value("#ranking") == "B > A = C"
                shot(page, "annotate-rank")
                page.click("#submit")
        done += 1
        wait_moved_on(page, current)
        assert progress_text(page).startswith(f"{done} / 4 done")
        use_keys = not use_keys
    assert done == 4 and page.is_visible("#done")
    assert progress_text(page) == "4 / 4 done"
    shot(page, "annotate-done")

    stored = votes(setup)
    assert len(stored) == 4
    assert {v.kind for v in stored} == {"choice", "rank"}
    assert any(v.ratings for v in stored)
    assert all(v.elapsed_ms is not None and v.elapsed_ms >= 0 for v in stored)


def test_double_click_and_lost_response_store_one_vote(page, sqlite_setup, live_server):
    """The first vote's response is dropped after the server stored it (the page sees a network
    error and retries with the same key); the second vote is double-clicked."""
    setup, base = sqlite_setup, live_server.base
    login(page, base, setup.tokens["bob"], "/annotate")
    calls = []

    def lose_first_response(route):
        calls.append(route.request.post_data)
        response = route.fetch()  # the request reaches the server and is stored ...
        if len(calls) == 1:
            assert response.status == 200
            route.abort("connectionreset")  # ... but the answer never arrives
        else:
            route.fulfill(response=response)

    page.route("**/vote", lose_first_response)
    for _ in range(2):
        current = page.get_attribute("#task", "data-assignment")
        if page.is_visible("#pair-controls"):
            page.click("#choose-tie")
        else:
            page.fill("#ranking", "A > B > C")
        page.dblclick("#submit")
        wait_moved_on(page, current)
    keys = [json.loads(body)["vote_key"] for body in calls]
    assert keys[0] == keys[1]  # the retry re-sent the same vote key
    assert len(votes(setup)) == 2
    assert progress_text(page) == "2 / 4 done"


HOSTILE = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<b>bold?</b> <a href=\"javascript:window.__pwned='link'\">click</a>",
]


@pytest.fixture
def hostile_server(tmp_path):
    rows = [
        {"id": "x1", "prompt": "<svg onload=\"window.__pwned='prompt'\"></svg> Which is safer?",
         "completions": HOSTILE},
    ]  # fmt: skip
    setup = build_setup(
        f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "x.jsonl", rows, ("alice",), overlap=1
    )
    server = ServerProcess(setup.url, free_port(), tmp_path / "x.log")
    server.start()
    yield setup, server.base
    server.stop()
    setup.engine.dispose()


def test_hostile_model_text_shows_as_text_and_runs_nothing(page, hostile_server):
    setup, base = hostile_server
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    login(page, base, setup.tokens["alice"], "/annotate")
    page.wait_for_timeout(300)  # give any injected handler (onerror, onload) time to fire
    # formatted (Markdown, raw HTML off): the tags show as text; the raw view shows them verbatim
    texts = page.eval_on_selector_all(".response-md", "nodes => nodes.map(n => n.textContent)")
    assert sorted(t.strip() for t in texts) == sorted(HOSTILE)
    page.keyboard.press("m")
    texts = page.eval_on_selector_all(".response-raw", "nodes => nodes.map(n => n.textContent)")
    assert sorted(texts) == sorted(HOSTILE) and page.is_visible(".response-raw")
    page.keyboard.press("m")
    assert "<svg onload" in page.text_content("#prompt")
    injected = page.evaluate(
        "() => document.querySelectorAll('#responses script, #responses img, #responses a, "
        "#responses b, #prompt svg, #responses [onerror], #responses [onload]').length"
    )
    assert injected == 0
    assert page.evaluate("() => window.__pwned") is None
    assert dialogs == []
    for letter in "ABC":
        page.click(f".rank-letter[data-letter='{letter}']")  # hovering / clicking runs nothing
    assert page.evaluate("() => window.__pwned") is None
    shot(page, "annotate-hostile-text")


def test_admin_dashboard_and_export(page, sqlite_setup, live_server, tmp_path):
    setup = sqlite_setup
    with session(setup.engine) as db:  # alice ranks in the order shown, bob in reverse
        for account in db.scalars(select(Account).where(Account.role == "annotator")):
            for n in range(4):
                assignment = service.next_assignment(db, account)
                view = service.task_view(db, account, assignment.id)
                letters = [r["letter"] for r in view["responses"]]
                if account.name == "bob":
                    letters.reverse()
                body = {"vote_key": f"{account.name}-seed-{n}", "ranking": " > ".join(letters)}
                service.record_vote(db, account, assignment.id, body)
    base = live_server.base
    login(page, base, setup.tokens["alice"], "/annotate")
    page.goto(base + "/admin")
    assert "needs another account" in page.content()  # an annotator is not an admin

    page.context.clear_cookies()
    login(page, base, setup.tokens["admin"], "/admin")
    rows = page.eval_on_selector_all(
        "#annotators tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [row[0] for row in rows] == ["alice", "bob"]
    assert [row[1] for row in rows] == ["4", "4"]
    assert "Fleiss" in page.text_content("#cards")
    assert page.locator("#pairs tbody tr").count() == 1

    page.fill("#new-name", "carol")
    page.click("#add-form button")
    page.wait_for_selector("#token-value")
    token = page.text_content("#token-value")
    assert token.startswith("pt_")
    page.wait_for_function("() => document.querySelectorAll('#annotators tbody tr').length === 3")
    shot(page, "admin-dashboard")

    with page.expect_download() as info:
        page.click("#export-all")
    path = tmp_path / "export.jsonl"
    info.value.save_as(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # 3 non-gold tasks x 2 annotators; the 2- and 3-response tasks give 1 and 3 pairs per vote
    assert len(records) == 2 * (1 + 3 + 1)
    assert {r["annotator"] for r in records} == {"alice", "bob"}
    assert all({"prompt", "chosen", "rejected", "task_id"} <= set(r) for r in records)
    with session(setup.engine) as db:
        assert db.scalar(select(func.count()).select_from(Account)) == 4

    page.context.clear_cookies()
    login(page, base, token, "/annotate")  # the new annotator's token works (no tasks yet)
    assert page.is_visible("#done") and progress_text(page) == "0 / 0 done"
