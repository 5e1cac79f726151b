"""The reward model: a causal-LM backbone without its unembedding, and a scalar head read at the last token.

Saved as a folder:
    config.json, model.safetensors, tokenizer files   the backbone (a HF base model, e.g. LlamaModel)
    reward_head.safetensors                           the head: weight (1, hidden), bias (1,)
    reward_model.json                                 base model, normalisation shift, max length
Sequences are the prompt through the chat template, the response, and EOS (as in SFT) if the response
ended, so the reward is read at the EOS token of a finished response; a response cut off at the length limit
has no EOS, as PPO samples it, and is read at its last token.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from rlhfkit.data.collate import layout_groups
from rlhfkit.data.records import PromptText, as_messages
from rlhfkit.data.tokenize import encode_prompt, encode_response
from rlhfkit.models.loading import ModelLoadError, is_peft, load_causal_lm, load_tokenizer

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


class RewardModel(nn.Module):
    def __init__(self, backbone: nn.Module, meta: dict | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.meta = {"shift": 0.0, **(meta or {})}

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                ends: torch.Tensor) -> torch.Tensor:
        """Rewards (N,) of the N responses packed in the rows (see `pack_groups`); `ends` (N, 2) holds each
        response's (row, last column)."""
        hidden = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
        last = hidden[ends[:, 0], ends[:, 1]]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1)

    def save(self, out_dir: str | Path, tokenizer) -> None:
        out_dir = Path(out_dir)
        backbone = self.backbone
        if is_peft(backbone):  # merge a copy: the live model keeps training its adapters
            backbone = copy.deepcopy(backbone).merge_and_unload()
        backbone.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        self.save_head(out_dir)

    def save_head(self, out_dir: str | Path) -> None:
        """The head and the metadata, each written under a temporary name and renamed into place."""
        out_dir = Path(out_dir)
        tmp_head, tmp_meta = out_dir / f".{HEAD_FILE}.tmp", out_dir / f".{META_FILE}.tmp"
        save_file({k: v.detach().float().contiguous() for k, v in self.head.state_dict().items()}, tmp_head)
        tmp_meta.write_text(json.dumps(self.meta, indent=2))
        os.replace(tmp_head, out_dir / HEAD_FILE)
        os.replace(tmp_meta, out_dir / META_FILE)

    def apply_shift(self, shift: float) -> None:
        """Add `shift` to every reward (through the head's bias) and remember the total in the metadata."""
        with torch.no_grad():
            self.head.bias += shift
        self.meta["shift"] = self.meta.get("shift", 0.0) + shift


def reward_model_from_causal_lm(name_or_path: str | Path) -> tuple[RewardModel, object]:
    """A fresh RM from a causal-LM folder (by default the SFT output): its decoder, a new scalar head."""
    model, tokenizer = load_causal_lm(name_or_path)
    if is_peft(model):
        model = model.merge_and_unload()
    return RewardModel(model.get_decoder(), {"base_model": str(name_or_path)}), tokenizer


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[RewardModel, object]:
    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise ModelLoadError(f"{path}: not a reward model folder (no {HEAD_FILE}); train one with `rlhfkit rm`")
    backbone = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True, attn_implementation="sdpa")
    rm = RewardModel(backbone, json.loads((path / META_FILE).read_text()))
    rm.head.load_state_dict(load_file(path / HEAD_FILE))
    tokenizer = load_tokenizer(path)
    return rm, tokenizer


# ---- batching: one prompt, its K responses, the prompt computed once ------------------------------

@dataclass
class Group:
    """A prompt and responses to it. Packed as [prompt][response 1]...[response K]: each response attends to
    the prompt and to itself, never to another response, and continues the prompt's positions, so each
    reward equals that of prompt+response alone while the prompt is computed once for all K."""

    prompt_ids: list[int]
    response_ids: list[list[int]]  # response (+ EOS if it ended), cut to fit max_length with the prompt

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(map(len, self.response_ids))


def encode_group(tokenizer, prompt: PromptText, responses: list[str], max_length: int,
                 ended: list[bool] | None = None) -> tuple[Group, int]:
    """(group, number of responses cut) so that the prompt plus each response fits in max_length tokens.
    `ended` says which responses finished with EOS (default: all); the others get none.

    The responses are what is judged, so a long prompt gives way first: it keeps its last tokens (the
    latest turns, next to the response), down to half of max_length; then responses are cut at the end."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    ended = ended or [True] * len(responses)
    encoded = [encode_response(tokenizer, r, eos=e) for r, e in zip(responses, ended, strict=True)]
    longest = max(map(len, encoded))
    if len(prompt_ids) + longest > max_length:
        keep = max(max_length - longest, max_length // 2)
        prompt_ids = prompt_ids[-min(keep, len(prompt_ids)):]
    room = max_length - len(prompt_ids)
    return Group(prompt_ids, [ids[:room] for ids in encoded]), sum(len(ids) > room for ids in encoded)


@dataclass
class GroupBatch:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, 1, L, L) bool, True = may attend
    ends: torch.Tensor  # (N, 2): (row, column) of each response's last token, in group order
    n_tokens: int

    def to(self, device) -> GroupBatch:
        return GroupBatch(self.input_ids.to(device), self.position_ids.to(device), self.attention_mask.to(device),
                          self.ends.to(device), self.n_tokens)


def pack_groups(groups: list[Group], pad_id: int) -> GroupBatch:
    """Pack groups into rows as long as the longest group (`layout_groups`: first-fit decreasing)."""
    layout = layout_groups([(g.prompt_ids, g.response_ids) for g in groups], pad_id)
    ends = [(row, col + len(resp) - 1) for g, starts in zip(groups, layout.response_starts, strict=True)
            for (row, col), resp in zip(starts, g.response_ids, strict=True)]
    return GroupBatch(layout.input_ids, layout.position_ids, layout.attention_mask, torch.tensor(ends).view(-1, 2),
                      sum(map(len, groups)))


@torch.no_grad()
def score(rm: RewardModel, tokenizer, prompts: list[PromptText], responses: list[str], max_length: int = 1024,
          tokens_per_batch: int = 8192, autocast: bool = False, ended: list[bool] | None = None) -> torch.Tensor:
    """Rewards (N,) for N (prompt, response) pairs (`ended`: which finished with EOS, default all).
    Responses to the same prompt share its computation; batches hold about `tokens_per_batch` tokens."""
    device = next(rm.parameters()).device
    was_training = rm.training
    rm.eval()
    ended = ended or [True] * len(responses)
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(json.dumps(as_messages(p)), []).append(i)
    groups, members = [], []
    for idx in by_prompt.values():
        for start in range(0, len(idx), 16):  # bound a group's length (and its attention mask)
            chunk = idx[start : start + 16]
            groups.append(encode_group(tokenizer, prompts[chunk[0]], [responses[i] for i in chunk], max_length,
                                       [ended[i] for i in chunk])[0])
            members.append(chunk)
    out = torch.empty(len(prompts))
    order = sorted(range(len(groups)), key=lambda g: -len(groups[g]))
    start = 0
    while start < len(order):
        batch, tokens = [], 0
        while start < len(order) and (not batch or tokens + len(groups[order[start]]) <= tokens_per_batch):
            batch.append(order[start])
            tokens += len(groups[order[start]])
            start += 1
        packed = pack_groups([groups[g] for g in batch], tokenizer.pad_token_id).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            rewards = rm(packed.input_ids, packed.position_ids, packed.attention_mask, packed.ends).float().cpu()
        i = 0
        for g in batch:
            out[members[g]] = rewards[i : i + len(members[g])]
            i += len(members[g])
    rm.train(was_training)
    return out
