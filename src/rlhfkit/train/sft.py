"""Step 1: supervised fine-tuning on demonstrations.

    demonstrations -> chat-template tokens (loss on the response only) -> packed rows
    -> AdamW with warmup + cosine, gradient accumulation, clipping -> eval loss every N steps
    -> best checkpoint by eval loss (or by your own `select` hook) -> HF folder in --output-dir

Data order is a pure function of (seed, step): every process computes the same global schedule and
takes its own slice, so a resumed run sees exactly the rows it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.markup import escape
from torch import nn

from rlhfkit.config import SFTConfig
from rlhfkit.data import (
    IGNORE,
    Example,
    collate_packed,
    encode_demonstrations,
    pack,
    read_demonstrations,
    shifted_targets,
)
from rlhfkit.losses import sft_loss
from rlhfkit.models import save_model
from rlhfkit.train.common import (
    Checkpoints,
    StepOutput,
    TrainLoop,
    console,
    load_trainable_lm,
    make_accelerator,
    make_optimizer,
    prepare_run_dir,
    split_holdout,
    step_items,
    warmup_cosine,
)


class ResponseNLL(nn.Module):
    """One forward for DDP: the decoder over packed rows, then the LM head only where a response token
    is predicted (prompt positions never need logits; on a 49k vocabulary that is a real saving)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, targets, normalizer: float) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        keep = targets != IGNORE
        logits = self.model.get_output_embeddings()(hidden[keep])
        return sft_loss(logits, targets[keep], normalizer), keep.sum()


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


def train_sft(
    cfg: SFTConfig,
    select: Callable[[nn.Module, object], float] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> SFTResult:
    """Run SFT as configured.

    select(model, tokenizer) -> score (higher is better) picks the final model among evaluations;
    by default the score is -eval_loss. InstructGPT picked its SFT model by reward-model score on a
    validation set: pass a function that samples and scores with an RM to do the same.
    on_step(step, metrics) is called after every optimiser step (and its checkpoint, if any).
    """
    if cfg.data is None:
        raise ValueError("no training data: pass --data FILE (or data: in the config)")
    acc = make_accelerator(cfg)
    run_dir = prepare_run_dir(cfg, acc)
    checkpoints = Checkpoints(run_dir, acc, cfg.keep_checkpoints)
    resume_from = checkpoints.latest() if cfg.resume else None
    if cfg.resume and resume_from is None:
        console.print(f"[yellow]--resume: no checkpoint in {run_dir}, starting from the beginning")

    # ---- data: read everything and fail on a bad line before any model work ----
    read = read_demonstrations(cfg.data, cfg.skip_invalid)
    if read.skipped:
        console.print(f"[yellow]skipped {read.skipped} invalid records in {cfg.data}; first: {escape(read.errors[0])}")
    if cfg.eval_data:
        eval_read = read_demonstrations(cfg.eval_data, cfg.skip_invalid)
        train_demos, eval_demos = read.records, eval_read.records
    else:
        train_demos, eval_demos = split_holdout(read.records, cfg.eval_fraction, cfg.seed)

    torch.manual_seed(cfg.seed)
    model_source = resume_from / "model" if resume_from else cfg.model
    model, tokenizer = load_trainable_lm(model_source, cfg)

    train_examples, stats = encode_demonstrations(tokenizer, train_demos, cfg.max_length, cfg.truncation)
    eval_examples, _ = encode_demonstrations(tokenizer, eval_demos, cfg.max_length, cfg.truncation)
    if not train_examples:
        raise ValueError(f"{cfg.data}: no demonstration fits in --max-length {cfg.max_length}")
    train = Rows.build(train_examples, cfg.max_length)
    evals = Rows.build(eval_examples, cfg.max_length) if eval_examples else None

    world, rank = acc.num_processes, acc.process_index
    rows_per_step = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = math.ceil(len(train.rows) / rows_per_step)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    n_tokens = sum(len(e.input_ids) for e in train_examples)
    padding = 1 - n_tokens / (len(train.rows) * cfg.max_length)
    console.print(
        f"sft: {len(train_examples)} examples ({stats.truncated} truncated, {stats.dropped} dropped) in "
        f"{len(train.rows)} rows of {cfg.max_length} tokens ({padding:.1%} padding before trimming), "
        f"{len(eval_examples)} eval; {total_steps} steps of {rows_per_step} rows on {world} process(es), "
        f"mixed precision: {acc.mixed_precision}"
    )

    wrapped = ResponseNLL(model)
    optimizer = make_optimizer(wrapped.parameters(), cfg)
    scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    wrapped, optimizer = acc.prepare(wrapped, optimizer)
    unwrapped = acc.unwrap_model(wrapped).model
    loop = TrainLoop(
        cfg, acc, run_dir, wrapped, optimizer, scheduler, total_steps, steps_per_epoch, "sft",
        write_resume_model=lambda folder: save_model(unwrapped, tokenizer, folder, merge_lora=False),
        write_export_model=lambda folder: save_model(unwrapped, tokenizer, folder, merge_lora=cfg.merge_lora),
    )
    if resume_from is not None:
        loop.resume(resume_from)

    def step_fn(step: int) -> StepOutput:
        rows = step_items(len(train.rows), rows_per_step, cfg.seed, step)
        normalizer = sum(train.targets[r] for r in rows) / world  # DDP averages gradients over processes
        total = torch.zeros((), device=acc.device)
        tokens = padded = 0
        for micro in range(cfg.grad_accum):
            start = (micro * world + rank) * cfg.batch_size
            batch = collate_packed([train.rows[r] for r in rows[start : start + cfg.batch_size]],
                                   tokenizer.pad_token_id).to(acc.device)
            tokens, padded = tokens + batch.n_tokens, padded + batch.n_padding
            last = micro == cfg.grad_accum - 1
            with acc.no_sync(wrapped) if not last else nullcontext():  # all-reduce once per step
                with acc.autocast():
                    loss, _ = wrapped(batch.input_ids, batch.position_ids, shifted_targets(batch.labels), normalizer)
                acc.backward(loss)
            total += loss.detach()
        return StepOutput(total, {"tokens": tokens, "padding_tokens": padded})

    def evaluate() -> dict:
        # The bare module, not the DDP wrapper: processes may run different numbers of eval batches,
        # and DDP's forward would wait on collectives that never come.
        plain = acc.unwrap_model(wrapped)
        plain.eval()
        nll = torch.zeros((), device=acc.device)
        count = torch.zeros((), device=acc.device)
        mine = evals.rows[rank::world]
        with torch.no_grad(), acc.autocast():
            for i in range(0, len(mine), cfg.batch_size):
                batch = collate_packed(mine[i : i + cfg.batch_size], tokenizer.pad_token_id).to(acc.device)
                loss, n = plain(batch.input_ids, batch.position_ids, shifted_targets(batch.labels), 1.0)
                nll += loss.float()
                count += n
        plain.train()
        nll, count = acc.reduce(nll, "sum"), acc.reduce(count, "sum")
        metrics = {"eval_loss": (nll / count.clamp(min=1)).item()}
        if select is not None:
            metrics["eval_select"] = select(unwrapped, tokenizer)
        return metrics

    def score(metrics: dict) -> float:
        return metrics["eval_select"] if select is not None else -metrics["eval_loss"]

    last = loop.run(step_fn, evaluate if evals is not None else None, score, on_step)
    chosen = loop.publish()
    console.print(f"sft: done, {loop.step} steps; model in {run_dir} (from {chosen.name})")
    return SFTResult(run_dir, loop.step, loop.best, last.get("loss"), unwrapped)
