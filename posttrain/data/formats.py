"""The data kinds of DESIGN.md: detection, record-by-record validation, normalisation.

| kind        | keys                                                           |
|-------------|----------------------------------------------------------------|
| sft         | prompt, completion  — or messages (list of {role, content})    |
| preference  | prompt, chosen, rejected; optional margin, id, subset; strength |
|             | p_chosen in [0, 1] or chosen_votes + rejected_votes; tie: true  |
|             | — or chosen, rejected only (implicit prompt, see below)         |
| ranked      | prompt, completions, ranking ("D > C > A = B") or wins (matrix) |
| scored      | prompt, completions, scores (list of {aspect: number})         |
| unpaired    | prompt, completion, label (true = desirable)                   |
| prompt      | prompt (prompt-only)                                           |
| completions | prompt, completions (two or more) — judge / annotate input     |
| text        | text (raw text, loss on every token, e.g. PPO-ptx data)        |

Layouts as the hub publishes them are read as the kinds above (:func:`hub_layout`):

- **HH-RLHF implicit prompt**: ``chosen`` and ``rejected`` are whole transcripts
  ``"\n\nHuman: ... \n\nAssistant: ..."``; the turns before the last Assistant turn (the same in
  both) become the prompt (a message list), the last Assistant turns the responses.
- **TRL implicit-prompt conversational**: ``chosen`` and ``rejected`` are message lists sharing
  their first turns; the shared turns are the prompt, each remaining assistant message the response.
- **UltraFeedback**: ``instruction`` (or ``prompt``) and ``completions`` as a list of objects with
  ``response`` and ``annotations`` (``{aspect: {"Rating": "4", ...}}``, ``"N/A"`` skipped) plus an
  optional ``overall_score`` (aspect ``overall``): a scored record.

**Preference strength.** ``p_chosen`` (probability that chosen is preferred), or
``chosen_votes`` / ``rejected_votes`` (p = c / (c + r)); ``tie: true`` means p = 0.5. A record
with p < 0.5 is turned round (chosen and rejected swapped, p -> 1 - p), so every pair's chosen is
the preferred side; no strength means p = 1. Ties (p = 0.5) are marked; :func:`split_ties`
drops them (default) or keeps them for a soft loss. A ranked record's ``wins`` matrix
(``wins[i][j]`` = how often completion i beat j) gives every pair the Bradley–Terry probability
of :func:`posttrain.data.pairs.wins_to_probabilities`.

A prompt is a string or a list of messages; a response (completion, chosen, rejected) is a string
or a message list whose last message is the assistant's. Every problem is reported as
``FILE:LINE: what is wrong`` through :class:`posttrain.errors.UserError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.io import Record, read_records
from posttrain.data.pairs import (
    letter_index,
    parse_ranking,
    ranking_to_pairs,
    scored_to_pairs,
    wins_to_probabilities,
)
from posttrain.errors import UserError

Messages = list[dict[str, str]]
Prompt = str | Messages

ROLES = ("system", "user", "assistant")
KINDS = ("sft", "preference", "ranked", "scored", "unpaired", "prompt", "completions", "text")
KIND_KEYS = {
    "sft": "prompt + completion, or messages",
    "preference": "prompt, chosen, rejected",
    "ranked": "prompt, completions, ranking (or wins)",
    "scored": "prompt, completions, scores",
    "unpaired": "prompt, completion, label",
    "prompt": "prompt",
    "completions": "prompt, completions",
    "text": "text",
}
REQUIRED = {
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "ranked": ("prompt", "completions"),
    "scored": ("prompt", "completions", "scores"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
    "completions": ("prompt", "completions"),
    "text": ("text",),
}


# kept from preference records (annotator exports) in Example.extra
EXTRA_KEYS = ("annotator", "annotators", "elapsed_ms", "confidence", "task_id", "judge")


@dataclass
class Example:
    """One validated record, normalised. Fields not used by its kind stay empty."""

    kind: str
    where: str
    prompt: Prompt
    response: str | None = None  # sft / unpaired completion
    chosen: str | None = None
    rejected: str | None = None
    label: bool | None = None
    margin: float | None = None
    completions: list[str] = field(default_factory=list)
    ranking: str | None = None
    wins: list[list[float]] | None = None  # ranked: wins[i][j] = times completion i beat j
    p_chosen: float | None = None  # preference: P(chosen preferred), >= 0.5; None = certain (1)
    tie: bool = False  # preference: p = 0.5 (split_ties drops or keeps it)
    scores: list[dict[str, float]] = field(default_factory=list)
    gold: str | None = None
    id: str | None = None
    subset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def detect_kind(data: dict[str, Any]) -> str | None:
    """The kind a record's keys say it is, or None."""
    keys = set(data)
    if "messages" in keys and "prompt" not in keys:
        return "sft"
    if {"chosen", "rejected"} <= keys:
        return "preference"  # with or without a prompt (implicit prompt: see hub_layout)
    if "prompt" not in keys:
        return "text" if "text" in keys else None
    if "completions" in keys:
        if "ranking" in keys or "wins" in keys:
            return "ranked"
        if "scores" in keys:
            return "scored"
        return "completions"
    if "completion" in keys:
        return "unpaired" if "label" in keys else "sft"
    return "prompt"


def _fail(rec: Record, message: str) -> UserError:
    return UserError(f"{rec.where}: {message}")


def _messages(rec: Record, key: str, value: Any) -> Messages:
    if not isinstance(value, list) or not value:
        raise _fail(rec, f'"{key}" must be a non-empty string or list of messages')
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _fail(rec, f'"{key}"[{i}] must be an object with "role" and "content"')
        if m["role"] not in ROLES:
            raise _fail(rec, f'"{key}"[{i}]: role {m["role"]!r} is not one of {", ".join(ROLES)}')
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise _fail(rec, f'"{key}"[{i}]: content must be a non-empty string')
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _required(rec: Record, key: str) -> Any:
    if key not in rec.data or rec.data[key] is None:
        raise _fail(rec, f'"{key}" is missing')
    return rec.data[key]


def _prompt(rec: Record) -> Prompt:
    value = _required(rec, "prompt")
    if isinstance(value, str):
        if not value.strip():
            raise _fail(rec, '"prompt" is empty')
        return value
    return _messages(rec, "prompt", value)


def _response(rec: Record, key: str) -> str:
    """A response string; a message list contributes its final assistant message."""
    value = _required(rec, key)
    if isinstance(value, str):
        if not value.strip():
            raise _fail(rec, f'"{key}" is empty')
        return value
    messages = _messages(rec, key, value)
    if messages[-1]["role"] != "assistant":
        raise _fail(rec, f'"{key}": the last message must be the assistant\'s')
    return messages[-1]["content"]


def _completions(rec: Record, minimum: int) -> list[str]:
    value = _required(rec, "completions")
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _fail(rec, '"completions" must be a list of strings')
    if len(value) < minimum:
        raise _fail(rec, f'"completions" needs at least {minimum} entries (has {len(value)})')
    return value


def _number(rec: Record, key: str) -> float | None:
    value = rec.data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(rec, f'"{key}" must be a number (got {value!r})')
    return float(value)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(rec: Record, key: str, text: str) -> Messages:
    """An HH-RLHF transcript ``"\n\nHuman: ...\n\nAssistant: ..."`` as messages."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 5:
        raise _fail(
            rec,
            f'"{key}" is not an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") '
            'and the record has no "prompt"',
        )
    turns = [
        {"role": HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]
    if turns[-1]["role"] != "assistant":
        raise _fail(rec, f'"{key}": the transcript must end with an "Assistant:" turn')
    for i, t in enumerate(turns[:-1]):
        if not t["content"]:
            raise _fail(rec, f'"{key}": turn {i + 1} ({t["role"]}) is empty')
    return turns


def _implicit_prompt(rec: Record) -> tuple[Messages, Any, Any]:
    """(prompt, chosen, rejected) of a record without ``prompt`` whose ``chosen`` and
    ``rejected`` are whole conversations (HH-RLHF strings or TRL message lists) sharing a start."""
    chosen, rejected = _required(rec, "chosen"), _required(rec, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        c, r = _hh_turns(rec, "chosen", chosen), _hh_turns(rec, "rejected", rejected)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        c, r = _messages(rec, "chosen", chosen), _messages(rec, "rejected", rejected)
    else:
        raise _fail(
            rec,
            '"prompt" is missing (a preference record without one needs "chosen" and '
            '"rejected" as whole transcripts: both strings or both message lists)',
        )
    k = 0  # the shared turns, never including either response
    while k < min(len(c), len(r)) - 1 and c[k] == r[k]:
        k += 1
    if k == 0:
        raise _fail(rec, '"prompt" is missing and "chosen" and "rejected" share no first turn')
    for key, turns in (("chosen", c), ("rejected", r)):
        if len(turns) != k + 1 or turns[-1]["role"] != "assistant":
            raise _fail(
                rec,
                f'"{key}" must be the shared prompt turns followed by ONE assistant turn '
                f"(it has {len(turns) - k} turns after the {k} shared ones)",
            )
        if not turns[-1]["content"]:
            raise _fail(rec, f'"{key}": the last assistant turn is empty')
    return c[:k], c[-1]["content"], r[-1]["content"]


def _ultrafeedback(rec: Record) -> Record:
    """An UltraFeedback-style record (``completions`` of objects with ``response`` and
    ``annotations``) as a scored record."""
    d = rec.data
    completions, scores = [], []
    for i, c in enumerate(d["completions"]):
        if not isinstance(c, dict) or not isinstance(c.get("response"), str):
            raise _fail(rec, f'"completions"[{i}] must be an object with a "response" string')
        ratings: dict[str, float] = {}
        annotations = c.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise _fail(rec, f'"completions"[{i}]["annotations"] must be an object')
        for aspect, a in annotations.items():
            value = a.get("Rating") if isinstance(a, dict) else a
            if value in (None, "N/A", "n/a", ""):
                continue
            try:
                ratings[aspect] = float(value)
            except (TypeError, ValueError):
                raise _fail(
                    rec, f'"completions"[{i}]: rating of "{aspect}" is not a number ({value!r})'
                ) from None
        if c.get("overall_score") is not None:
            ratings["overall"] = c["overall_score"]
        if not ratings:
            raise _fail(rec, f'"completions"[{i}] has no rating ("annotations" / "overall_score")')
        completions.append(c["response"])
        scores.append(ratings)
    data = {k: v for k, v in d.items() if k not in ("instruction", "completions")}
    data.update(
        prompt=d.get("prompt", d.get("instruction")), completions=completions, scores=scores
    )
    return Record(data, rec.path, rec.line)


def hub_layout(rec: Record) -> Record:
    """A record in a layout the hub publishes (see the module doc) in this module's keys;
    other records unchanged. (Implicit-prompt pairs are split in :func:`parse_example`.)"""
    d = rec.data
    comps = d.get("completions")
    if (
        "scores" not in d
        and isinstance(comps, list)
        and comps
        and all(isinstance(c, dict) for c in comps)
        and ("prompt" in d or "instruction" in d)
    ):
        return _ultrafeedback(rec)
    return rec


def _strength(rec: Record) -> tuple[float | None, bool]:
    """(p_chosen or None, tie) from ``p_chosen``, ``chosen_votes`` / ``rejected_votes``, ``tie``."""
    d = rec.data
    tie = d.get("tie")
    if tie is not None and not isinstance(tie, bool):
        raise _fail(rec, f'"tie" must be true or false (got {tie!r})')
    p = _number(rec, "p_chosen")
    if p is not None and not 0.0 <= p <= 1.0:
        raise _fail(rec, f'"p_chosen" must be in [0, 1] (got {p:g})')
    if d.get("chosen_votes") is not None or d.get("rejected_votes") is not None:
        c, r = _number(rec, "chosen_votes"), _number(rec, "rejected_votes")
        if c is None or r is None:
            raise _fail(rec, '"chosen_votes" and "rejected_votes" go together (give both)')
        if c < 0 or r < 0 or c + r == 0:
            raise _fail(rec, f"votes must be >= 0 and not both 0 (got {c:g} and {r:g})")
        votes = c / (c + r)
        if p is not None and abs(p - votes) > 1e-6:
            raise _fail(rec, f'"p_chosen" {p:g} disagrees with the votes ({c:g} : {r:g})')
        p = votes
    if tie:
        if p is not None and p != 0.5:
            raise _fail(rec, f'"tie" is true but "p_chosen" is {p:g} (a tie is 0.5)')
        p = 0.5
    return p, p == 0.5


def _wins(rec: Record, n: int) -> list[list[float]]:
    value = rec.data["wins"]
    if not (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(row, list) and len(row) == n for row in value)
    ):
        raise _fail(rec, f'"wins" must be a {n} x {n} matrix (one row and column per completion)')
    for i, row in enumerate(value):
        for j, w in enumerate(row):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
                raise _fail(rec, f'"wins"[{i}][{j}] must be a count >= 0 (got {w!r})')
    return [[float(w) for w in row] for row in value]


def parse_example(rec: Record, kind: str) -> Example:
    """Validate one record as ``kind`` and normalise it."""
    d = rec.data
    implicit = kind == "preference" and d.get("prompt") is None
    if not (kind == "sft" and "messages" in d) and not implicit:
        for key in REQUIRED[kind]:
            if d.get(key) is None:
                raise _fail(rec, f'"{key}" is missing (a {kind} record has {KIND_KEYS[kind]})')
    meta = {
        "id": None if d.get("id") is None else str(d["id"]),
        "subset": d.get("subset"),
        "gold": d.get("gold"),
    }
    if kind == "sft" and "messages" in d:
        messages = _messages(rec, "messages", d["messages"])
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise _fail(rec, '"messages" must end with an assistant message after a prompt')
        return Example(
            kind, rec.where, prompt=messages[:-1], response=messages[-1]["content"], **meta
        )
    if kind == "text":
        text = d["text"]
        if not isinstance(text, str) or not text.strip():
            raise _fail(rec, '"text" must be a non-empty string')
        return Example(kind, rec.where, "", response=text, **meta)
    if implicit:
        prompt, chosen, rejected = _implicit_prompt(rec)
        d = dict(d, prompt=prompt, chosen=chosen, rejected=rejected)
        rec = Record(d, rec.path, rec.line)
    prompt = _prompt(rec)
    if kind == "sft":
        return Example(kind, rec.where, prompt, response=_response(rec, "completion"), **meta)
    if kind == "prompt":
        return Example(kind, rec.where, prompt, **meta)
    if kind == "unpaired":
        label = d["label"]
        if not isinstance(label, bool):
            raise _fail(rec, f'"label" must be true or false (got {label!r})')
        return Example(
            kind, rec.where, prompt, response=_response(rec, "completion"), label=label, **meta
        )
    if kind == "preference":
        chosen, rejected = _response(rec, "chosen"), _response(rec, "rejected")
        margin = _number(rec, "margin")
        p, tie = _strength(rec)
        if p is not None and p < 0.5:  # the rejected side is the preferred one: turn it round
            if margin is not None:
                raise _fail(rec, '"margin" with "p_chosen" < 0.5 is ambiguous; swap the pair')
            chosen, rejected, p = rejected, chosen, 1.0 - p
        return Example(
            kind,
            rec.where,
            prompt,
            chosen=chosen,
            rejected=rejected,
            margin=margin,
            p_chosen=p,
            tie=tie,
            extra={k: d[k] for k in EXTRA_KEYS if d.get(k) is not None},
            **meta,
        )
    if kind == "completions":
        return Example(kind, rec.where, prompt, completions=_completions(rec, 2), **meta)
    completions = _completions(rec, 2)
    if kind == "ranked" and d.get("ranking") is None:
        if d.get("wins") is None:
            raise _fail(rec, '"ranking" (or "wins") is missing')
        wins = _wins(rec, len(completions))
        return Example(kind, rec.where, prompt, completions=completions, wins=wins, **meta)
    if kind == "ranked":
        ranking = d["ranking"]
        try:
            tiers = parse_ranking(ranking)
        except ValueError as exc:
            raise _fail(rec, str(exc)) from None
        for tier in tiers:
            for letter in tier:
                if letter_index(letter) >= len(completions):
                    raise _fail(
                        rec,
                        f"ranking names {letter} but there are only {len(completions)} completions",
                    )
        return Example(kind, rec.where, prompt, completions=completions, ranking=ranking, **meta)
    # scored
    scores = d["scores"]
    if not isinstance(scores, list) or len(scores) != len(completions):
        raise _fail(
            rec, f'"scores" must be a list with one entry per completion ({len(completions)})'
        )
    for i, s in enumerate(scores):
        if not isinstance(s, dict) or not s:
            raise _fail(rec, f'"scores"[{i}] must be an object like {{"helpfulness": 4}}')
        for aspect, v in s.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _fail(rec, f'"scores"[{i}]["{aspect}"] must be a number (got {v!r})')
    return Example(kind, rec.where, prompt, completions=completions, scores=scores, **meta)


def load_examples(path: str, accept: Sequence[str], *, what: str = "data") -> list[Example]:
    """Read and validate a whole file (hub layouts read as in :func:`hub_layout`).

    The first record's kind must be in ``accept``; a later record is read as its own kind when
    that is accepted too (an export may mix preference pairs and scored ratings), else as the
    first record's kind (so a missing key is reported as missing).
    """
    records = [hub_layout(rec) for rec in read_records(path)]
    kind = detect_kind(records[0].data)
    if kind not in accept:
        wanted = " or ".join(f"{k} ({KIND_KEYS[k]})" for k in accept)
        found = f"{kind} records" if kind else "records of no known kind"
        raise UserError(f"{records[0].where}: {what} must be {wanted}; found {found}")
    out = []
    for rec in records:
        own = detect_kind(rec.data)
        out.append(parse_example(rec, own if own in accept else kind))
    return out


def to_preference_pairs(
    examples: Sequence[Example], aspect_weights: dict[str, float] | None = None
) -> list[Example]:
    """Expand ranked and scored examples into preference examples; preference ones pass through.

    Ranked: every implied pair (ties none); with ``wins``, every pair with its Bradley–Terry
    probability as ``p_chosen`` (chosen = the likelier winner; p = 0.5 is a tie). Scored: the
    weighted sum of aspect scores orders the completions (``aspect_weights`` required; a record
    missing a weighted aspect is an error).
    """
    out: list[Example] = []
    for ex in examples:
        if ex.kind == "preference":
            out.append(ex)
        elif ex.kind == "ranked" and ex.wins is not None:
            try:
                probs = wins_to_probabilities(ex.wins)
            except ValueError as exc:
                raise UserError(f"{ex.where}: wins: {exc}") from None
            for i, j, p in probs:
                win, lose, p = (i, j, p) if p >= 0.5 else (j, i, 1.0 - p)
                out.append(
                    Example(
                        "preference",
                        ex.where,
                        ex.prompt,
                        chosen=ex.completions[win],
                        rejected=ex.completions[lose],
                        p_chosen=p,
                        tie=abs(p - 0.5) < 1e-9,
                        id=ex.id,
                        subset=ex.subset,
                    )
                )
        elif ex.kind == "ranked":
            for better, worse in ranking_to_pairs(ex.ranking):
                out.append(
                    Example(
                        "preference",
                        ex.where,
                        ex.prompt,
                        chosen=ex.completions[letter_index(better)],
                        rejected=ex.completions[letter_index(worse)],
                        id=ex.id,
                        subset=ex.subset,
                    )
                )
        elif ex.kind == "scored":
            if not aspect_weights:
                raise UserError(f"{ex.where}: scored data needs aspect weights in the config")
            try:
                pairs = scored_to_pairs(ex.scores, aspect_weights)
            except KeyError as exc:
                raise UserError(f"{ex.where}: {exc.args[0]}") from None
            for better, worse, _gap in pairs:
                out.append(
                    Example(
                        "preference",
                        ex.where,
                        ex.prompt,
                        chosen=ex.completions[better],
                        rejected=ex.completions[worse],
                        id=ex.id,
                        subset=ex.subset,
                    )
                )
        else:
            raise UserError(f"{ex.where}: a {ex.kind} record cannot become a preference pair")
    return out


TIES = ("drop", "soft")


def strength(example: Example) -> float:
    """P(chosen preferred) of a preference example: its ``p_chosen``, 1 when none was given."""
    p = getattr(example, "p_chosen", None)
    return 1.0 if p is None else p


def split_ties(pairs: Sequence[Example], ties: str = "drop") -> tuple[list[Example], int]:
    """(the pairs to train on, how many ties there were). A tie is ``tie: true`` or p = 0.5.

    ``ties="drop"`` (default) leaves them out; ``"soft"`` keeps them, to be trained at p = 0.5 by
    a loss that has a soft form (Bradley–Terry, conservative / robust DPO).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    n = sum(ex.tie for ex in pairs)
    kept = list(pairs) if ties == "soft" else [ex for ex in pairs if not ex.tie]
    return kept, n


def select_pairs(
    pairs: Sequence[Example], *, ties: str, what: str, loss_type: str | None = None
) -> tuple[list[Example], int]:
    """The preference pairs a run trains on and how many ties the data held (see
    :func:`split_ties`); UserError (before anything is written) when nothing is left or when
    ``loss_type`` (a DPO-family name; None: Bradley–Terry, which takes any p) cannot train a
    pair's soft label (``posttrain.losses.soft_label_problem``), naming that record."""
    from posttrain.losses import soft_label_problem

    kept, n_ties = split_ties(pairs, ties)
    if n_ties and not kept:
        raise UserError(
            f"{what}: no pairs left: all {n_ties} pairs are ties (p = 0.5); "
            "--ties soft trains them at p = 0.5"
        )
    if loss_type is not None:
        for ex in kept:
            problem = soft_label_problem(loss_type, strength(ex))
            if problem:
                raise UserError(f"{ex.where}: {problem}")
    return kept, n_ties


def ties_note(n_ties: int, n_pairs: int, ties: str) -> str:
    """The run's log line about ties."""
    action = "trained at p = 0.5" if ties == "soft" else "dropped (--ties soft keeps them)"
    return f"note: {n_ties} of {n_pairs} pairs are ties: {action}"


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text (message lists joined as 'role: content' lines) for display."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
