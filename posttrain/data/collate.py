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
    return first_fit([len(e.input_ids) for e in examples], max_length)


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``capacity`` (first-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def collate_packed(examples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """One row of several examples laid end to end, each attending only to itself.

    Returns ``input_ids``, ``response_mask``, ``position_ids`` (restarting at 0 for each example),
    all (1, T), and a 4-D boolean ``attention_mask`` (1, 1, T, T): causal within an example,
    blocked across.
    """
    ids, resp, pos, seg = [], [], [], []
    for i, e in enumerate(examples):
        ids += e.input_ids
        resp += e.response_mask
        pos += range(len(e.input_ids))
        seg += [i] * len(e.input_ids)
    seg_ = torch.tensor(seg)
    causal = torch.ones(len(seg), len(seg), dtype=torch.bool).tril()
    return {
        "input_ids": torch.tensor([ids]),
        "response_mask": torch.tensor([resp]),
        "position_ids": torch.tensor([pos]),
        "attention_mask": (causal & (seg_[:, None] == seg_[None, :]))[None, None],
    }


def collate_shared_prefix(
    groups: Sequence[Sequence[Encoded]],
    pad_id: int,
    numbers: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """A padding-free batch of sequences that come in groups sharing their start (a pair's chosen
    and rejected share the prompt): each shared start is computed once.

    A group is laid out as its members' longest common prefix, up to (not including) the first
    position whose logits predict a response token, followed by each member's remainder, whose
    positions continue from the prefix; a remainder attends to the prefix and to itself only, so
    every member's tokens see exactly what they would alone. (A pair's prefix is so its prompt but
    the last token, which each remainder repeats: every position then predicts at most one label,
    and the logits read need no copy.) Groups go end to end into as
    few rows as fit the longest group (first-fit decreasing); a group attends only to itself. With
    groups of one this is plain padding-free packing.

    Sequences are numbered member-major: member j of group g is sequence ``j * G + g`` (every group
    has the same number of members); or ``numbers[g][j]`` (groups of any sizes; the numbers
    0..n-1 each once). Returns ``input_ids``, ``position_ids`` (R, T), boolean
    ``attention_mask`` (R, 1, T, T), and what :func:`posttrain.models.forward_packed_logprobs` needs
    to give the response log-probs one row per sequence, as a right-padded batch of the sequences
    would (L the longest sequence; K the response tokens after the first position):
    ``label_mask`` (n, L - 1) each sequence's ``response_mask[1:]``; ``label_from`` (K,) the flat
    index in (R, T) of the position whose logits predict a response token, strictly increasing;
    ``label_ids`` (K,) the token; ``label_to`` (K,) its flat index in (n, L - 1). For segment
    attention (``posttrain.models.segment_attention``: the rows' tokens end to end, N in all,
    each sequence a causal segment): ``token_index`` (N,) each token's flat index in (R, T),
    increasing; ``segment_tokens`` (n, L) the index in those N of each of a sequence's tokens (its
    group's prefix, then its remainder; 0 after its end), ``segment_lengths`` (n,), and
    ``segment_out`` (N,) the flat index in (n, L) whose attention output each token takes (a
    prefix's: the group's first member's).
    """
    if numbers is None:
        size = {len(g) for g in groups}
        assert len(size) == 1, "every group needs the same number of members"
        k, n_groups = size.pop(), len(groups)
        numbers = [[j * n_groups + g for j in range(k)] for g in range(n_groups)]
    n_seqs = sum(len(g) for g in groups)
    assert sorted(x for g in numbers for x in g) == list(range(n_seqs)), "numbers: 0..n-1 once"
    shared = [  # the common prefix, ending before the first position that predicts a label
        min(_common_prefix([m.input_ids for m in g]), *(max(m.response_start, 1) - 1 for m in g))
        for g in groups
    ]
    extent = [p + sum(len(m.input_ids) - p for m in g) for g, p in zip(groups, shared, strict=True)]
    rows = first_fit(extent, max(extent))
    width = max(sum(extent[g] for g in row) for row in rows)
    longest = max(len(m.input_ids) for g in groups for m in g)
    label_width = max(longest - 1, 0)
    # per row, built as lists (one tensor each at the end: small batches are Python-bound)
    ids, pos, unit, branch = [], [], [], []  # unit: the group; branch: 0 prefix, j + 1 member j
    label_mask = [[0] * label_width for _ in range(n_seqs)]
    label_from, label_ids, label_to = [], [], []
    # segment attention: the row tokens end to end (no padding), each sequence a segment
    token_index, seg_out, base = [], [], 0
    seg_tokens = [[0] * longest for _ in range(n_seqs)]
    seg_lengths = [0] * n_seqs
    for r, row in enumerate(rows):
        r_ids, r_pos, r_unit, r_branch = [], [], [], []
        for g in row:
            p, start = shared[g], base + len(r_ids)
            r_ids += groups[g][0].input_ids[:p]
            r_pos += range(p)
            r_branch += [0] * p
            first = numbers[g][0] * longest  # the prefix: member 0's output
            seg_out += range(first, first + p)
            for j, m in enumerate(groups[g]):
                n, seq, rest = len(m.input_ids), numbers[g][j], len(r_ids)
                seg_lengths[seq] = n
                seg_tokens[seq][:n] = [
                    *range(start, start + p),
                    *range(base + rest, base + rest + n - p),
                ]
                seg_out += range(seq * longest + p, seq * longest + n)
                r_ids += m.input_ids[p:]
                r_pos += range(p, n)
                r_branch += [j + 1] * (n - p)
                label_mask[seq][: n - 1] = m.response_mask[1:]
                for t in range(max(m.response_start, 1), n):  # token t, predicted at t - 1
                    label_from.append(r * width + rest + t - 1 - p)  # in the remainder
                    label_ids.append(m.input_ids[t])
                    label_to.append(seq * label_width + t - 1)
            r_unit += [g] * extent[g]
        token_index += range(r * width, r * width + len(r_ids))
        base += len(r_ids)
        pad = width - len(r_ids)
        ids.append(r_ids + [pad_id] * pad)
        pos.append(r_pos + [0] * pad)
        unit.append(r_unit + [-1] * pad)
        branch.append(r_branch + [0] * pad)
    unit, branch = torch.tensor(unit), torch.tensor(branch)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = unit[:, :, None] == unit[:, None, :]
    # a token sees the prefix and its own branch (padding: unit -1, branch 0, sees padding)
    visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    return {
        "input_ids": torch.tensor(ids),
        "position_ids": torch.tensor(pos),
        "attention_mask": (causal & same & visible)[:, None],
        "label_mask": torch.tensor(label_mask, dtype=torch.long).view(n_seqs, label_width),
        "label_from": torch.tensor(label_from, dtype=torch.long),
        "label_ids": torch.tensor(label_ids, dtype=torch.long),
        "label_to": torch.tensor(label_to, dtype=torch.long),
        "token_index": torch.tensor(token_index, dtype=torch.long),
        "segment_tokens": torch.tensor(seg_tokens, dtype=torch.long),
        "segment_lengths": torch.tensor(seg_lengths),
        "segment_out": torch.tensor(seg_out, dtype=torch.long),
    }


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``seqs``."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def rows_as_groups(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> tuple[list[list[Encoded]], list[list[int]], list[int]] | None:
    """A padded (B, T) batch of prompt-then-response rows (any padding on either side) as the
    groups of rows sharing their prompt, for :func:`collate_shared_prefix`: ``(groups, numbers,
    left)``, row ``numbers[g][j]`` being member j of group g and ``left[b]`` row b's leading
    padding. None when a row is not one contiguous run of tokens whose response is its end."""
    attend, respond = attention_mask.bool().tolist(), response_mask.bool().tolist()
    ids = input_ids.tolist()
    by_prompt: dict[tuple[int, ...], int] = {}
    groups: list[list[Encoded]] = []
    numbers: list[list[int]] = []
    left = []
    for b, (row, a, r) in enumerate(zip(ids, attend, respond, strict=True)):
        if True not in a:
            return None
        lo = a.index(True)
        hi = len(a) - a[::-1].index(True)
        start = r.index(True) if True in r else hi
        expected = [False] * start + [True] * (hi - start) + [False] * (len(r) - hi)
        if not all(a[lo:hi]) or r != expected:
            return None
        seq = Encoded(row[lo:hi], start - lo, False)
        g = by_prompt.setdefault(tuple(row[lo:start]), len(groups))
        if g == len(groups):
            groups.append([])
            numbers.append([])
        groups[g].append(seq)
        numbers[g].append(b)
        left.append(lo)
    return groups, numbers, left
