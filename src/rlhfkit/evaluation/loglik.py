"""Multiple-choice scoring by log-likelihood, the way EleutherAI's lm-evaluation-harness does it.

An item is a context and its choices; each choice is scored by Σ log p(choice tokens | context). Tokens are
split as the harness splits them, so the two agree on the same model: trailing spaces of the context move to
the choice, the context and the context + choice are each encoded with the tokenizer's defaults and the choice's
tokens are what the longer encoding adds; an empty context scores the choice after the tokenizer's BOS token
(EOS where it has none).

Unlike the harness, which runs the context again for every choice, an item is one packed group: its context once,
its choices after it, each choice attending to the context and itself only (`data.pack_groups`), and items are
packed end to end into rows, so padding and repeated contexts cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.console import make_progress
from rlhfkit.data import Group, pack_groups, token_batches
from rlhfkit.models import default_device
from rlhfkit.models.lm import response_logprobs


@dataclass
class Choices:
    context: str
    choices: list[str]


def encode_item(tok, item: Choices) -> Group:
    """The item's context tokens and each choice's tokens, split as lm-evaluation-harness splits them."""
    if not item.context:
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        conts = [tok.encode(c, add_special_tokens=False) for c in item.choices]
        if any(c and c[0] == prefix for c in conts):  # the text starts with the prefix token itself
            if not all(c and c[0] == prefix for c in conts):
                raise ValueError(f"choices of one item disagree on a leading {tok.decode([prefix])!r}")
            return Group([prefix], [c[1:] for c in conts])
        return Group([prefix], conts)
    context = item.context.rstrip()
    spaces = item.context[len(context):]
    context_ids = tok.encode(context)
    conts = []
    for choice in item.choices:
        whole = tok.encode(context + spaces + choice)
        conts.append(whole[len(context_ids):])
    if any(not c for c in conts):
        raise ValueError(f"a choice adds no tokens to its context: {item.context[-60:]!r}")
    return Group(context_ids, conts)


def shared_prefix(g: Group) -> Group:
    """The choices' common leading tokens moved into the context, each choice keeping at least one token. Their
    log-probability is the same in every choice, so this changes every choice's score by one constant: fine for
    metrics that use only differences between choices (CrowS-Pairs' gap, a distribution over choices), and the
    shared tokens are computed once instead of once a choice."""
    n = 0
    shortest = min(map(len, g.response_ids)) - 1
    while n < shortest and len({r[n] for r in g.response_ids}) == 1:
        n += 1
    return Group(g.prompt_ids + g.response_ids[0][:n], [r[n:] for r in g.response_ids]) if n else g


@torch.no_grad()
def choice_logliks(model, tok, items: list[Choices], batch_tokens: int = 8192, max_length: int | None = None,
                   show_progress: bool = True, description: str = "scoring", share_prefix: bool = False
                   ) -> list[list[float]]:
    """Σ log p(choice | context) for every choice of every item (fp64 sums of the model's log-probs). Items are
    packed `batch_tokens` at a time; a context longer than `max_length` (default: the model's positions) loses
    its start, as in the harness. `share_prefix`: score only what follows the choices' common leading tokens
    (`shared_prefix`; differences between an item's choices are unchanged)."""
    limit = max_length or getattr(model.config, "max_position_embeddings", None) or 2048
    groups = []
    for item in items:
        g = encode_item(tok, item)
        if share_prefix:
            g = shared_prefix(g)
        longest = max(map(len, g.response_ids))
        if len(g.prompt_ids) + longest > limit:
            g = Group(g.prompt_ids[-(limit - longest):], g.response_ids)
        groups.append(g)
    out: list[list[float]] = [[0.0] * len(item.choices) for item in items]
    device = default_device()
    with make_progress(show_progress) as bar:
        task = bar.add_task(description, total=len(items), metrics="")
        for batch in token_batches([len(g) for g in groups], batch_tokens):
            packed = pack_groups([groups[i] for i in batch], tok.pad_token_id, max(len(groups[i]) for i in batch))
            logp = response_logprobs(model, packed.to(device)).logprobs.double().cpu()
            first = [0]
            for i in batch:
                first.append(first[-1] + len(groups[i].response_ids))
            sums = torch.zeros(first[-1], dtype=torch.float64).index_add_(0, packed.slots[:, 0], logp)
            for k, i in enumerate(batch):
                out[i] = sums[first[k] : first[k + 1]].tolist()
            bar.advance(task, len(batch))
    return out
