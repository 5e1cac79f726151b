"""Step 2: the reward model, trained on rankings.

One batch element is a prompt with its K responses and every labeler's ranking of them. The K responses
are forwarded once each (packed into rows with the other prompts' responses, the prompt computed once for
all K), and the loss takes every strictly ordered pair of each ranking with weight 1/C(K,2) per ranking
(`losses.ranking_loss`). Forwarding K sequences instead of 2·C(K,2) pair members is where InstructGPT's
speed-up comes from, and ours; a second labeler of the same responses costs no forward at all.

The held-out split is by prompt: no held-out prompt is trained on, in any ranking or round.
After training, the head's bias is shifted so the demonstrations score 0 on average (--demos).
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from rich.markup import escape
from torch import nn

from rlhfkit.config import RMConfig
from rlhfkit.data import Ranking, read_demonstrations
from rlhfkit.data.rankings import read_rankings
from rlhfkit.evaluation.reward_metrics import ranking_pairs, reward_metrics
from rlhfkit.losses import ranking_loss
from rlhfkit.models.reward import (
    Group,
    RewardModel,
    encode_group,
    load_reward_model,
    pack_groups,
    reward_model_from_causal_lm,
    score,
)
from rlhfkit.train.common import (
    Checkpoints,
    StepOutput,
    TrainLoop,
    console,
    make_accelerator,
    make_optimizer,
    prepare_run_dir,
    split_holdout,
    step_items,
    warmup_cosine,
)


@dataclass
class EncodedRanking:
    """A prompt and its K responses, with every ranking of them (one per labeler who ranked them)."""

    group: Group  # the prompt and the K responses, each + EOS
    ranks: list[list[int]]  # each with two differently ranked responses at least


def ranked_prompt(r: Ranking) -> str:
    """What the held-out split groups by: the prompt (all its turns)."""
    return json.dumps(r.model_dump(mode="json")["prompt"])


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


def forward_rankings(rm: nn.Module, batch: list[EncodedRanking], pad_id: int, device
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rewards and ranks (J, Kmax), one row per ranking (ranks -1 where a prompt has fewer responses), and
    the token count. Each prompt is computed once for its K responses (`pack_groups`), each response once
    for all its rankings."""
    packed = pack_groups([r.group for r in batch], pad_id).to(device)
    flat = rm(packed.input_ids, packed.position_ids, packed.attention_mask, packed.ends)
    k_max = max(len(r.group.response_ids) for r in batch)
    rows, ranks, i = [], [], 0
    for r in batch:
        k = len(r.group.response_ids)
        row = torch.nn.functional.pad(flat[i : i + k], (0, k_max - k))
        for rk in r.ranks:
            rows.append(row)
            ranks.append(rk + [-1] * (k_max - k))
        i += k
    return torch.stack(rows), torch.tensor(ranks, dtype=torch.long, device=device), packed.n_tokens


@dataclass
class RMResult:
    output_dir: Path
    steps: int
    eval_metrics: dict
    shift: float
    model: nn.Module  # the model as it ended training, before normalisation


def _apply_lora(rm: RewardModel, cfg: RMConfig) -> None:
    from peft import LoraConfig, get_peft_model

    target = "all-linear" if cfg.lora_targets == ["all-linear"] else cfg.lora_targets
    rm.backbone = get_peft_model(rm.backbone, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                         lora_dropout=cfg.lora_dropout, target_modules=target))


def train_reward(cfg: RMConfig, on_step=None) -> RMResult:
    if cfg.data is None:
        raise ValueError("no rankings: pass --data FILE (or data: in the config)")
    acc = make_accelerator(cfg)
    run_dir = prepare_run_dir(cfg, acc)
    resume_from = Checkpoints(run_dir, acc, cfg.keep_checkpoints).latest() if cfg.resume else None

    read = read_rankings(cfg.data, cfg.skip_invalid)
    if read.skipped:
        console.print(f"[yellow]skipped {read.skipped} invalid records in {cfg.data}; first: {escape(read.errors[0])}")
    if cfg.eval_data:
        train_rankings, eval_rankings = read.records, read_rankings(cfg.eval_data, cfg.skip_invalid).records
    else:
        train_rankings, eval_rankings = split_holdout(read.records, cfg.eval_fraction, cfg.seed, key=ranked_prompt)
    demos = read_demonstrations(cfg.demos).records if cfg.demos else []  # fail on bad demos before training

    torch.manual_seed(cfg.seed)
    if resume_from is not None:
        rm, tokenizer = load_reward_model(resume_from / "model")
    else:
        rm, tokenizer = reward_model_from_causal_lm(cfg.model)
    if cfg.lora_r:
        _apply_lora(rm, cfg)
    if cfg.gradient_checkpointing:
        rm.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    train, truncated = encode_rankings(tokenizer, train_rankings, cfg.max_length)
    evals, _ = encode_rankings(tokenizer, eval_rankings, cfg.max_length)
    if not train:
        raise ValueError(f"{cfg.data}: no ranking with two differently ranked responses")

    world, rank = acc.num_processes, acc.process_index
    per_step = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = math.ceil(len(train) / per_step)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    ks = sorted({len(r.group.response_ids) for r in train})
    n_rankings = sum(len(r.ranks) for r in train)
    console.print(
        f"rm: {n_rankings} rankings of {len(train)} prompts' responses (K in {ks}, "
        f"{sum(math.comb(len(r.group.response_ids), 2) * len(r.ranks) for r in train)} pairs, {truncated} responses "
        f"cut to --max-length {cfg.max_length}), {sum(len(r.ranks) for r in evals)} eval rankings of "
        f"{len({ranked_prompt(r) for r in eval_rankings})} held-out prompts; {total_steps} steps of "
        f"{per_step} prompts on {world} process(es), mixed precision: {acc.mixed_precision}"
    )

    optimizer = make_optimizer(rm.parameters(), cfg)
    scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    wrapped, optimizer = acc.prepare(rm, optimizer)
    plain: RewardModel = acc.unwrap_model(wrapped)
    loop = TrainLoop(cfg, acc, run_dir, wrapped, optimizer, scheduler, total_steps, steps_per_epoch, "rm",
                     write_resume_model=lambda folder: plain.save(folder, tokenizer),
                     write_export_model=lambda folder: plain.save(folder, tokenizer))
    if resume_from is not None:
        loop.resume(resume_from)

    def step_fn(step: int) -> StepOutput:
        items = step_items(len(train), per_step, cfg.seed, step)
        normalizer = sum(len(train[i].ranks) for i in items) / world  # the mean over rankings; DDP averages
        total = torch.zeros((), device=acc.device)
        tokens = 0
        for micro in range(cfg.grad_accum):
            start = (micro * world + rank) * cfg.batch_size
            batch = [train[i] for i in items[start : start + cfg.batch_size]]
            last = micro == cfg.grad_accum - 1
            with acc.no_sync(wrapped) if not last else nullcontext():
                with acc.autocast():
                    rewards, ranks, n = forward_rankings(wrapped, batch, tokenizer.pad_token_id, acc.device)
                    loss = ranking_loss(rewards.float(), ranks) * len(ranks) / normalizer
                acc.backward(loss)
            total += loss.detach()
            tokens += n
        return StepOutput(total, {"tokens": tokens})

    def held_out_pairs(model: nn.Module, items: list[EncodedRanking]) -> list:
        """Each held-out ranking's scored pairs; each prompt's responses forwarded once for all its rankings."""
        pairs = []
        with torch.no_grad(), acc.autocast():
            for i in range(0, len(items), cfg.batch_size):
                rewards, ranks, _ = forward_rankings(model, items[i : i + cfg.batch_size], tokenizer.pad_token_id,
                                                     acc.device)
                for row, rk in zip(rewards.float().tolist(), ranks.tolist(), strict=True):
                    k = sum(x >= 0 for x in rk)
                    pairs.append(ranking_pairs(row[:k], rk[:k]))
        return pairs

    def evaluate() -> dict:
        plain.eval()
        pairs = held_out_pairs(plain, evals[rank::world])
        plain.train()
        m = reward_metrics(gather_object(pairs) if world > 1 else pairs)
        return {"eval_accuracy": m.get("accuracy", float("nan")), "eval_loss": m.get("loss", float("nan")),
                "eval_top_bottom_accuracy": m.get("top_bottom_accuracy") or float("nan")}

    loop.run(step_fn, evaluate if evals else None, lambda m: m["eval_accuracy"], on_step)
    loop.publish()

    # ---- normalise on the demonstrations, then the full held-out report ----
    shift = 0.0
    final, tokenizer = load_reward_model(run_dir)
    final.to(acc.device)
    if demos and acc.is_main_process:
        scores = score(final, tokenizer, [d.prompt for d in demos], [d.response for d in demos], cfg.max_length)
        shift = -scores.mean().item()
        final.apply_shift(shift)
        final.save_head(run_dir)
        console.print(f"rm: shifted rewards by {shift:+.4f} so the {len(demos)} demonstrations average 0")
    report = {}
    if evals and acc.is_main_process:
        report = reward_metrics(held_out_pairs(final.eval(), evals))
        (run_dir / "eval_report.json").write_text(json.dumps(report, indent=2))
        _print_report(report)
    acc.wait_for_everyone()
    return RMResult(run_dir, loop.step, report, shift, plain)


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
