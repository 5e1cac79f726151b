"""Evaluate policies on held-out prompts, as the paper's section 4 does, with simulated held-out labelers.

For each policy: responses to the held-out prompts; held-out-labeler win rates between policies with 95%
bootstrap intervals (resampling prompts); a Likert-style mean score; the share of prompts whose constraints
are all met; refusal rates on harmful and on harmless prompts; mean reward-model score; KL to the SFT policy
on the policy's own samples; perplexity on held-out prose (the alignment tax).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhfkit.data import IGNORE, Example, collate_packed, pack, pack_responses, shifted_targets
from rlhfkit.data.records import Prompt
from rlhfkit.evaluation.constraints import is_refusal, satisfaction
from rlhfkit.feedback.simulated import SimulatedLabeler
from rlhfkit.models import load_causal_lm, mixed_precision
from rlhfkit.rollout import Rollout, sample


@dataclass
class PolicyOutputs:
    name: str
    path: str
    rollout: Rollout  # one response per prompt, in prompt order


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path: str):
    """(model, tokenizer) on the evaluation device, in eval mode."""
    model, tok = load_causal_lm(path)
    return model.to(device()).eval(), tok


def generate(model, tok, prompts: list[Prompt], max_new_tokens: int, temperature: float, top_p: float,
             seed: int, batch_size: int = 32) -> Rollout:
    """One response per prompt, in prompt order."""
    torch.manual_seed(seed)
    bf16 = mixed_precision("auto", device()) == "bf16"
    roll = sample(model, tok, [p.prompt for p in prompts], 1, max_new_tokens, temperature, top_p, batch_size,
                  autocast=bf16)
    order = sorted(range(len(roll.prompt_index)), key=lambda i: roll.prompt_index[i])  # back to prompt order
    return Rollout(*[[getattr(roll, f)[i] for i in order] for f in ("prompt_index", "prompt_ids", "response_ids",
                                                                     "ended", "texts")])


@torch.no_grad()
def sequence_logprobs(model, tok, prompt_ids: list[list[int]], response_ids: list[list[int]],
                      batch_size: int = 32, row_length: int = 512) -> list[float]:
    """Σ_t log π(y_t | x, y_<t) of each response under `model` (fp32). Prompt + response sequences are packed
    end to end into rows (`pack_responses`), and the unembedding runs only on the states that predict a
    response token."""
    out = torch.zeros(len(prompt_ids), dtype=torch.float64)
    for start in range(0, len(prompt_ids), batch_size):
        end = min(start + batch_size, len(prompt_ids))
        pk = pack_responses(prompt_ids[start:end], response_ids[start:end], tok.pad_token_id, row_length)
        pk = pk.to(device())
        hidden = model.get_decoder()(input_ids=pk.input_ids, position_ids=pk.position_ids,
                                     use_cache=False).last_hidden_state
        logp = F.log_softmax(model.get_output_embeddings()(hidden[pk.reads[:, 0], pk.reads[:, 1]]).float(), -1)
        token_logp = logp.gather(-1, pk.targets[:, None]).squeeze(-1)
        out.index_add_(0, pk.slots[:, 0].cpu() + start, token_logp.double().cpu())
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
        batch = batch.to(device())
        hidden = model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                     use_cache=False).last_hidden_state
        targets = shifted_targets(batch.labels)
        keep = targets != IGNORE
        logits = model.get_output_embeddings()(hidden[keep]).float()
        nll += F.cross_entropy(logits, targets[keep], reduction="sum").item()
        count += int(keep.sum())
    return math.exp(nll / count)


def win_rate(judges: list[SimulatedLabeler], prompts: list[Prompt], a: PolicyOutputs, b: PolicyOutputs,
             bootstrap: int = 2000, seed: int = 0) -> dict:
    """Share of prompts where a's response beats b's (ties count half), each prompt judged by every held-out
    labeler and averaged; the 95% interval resamples prompts."""
    per_prompt = []
    for i, p in enumerate(prompts):
        votes = [j.compare(p, a.rollout.texts[i], b.rollout.texts[i], (a.rollout.ended[i], b.rollout.ended[i]))
                 for j in judges]
        per_prompt.append(sum(votes) / len(votes))
    rng = random.Random(seed)
    n = len(per_prompt)
    means = sorted(sum(per_prompt[rng.randrange(n)] for _ in range(n)) / n for _ in range(bootstrap))
    return {"win_rate": sum(per_prompt) / n, "low": means[int(0.025 * bootstrap)],
            "high": means[int(0.975 * bootstrap) - 1], "prompts": n}


def policy_metrics(out: PolicyOutputs, prompts: list[Prompt], judges: list[SimulatedLabeler]) -> dict:
    texts, ended = out.rollout.texts, out.rollout.ended
    with_constraints = [i for i, p in enumerate(prompts) if p.meta.get("constraints")]
    harmful = [i for i, p in enumerate(prompts) if p.meta.get("harmful")]
    harmless = [i for i, p in enumerate(prompts) if not p.meta.get("harmful")]
    likert = [sum(j.likert(j.quality(p, texts[i], ended[i])) for j in judges) / len(judges)
              for i, p in enumerate(prompts)]

    def share(idx, fn):
        return sum(fn(i) for i in idx) / len(idx) if idx else None

    return {
        "likert": sum(likert) / len(likert),
        "constraints_all_met": share(with_constraints, lambda i: satisfaction(prompts[i].meta["constraints"],
                                                                               texts[i]) == 1.0),
        "constraints_met": share(with_constraints, lambda i: satisfaction(prompts[i].meta["constraints"], texts[i])),
        "refusal_harmful": share(harmful, lambda i: is_refusal(texts[i])),
        "refusal_harmless": share(harmless, lambda i: is_refusal(texts[i])),
        "no_eos": share(range(len(prompts)), lambda i: not ended[i]),
        "response_words": share(range(len(prompts)), lambda i: len(texts[i].split())),
    }
