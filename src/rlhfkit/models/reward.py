"""The reward model: a causal-LM backbone without its unembedding, and a scalar head read at the last token.

Saved as a folder:
    config.json, model.safetensors, tokenizer files   the backbone (a HF base model, e.g. LlamaModel)
    reward_head.safetensors                           the head: weight (1, hidden), bias (1,)
    reward_model.json                                 base model, normalisation shift, max length
`export_sequence_classification` writes the same RM as a standard `AutoModelForSequenceClassification` folder
(num_labels=1) that TRL, vLLM's reward serving and other tools load; `load_reward_model` reads both kinds.
Sequences are the prompt through the chat template, the response, and EOS (as in SFT) if the response
ended, so the reward is read at the EOS token of a finished response; a response cut off at the length limit
has no EOS, as PPO samples it, and is read at its last token.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from rlhfkit.data import Group, PromptText, encode_group, pack_groups, prompt_key, token_batches
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
        """Rewards (N,) of the N responses packed in the rows (`data.pack_groups`); `ends` (N, 2) holds each
        response's (row, last column)."""
        hidden = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
        last = hidden[ends[:, 0], ends[:, 1]]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1)

    def save(self, out_dir: str | Path, tokenizer, state_dict: dict | None = None) -> None:
        """The folder; `state_dict`: this module's weights to write in place of its own (gathered from FSDP's
        shards)."""
        out_dir = Path(out_dir)
        backbone = self.backbone
        if is_peft(backbone):  # merge a copy: the live model keeps training its adapters
            backbone = copy.deepcopy(backbone).merge_and_unload()
        part = (lambda prefix: {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}) \
            if state_dict is not None else (lambda prefix: None)
        backbone.save_pretrained(out_dir, safe_serialization=True, state_dict=part("backbone."))
        tokenizer.save_pretrained(out_dir)
        self.save_head(out_dir, part("head."))

    def save_head(self, out_dir: str | Path, head: dict | None = None) -> None:
        """The head and the metadata, each written under a temporary name and renamed into place."""
        out_dir = Path(out_dir)
        tmp_head, tmp_meta = out_dir / f".{HEAD_FILE}.tmp", out_dir / f".{META_FILE}.tmp"
        head = head if head is not None else self.head.state_dict()
        save_file({k: v.detach().float().contiguous() for k, v in head.items()}, tmp_head)
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


BIAS_KEY = "rlhfkit_reward_bias"  # config.json of an exported RM: the bias its standard head cannot hold


def _is_sequence_classifier(path: Path) -> bool:
    if not (path / "config.json").exists():
        return False
    config = json.loads((path / "config.json").read_text())
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def _export_pad_token(tokenizer) -> str:
    """A padding token other than EOS: standard sequence classifiers read the last token that is not padding,
    and the reward is read at the response's EOS."""
    if tokenizer.pad_token != tokenizer.eos_token:
        return tokenizer.pad_token
    specials = [tokenizer.unk_token] + sorted(tokenizer.get_added_vocab(), key=lambda t: ("pad" not in t, t))
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                             tokenize=False)
    for token in specials:
        if token and token not in (tokenizer.eos_token, tokenizer.bos_token) and token not in rendered:
            return token
    raise ModelLoadError("the tokenizer's only padding token is its EOS, where the reward is read; a standard "
                         "sequence classifier would skip it (add a pad token to the tokenizer)")


def export_sequence_classification(rm: RewardModel, tokenizer, out_dir: str | Path) -> Path:
    """The RM as a HF `AutoModelForSequenceClassification` folder (num_labels=1): the backbone, the head's weight
    as `score`, right padding with a token other than EOS. Standard heads of causal LMs (Llama, GPT-2, Qwen) have
    no bias, so the head's bias (the normalisation shift included) is stored in config.json as
    `rlhfkit_reward_bias`: a tool that ignores it sees every reward moved by that one constant, which changes no
    comparison, no ranking and no policy gradient with a baseline."""
    out_dir = Path(out_dir)
    backbone = copy.deepcopy(rm.backbone).merge_and_unload() if is_peft(rm.backbone) else rm.backbone
    config = copy.deepcopy(backbone.config)
    config.architectures = None
    config.num_labels = 1
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = _export_pad_token(tokenizer)
    tok.padding_side = "right"
    config.pad_token_id = tok.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config, dtype=rm.head.weight.dtype)
    model.base_model.load_state_dict(backbone.state_dict())
    head = model.score if hasattr(model, "score") else model.classifier
    with torch.no_grad():
        head.weight.copy_(rm.head.weight)
        bias = rm.head.bias.item()
        if getattr(head, "bias", None) is not None:
            head.bias.fill_(bias)
            bias = 0.0
    setattr(model.config, BIAS_KEY, bias)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def _from_sequence_classifier(path: Path, dtype: torch.dtype) -> tuple[RewardModel, object]:
    config = AutoConfig.from_pretrained(path)
    if config.num_labels != 1:
        raise ModelLoadError(f"{path}: a sequence classifier with {config.num_labels} labels; a reward model has 1")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                               attn_implementation="sdpa")
    head = model.score if hasattr(model, "score") else model.classifier
    rm = RewardModel(model.base_model, {"base_model": str(path), "imported_from": "sequence classification"})
    with torch.no_grad():
        rm.head.weight.copy_(head.weight)
        rm.head.bias.fill_(getattr(config, BIAS_KEY, 0.0) + (head.bias.item() if head.bias is not None else 0.0))
    return rm, load_tokenizer(path)


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[RewardModel, object]:
    """An RM folder of `rlhfkit rm`, or any HF sequence-classification folder with one label (an exported RM,
    or another tool's reward model)."""
    path = Path(path)
    if not (path / HEAD_FILE).exists() and _is_sequence_classifier(path):
        return _from_sequence_classifier(path, dtype)
    if not (path / HEAD_FILE).exists():
        raise ModelLoadError(f"{path}: not a reward model folder (no {HEAD_FILE}, nor a sequence-classification "
                             "model); train one with `rlhfkit rm`")
    backbone = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True, attn_implementation="sdpa")
    rm = RewardModel(backbone, json.loads((path / META_FILE).read_text()))
    rm.head.load_state_dict(load_file(path / HEAD_FILE))
    tokenizer = load_tokenizer(path)
    return rm, tokenizer


# ---- scoring -------------------------------------------------------------------------------------

def score_groups(rm: RewardModel, groups: list[Group], pad_id: int) -> torch.Tensor:
    """Rewards (M,) of every response of `groups`, in group order, each prompt computed once for its
    responses (`data.pack_groups`). Gradients flow if enabled: the RM trainer's forward is this too."""
    device = next(rm.parameters()).device
    packed = pack_groups(groups, pad_id).to(device)
    return rm(packed.input_ids, packed.position_ids, packed.attention_mask, packed.ends)


@torch.no_grad()
def score(rm: RewardModel, tokenizer, prompts: list[PromptText], responses: list[str], max_length: int = 1024,
          tokens_per_batch: int = 8192, autocast: bool = False, ended: list[bool] | None = None) -> torch.Tensor:
    """Rewards (N,) for N (prompt, response) pairs of text (`ended`: which finished with EOS, default all).
    Responses to the same prompt share its computation; batches hold about `tokens_per_batch` tokens."""
    device = next(rm.parameters()).device
    was_training = rm.training
    rm.eval()
    ended = ended or [True] * len(responses)
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(prompt_key(p), []).append(i)
    groups, members = [], []
    for idx in by_prompt.values():
        for start in range(0, len(idx), 16):  # bound a group's length (and its attention mask)
            chunk = idx[start : start + 16]
            groups.append(encode_group(tokenizer, prompts[chunk[0]], [responses[i] for i in chunk], max_length,
                                       [ended[i] for i in chunk])[0])
            members.append(chunk)
    out = torch.empty(len(prompts))
    for batch in token_batches([len(g) for g in groups], tokens_per_batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            rewards = score_groups(rm, [groups[g] for g in batch], tokenizer.pad_token_id).float().cpu()
        out[[i for g in batch for i in members[g]]] = rewards
    rm.train(was_training)
    return out
