"""Batched sampling with a KV cache, and the log-probabilities of what was sampled.

`sample` renders prompts with the chat template, left-pads them into batches of similar length, and
lets `model.generate` decode with its KV cache until EOS or `max_new_tokens`. Each response keeps its
token ids (EOS included when it ended), so later stages score exactly the tokens that were sampled.
"""

from __future__ import annotations

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
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            n = len(encoded[i])
            ids[row, width - n :] = torch.tensor(encoded[i])
            mask[row, width - n :] = 1
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
            dict(do_sample=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                eos_token_id=eos, pad_token_id=pad, use_cache=True, **sampling,
            )[:, width:].cpu()
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
