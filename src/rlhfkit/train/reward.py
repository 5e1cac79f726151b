"""Step 2: the reward model, trained on rankings.

One batch element is a prompt with its K responses and every labeler's ranking of them. The K responses
are forwarded once each (packed into rows with the other prompts' responses, the prompt computed once for
all K), and the loss takes every strictly ordered pair of each ranking with weight 1/C(K,2) per ranking
(`losses.ranking_loss`). Forwarding K sequences instead of 2·C(K,2) pair members is where InstructGPT's
speed-up comes from, and ours; a second labeler of the same responses costs no forward at all.

The held-out split is by prompt: no held-out prompt is trained on, in any ranking or round.
With --init-from the RM starts from a preference-pretrained RM (PMP) instead of a new head on --model.
After training, the head's bias is shifted so the demonstrations score 0 on average (--demos).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from torch import nn

from rlhfkit.config import RMConfig
from rlhfkit.console import console
from rlhfkit.data import Group, Ranking, encode_group, prompt_key, read_demonstrations
from rlhfkit.data.rankings import read_rankings
from rlhfkit.errors import UsageError
from rlhfkit.losses import ranking_loss
from rlhfkit.models import apply_lora
from rlhfkit.models.reward import (
    RewardModel,
    export_sequence_classification,
    load_reward_model,
    reward_model_from_causal_lm,
    score,
    score_groups,
)
from rlhfkit.train.common import Hooks, Launch, Schedule, Trainer, TrainLoop, read_splits, step_items
from rlhfkit.train.reward_metrics import ranking_pairs, reward_metrics


@dataclass
class EncodedRanking:
    """A prompt and its K responses, with every ranking of them (one per labeler who ranked them)."""

    group: Group  # the prompt and the K responses, each + EOS if it ended
    ranks: list[list[int]]  # each with two differently ranked responses at least


def ranked_prompt(r: Ranking) -> str:
    """What the held-out split groups by: the prompt (all its turns)."""
    return prompt_key(r.prompt)


def response_ended(r: Ranking) -> list[bool]:
    """Which responses finished with EOS: sampled ones record it in their source; others are taken as finished."""
    return [bool((src or {}).get("ended", True)) for src in (r.sources or [{}] * len(r.responses))]


def encode_rankings(tokenizer, rankings: list[Ranking], max_length: int) -> tuple[list[EncodedRanking], int]:
    """One item per distinct prompt + responses, holding all its rankings; rankings that tie every response
    teach nothing and are left out. Also returns the number of responses cut to max_length."""
    items: dict[tuple, EncodedRanking] = {}
    truncated = 0
    for r in rankings:
        if len(set(r.ranks)) < 2:
            continue
        key = (ranked_prompt(r), tuple(r.responses))
        if key not in items:
            group, cut = encode_group(tokenizer, r.prompt, r.responses, max_length, response_ended(r))
            items[key] = EncodedRanking(group, [])
            truncated += cut
        items[key].ranks.append(list(r.ranks))
    return list(items.values()), truncated


def forward_rankings(rm: nn.Module, batch: list[EncodedRanking], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards and ranks (J, Kmax), one row per ranking (ranks -1 where a prompt has fewer responses). Each
    prompt is computed once for its K responses, each response once for all its rankings."""
    return by_ranking(score_groups(rm, [r.group for r in batch], pad_id), batch)


def by_ranking(flat: torch.Tensor, batch: list[EncodedRanking]) -> tuple[torch.Tensor, torch.Tensor]:
    """A value per response of `batch` (M,), in group order, laid out as (J, Kmax) rows, one per ranking, with
    the ranks (J, Kmax) (-1 where a prompt has fewer responses)."""
    k_max = max(len(r.group.response_ids) for r in batch)
    rows, ranks, i = [], [], 0
    for r in batch:
        k = len(r.group.response_ids)
        row = torch.nn.functional.pad(flat[i : i + k], (0, k_max - k))
        for rk in r.ranks:
            rows.append(row)
            ranks.append(rk + [-1] * (k_max - k))
        i += k
    return torch.stack(rows), torch.tensor(ranks, dtype=torch.long, device=flat.device)


@dataclass
class RMResult:
    output_dir: Path
    steps: int
    eval_metrics: dict
    shift: float
    model: nn.Module  # the model as it ended training, before normalisation


class RewardTraining(Trainer):
    """Step 2 as a `Trainer` (train/common.py): `RewardTraining.build(cfg).train()`."""

    name = "rm"

    def __init__(self, cfg: RMConfig, loop: TrainLoop, rm: RewardModel, tokenizer, train: list[EncodedRanking],
                 evals: list[EncodedRanking], demos: list, plan: Schedule, hooks: Hooks):
        self.cfg, self.loop, self.tokenizer, self.train_items, self.evals, self.demos, self.hooks = \
            cfg, loop, tokenizer, train, evals, demos, hooks
        self.plan, self.total_steps = plan, plan.total_steps
        self.part = loop.prepare("rm", rm, total_steps=plan.total_steps)
        self.plain: RewardModel = loop.acc.unwrap_model(self.part.module)

    @classmethod
    def build(cls, cfg: RMConfig, hooks: Hooks | None = None, launch: Launch | None = None) -> RewardTraining:
        """Steps 1-4: the rankings (and --demos) read and encoded, the RM (or the resumed run's) prepared."""
        hooks = (hooks or Hooks()).only("rm")
        train_rankings, eval_rankings = read_splits(read_rankings, cfg, key=ranked_prompt)
        demos = read_demonstrations(cfg.demos).records if cfg.demos else []  # fail on bad demos before training
        loop = TrainLoop(cfg, "rm", launch)
        torch.manual_seed(cfg.seed)
        if loop.resume_from is not None:
            rm, tokenizer = load_reward_model(loop.resume_from / "model")
        elif cfg.init_from:  # PMP: fine-tune a preference-pretrained RM on this task's rankings
            rm, tokenizer = load_reward_model(cfg.init_from)
        else:
            rm, tokenizer = reward_model_from_causal_lm(cfg.model)
        # A pairwise loss sees only r_w − r_l, so the head's bias has gradient 0 but for float noise, which Adam
        # would turn into steps of up to lr: it stays as it is, moved only by the normalisation shift after training.
        rm.head.bias.requires_grad_(False)
        if cfg.lora_r:
            rm.backbone = apply_lora(rm.backbone, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                                     task_type=None)
        if cfg.gradient_checkpointing:
            rm.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        train, truncated = encode_rankings(tokenizer, train_rankings, cfg.max_length)
        evals, _ = encode_rankings(tokenizer, eval_rankings, cfg.max_length)
        if not train:
            raise UsageError(f"{cfg.data}: no ranking with two differently ranked responses")
        plan = Schedule.of(len(train), cfg, loop.world)
        ks = sorted({len(r.group.response_ids) for r in train})
        console.print(
            f"rm: {sum(len(r.ranks) for r in train)} rankings of {len(train)} prompts' responses (K in {ks}, "
            f"{sum(math.comb(len(r.group.response_ids), 2) * len(r.ranks) for r in train)} pairs, {truncated} "
            f"responses cut to --max-length {cfg.max_length}), {sum(len(r.ranks) for r in evals)} eval rankings of "
            f"{len({ranked_prompt(r) for r in eval_rankings})} held-out prompts; {plan.total_steps} steps of "
            f"{plan.items_per_step} prompts on {loop.world} process(es), mixed precision: {loop.acc.mixed_precision}"
        )
        trainer = cls(cfg, loop, rm, tokenizer, train, evals, demos, plan, hooks)
        loop.start(trainer)
        return trainer

    def checkpoint(self, folder: Path) -> None:
        self.plain.save(folder / "model", self.tokenizer, self.loop.weights("rm"))

    def step(self, step: int) -> dict:
        cfg, loop, train = self.cfg, self.loop, self.train_items
        items = step_items(len(train), self.plan.items_per_step, cfg.seed, step)
        normalizer = sum(len(train[i].ranks) for i in items) / loop.world  # the mean over rankings; DDP averages

        def loss_fn(micro: int) -> tuple[torch.Tensor, dict]:
            batch = [train[i] for i in loop.micro_batch(items, micro, cfg.batch_size)]
            rewards, ranks = forward_rankings(self.part.module, batch, self.tokenizer.pad_token_id)
            loss = ranking_loss(rewards.float(), ranks) * len(ranks) / normalizer
            return loss, {"tokens": sum(len(r.group) for r in batch)}

        return loop.supervised_step(self.part, cfg.grad_accum, loss_fn, self.plan.steps_per_epoch)

    def held_out_pairs(self, model: nn.Module, items: list[EncodedRanking], batches: int | None = None) -> list:
        """Each held-out ranking's scored pairs; each prompt's responses forwarded once for all its rankings.
        `batches`: run that many (a sharded model's forward needs every process: one out of items repeats its
        first, not counted)."""
        size, pad_id = self.cfg.batch_size, self.tokenizer.pad_token_id
        pairs = []
        batches = math.ceil(len(items) / size) if batches is None else batches
        with torch.no_grad(), self.loop.acc.autocast():
            for i in range(0, batches * size, size):
                if not items[i : i + size]:
                    forward_rankings(model, self.evals[:1], pad_id)
                    continue
                rewards, ranks = forward_rankings(model, items[i : i + size], pad_id)
                for row, rk in zip(rewards.float().tolist(), ranks.tolist(), strict=True):
                    k = sum(x >= 0 for x in rk)
                    pairs.append(ranking_pairs(row[:k], rk[:k]))
        return pairs

    def evaluate(self) -> dict | None:
        if not self.evals:
            return None
        loop, plain = self.loop, self.plain
        plain.eval()
        batches = math.ceil(math.ceil(len(self.evals) / loop.world) / self.cfg.batch_size) if loop.fsdp else None
        pairs = self.held_out_pairs(plain, self.evals[loop.rank :: loop.world], batches)
        plain.train()
        m = reward_metrics(gather_object(pairs) if loop.world > 1 else pairs)
        return {"eval_accuracy": m.get("accuracy", float("nan")), "eval_loss": m.get("loss", float("nan")),
                "eval_top_bottom_accuracy": m.get("top_bottom_accuracy") or float("nan")}

    def selection_score(self, metrics: dict) -> float:
        return metrics["eval_accuracy"]

    def train(self) -> RMResult:
        """Steps 5-6, then the published RM shifted so the demonstrations score 0, and its held-out report."""
        self.plain.train()
        self.fit(self.hooks.on_step)
        shift, report = normalise_and_report(self.loop, self.cfg, self.demos, self.evals, self.held_out_pairs)
        return RMResult(self.loop.run_dir, self.loop.step, report, shift, self.plain)


def train_reward(cfg: RMConfig, hooks: Hooks | None = None, launch: Launch | None = None) -> RMResult:
    """Train a reward model as configured."""
    return RewardTraining.build(cfg, hooks, launch).train()


def normalise_and_report(loop: TrainLoop, cfg: RMConfig, demos: list, evals: list[EncodedRanking], held_out_pairs
                         ) -> tuple[float, dict]:
    """Shift the published RM so the demonstrations score 0 on average, then write its full held-out report."""
    shift, report = 0.0, {}
    final, tokenizer = load_reward_model(loop.run_dir)
    final.to(loop.device)
    if demos and loop.acc.is_main_process:
        scores = score(final, tokenizer, [d.prompt for d in demos], [d.response for d in demos], cfg.max_length)
        shift = -scores.mean().item()
        final.apply_shift(shift)
        final.save_head(loop.run_dir)
        console.print(f"rm: shifted rewards by {shift:+.4f} so the {len(demos)} demonstrations average 0")
    if evals and loop.acc.is_main_process:
        report = reward_metrics(held_out_pairs(final.eval(), evals))
        (loop.run_dir / "eval_report.json").write_text(json.dumps(report, indent=2))
        _print_report(report)
    if cfg.export_hf and loop.acc.is_main_process:
        out = export_sequence_classification(final.cpu(), tokenizer, loop.run_dir / "hf-sequence-classification")
        console.print(f"rm: also written as a standard sequence classifier to {out}")
    loop.acc.wait_for_everyone()
    return shift, report


def _print_report(m: dict) -> None:
    from rich.table import Table

    if not m:
        return
    console.print(f"rm held-out: accuracy {m['accuracy']:.3f} on {m['pairs']} pairs of {m['rankings']} rankings, "
                  f"loss {m['loss']:.4f}, top-vs-bottom accuracy {m['top_bottom_accuracy'] or float('nan'):.3f}")
    console.print("accuracy by K: " + ", ".join(f"K={k}: {v:.3f}" for k, v in m["accuracy_by_k"].items()))
    table = Table("predicted P(better)", "pairs", "mean predicted", "observed", title="calibration")
    for row in m["calibration"]:
        table.add_row(row["bin"], str(row["pairs"]), f"{row['predicted']:.3f}", f"{row['observed']:.3f}")
    console.print(table)
