"""``posttrain cai`` on a tiny chat model: the loop runs, the trace is complete, the SFT data loads."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.data import load_examples
from posttrain.judges.constitution import load_constitution
from posttrain.recipes.cai import clean_reply, load_templates


def test_cai_writes_sft_data_and_full_trace(cli, jsonl, tmp_path):
    prompts = jsonl(
        "p.jsonl",
        [{"prompt": "Tell me about lunch:", "id": "a"}, {"prompt": "Describe the city:"}],
    )
    out = tmp_path / "cai.jsonl"
    code, _, err = cli(
        "cai",
        "--model",
        "tiny-llama-chat",
        "--prompts",
        prompts,
        "--output",
        out,
        "--rounds",
        "2",
        "--max_new_tokens",
        "12",
        "--critique_max_new_tokens",
        "8",
        "--seed",
        "1",
    )
    assert code == 0, err
    traces = [json.loads(x) for x in (tmp_path / "cai.trace.jsonl").read_text().splitlines()]
    assert len(traces) == 2 and traces[0]["id"] == "a"
    ids = load_constitution().by_id
    for t in traces:
        assert len(t["rounds"]) == 2
        for r in t["rounds"]:
            principle = ids[r["principle"]]
            assert r["critique_request"] == principle.critique
            assert r["revision_request"] == principle.revision
            assert isinstance(r["critique"], str) and isinstance(r["revision"], str)
        assert t["final"] == t["rounds"][-1]["revision"]
    sft = load_examples(str(out), ["sft"])
    assert [ex.response for ex in sft] == [t["final"] for t in traces if t["final"]]


def test_cai_is_deterministic_in_its_seed(cli, jsonl, tmp_path):
    prompts = jsonl("p.jsonl", [{"prompt": "Tell me about lunch:"}])
    args = ["cai", "--model", "tiny-llama-chat", "--prompts", prompts, "--max_new_tokens", "6"]
    args += ["--critique_max_new_tokens", "4", "--seed", "3"]
    assert cli(*args, "--output", tmp_path / "a.jsonl")[0] == 0
    assert cli(*args, "--output", tmp_path / "b.jsonl")[0] == 0
    a, b = (Path(tmp_path / f"{x}.trace.jsonl").read_text() for x in "ab")
    assert a == b


def test_cai_bad_input_exits_2(cli, jsonl, tmp_path):
    prompts = jsonl("p.jsonl", [{"prompt": "hi"}])
    empty = tmp_path / "c.yaml"
    empty.write_text("principles: []\n")
    no_critique = tmp_path / "judge_only.yaml"
    no_critique.write_text("principles:\n  - id: x\n    choose: Which is better?\n")
    bad_template = tmp_path / "t.yaml"
    bad_template.write_text("critique: '{request} {nonsense}'\nrevision: '{request}'\n")
    for extra, message in [
        (["--constitution", empty], f"{empty}:1: the constitution has no principles"),
        (["--constitution", no_critique], f"{no_critique}:2: principle 'x' has no \"critique\""),
        (["--templates", bad_template], "uses {nonsense}"),
        (["--rounds", "0"], "--rounds: must be >= 1"),
    ]:
        out = tmp_path / "never.jsonl"
        code, _, err = cli(
            "cai", "--model", "tiny-llama-chat", "--prompts", prompts, "--output", out, *extra
        )
        assert code == 2 and message in err, err
        assert not out.exists()


def test_shipped_assets_load():
    templates = load_templates(None)
    assert "{request}" in templates["critique"] and "{request}" in templates["revision"]
    prompts = load_examples(
        str(Path(__file__).resolve().parents[2] / "posttrain/assets/cai_prompts.jsonl"), ["prompt"]
    )
    assert len(prompts) >= 20
    assert clean_reply("  Revision: Hello there. ") == "Hello there."
