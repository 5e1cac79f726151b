"""What any policy evaluation measures on a model: its responses to prompts, the log-probability of given
responses under it (KL between policies on one's samples), and perplexity on held-out text (the alignment tax).
"""

from __future__ import annotations

import math

import torch

from rlhfkit.data import IGNORE, Example, Group, Prompt, collate_packed, pack, pack_groups, shifted_targets
from rlhfkit.losses import sft_loss
from rlhfkit.models import default_device, load_causal_lm, mixed_precision
from rlhfkit.models.lm import scored_logits, summed_logprobs
from rlhfkit.rollout import Rollout, sample


def load(path: str):
    """(model, tokenizer) on the evaluation device, in eval mode."""
    model, tok = load_causal_lm(path)
    return model.to(default_device()).eval(), tok


def generate(model, tok, prompts: list[Prompt], max_new_tokens: int, temperature: float, top_p: float,
             seed: int, batch_size: int = 32) -> Rollout:
    """One response per prompt, in prompt order."""
    torch.manual_seed(seed)
    bf16 = mixed_precision("auto", default_device()) == "bf16"
    roll = sample(model, tok, [p.prompt for p in prompts], 1, max_new_tokens, temperature, top_p, batch_size,
                  autocast=bf16)
    order = sorted(range(len(roll.prompt_index)), key=lambda i: roll.prompt_index[i])  # back to prompt order
    return Rollout(*[[getattr(roll, f)[i] for i in order] for f in ("prompt_index", "prompt_ids", "response_ids",
                                                                     "ended", "texts")])


@torch.no_grad()
def sequence_logprobs(model, tok, prompt_ids: list[list[int]], response_ids: list[list[int]],
                      batch_size: int = 32, row_length: int = 512, temperature: float = 1.0) -> list[float]:
    """Σ_t log π(y_t | x, y_<t) of each response under `model` (fp32; at `temperature`, the distribution the
    responses were sampled from), prompt + response sequences packed end to end (`models.lm.summed_logprobs`)."""
    out = torch.zeros(len(prompt_ids), dtype=torch.float64)
    for start in range(0, len(prompt_ids), batch_size):
        end = min(start + batch_size, len(prompt_ids))
        groups = [Group(p, [r]) for p, r in zip(prompt_ids[start:end], response_ids[start:end], strict=True)]
        pk = pack_groups(groups, tok.pad_token_id, row_length).to(default_device())
        out[start:end] = summed_logprobs(model, pk, temperature).double().cpu()
    return out.tolist()


@torch.no_grad()
def perplexity(model, tok, lines: list[str], row_length: int = 512) -> float:
    """exp(mean NLL per token) of plain text lines (each scored alone, BOS-free, EOS appended; packed into rows,
    positions restarting per line)."""
    encoded = [tok(line, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for line in lines]
    examples = [Example(ids, [IGNORE] + ids[1:]) for ids in encoded]  # the first token of a line is not predicted
    rows = pack(examples, max(row_length, *map(len, encoded)))
    nll, count = 0.0, 0
    for start in range(0, len(rows), 4):
        batch = collate_packed([[examples[i] for i in row] for row in rows[start : start + 4]], tok.pad_token_id)
        batch = batch.to(default_device())
        logits, targets = scored_logits(model, batch.input_ids, batch.position_ids, shifted_targets(batch.labels))
        nll += sft_loss(logits, targets, 1.0).item()
        count += len(targets)
    return math.exp(nll / count)
