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

    def to(self, device: torch.device) -> PackedResponses:
        return PackedResponses(self.input_ids.to(device), self.position_ids.to(device), self.reads.to(device),
                               self.targets.to(device), self.slots.to(device))


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
