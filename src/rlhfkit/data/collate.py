"""Packing examples into rows without waste.

Several examples share one row; each restarts its `position_ids` at 0. With no attention mask given,
transformers reads the restarts as sequence boundaries and builds a block-diagonal causal mask, so no
token attends across examples (tests/test_collate.py checks the logits match the unpacked ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.data.tokenize import IGNORE, Example


def pack(examples: list[Example], row_length: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: lists of example indices, each list fitting in `row_length`."""
    return pack_lengths([len(e.input_ids) for e in examples], row_length)


def pack_lengths(lengths: list[int], row_length: int) -> list[list[int]]:
    """`pack` for sequences of the given lengths."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if n > row_length:
            raise ValueError(f"example {i} has {n} tokens, more than the row length {row_length}")
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(row_length - n)
    return rows


@dataclass
class PackedResponses:
    """Prompt + response sequences laid end to end in rows (positions restart at 0 for each), for scoring the
    responses: every response token has the (row, column) of the state that predicts it."""

    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    reads: torch.Tensor  # (N, 2) for the N response tokens
    targets: torch.Tensor  # (N,) the response tokens
    slots: torch.Tensor  # (N, 2): (which sequence, position in its response) of each token
    attention_mask: torch.Tensor | None = None  # (R, 1, L, L) bool where prompts are shared, else None

    def to(self, device: torch.device) -> PackedResponses:
        mask = self.attention_mask.to(device) if self.attention_mask is not None else None
        return PackedResponses(self.input_ids.to(device), self.position_ids.to(device), self.reads.to(device),
                               self.targets.to(device), self.slots.to(device), mask)


def pack_responses(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                   row_length: int = 0) -> PackedResponses:
    """Pack each prompt + response into rows of `row_length` (at least the longest sequence) tokens."""
    seqs = [p + r for p, r in zip(prompt_ids, response_ids, strict=True)]
    length = max(row_length, *map(len, seqs))
    ids, pos, reads, targets, slots = [], [], [], [], []
    for r, members in enumerate(pack_lengths(list(map(len, seqs)), length)):
        row_ids, row_pos = [], []
        for j in members:
            col, p, resp = len(row_ids), len(prompt_ids[j]), response_ids[j]
            reads += [(r, col + p - 1 + t) for t in range(len(resp))]
            slots += [(j, t) for t in range(len(resp))]
            targets += resp
            row_ids += seqs[j]
            row_pos += range(len(seqs[j]))
        ids.append(row_ids + [pad_id] * (length - len(row_ids)))
        pos.append(row_pos + list(range(length - len(row_ids))))  # padding is a sequence of its own
    return PackedResponses(torch.tensor(ids), torch.tensor(pos), torch.tensor(reads).view(-1, 2),
                           torch.tensor(targets), torch.tensor(slots).view(-1, 2))


def pack_shared_prompts(prompt_ids: list[list[int]], response_ids: list[list[int]], groups: list[int],
                        pad_id: int) -> PackedResponses:
    """`pack_responses` where several sequences answer the same prompt (equal `groups`): the prompt is laid out
    once and its responses after it (`layout_groups`), so it is computed once for all of them."""
    members: dict[int, list[int]] = {}
    for j, g in enumerate(groups):
        members.setdefault(g, []).append(j)
    seqs = list(members.values())
    layout = layout_groups([(prompt_ids[m[0]], [response_ids[j] for j in m]) for m in seqs], pad_id)
    reads, targets, slots = [], [], []
    for g, m in enumerate(seqs):
        prompt_row, prompt_last = layout.prompt_ends[g]
        for k, j in enumerate(m):
            row, col = layout.response_starts[g][k]
            resp = response_ids[j]
            # the first token is predicted from the prompt's last state, the others from the response's own
            reads += [(prompt_row, prompt_last) if t == 0 else (row, col + t - 1) for t in range(len(resp))]
            slots += [(j, t) for t in range(len(resp))]
            targets += resp
    return PackedResponses(layout.input_ids, layout.position_ids, torch.tensor(reads).view(-1, 2),
                           torch.tensor(targets), torch.tensor(slots).view(-1, 2), layout.attention_mask)


@dataclass
class GroupLayout:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, 1, L, L) bool, True = may attend
    prompt_ends: list[tuple[int, int]]  # (row, column) of each group's last prompt token
    response_starts: list[list[tuple[int, int]]]  # (row, column) of each response's first token, per group


def layout_groups(groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> GroupLayout:
    """Groups of (prompt, responses) packed into rows as long as the longest group (first-fit decreasing), each
    as [prompt][response 1]...[response K]. Each response attends to its prompt and to itself, never to another
    response, and continues the prompt's positions: every response sees exactly what it would see after the
    prompt alone, while the prompt is computed once for all K."""
    sizes = [len(p) + sum(map(len, rs)) for p, rs in groups]
    length = max(sizes)
    rows = pack_lengths(sizes, length)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    seg = torch.full((len(rows), length), -1, dtype=torch.long)  # which group; -1 = padding
    part = torch.zeros((len(rows), length), dtype=torch.long)  # 0 = prompt, k = response k
    prompt_ends: list[tuple[int, int]] = [(0, 0)] * len(groups)
    starts: list[list[tuple[int, int]]] = [[] for _ in groups]
    for r, members in enumerate(rows):
        col = 0
        for g in members:
            prompt, responses = groups[g]
            p = len(prompt)
            ids[r, col : col + p] = torch.tensor(prompt, dtype=torch.long)
            pos[r, col : col + p] = torch.arange(p)
            seg[r, col : col + p] = g
            col += p
            prompt_ends[g] = (r, col - 1)
            for k, resp in enumerate(responses, start=1):
                n = len(resp)
                starts[g].append((r, col))
                ids[r, col : col + n] = torch.tensor(resp, dtype=torch.long)
                pos[r, col : col + n] = torch.arange(p, p + n)
                seg[r, col : col + n] = g
                part[r, col : col + n] = k
                col += n
    idx = torch.arange(length)
    causal = idx[None, :] <= idx[:, None]
    same_group = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    visible = (part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])
    mask = (same_group & causal & visible) | torch.eye(length, dtype=torch.bool)  # padding sees itself: no empty rows
    return GroupLayout(ids, pos, mask[:, None], prompt_ends, starts)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L), restarting at 0 for every example
    labels: torch.Tensor  # (R, L), IGNORE on prompts and padding
    n_tokens: int  # real (non-pad) tokens
    n_padding: int

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device), self.position_ids.to(device), self.labels.to(device),
            self.n_tokens, self.n_padding,
        )


def collate_packed(rows: list[list[Example]], pad_id: int) -> PackedBatch:
    """Stack rows of examples, padded to the longest row. Padding is its own segment (positions from 0)."""
    length = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids, pos, labels = [], [], []
    n_tokens = 0
    for row in rows:
        r_ids, r_pos, r_lab = [], [], []
        for e in row:
            r_ids += e.input_ids
            r_pos += range(len(e.input_ids))
            r_lab += e.labels
        n_tokens += len(r_ids)
        pad = length - len(r_ids)
        ids.append(r_ids + [pad_id] * pad)
        pos.append(r_pos + list(range(pad)))
        labels.append(r_lab + [IGNORE] * pad)
    return PackedBatch(
        torch.tensor(ids), torch.tensor(pos), torch.tensor(labels),
        n_tokens=n_tokens, n_padding=len(rows) * length - n_tokens,
    )


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets for next-token prediction: position t predicts labels[t+1]; the last position none.

    Packing needs no special care: the first token of each example is a prompt token (IGNORE), so
    no position is trained to predict across an example boundary.
    """
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
