"""The annotator's experience in headless Chromium: a vote frozen while it is being saved,
revising an earlier vote, phone-sized and desktop screens, rankings by keys / compact text / drag,
Markdown responses, first-login guidelines and the shortcuts sheet.

Screenshots (both sizes) go to $POSTTRAIN_SCREENSHOTS (default /tmp/posttrain-annotate-screenshots);
``POSTTRAIN_SCREENSHOTS=docs/img`` refreshes the pictures in docs/annotate.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from posttrain.annotate import service
from posttrain.annotate.db import Account, Assignment, Vote, session

from .conftest import ServerProcess, build_setup, free_port

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("POSTTRAIN_SCREENSHOTS", "/tmp/posttrain-annotate-screenshots"))
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


@pytest.fixture
def new_page(chromium_browser):
    contexts = []

    def make(viewport=DESKTOP):
        context = chromium_browser.new_context(viewport=viewport, accept_downloads=True)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def login(page, base: str, token: str, landing: str = "/annotate", ack: bool = True) -> None:
    page.goto(base + "/login")
    page.fill("#token", token)
    page.click("#login-button")
    page.wait_for_url(base + landing)
    page.wait_for_selector("body[data-ready='1']")
    if ack and page.is_visible("#guidelines-ack"):
        page.click("#guidelines-ack")


def votes(setup) -> list[Vote]:
    with session(setup.engine) as db:
        return list(db.scalars(select(Vote).order_by(Vote.id)))


def wait_moved_on(page, assignment: str | None) -> None:
    page.wait_for_function(
        "(old) => { const t = document.querySelector('#task');"
        " return t.hidden || t.dataset.assignment !== old; }",
        arg=assignment,
    )


def current(page) -> str:
    return page.get_attribute("#task", "data-assignment")


def go_to_pair_task(page) -> None:
    """Skip ranking tasks until a two-response task is shown."""
    for _ in range(4):
        if page.is_visible("#pair-controls"):
            return
        old = current(page)
        page.click("#skip")
        wait_moved_on(page, old)
    raise AssertionError("no two-response task")


def go_to_rank_task(page) -> None:
    for _ in range(4):
        if page.is_visible("#rank-controls"):
            return
        old = current(page)
        page.click("#skip")
        wait_moved_on(page, old)
    raise AssertionError("no ranking task")


# ---------------------------------------------------------------------------------------------
# 1. the choice is frozen while it is being saved


def test_choice_is_frozen_while_a_vote_is_retried(new_page, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    page = new_page()
    login(page, base, setup.tokens["alice"])
    go_to_pair_task(page)
    failures = {"left": 3}
    bodies = []

    def flaky(route):
        bodies.append(json.loads(route.request.post_data))
        if failures["left"] > 0:
            failures["left"] -= 1
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/vote", flaky)
    old = current(page)
    page.keyboard.press("b")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('retrying')"
    )
    # keys and clicks that would change the choice do nothing while the vote is being saved
    page.keyboard.press("a")
    page.keyboard.press("1")
    page.keyboard.press("t")
    page.click("#choose-A", force=True)
    status = page.text_content("#status")
    assert "retrying" in status and "B" in status and "much better" in status
    assert "selected" in page.get_attribute("#choose-B", "class")
    assert "selected" not in (page.get_attribute("#choose-A", "class") or "")
    assert "selected" in page.get_attribute("#conf-3", "class")
    wait_moved_on(page, old)
    (stored,) = votes(setup)
    assert (stored.shown_ranking, stored.confidence) == ("B > A", 3)
    assert {body["vote_key"] for body in bodies} == {bodies[0]["vote_key"]}
    assert all(body["choice"] == "B" and body["confidence"] == 3 for body in bodies)
    assert page.text_content("#status") == ""  # the previous task's "Saved." does not linger


# ---------------------------------------------------------------------------------------------
# 3. previous: go back and revise a vote


def test_previous_revises_a_vote_and_keeps_history(new_page, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    page = new_page()
    login(page, base, setup.tokens["alice"])
    answered = []
    for _ in range(2):  # answer two tasks
        old = current(page)
        answered.append(old)
        if page.is_visible("#pair-controls"):
            page.keyboard.press("a")
            page.keyboard.press("2")
        else:
            page.keyboard.press("a")
            page.keyboard.press("b")
            page.keyboard.press("c")
        page.keyboard.press("Enter")
        wait_moved_on(page, old)
    pending = current(page)

    page.keyboard.press("p")  # back to the last answered task, its vote shown
    page.wait_for_function("(id) => document.querySelector('#task').dataset.assignment === id",
                           arg=answered[1])  # fmt: skip
    assert page.is_visible("#revise-banner")
    page.go_back()  # the browser's Back button goes one further back
    page.wait_for_function("(id) => document.querySelector('#task').dataset.assignment === id",
                           arg=answered[0])  # fmt: skip
    if page.is_visible("#pair-controls"):
        assert "selected" in page.get_attribute("#choose-A", "class")
        assert "selected" in page.get_attribute("#conf-2", "class")
        page.keyboard.press("b")
        page.keyboard.press("1")
        revised_to = "B > A"
    else:
        assert page.input_value("#ranking") == "A > B > C"
        page.fill("#ranking", "C B A")
        revised_to = "C > B > A"
    page.keyboard.press("Enter")
    # after a revision the page returns to the first unanswered task
    page.wait_for_function("(id) => document.querySelector('#task').dataset.assignment === id",
                           arg=pending)  # fmt: skip
    assert not page.is_visible("#revise-banner")

    stored = {str(v.assignment_id): v for v in votes(setup)}
    assert len(stored) == 2
    assert stored[answered[0]].shown_ranking == revised_to
    with session(setup.engine) as db:
        history = service.vote_history(db, int(answered[0]))
    assert len(history) == 1 and history[0]["shown_ranking"] != revised_to

    page.context.clear_cookies()
    login(page, base, setup.tokens["admin"], "/admin")
    export = page.evaluate(
        "async () => (await fetch('/api/admin/export?mode=all&include_gold=true')).text()"
    )
    records = [json.loads(line) for line in export.splitlines()]
    with session(setup.engine) as db:
        assignment = db.get(Assignment, int(answered[0]))
        mine = [r for r in records if r["annotator"] == "alice"]
        task_ids = {r["task_id"] for r in mine}
        assert len(task_ids) == 2  # one current vote per task, the superseded one is gone
        assert all(r["elapsed_ms"] >= 0 for r in mine)
        assert assignment is not None


def test_revision_api_keeps_history_and_latest_wins(sqlite_setup):
    setup = sqlite_setup
    with session(setup.engine) as db:
        alice = db.scalar(select(Account).where(Account.name == "alice"))
        assignment = service.next_assignment(db, alice)
        n = len(service.task_view(db, alice, assignment.id)["responses"])
        first = {"vote_key": "first-key-1", "ranking": "A > B" if n == 2 else "A > B > C"}
        second = {"vote_key": "second-key", "ranking": "B > A" if n == 2 else "CBA"}
        service.record_vote(db, alice, assignment.id, first)
        with pytest.raises(service.Conflict):  # a second vote must say it is a revision
            service.record_vote(db, alice, assignment.id, second)
        summary, created = service.record_vote(db, alice, assignment.id, {**second, "revise": True})
        assert created and summary["ranking"] == ("B > A" if n == 2 else "C > B > A")
        # a late retry of the superseded vote changes nothing
        summary, created = service.record_vote(db, alice, assignment.id, {**first, "revise": True})
        assert not created and summary["ranking"] == ("B > A" if n == 2 else "C > B > A")
        history = service.vote_history(db, assignment.id)
        assert [h["vote_key"] for h in history] == ["first-key-1"]
        recent = service.recent_answers(db, alice)
        assert [r["assignment_id"] for r in recent] == [assignment.id]


# ---------------------------------------------------------------------------------------------
# 4. any screen


def seed_votes(setup) -> None:
    """Every annotator answers their whole queue: A / B choices with varied confidence and a tie
    (bob), rankings as shown or reversed; times 3-9 s."""
    with session(setup.engine) as db:
        for account in db.scalars(select(Account).where(Account.role == "annotator")):
            tied = account.name != "bob"
            for n in range(100):
                assignment = service.next_assignment(db, account)
                if assignment is None or assignment.status == "done":
                    break
                view = service.task_view(db, account, assignment.id)
                shown = [r["letter"] for r in view["responses"]]
                body = {
                    "vote_key": f"{account.name}-{assignment.id}-seed",
                    "elapsed_ms": 3000 + 2000 * n,
                }
                if len(shown) == 2 and not tied:
                    body["choice"], tied = "tie", True
                elif len(shown) == 2:
                    body.update(choice="A" if n % 2 == 0 else "B", confidence=1 + n % 3)
                else:
                    body["ranking"] = "".join(shown if account.name == "alice" else shown[::-1])
                service.record_vote(db, account, assignment.id, body)


def overflow(page) -> int:
    return page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


def inside_viewport(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    width = page.viewport_size["width"]
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_pages_fit_the_screen(new_page, sqlite_setup, live_server, size):
    setup, base = sqlite_setup, live_server.base
    viewport = PHONE if size == "phone" else DESKTOP
    page = new_page(viewport)
    page.goto(base + "/login")
    assert inside_viewport(page, ".login-card") and overflow(page) == 0
    shot(page, f"annotate-login-{size}")
    login(page, base, setup.tokens["alice"], ack=False)
    assert page.is_visible("#guidelines")  # first login: the guidelines are open
    assert overflow(page) == 0
    for selector in (".bar", "#progress-text", "#guidelines"):
        assert inside_viewport(page, selector), selector
    prompt_width = page.locator("#prompt").bounding_box()["width"]
    assert prompt_width > 0.6 * viewport["width"] - 400 and prompt_width > 250
    shot(page, f"annotate-guidelines-{size}")
    page.click("#guidelines-ack")
    assert not page.is_visible("#guidelines")

    go_to_pair_task(page)
    assert overflow(page) == 0 and inside_viewport(page, ".bar")
    a = page.locator("#response-A").bounding_box()
    b = page.locator("#response-B").bounding_box()
    if size == "phone":  # one response per row
        assert b["y"] >= a["y"] + a["height"] - 1
    else:  # side by side
        assert abs(a["y"] - b["y"]) < 1 and b["x"] > a["x"] + a["width"]
    page.keyboard.press("b")
    page.keyboard.press("2")
    assert page.locator("#submit").is_visible()
    assert inside_viewport(page, "#submit")
    shot(page, f"annotate-pair-{size}")

    go_to_rank_task(page)
    for key in "ca=b":
        page.keyboard.press(key)
    assert overflow(page) == 0
    shot(page, f"annotate-rank-{size}")

    page.context.clear_cookies()
    seed_votes(setup)  # so that the quality tables have rows
    login(page, base, setup.tokens["admin"], "/admin")
    assert overflow(page) == 0
    assert inside_viewport(page, ".bar")
    shot(page, f"annotate-admin-{size}")
    assert page.locator("#habits tbody tr").count() == 2  # alice, bob
    assert page.locator("#disagreed tbody tr").count() >= 1
    page.evaluate("() => { document.querySelector('#quality').scrollIntoView();"
                  " window.scrollBy(0, -60); }")  # fmt: skip
    shot(page, f"annotate-quality-{size}")


# ---------------------------------------------------------------------------------------------
# 6. rankings


def test_ranking_by_letter_keys_and_compact_text(new_page, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    page = new_page()
    login(page, base, setup.tokens["alice"])
    go_to_rank_task(page)
    page.keyboard.press("c")
    page.keyboard.press("a")
    assert page.input_value("#ranking") == "C > A"
    assert "B" in page.text_content("#rank-missing")
    page.keyboard.press("Enter")  # incomplete: says which letter is missing, sends nothing
    assert "missing" in page.text_content("#status").lower() and "B" in page.text_content("#status")
    page.keyboard.press("Backspace")
    assert page.input_value("#ranking") == "C"
    page.keyboard.press("a")
    page.keyboard.press("=")
    page.keyboard.press("b")
    assert page.input_value("#ranking") == "C > A = B"
    assert page.text_content("#rank-missing") == ""
    old = current(page)
    page.keyboard.press("Enter")
    wait_moved_on(page, old)
    assert votes(setup)[-1].shown_ranking == "C > A = B"

    page.click("#previous")  # the compact forms are accepted too
    page.wait_for_function("(id) => document.querySelector('#task').dataset.assignment === id",
                           arg=old)  # fmt: skip
    for text, expected in (("bca", "B > C > A"), ("A C B", "A > C > B")):
        page.fill("#ranking", text)
        page.focus("#ranking")
        page.keyboard.press("Enter")
        page.wait_for_function("(id) => document.querySelector('#task').dataset.assignment !== id",
                               arg=old)  # fmt: skip
        assert votes(setup)[-1].shown_ranking == expected
        page.keyboard.press("p")
        page.wait_for_function("(id) => document.querySelector('#task').dataset.assignment === id",
                               arg=old)  # fmt: skip


def test_ranking_by_drag_and_drop(new_page, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    page = new_page()
    login(page, base, setup.tokens["alice"])
    go_to_rank_task(page)
    for key in "abc":
        page.keyboard.press(key)
    assert page.input_value("#ranking") == "A > B > C"
    page.drag_and_drop(".rank-chip[data-letter='C']", ".rank-chip[data-letter='A']")
    assert page.input_value("#ranking") == "C > A > B"
    old = current(page)
    page.click("#submit")
    wait_moved_on(page, old)
    assert votes(setup)[-1].shown_ranking == "C > A > B"


def test_ranking_by_touch_drag_on_a_phone(chromium_browser, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    context = chromium_browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        login(page, base, setup.tokens["alice"])
        go_to_rank_task(page)
        for letter in "ABC":
            page.tap(f".rank-letter[data-letter='{letter}']")
        assert page.input_value("#ranking") == "A > B > C"
        # a finger on C, lifted over A (what a touch drag reports as pointer events)
        page.evaluate(
            """() => {
              const chip = (l) => document.querySelector(`.rank-chip[data-letter='${l}']`);
              const at = chip('A').getBoundingClientRect();
              const init = {pointerType: 'touch', bubbles: true, cancelable: true, isPrimary: true};
              chip('C').dispatchEvent(new PointerEvent('pointerdown', init));
              chip('C').dispatchEvent(new PointerEvent('pointerup', {...init,
                clientX: at.x + at.width / 2, clientY: at.y + at.height / 2}));
            }"""
        )
        assert page.input_value("#ranking") == "C > A > B"
    finally:
        context.close()


# ---------------------------------------------------------------------------------------------
# 2. Markdown responses; 8. onboarding and shortcuts

MARKDOWN = [
    "Use a list:\n\n- **one**\n- two\n\n```python\nprint('hi')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |",
    "See [this](javascript:window.__pwned='md-link') and <img src=x onerror=\"window.__pwned='img'\">",
]


@pytest.fixture
def markdown_server(tmp_path):
    rows = [{"id": "m1", "prompt": "Format it *nicely*.", "completions": MARKDOWN}]
    setup = build_setup(
        f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "m.jsonl", rows, ("alice",), overlap=1
    )
    server = ServerProcess(setup.url, free_port(), tmp_path / "m.log")
    server.start()
    yield setup, server.base
    server.stop()
    setup.engine.dispose()


def test_markdown_responses_render_safely_with_a_raw_toggle(new_page, markdown_server):
    setup, base = markdown_server
    page = new_page()
    login(page, base, setup.tokens["alice"])
    page.wait_for_timeout(300)
    formatted = page.locator(".response-md", has_text="print")
    assert formatted.locator("li strong").first.text_content() == "one"
    code = formatted.locator("pre code")
    assert "print('hi')" in code.text_content()
    assert "mono" in code.evaluate("n => getComputedStyle(n).fontFamily").lower()
    hostile = page.locator(".response-md", has_text="See")
    assert hostile.locator("img, script").count() == 0
    hrefs = hostile.locator("a").evaluate_all("ns => ns.map(n => n.getAttribute('href'))")
    assert not any(h and h.lower().startswith("javascript") for h in hrefs)
    for link in hostile.locator("a").all():
        link.click()
    assert page.evaluate("() => window.__pwned") is None
    letter = formatted.evaluate("n => n.closest('.response').dataset.letter")
    shot(page, "annotate-markdown-desktop")
    page.click(f"#response-{letter} .raw-toggle")
    assert page.is_visible(f"#response-{letter} .response-raw")
    assert page.text_content(f"#response-{letter} .response-raw") in MARKDOWN


def test_first_login_guidelines_and_shortcut_sheet(new_page, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    page = new_page()
    login(page, base, setup.tokens["alice"], ack=False)
    assert page.is_visible("#guidelines") and page.is_visible("#guidelines-ack")
    page.click("#guidelines-ack")
    assert not page.is_visible("#guidelines")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert not page.is_visible("#guidelines")  # acknowledged: not shown again
    other = new_page(PHONE)  # another device: the server remembers the acknowledgement
    login(other, base, setup.tokens["alice"], ack=False)
    assert not other.is_visible("#guidelines")
    bob = new_page()  # another annotator has not read them yet
    login(bob, base, setup.tokens["bob"], ack=False)
    assert bob.is_visible("#guidelines-ack")
    page.keyboard.press("?")
    assert page.is_visible("#shortcuts") and "Previous" in page.text_content("#shortcuts")
    page.keyboard.press("Escape")
    assert not page.is_visible("#shortcuts")


# ---------------------------------------------------------------------------------------------
# 5. long tasks

LONG = "\n\n".join(f"Paragraph {k}: " + "words " * 30 for k in range(25))


@pytest.fixture
def long_server(tmp_path):
    rows = [
        {"id": f"long{k}", "prompt": "Context line.\n" * 40 + f"Question {k}?",
         "completions": [LONG, LONG.replace("words", "other")]}
        for k in range(2)
    ]  # fmt: skip
    setup = build_setup(
        f"sqlite:///{tmp_path / 'l.db'}", tmp_path / "l.jsonl", rows, ("alice",), overlap=1
    )
    server = ServerProcess(setup.url, free_port(), tmp_path / "l.log")
    server.start()
    yield setup, server.base
    server.stop()
    setup.engine.dispose()


def visible_in_viewport(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    height = page.viewport_size["height"]
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height + 0.5


def test_long_tasks_keep_controls_and_prompt_in_reach(new_page, long_server):
    setup, base = long_server
    page = new_page()
    login(page, base, setup.tokens["alice"])
    assert page.evaluate("() => document.documentElement.scrollHeight") > 2 * 900
    assert visible_in_viewport(page, "#submit")  # the controls are docked at the bottom
    page.evaluate("() => window.scrollTo(0, 1500)")
    assert visible_in_viewport(page, "#submit") and visible_in_viewport(page, "#prompt-box")
    assert page.locator("#prompt-box").bounding_box()["y"] < 120  # stuck under the header
    tall = page.locator("#prompt-box").bounding_box()["height"]
    page.click("#prompt-toggle")  # collapsible
    assert page.locator("#prompt-box").bounding_box()["height"] < tall / 2
    old = current(page)
    page.keyboard.press("a")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    wait_moved_on(page, old)
    assert page.evaluate("() => window.scrollY") == 0  # a new task starts at the top
    assert page.text_content("#status") == ""
    shot(page, "annotate-long-desktop")


def test_assign_says_when_only_gold_tasks_were_added(new_page, sqlite_setup, live_server):
    setup, base = sqlite_setup, live_server.base
    page = new_page()
    login(page, base, setup.tokens["admin"], "/admin")
    page.fill("#new-name", "carol")
    page.click("#add-form button")
    page.wait_for_selector("#token-value")
    page.fill("#overlap", "2")  # every regular task already has two annotators
    page.click("#assign-form button")
    page.wait_for_function("() => document.querySelector('#assign-result').textContent !== ''")
    text = page.text_content("#assign-result")
    assert text.startswith("1 new assignments") and "all of them gold" in text
