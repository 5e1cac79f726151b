"""Packing examples into rows without waste.

Several examples share one row; each restarts its `position_ids` at 0. With no attention mask given,
transformers reads the restarts as sequence boundaries and builds a block-diagonal causal mask, so no
token attends across examples (tests/test_tokenize_collate.py checks the logits match the unpacked ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.data.tokenize import IGNORE, Example, Group


def token_batches(sizes: list[int], budget: int) -> list[list[int]]:
    """Indices of items by size, longest first, cut into batches of at most `budget` tokens (a longer item alone):
    a forward pass each, with similar lengths together."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    batches: list[list[int]] = []
    tokens = 0
    for i in order:
        if not batches or tokens + sizes[i] > budget:
            batches.append([])
            tokens = 0
        batches[-1].append(i)
        tokens += sizes[i]
    return batches


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
class PackedGroups:
    """Groups laid out in rows, and where each response's tokens are read. Responses are numbered in group
    order (group 0's responses, then group 1's, ...): `slots` and `ends` use that numbering."""

    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L): a response continues its prompt's positions
    attention_mask: torch.Tensor | None  # (R, 1, L, L) bool (True = may attend) where a prompt is shared, else None
    reads: torch.Tensor  # (N, 2): (row, column) of the state that predicts each of the N response tokens
    targets: torch.Tensor  # (N,) the response tokens
    slots: torch.Tensor  # (N, 2): (which response, position in it) of each token
    ends: torch.Tensor  # (M, 2): (row, column) of each of the M responses' last token (where an RM reads)
    prompt_starts: torch.Tensor  # (G, 2): (row, column) of each group's first prompt token
    n_tokens: int  # real (non-pad) tokens

    def to(self, device: torch.device) -> PackedGroups:
        mask = self.attention_mask.to(device) if self.attention_mask is not None else None
        return PackedGroups(self.input_ids.to(device), self.position_ids.to(device), mask, self.reads.to(device),
                            self.targets.to(device), self.slots.to(device), self.ends.to(device),
                            self.prompt_starts.to(device), self.n_tokens)


def pack_groups(groups: list[Group], pad_id: int, row_length: int = 0, mask: bool | None = None) -> PackedGroups:
    """Groups packed into rows of max(row_length, the longest group) tokens, first-fit decreasing.

    Each response attends to its prompt and to itself, never to another response, and continues the prompt's
    positions: it sees exactly what it would see after the prompt alone. Where every group has one response,
    positions restart at each sequence and no mask is built (transformers reads the restarts as boundaries);
    where a prompt is shared, or `mask` asks for it (a forward that fills a KV cache), the (R, 1, L, L) mask
    says who sees whom."""
    sizes = list(map(len, groups))
    length = max(row_length, *sizes)
    rows = pack_lengths(sizes, length)
    shared = any(len(g.response_ids) > 1 for g in groups) if mask is None else mask
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    seg = torch.full((len(rows), length), -1, dtype=torch.long)  # which group; -1 = padding
    part = torch.zeros((len(rows), length), dtype=torch.long)  # 0 = prompt, k = response k
    first = [0] * len(groups)  # number of each group's first response
    for g in range(1, len(groups)):
        first[g] = first[g - 1] + len(groups[g - 1].response_ids)
    reads, targets, slots, ends = [], [], [], [(0, 0)] * (first[-1] + len(groups[-1].response_ids))
    starts = [(0, 0)] * len(groups)
    for r, members in enumerate(rows):
        col = 0
        for g in members:
            prompt, p = groups[g].prompt_ids, len(groups[g].prompt_ids)
            starts[g] = (r, col)
            ids[r, col : col + p] = torch.tensor(prompt, dtype=torch.long)
            pos[r, col : col + p] = torch.arange(p)
            seg[r, col : col + p] = g
            prompt_last, col = col + p - 1, col + p
            for k, resp in enumerate(groups[g].response_ids):
                n = len(resp)
                ids[r, col : col + n] = torch.tensor(resp, dtype=torch.long)
                pos[r, col : col + n] = torch.arange(p, p + n)
                seg[r, col : col + n] = g
                part[r, col : col + n] = k + 1
                # the first token is predicted from the prompt's last state, the others from the response's own
                reads += [(r, prompt_last) if t == 0 else (r, col + t - 1) for t in range(n)]
                slots += [(first[g] + k, t) for t in range(n)]
                targets += resp
                ends[first[g] + k] = (r, col + n - 1)
                col += n
        if not shared:  # padding is a sequence of its own
            pos[r, col:] = torch.arange(length - col)
    attend = None
    if shared:
        idx = torch.arange(length)
        causal = idx[None, :] <= idx[:, None]
        same_group = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        visible = (part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])
        attend = ((same_group & causal & visible) | torch.eye(length, dtype=torch.bool))[:, None]  # padding sees itself
    return PackedGroups(ids, pos, attend, torch.tensor(reads).view(-1, 2), torch.tensor(targets, dtype=torch.long),
                        torch.tensor(slots).view(-1, 2), torch.tensor(ends).view(-1, 2), torch.tensor(starts),
                        sum(sizes))


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
