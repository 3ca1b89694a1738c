"""Agreement statistics with numbers worked out by hand, the Markdown subset, task-file parsing."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from posttrain.annotate import markdown
from posttrain.annotate.quality import (
    cohen_kappa,
    fleiss_kappa,
    gold_agreement,
    inter_annotator,
    pair_relations,
)
from posttrain.annotate.tasks import TaskFileError, normalize_ranking, read_tasks


def test_pair_relations():
    assert pair_relations("B > A = C") == {(0, 1): "<", (0, 2): "=", (1, 2): ">"}
    assert pair_relations("A > B") == {(0, 1): ">"}


def test_gold_agreement_by_hand():
    # gold A > B > C: (A,B) >, (A,C) >, (B,C) >.  vote B > A = C: (A,B) <, (A,C) =, (B,C) >.
    # One of three relations matches -> 1/3.
    assert gold_agreement("B > A = C", "A > B > C") == pytest.approx(1 / 3, abs=1e-12)
    assert gold_agreement("A > B", "A > B") == 1.0
    assert gold_agreement("A = B", "A > B") == 0.0


def test_cohen_kappa_by_hand():
    """a = > > < = >, b = > < < = >.  p_o = 4/5.  a: >3 <1 =1, b: >2 <2 =1;
    p_e = (3*2 + 1*2 + 1*1) / 25 = 9/25.  kappa = (0.8 - 0.36) / 0.64 = 0.6875."""
    a = [">", ">", "<", "=", ">"]
    b = [">", "<", "<", "=", ">"]
    assert cohen_kappa(a, b) == pytest.approx(0.6875, abs=1e-12)
    assert cohen_kappa(a, a) == pytest.approx(1.0, abs=1e-12)
    assert cohen_kappa([">", ">"], [">", ">"]) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None


def test_fleiss_kappa_by_hand():
    """Three items, three raters, categories x / y: {x3}, {x2 y1}, {y3}.
    P_i = 1, (4 + 1 - 3)/6 = 1/3, 1 -> P_bar = 7/9.  p_x = 5/9, p_y = 4/9 -> P_e = 41/81.
    kappa = (63/81 - 41/81) / (40/81) = 22/40 = 0.55."""
    items = [Counter(x=3), Counter(x=2, y=1), Counter(y=3)]
    assert fleiss_kappa(items) == pytest.approx(0.55, abs=1e-12)


def test_fleiss_kappa_varying_raters_by_hand():
    """Add an item with two raters who disagree: P_4 = (1 + 1 - 2)/2 = 0.  P_bar = (7/3)/4 = 7/12;
    p_x = 6/11, p_y = 5/11 -> P_e = 61/121; kappa = (7/12 - 61/121)/(60/121) = 115/720."""
    items = [Counter(x=3), Counter(x=2, y=1), Counter(y=3), Counter(x=1, y=1), Counter(x=1)]
    assert fleiss_kappa(items) == pytest.approx(115 / 720, abs=1e-12)  # the 1-rater item is dropped


def test_fleiss_kappa_matches_published_example():
    # The 10 subjects x 14 raters x 5 categories example of Fleiss' kappa (Wikipedia): 0.210.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    items = [Counter({k: n for k, n in enumerate(row) if n}) for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.20993, abs=5e-5)


def test_inter_annotator_uses_overlapping_pairs_only():
    votes = [
        ("t1", "alice", "A > B"),
        ("t1", "bob", "A > B"),
        ("t2", "alice", "B > A"),
        ("t2", "bob", "A = B"),
        ("t3", "alice", "A > B"),  # only one annotator: not an agreement item
    ]
    result = inter_annotator(votes)
    assert result["items"] == 2
    assert result["observed_agreement"] == 0.5
    (pair,) = result["pairs"]
    assert (pair["a"], pair["b"], pair["items"]) == ("alice", "bob", 2)
    # alice: > <, bob: > =.  p_o = 1/2, p_e = (1*1)/4 = 1/4 -> kappa = (1/2 - 1/4)/(3/4) = 1/3
    assert pair["cohen_kappa"] == pytest.approx(1 / 3, abs=1e-12)


def test_markdown_escapes_html_and_renders_subset():
    html = markdown.render(
        "# Title\n\nSome **bold** and *it* and `x<y`.\n\n- one\n- two <script>alert(1)</script>\n"
        "\n1. first\n2. second\n"
    )
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>x&lt;y</code>" in html
    assert "<ul>\n<li>one</li>" in html and "<ol>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_default_guidelines_render():
    from posttrain.annotate.server import DEFAULT_GUIDELINES

    html = markdown.render(DEFAULT_GUIDELINES.read_text(encoding="utf-8"))
    for word in ("Helpful", "Honest", "Harmless", "tie", "D &gt; C &gt; A = B"):
        assert word in html


def test_normalize_ranking():
    assert normalize_ranking("C>A=B", 3) == "C > A = B"
    with pytest.raises(ValueError, match="exactly once"):
        normalize_ranking("A > B", 3)
    with pytest.raises(ValueError):
        normalize_ranking("A > A > B", 3)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "completions": ["a"]}', '"completions" must hold 2 to 26 strings, got 1'),
        ('{"prompt": "p"}', '"completions" is missing'),
        ('{"completions": ["a", "b"]}', '"prompt" is missing'),
        ('{"prompt": "p", "completions": ["a", 3]}', '"completions" must be a list of strings'),
        ('{"prompt": "p", "completions": ["a", "b"], "gold": "A > C"}', "exactly once"),
        ('{"prompt": "p", "completions"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_task_file_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"prompt": "ok", "completions": ["a", "b"]}\n\n' + line + "\n")
    with pytest.raises(TaskFileError) as info:
        read_tasks(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: ")
    assert message in text


def test_task_file_reads_ids_gold_and_messages(tmp_path):
    path = tmp_path / "tasks.jsonl"
    rows = [
        {"prompt": "p", "completions": ["a", "b"]},
        {"id": 7, "prompt": [{"role": "user", "content": "hi"}], "completions": ["x", "y", "z"],
         "gold": "C>A=B"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = read_tasks(path)
    assert first.ext_id.startswith("sha1-") and first.gold is None
    assert second.ext_id == "7" and second.gold == "C > A = B" and second.source.endswith(":2")
    path.write_text(json.dumps(rows[1]) + "\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(TaskFileError, match=r":2: task id '7' already used on line 1"):
        read_tasks(path)


def test_disagreement_by_hand():
    from posttrain.annotate.quality import disagreement

    assert disagreement(["A > B", "A > B"]) == 0.0
    assert disagreement(["A > B", "B > A"]) == 0.5  # one pair, modal share 1/2
    assert disagreement(["A > B", "B > A", "A = B"]) == pytest.approx(2 / 3, abs=1e-12)
    # three responses, votes A > B > C and A > C > B: pairs (A,B) and (A,C) agree, (B,C) splits
    # -> (0 + 0 + 1/2) / 3
    assert disagreement(["A > B > C", "A > C > B"]) == pytest.approx(1 / 6, abs=1e-12)
    assert disagreement(["A > B"]) == 0.0


def test_annotator_habits_by_hand():
    from posttrain.annotate.quality import annotator_habits, median

    votes = [
        {"kind": "choice", "shown_ranking": "A > B", "confidence": 3, "elapsed_ms": 1000},
        {"kind": "choice", "shown_ranking": "A > B", "confidence": 2, "elapsed_ms": 4000},
        {"kind": "choice", "shown_ranking": "B > A", "confidence": 3, "elapsed_ms": 2000},
        {"kind": "choice", "shown_ranking": "A = B", "confidence": None, "elapsed_ms": None},
        {"kind": "rank", "shown_ranking": "C > A = B", "confidence": None, "elapsed_ms": 9000},
    ]
    habits = annotator_habits(votes)
    # A chosen in 2 of the 3 strict A / B choices; ties: 1 (A = B) + 1 (A = B in the ranking)
    # of 1 + 1 + 1 + 1 + 3 = 7 compared pairs; median of 1000, 2000, 4000, 9000 = 3000
    assert habits["position_a_rate"] == pytest.approx(2 / 3, abs=1e-12)
    assert habits["tie_rate"] == pytest.approx(2 / 7, abs=1e-12)
    assert habits["confidence"] == {1: 0, 2: 1, 3: 2}
    assert habits["median_ms"] == 3000 and habits["votes"] == 5
    assert median([]) is None and median([5]) == 5 and median([3, 1, 2]) == 2
    empty = annotator_habits([])
    assert empty["position_a_rate"] is None and empty["tie_rate"] is None
