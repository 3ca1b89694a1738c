"""The trainers' JSONL reader (posttrain.data.io) on awkward bytes: lines end at "\\n" only, a line
that is not UTF-8 or holds a lone surrogate is an error naming that line."""

from __future__ import annotations

import json

import pytest

from posttrain.data.formats import load_examples
from posttrain.data.io import read_records, write_jsonl
from posttrain.errors import UserError


def test_unicode_line_separators_stay_inside_their_record(tmp_path):
    path = tmp_path / "prefs.jsonl"
    texts = ["a\u2028b", "c\u2029d", "e\u0085f", "g\x0bh\x0ci\x1cj"]
    rows = [{"prompt": t, "chosen": t + "!", "rejected": t + "?"} for t in texts]
    # written raw (as json.dumps with ensure_ascii=False does), not through write_jsonl
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), "utf-8")
    examples = load_examples(str(path), ["preference"])
    assert [e.prompt for e in examples] == texts
    assert [e.where for e in examples] == [f"{path}:{n}" for n in range(1, 5)]


def test_write_jsonl_escapes_line_separators(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"text": "a\u2028b\u2029c\u0085d"}])
    raw = path.read_text("utf-8")
    assert len(raw.splitlines()) == 1 and "\u2028" not in raw
    assert read_records(path)[0].data == {"text": "a\u2028b\u2029c\u0085d"}


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UserError, match=rf"^{path}:3: not UTF-8 text"):
        read_records(path)


@pytest.mark.parametrize("escape", ["\\ud83d", "\\ude00", "\\ude00\\ud83d"])
def test_a_lone_surrogate_is_named(tmp_path, escape):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "x' + escape + '"}\n', "utf-8")
    with pytest.raises(UserError, match=rf"^{path}:2: a lone surrogate"):
        read_records(path)
    path.write_text('{"prompt": "pair \\ud83d\\ude00"}\n', "utf-8")  # a valid pair is fine
    assert read_records(path)[0].data["prompt"] == "pair \U0001f600"
