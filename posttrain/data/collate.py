"""Padding and packing token sequences into batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from posttrain.data.chat import Encoded


def pad(seqs: Sequence[Sequence[int]], value: int, *, side: str = "right") -> torch.Tensor:
    """(B, T) long tensor of the sequences padded with ``value`` on ``side`` to the longest."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if side == "right":
                out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            else:
                out[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(
    examples: Sequence[Encoded], pad_id: int, *, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Batch of ``input_ids``, ``attention_mask``, ``response_mask``, each (B, T)."""
    return {
        "input_ids": pad([e.input_ids for e in examples], pad_id, side=side),
        "attention_mask": pad([[1] * len(e.input_ids) for e in examples], 0, side=side),
        "response_mask": pad([e.response_mask for e in examples], 0, side=side),
    }


def pack(examples: Sequence[Encoded], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_length`` tokens (first-fit decreasing)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_length - n)
    return rows


def collate_packed(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """One row of several examples laid end to end, each attending only to itself.

    Returns ``input_ids``, ``response_mask``, ``position_ids`` (restarting at 0 for each example)
    and a 4-D boolean ``attention_mask`` (1, 1, T, T): causal within an example, blocked across.
    """
    batch = lay_out(examples, [list(range(len(examples)))], pad_id)
    del batch["segment"]
    return batch


def collate_padding_free(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """The examples packed into as few rows as fit the longest of them (first-fit decreasing):
    the work of a padded batch without most of its padding. See :func:`lay_out`; per-example sums
    model outputs go back to one row per example with :func:`posttrain.models.unpack`."""
    width = max(len(e.input_ids) for e in examples)
    return lay_out(examples, pack(examples, width), pad_id)


def lay_out(
    examples: Sequence[Encoded], rows: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Row r holds ``examples[i] for i in rows[r]`` end to end, right-padded to the longest row.

    ``input_ids``, ``response_mask``, ``position_ids`` (restarting at 0 for each example),
    ``segment`` (the example index of each token, -1 on padding), all (R, T); ``attention_mask``
    (R, 1, T, T) boolean: causal within an example, blocked across (padding attends to padding).
    """
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    resp = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e, n = examples[i], len(examples[i].input_ids)
            ids[r, at : at + n] = torch.as_tensor(e.input_ids)
            resp[r, at : at + n] = torch.as_tensor(e.response_mask)
            pos[r, at : at + n] = torch.arange(n)
            seg[r, at : at + n] = i
            at += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = seg[:, :, None] == seg[:, None, :]
    return {
        "input_ids": ids,
        "response_mask": resp,
        "position_ids": pos,
        "segment": seg,
        "attention_mask": (causal & same)[:, None],
    }
