"""DPO on rankings (Rafailov et al. 2023): the policy learns the labelers' rankings directly, without a reward
model or sampling.

The data and its weighting are the reward model's (train/reward.py): a batch element is a prompt with its K
responses and every labeler's ranking of them; the K responses are forwarded once (the prompt once for all K),
and every strictly ordered pair of a ranking counts, a ranking's loss the mean over its pairs. The reward is
implicit, β·log(π(y|x) / π_ref(y|x)), and the loss is `losses.dpo_ranking_loss`. The reference's log-probs
never change: they are computed once, before training, and kept in reference_logps.json so a resumed run does
not load the reference again.

Held out (by prompt): the implicit reward's ranking accuracy, as the RM's report measures it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from torch import nn

from rlhfkit.config import DPOConfig
from rlhfkit.console import console
from rlhfkit.data import pack_groups, token_batches
from rlhfkit.data.rankings import read_rankings
from rlhfkit.errors import UsageError
from rlhfkit.losses import dpo_ranking_loss, ranked_pairs
from rlhfkit.models import load_causal_lm
from rlhfkit.models.lm import summed_logprobs
from rlhfkit.train.common import (
    CausalLMTrainer,
    Hooks,
    Launch,
    Schedule,
    TrainLoop,
    load_trainable_lm,
    read_splits,
    step_items,
)
from rlhfkit.train.reward import EncodedRanking, by_ranking, encode_rankings, ranked_prompt
from rlhfkit.train.reward_metrics import ranking_pairs, reward_metrics


class SequenceLogprobs(nn.Module):
    """One forward for DDP/FSDP: Σ_t log π(y_t | x, y_<t) of every response of packed groups."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, groups: list, pad_id: int) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return summed_logprobs(self.model, pack_groups(groups, pad_id).to(device))


@torch.no_grad()
def reference_logps(model: nn.Module, items: list[EncodedRanking], pad_id: int, autocast, tokens: int = 8192
                    ) -> list[list[float]]:
    """Each item's K sequence log-probs under the frozen reference, batched by tokens."""
    out: list[list[float]] = [[] for _ in items]
    model.eval()
    for batch in token_batches([len(it.group) for it in items], tokens):
        with autocast():
            flat = SequenceLogprobs(model)([items[i].group for i in batch], pad_id).float().cpu().tolist()
        at = 0
        for i in batch:
            k = len(items[i].group.response_ids)
            out[i], at = flat[at : at + k], at + k
    return out


def cached_reference(loop: TrainLoop, cfg: DPOConfig, train: list[EncodedRanking], evals: list[EncodedRanking],
                     pad_id: int) -> tuple[list[list[float]], list[list[float]]]:
    """The reference's log-probs of the train and held-out responses: read from the run folder when an earlier
    start of this run computed them, else computed (each process its share) and written there."""
    path = loop.run_dir / "reference_logps.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if len(cached["train"]) == len(train) and len(cached["eval"]) == len(evals):
            return cached["train"], cached["eval"]
    source = cfg.reference or cfg.model
    ref, _ = load_causal_lm(source)
    ref.to(loop.device)
    items = train + evals
    mine = list(range(loop.rank, len(items), loop.world))
    logps = reference_logps(ref, [items[i] for i in mine], pad_id, loop.acc.autocast)
    del ref
    pairs = list(zip(mine, logps, strict=True))
    if loop.world > 1:
        pairs = gather_object(pairs)
    full = [lp for _, lp in sorted(pairs, key=lambda x: x[0])]
    if loop.acc.is_main_process:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"reference": source, "train": full[: len(train)], "eval": full[len(train) :]}))
        os.replace(tmp, path)
    loop.acc.wait_for_everyone()
    console.print(f"dpo: reference log-probs of {sum(len(lp) for lp in full)} responses from {source}")
    return full[: len(train)], full[len(train) :]


@dataclass
class DPOResult:
    output_dir: Path
    steps: int
    eval_metrics: dict
    model: nn.Module  # the policy as it ended training


class DPO(CausalLMTrainer):
    """DPO as a `Trainer` (train/common.py): `DPO.build(cfg).train()`."""

    name = "dpo"

    def __init__(self, cfg: DPOConfig, loop: TrainLoop, model: nn.Module, tokenizer, train: list[EncodedRanking],
                 evals: list[EncodedRanking], reference: tuple[list, list], plan: Schedule, hooks: Hooks):
        self.cfg, self.loop, self.tokenizer, self.train_items, self.evals, self.hooks = \
            cfg, loop, tokenizer, train, evals, hooks
        self.ref_train, self.ref_evals = reference
        self.plan, self.total_steps = plan, plan.total_steps
        self.part = loop.prepare("model", SequenceLogprobs(model), total_steps=plan.total_steps)
        self.plain = loop.acc.unwrap_model(self.part.module)
        self.lm, self.merge_lora = self.plain.model, cfg.merge_lora

    @classmethod
    def build(cls, cfg: DPOConfig, hooks: Hooks | None = None, launch: Launch | None = None) -> DPO:
        """Steps 1-4: the rankings read and encoded, the reference's log-probs, the policy prepared."""
        hooks = (hooks or Hooks()).only("dpo")
        if cfg.loss_type == "ipo" and cfg.label_smoothing:
            raise UsageError("--label-smoothing is cDPO's, for --loss-type sigmoid; IPO has none")
        train_rankings, eval_rankings = read_splits(read_rankings, cfg, key=ranked_prompt)
        loop = TrainLoop(cfg, "dpo", launch)
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_trainable_lm(loop.resume_from / "model" if loop.resume_from else cfg.model, cfg)
        train, truncated = encode_rankings(tokenizer, train_rankings, cfg.max_length)
        evals, _ = encode_rankings(tokenizer, eval_rankings, cfg.max_length)
        if not train:
            raise UsageError(f"{cfg.data}: no ranking with two differently ranked responses")
        reference = cached_reference(loop, cfg, train, evals, tokenizer.pad_token_id)
        plan = Schedule.of(len(train), cfg, loop.world)
        n_pairs = sum(int(ranked_pairs(torch.tensor([rk])).sum()) for r in train for rk in r.ranks)
        console.print(
            f"dpo: {sum(len(r.ranks) for r in train)} rankings of {len(train)} prompts' responses ({n_pairs} ordered "
            f"pairs, {truncated} responses cut to --max-length {cfg.max_length}), {sum(len(r.ranks) for r in evals)} "
            f"eval rankings; {cfg.loss_type} loss, β {cfg.beta:g}; {plan.total_steps} steps of {plan.items_per_step} "
            f"prompts on {loop.world} process(es), mixed precision: {loop.acc.mixed_precision}"
        )
        dpo = cls(cfg, loop, model, tokenizer, train, evals, reference, plan, hooks)
        loop.start(dpo)
        return dpo

    def step(self, step: int) -> dict:
        cfg, loop, train, pad_id = self.cfg, self.loop, self.train_items, self.tokenizer.pad_token_id
        items = step_items(len(train), self.plan.items_per_step, cfg.seed, step)
        normalizer = sum(len(train[i].ranks) for i in items) / loop.world  # the mean over rankings; DDP averages

        def loss_fn(micro: int) -> tuple[torch.Tensor, dict]:
            idx = loop.micro_batch(items, micro, cfg.batch_size)
            batch = [train[i] for i in idx]
            logps, ranks = by_ranking(self.part.module([r.group for r in batch], pad_id).float(), batch)
            ref = torch.tensor([x for i in idx for x in self.ref_train[i]], device=logps.device)
            ref_logps, _ = by_ranking(ref, batch)
            loss = dpo_ranking_loss(logps, ref_logps, ranks, cfg.beta, cfg.label_smoothing, cfg.loss_type)
            with torch.no_grad():  # the implicit rewards' margins and how often they order a pair right
                margin = cfg.beta * ((logps - ref_logps)[:, :, None] - (logps - ref_logps)[:, None, :])
                better = ranked_pairs(ranks)
            return loss * len(ranks) / normalizer, {"pairs": better.sum(), "pairs_right": (margin[better] > 0).sum(),
                                                    "margin_sum": margin[better].sum(),
                                                    "tokens": sum(len(r.group) for r in batch)}

        m = loop.supervised_step(self.part, cfg.grad_accum, loss_fn, self.plan.steps_per_epoch)
        pairs = max(1.0, m.pop("pairs"))
        m["reward_accuracy"], m["reward_margin"] = m.pop("pairs_right") / pairs, m.pop("margin_sum") / pairs
        return m

    def evaluate(self) -> dict | None:
        """The implicit reward's accuracy on held-out rankings (each process a share; all run the same number of
        forwards, which FSDP needs)."""
        if not self.evals:
            return None
        cfg, loop, plain, evals = self.cfg, self.loop, self.plain, self.evals
        plain.eval()
        mine = list(range(loop.rank, len(evals), loop.world))
        batches = math.ceil(math.ceil(len(evals) / loop.world) / cfg.batch_size)
        pairs = []
        with torch.no_grad(), loop.acc.autocast():
            for b in range(batches):
                idx = mine[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                logps = plain([evals[i].group for i in (idx or [0])], self.tokenizer.pad_token_id).float().cpu()
                at = 0
                for i in idx:
                    k = len(evals[i].group.response_ids)
                    rewards = [cfg.beta * (p - r) for p, r in zip(logps[at : at + k].tolist(), self.ref_evals[i],
                                                                  strict=True)]
                    pairs += [ranking_pairs(rewards, rk) for rk in evals[i].ranks]
                    at += k
        plain.train()
        m = reward_metrics(gather_object(pairs) if loop.world > 1 else pairs)
        return {"eval_accuracy": m.get("accuracy", float("nan")), "eval_loss": m.get("loss", float("nan"))}

    def train(self) -> DPOResult:
        """Steps 5-6: every step left, then the published policy (the last step's)."""
        self.plain.train()
        last, chosen = self.fit(self.hooks.on_step)
        console.print(f"dpo: done, {self.loop.step} steps; policy in {self.loop.run_dir} (from {chosen.name})")
        return DPOResult(self.loop.run_dir, self.loop.step, {k: v for k, v in last.items() if k.startswith("eval_")},
                         self.plain.model)


def train_dpo(cfg: DPOConfig, hooks: Hooks | None = None, launch: Launch | None = None) -> DPOResult:
    """Train a policy with DPO as configured."""
    return DPO.build(cfg, hooks, launch).train()
