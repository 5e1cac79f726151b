"""Step 1: supervised fine-tuning on demonstrations.

    demonstrations -> chat-template tokens (loss on the response only) -> packed rows
    -> AdamW with warmup + cosine, gradient accumulation, clipping -> eval loss every N steps
    -> best checkpoint by eval loss (or by your own `Hooks.select`) -> HF folder in --output-dir

Data order is a pure function of (seed, step): every process computes the same global schedule and
takes its own slice, so a resumed run sees exactly the rows it would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhfkit.config import SFTConfig
from rlhfkit.console import console
from rlhfkit.data import (
    IGNORE,
    Example,
    collate_packed,
    encode_demonstrations,
    pack,
    read_demonstrations,
    shifted_targets,
)
from rlhfkit.errors import UsageError
from rlhfkit.losses import sft_loss
from rlhfkit.models.lm import scored_logits
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


class ResponseNLL(nn.Module):
    """One forward for DDP: `losses.sft_loss` on the response tokens of packed rows (`models.lm.scored_logits`:
    the unembedding only where a response token is predicted)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, targets, normalizer: float) -> tuple[torch.Tensor, torch.Tensor]:
        logits, scored = scored_logits(self.model, input_ids, position_ids, targets)
        return sft_loss(logits, scored, normalizer), torch.tensor(len(scored))


@dataclass
class Rows:
    """Packed rows of examples and the response tokens each row trains on."""

    rows: list[list[Example]]
    targets: list[int]

    @classmethod
    def build(cls, examples: list[Example], row_length: int) -> Rows:
        rows = [[examples[i] for i in idx] for idx in pack(examples, row_length)]
        targets = [sum(sum(t != IGNORE for t in e.labels) for e in row) for row in rows]
        return cls(rows, targets)


@dataclass
class SFTResult:
    output_dir: Path
    steps: int
    best_metric: float | None
    final_loss: float | None
    model: nn.Module  # the model as it ended training (not necessarily the published best)


class SFT(CausalLMTrainer):
    """Step 1 as a `Trainer` (train/common.py): `SFT.build(cfg, hooks).train()`."""

    name = "sft"

    def __init__(self, cfg: SFTConfig, loop: TrainLoop, model: nn.Module, tokenizer, train: Rows, evals: Rows | None,
                 plan: Schedule, hooks: Hooks):
        self.cfg, self.loop, self.tokenizer, self.train_rows, self.evals, self.hooks = \
            cfg, loop, tokenizer, train, evals, hooks
        self.plan, self.total_steps = plan, plan.total_steps
        self.part = loop.prepare("model", ResponseNLL(model), total_steps=plan.total_steps)
        self.plain = loop.acc.unwrap_model(self.part.module)
        self.lm, self.merge_lora = self.plain.model, cfg.merge_lora

    @classmethod
    def build(cls, cfg: SFTConfig, hooks: Hooks | None = None, launch: Launch | None = None) -> SFT:
        """Steps 1-4: the demonstrations read and encoded, the model (or the resumed run's) prepared.

        hooks.select(model, tokenizer) -> score (higher is better) picks the final model among evaluations;
        by default the score is -eval_loss. InstructGPT picked its SFT model by reward-model score on a
        validation set: pass a function that samples and scores with an RM to do the same.
        hooks.on_step(step, metrics) is called after every optimiser step (and its checkpoint, if any).
        """
        hooks = (hooks or Hooks()).only("sft", "select")
        train_demos, eval_demos = read_splits(read_demonstrations, cfg)  # a bad line stops the run before model work
        loop = TrainLoop(cfg, "sft", launch)
        if loop.fsdp and hooks.select is not None:
            raise UsageError("--fsdp with a select hook: sampling from a sharded model is not supported yet")
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_trainable_lm(loop.resume_from / "model" if loop.resume_from else cfg.model, cfg)

        train_examples, stats = encode_demonstrations(tokenizer, train_demos, cfg.max_length, cfg.truncation)
        eval_examples, _ = encode_demonstrations(tokenizer, eval_demos, cfg.max_length, cfg.truncation)
        if not train_examples:
            raise UsageError(f"{cfg.data}: no demonstration fits in --max-length {cfg.max_length}")
        train = Rows.build(train_examples, cfg.max_length)
        evals = Rows.build(eval_examples, cfg.max_length) if eval_examples else None
        plan = Schedule.of(len(train.rows), cfg, loop.world)
        padding = 1 - sum(len(e.input_ids) for e in train_examples) / (len(train.rows) * cfg.max_length)
        console.print(
            f"sft: {len(train_examples)} examples ({stats.truncated} truncated, {stats.dropped} dropped) in "
            f"{len(train.rows)} rows of {cfg.max_length} tokens ({padding:.1%} padding before trimming), "
            f"{len(eval_examples)} eval; {plan.total_steps} steps of {plan.items_per_step} rows on {loop.world} "
            f"process(es), mixed precision: {loop.acc.mixed_precision}"
        )
        sft = cls(cfg, loop, model, tokenizer, train, evals, plan, hooks)
        loop.start(sft)
        return sft

    def step(self, step: int) -> dict:
        cfg, loop, train = self.cfg, self.loop, self.train_rows
        rows = step_items(len(train.rows), self.plan.items_per_step, cfg.seed, step)
        normalizer = sum(train.targets[r] for r in rows) / loop.world  # DDP averages gradients over processes

        def loss_fn(micro: int) -> tuple[torch.Tensor, dict]:
            batch = collate_packed([train.rows[r] for r in loop.micro_batch(rows, micro, cfg.batch_size)],
                                   self.tokenizer.pad_token_id).to(loop.device)
            loss, _ = self.part.module(batch.input_ids, batch.position_ids, shifted_targets(batch.labels), normalizer)
            return loss, {"tokens": batch.n_tokens, "padding_tokens": batch.n_padding}

        return loop.supervised_step(self.part, cfg.grad_accum, loss_fn, self.plan.steps_per_epoch)

    def evaluate(self) -> dict | None:
        # The bare module, not the DDP wrapper: processes may run different numbers of eval batches,
        # and DDP's forward would wait on collectives that never come. FSDP's forward gathers each layer from
        # every process, so there all run the same number of batches (a process out of rows repeats one, not
        # counted).
        if self.evals is None:
            return None
        cfg, loop, plain, evals = self.cfg, self.loop, self.plain, self.evals
        plain.eval()
        nll = torch.zeros((), device=loop.device)
        count = torch.zeros((), device=loop.device)
        mine = evals.rows[loop.rank :: loop.world]
        batches = math.ceil(math.ceil(len(evals.rows) / loop.world) / cfg.batch_size) if loop.fsdp else \
            math.ceil(len(mine) / cfg.batch_size)
        with torch.no_grad(), loop.acc.autocast():
            for i in range(0, batches * cfg.batch_size, cfg.batch_size):
                rows = mine[i : i + cfg.batch_size]
                batch = collate_packed(rows or evals.rows[:1], self.tokenizer.pad_token_id).to(loop.device)
                loss, n = plain(batch.input_ids, batch.position_ids, shifted_targets(batch.labels), 1.0)
                if rows:
                    nll += loss.float()
                    count += n.to(loop.device)
        plain.train()
        totals = loop.sum_over_processes({"nll": nll, "count": count})
        metrics = {"eval_loss": totals["nll"] / max(1.0, totals["count"])}
        if self.hooks.select is not None:
            metrics["eval_select"] = self.hooks.select(plain.model, self.tokenizer)
        return metrics

    def selection_score(self, metrics: dict) -> float:
        return metrics["eval_select"] if self.hooks.select is not None else -metrics["eval_loss"]

    def train(self) -> SFTResult:
        """Steps 5-6: every step left, then the published model."""
        self.plain.train()
        last, chosen = self.fit(self.hooks.on_step)
        console.print(f"sft: done, {self.loop.step} steps; model in {self.loop.run_dir} (from {chosen.name})")
        return SFTResult(self.loop.run_dir, self.loop.step, self.loop.best, last.get("loss"), self.plain.model)


def train_sft(cfg: SFTConfig, hooks: Hooks | None = None, launch: Launch | None = None) -> SFTResult:
    """Run SFT as configured (hooks: `SFT.build`)."""
    return SFT.build(cfg, hooks, launch).train()
