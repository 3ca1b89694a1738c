"""``posttrain judge`` end to end on tiny models and gold judges; bad input exits 2, writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.data import load_examples

ROWS = [
    {"prompt": "Tell me about lunch:", "completions": ["lunch was good", "lunch was bad"]},
    {
        "prompt": "Describe the city:",
        "completions": ["the city was fine", "good good city", "good city"],
        "id": "x",
    },
]


def _read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_task_judge_labels_all_pairs(cli, jsonl, tmp_path):
    out, summary = tmp_path / "prefs.jsonl", tmp_path / "summary.json"
    code, _, err = cli(
        "judge",
        "--judge",
        "task:counting",
        "--input",
        jsonl("in.jsonl", ROWS),
        "--output",
        out,
        "--swap",
        "--summary",
        summary,
    )
    assert code == 0, err
    rows = _read(out)
    assert len(rows) == 1 + 3  # one pair, then all 3 pairs of 3 completions
    assert rows[0]["chosen"] == "lunch was good" and rows[0]["p_chosen"] == 1.0
    third = [r for r in rows if r.get("id") == "x"]
    best = {(r["chosen_index"], r["rejected_index"]) for r in third}
    assert best == {(1, 0), (2, 0), (1, 2)}
    assert all(r["swap_agree"] is True and r["judge"] == "task:counting" for r in rows)
    stats = json.loads(summary.read_text())
    assert stats["comparisons"] == 4 and stats["position_bias_rate"] == 0.0
    # the output is valid preference data for dpo / rm
    assert [ex.kind for ex in load_examples(str(out), ["preference"])] == ["preference"] * 4


def test_ties_are_marked_or_dropped(cli, jsonl, tmp_path):
    rows = [{"prompt": "q", "completions": ["fine", "ok"]}]
    out = tmp_path / "o.jsonl"
    args = ["judge", "--judge", "task:counting", "--input", jsonl("t.jsonl", rows), "--output", out]
    assert cli(*args)[0] == 0
    (row,) = _read(out)
    assert row["tie"] is True and row["p_chosen"] == 0.5
    assert cli(*args, "--ties", "drop")[0] == 0
    assert out.read_text() == ""


def test_llm_judge_on_tiny_model_with_swap(cli, jsonl, tmp_path):
    out = tmp_path / "o.jsonl"
    code, _, err = cli(
        "judge",
        "--judge",
        "llm",
        "--model",
        "tiny-llama-chat",
        "--input",
        jsonl("in.jsonl", ROWS),
        "--output",
        out,
        "--swap",
    )
    assert code == 0, err
    rows = _read(out)
    assert len(rows) == 4
    for r in rows:
        assert 0.5 <= r["p_chosen"] <= 1.0 and isinstance(r["swap_agree"], bool)
        assert r["principle"] and r["judge"] == "llm:tiny-llama-chat"
    assert "position_bias_rate=" in err


def test_select_best_mode(cli, jsonl, tmp_path):
    out = tmp_path / "best.jsonl"
    for method in ("tournament", "round-robin", "pointwise"):
        code, _, err = cli(
            "judge",
            "--judge",
            "task:counting",
            "--input",
            jsonl("in.jsonl", ROWS),
            "--output",
            out,
            "--select",
            "best",
            "--method",
            method,
        )
        assert code == 0, err
        rows = _read(out)
        assert [r["best_index"] for r in rows] == [0, 1]
        assert rows[1]["best"] == "good good city"


@pytest.mark.parametrize(
    "rows, args, message",
    [
        (
            [ROWS[0], {"prompt": "q", "completions": ["only one"]}],
            ["--judge", "task:counting"],
            r"in\.jsonl:2: \"completions\" needs at least 2 entries \(has 1\)",
        ),
        (ROWS, ["--judge", "oracle"], "--judge: must be one of"),
        (ROWS, ["--judge", "task:nope"], "--judge: unknown task 'nope'"),
        (ROWS, ["--judge", "llm"], "--model: a llm judge needs a model"),
        (ROWS, ["--judge", "reward-model", "--model", "/no/such/rm"], "no such reward-model"),
        (
            ROWS,
            [
                "--judge",
                "llm",
                "--model",
                "tiny-llama",
                "--select",
                "best",
                "--method",
                "pointwise",
            ],
            "--method: the llm judge is pairwise only",
        ),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(cli, jsonl, tmp_path, rows, args, message):
    out = tmp_path / "never.jsonl"
    code, _, err = cli("judge", *args, "--input", jsonl("in.jsonl", rows), "--output", out)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_constitution_without_principles_exits_2(cli, jsonl, tmp_path):
    empty = tmp_path / "constitution.yaml"
    empty.write_text("name: empty\nprinciples: []\n")
    out = tmp_path / "never.jsonl"
    code, _, err = cli(
        "judge",
        "--judge",
        "llm",
        "--model",
        "tiny-llama",
        "--constitution",
        empty,
        "--input",
        jsonl("in.jsonl", ROWS),
        "--output",
        out,
    )
    assert code == 2
    assert f"{empty}:2: the constitution has no principles" in err
    assert not out.exists()


def test_generative_judge_that_never_parses_gives_counted_ties(cli, jsonl, tmp_path):
    out, summary = tmp_path / "o.jsonl", tmp_path / "s.json"
    code, _, err = cli(
        "judge",
        "--judge",
        "generative",
        "--model",
        "tiny-llama-chat",  # random weights: its replies are noise, never a verdict
        "--max_new_tokens",
        "6",
        "--input",
        jsonl("in.jsonl", ROWS),
        "--output",
        out,
        "--swap",
        "--summary",
        summary,
    )
    assert code == 0, err
    rows = _read(out)
    assert len(rows) == 4 and all(r["tie"] and r["unparsed"] == 2 for r in rows)
    stats = json.loads(summary.read_text())
    assert stats["unparsed"] == 8 and stats["ties"] == 4


def test_reward_model_judge_from_a_trained_rm(cli, jsonl, tmp_path):
    prefs = jsonl("prefs.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 2)
    rm_args = [
        "rm",
        "--model",
        "tiny-llama",
        "--train_data",
        prefs,
        "--output_dir",
        tmp_path / "rm",
    ]
    assert cli(*rm_args, "--max_steps", "1", "--batch_size", "2", "--progress", "false")[0] == 0
    out = tmp_path / "o.jsonl"
    code, _, err = cli(
        "judge",
        "--judge",
        "reward-model",
        "--model",
        tmp_path / "rm" / "final",
        "--input",
        jsonl("in.jsonl", ROWS),
        "--output",
        out,
    )
    assert code == 0, err
    from posttrain.models.reward import load_reward_model

    rm = load_reward_model(tmp_path / "rm" / "final")
    row = _read(out)[0]
    r = rm.score([row["prompt"]] * 2, [row["chosen"], row["rejected"]])
    import math

    assert row["p_chosen"] == pytest.approx(1 / (1 + math.exp(r[1] - r[0])), abs=1e-6)
