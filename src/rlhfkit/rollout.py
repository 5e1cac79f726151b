"""Batched sampling with a KV cache.

`sample` renders prompts with the chat template, left-pads them into batches of similar length and
decodes with its own short loop over a KV cache until every row has hit EOS or `max_new_tokens`.
With bf16 it decodes a bf16 copy of the weights (made once per call) rather than autocasting the fp32
weights again at every token. Each response keeps its token ids (EOS included when it ended), so later
stages score exactly the tokens that were sampled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from rlhfkit.data.records import PromptText
from rlhfkit.data.tokenize import encode_prompt


@dataclass
class Rollout:
    prompt_index: list[int]  # which input prompt each sample answers
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # sampled tokens, ending with EOS when the response finished
    ended: list[bool]  # False: cut off at max_new_tokens
    texts: list[str]


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[PromptText],
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    autocast: bool = False,
    max_prompt_length: int | None = None,
) -> Rollout:
    """`num_samples` responses to each prompt; temperature 0 decodes greedily. Prompts longer than
    `max_prompt_length` tokens keep their last tokens (the end of the chat template stays intact)."""
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if max_prompt_length:
        encoded = [ids[-max_prompt_length:] for ids in encoded]
    jobs = [i for i in range(len(prompts)) for _ in range(num_samples)]
    jobs.sort(key=lambda i: len(encoded[i]))  # similar lengths per batch: little left padding
    out = Rollout([], [], [], [], [])
    was_training = model.training
    model.eval()
    decoder = _bf16_copy(model) if autocast else model
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            n = len(encoded[i])
            ids[row, width - n :] = torch.tensor(encoded[i])
            mask[row, width - n :] = 1
        generated = decode(decoder, ids.to(device), mask.to(device), max_new_tokens, temperature, top_p, eos,
                           pad).cpu()
        for row, i in enumerate(batch):
            tokens = generated[row].tolist()
            ended = eos in tokens
            tokens = tokens[: tokens.index(eos) + 1] if ended else tokens
            out.prompt_index.append(i)
            out.prompt_ids.append(encoded[i])
            out.response_ids.append(tokens)
            out.ended.append(ended)
            out.texts.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    model.train(was_training)
    return out


def _bf16_copy(model):
    """A bf16 copy to decode with (LoRA adapters merged into it); the trained model is left as it is."""
    copy_ = copy.deepcopy(model)
    if hasattr(copy_, "merge_and_unload"):
        copy_ = copy_.merge_and_unload()
    return copy_.to(torch.bfloat16).eval()


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next tokens (B,) from logits (B, V): greedy at temperature 0, else sampled with nucleus top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        return order.gather(-1, torch.multinomial(sorted_probs, 1)).squeeze(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
           eos: int, pad: int) -> torch.Tensor:
    """Tokens (B, <= max_new_tokens) after left-padded prompts; rows that ended are padded after their EOS."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        token = torch.where(finished, torch.full_like(finished, pad, dtype=torch.long),
                            pick_tokens(logits, temperature, top_p))
        tokens.append(token)
        real = ~finished  # this step's token counts for rows that had not ended (their EOS included)
        finished = finished | (token == eos)
        if finished.all() or len(tokens) == max_new_tokens:
            break
        mask = torch.cat([mask, real[:, None].to(mask.dtype)], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                       past_key_values=cache, use_cache=True).logits[:, -1]
        next_position = next_position + 1
    return torch.stack(tokens, dim=1)
