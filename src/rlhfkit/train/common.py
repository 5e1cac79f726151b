"""What every trainer shares: Accelerate set-up, optimiser and schedule, atomic checkpoints, logs.

A run folder looks like
    <output_dir>/config.yaml          the resolved config
    <output_dir>/checkpoints/step-N/  model/ + trainer_state.pt + rng-rank*.pt + trainer_state.json
    <output_dir>/checkpoints/latest   name of the newest complete checkpoint
    <output_dir>/logs/metrics.jsonl   one JSON object per logged step; logs/tb/ for TensorBoard
    <output_dir>/                     the final model (HF folder) when training ends
Checkpoints are written to a temporary folder and renamed, so a run killed at any moment leaves the
previous checkpoint intact and `--resume` continues from it.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rlhfkit.config import SupervisedConfig, TrainConfig
from rlhfkit.models import apply_lora, default_device, is_peft, load_causal_lm, mixed_precision

console = Console(stderr=True)


class NonFiniteLoss(RuntimeError):
    pass


class RunExists(RuntimeError):
    pass


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    device = default_device()
    # Accelerate keeps one global state per process; stages run one after another in one process
    # (the demo pipeline, tests) may each ask for their own precision. The process group stays.
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision(cfg.dtype, device), cpu=device.type == "cpu")


def prepare_run_dir(cfg: TrainConfig, accelerator: Accelerator) -> Path:
    root = Path(cfg.output_dir)
    if not cfg.resume and (root / "checkpoints").exists() and any((root / "checkpoints").iterdir()):
        raise RunExists(
            f"{root} already holds a run. Pass --resume to continue it, or choose another --output-dir "
            "(nothing is overwritten)."
        )
    if accelerator.is_main_process:
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(parents=True, exist_ok=True)
        cfg.save(root / "config.yaml")
    accelerator.wait_for_everyone()
    return root


def load_trainable_lm(source, cfg: TrainConfig):
    """(model, tokenizer) to train: a causal LM (or the LoRA adapters of a resumed run), with LoRA added
    and activation checkpointing switched on as configured."""
    model, tokenizer = load_causal_lm(source, trainable_adapters=True)
    if cfg.lora_r and not is_peft(model):
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def make_optimizer(params, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    # The fused kernel updates each tensor in one pass over memory instead of one pass per arithmetic step.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr if lr is None else lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.weight_decay, fused=fused or None)


def warmup_cosine(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    warmup = max(1, round(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:  # step = optimiser steps taken so far
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite(value: float, what: str, step: int, checkpoint: Path | None) -> None:
    if not math.isfinite(value):
        kept = f"The last good checkpoint, {checkpoint}, is intact." if checkpoint else "No checkpoint was written yet."
        raise NonFiniteLoss(
            f"step {step}: {what} is {value}. Training stopped before the optimiser step. {kept} "
            "Try a lower --lr, --max-grad-norm 1.0, or --dtype fp32."
        )


# ---- checkpoints -------------------------------------------------------------------------------

def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """Atomic checkpoints under <run>/checkpoints, shared by every process of a run."""

    def __init__(self, run_dir: Path, accelerator: Accelerator, keep: int):
        self.root = run_dir / "checkpoints"
        self.acc = accelerator
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "trainer_state.json").exists() else None

    def save(self, name: str, write_model: Callable[[Path], None], state: dict, info: dict,
             update_latest: bool = True) -> Path:
        """write_model(folder) runs on the main process; `state` (tensors, numbers) is saved with
        torch.save and read back with weights_only=True; `info` goes to trainer_state.json."""
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng-rank{self.acc.process_index}.pt")
        if self.acc.is_main_process:
            write_model(tmp / "model")
            torch.save(state, tmp / "trainer_state.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(info, indent=2))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            old = self.root / f".{name}.old"
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            if update_latest:
                _write_atomic(self.root / "latest", name)
                self._prune()
        self.acc.wait_for_everyone()
        return final

    def load_state(self, path: Path) -> tuple[dict, dict]:
        """(trainer state, info) of a checkpoint; restores this process's RNG as a side effect."""
        rng = path / f"rng-rank{self.acc.process_index}.pt"
        if rng.exists():
            _set_rng_state(torch.load(rng, weights_only=True))
        state = torch.load(path / "trainer_state.pt", weights_only=True)
        info = json.loads((path / "trainer_state.json").read_text())
        return state, info

    def _prune(self) -> None:
        steps = sorted(
            (p for p in self.root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1])
        )
        for p in steps[: -self.keep]:
            shutil.rmtree(p, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish_model(src: Path, run_dir: Path) -> None:
    """Put a checkpoint's model files in the run folder, each file replaced atomically. Hard links where the
    filesystem allows (checkpoint files are never modified after they are written, so the link is a copy
    that costs no space), else copies."""
    for f in src.iterdir():
        if f.is_file():
            tmp = run_dir / f".{f.name}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(f, tmp)
            except OSError:
                shutil.copyfile(f, tmp)
            os.replace(tmp, run_dir / f.name)


# ---- logs --------------------------------------------------------------------------------------

class MetricsLog:
    """Metrics to logs/metrics.jsonl and TensorBoard, from the main process only.

    On resume, lines past the resumed step (work the killed run did after its last checkpoint, which
    is about to be redone) are dropped so the log reads as one run.
    """

    def __init__(self, run_dir: Path, accelerator: Accelerator, resume_step: int = 0):
        self.enabled = accelerator.is_main_process
        if not self.enabled:
            return
        self.path = run_dir / "logs" / "metrics.jsonl"
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if _step_of(ln) <= resume_step]
            _write_atomic(self.path, "".join(ln + "\n" for ln in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "logs" / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in metrics.items():
            if isinstance(v, int | float):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def _step_of(line: str) -> float:
    """The step of a metrics line; a line torn by a kill counts as past any resume point (dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


def make_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
        console=console, disable=not enabled,
    )


# ---- data order --------------------------------------------------------------------------------

def step_items(n_items: int, items_per_step: int, seed: int, step: int) -> list[int]:
    """Global item indices of optimiser step `step` (0-based): a fresh permutation each epoch; the last
    step of an epoch wraps around to the start of the same permutation to fill up. A pure function of
    its arguments, so every process agrees on it and a resumed run sees exactly the same data."""
    steps_per_epoch = math.ceil(n_items / items_per_step)
    epoch, i = divmod(step, steps_per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return [perm[(i * items_per_step + j) % n_items] for j in range(items_per_step)]


def split_holdout(items: list, fraction: float, seed: int, key: Callable[[Any], Hashable] | None = None
                  ) -> tuple[list, list]:
    """(train, held out): a seeded random `fraction` of the items held out. With `key`, a fraction of the
    distinct keys: items sharing one (the rankings of one prompt) all land on the same side."""
    ids = [key(x) for x in items] if key else list(range(len(items)))
    distinct = list(dict.fromkeys(ids))
    if fraction <= 0 or len(distinct) < 2:
        return items, []
    n_eval = max(1, round(len(distinct) * fraction))
    perm = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {distinct[i] for i in perm[:n_eval]}
    train = [x for x, k in zip(items, ids, strict=True) if k not in held]
    return train, [x for x, k in zip(items, ids, strict=True) if k in held]


# ---- the loop ----------------------------------------------------------------------------------

@dataclass
class StepOutput:
    """What a trainer's step function returns after forward and backward over its micro-batches."""

    loss: torch.Tensor  # this process's share: summed over processes and divided by their number it is the step loss
    counts: dict[str, float] = field(default_factory=dict)  # summed over processes (e.g. tokens, padding)


class TrainLoop:
    """The optimiser-step loop every trainer shares: clip, NaN guard, step, schedule, logs, eval, best model,
    atomic checkpoints and resume. A trainer supplies `step_fn(step)` (forward + backward) and `evaluate()`."""

    def __init__(self, cfg: SupervisedConfig, acc: Accelerator, run_dir: Path, module, optimizer, scheduler,
                 total_steps: int, steps_per_epoch: int, name: str,
                 write_resume_model: Callable[[Path], None], write_export_model: Callable[[Path], None]):
        self.cfg, self.acc, self.run_dir, self.name = cfg, acc, run_dir, name
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.write_resume_model, self.write_export_model = write_resume_model, write_export_model
        self.checkpoints = Checkpoints(run_dir, acc, cfg.keep_checkpoints)
        self.step, self.best = 0, None
        self.last_metrics: dict = {}

    def resume(self, path: Path) -> None:
        state, info = self.checkpoints.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best = info["step"], info.get("best_metric")
        console.print(f"resumed from {path} at step {self.step}")

    def save_step(self) -> None:
        self.checkpoints.save(
            f"step-{self.step}", self.write_resume_model,
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            {"step": self.step, "best_metric": self.best, "total_steps": self.total_steps},
        )

    def run(self, step_fn: Callable[[int], StepOutput], evaluate: Callable[[], dict] | None,
            score: Callable[[dict], float], on_step: Callable[[int, dict], None] | None = None) -> dict:
        cfg, acc = self.cfg, self.acc
        log = MetricsLog(self.run_dir, acc, resume_step=self.step)
        self.module.train()
        with make_progress(cfg.progress and acc.is_main_process) as progress:
            task = progress.add_task(self.name, total=self.total_steps, completed=self.step, metrics="")
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                out = step_fn(self.step)
                loss = (acc.reduce(out.loss.detach().float(), "sum") / acc.num_processes).item()
                grad_norm = float(acc.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm or float("inf")))
                check_finite(loss, "the loss", self.step + 1, self.checkpoints.latest())
                check_finite(grad_norm, "the gradient norm", self.step + 1, self.checkpoints.latest())
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1

                seconds = time.perf_counter() - t0
                keys = sorted(out.counts)
                summed = acc.reduce(torch.tensor([float(out.counts[k]) for k in keys], device=acc.device), "sum")
                metrics = {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                           **dict(zip(keys, summed.tolist(), strict=True)), "step_seconds": seconds,
                           "epoch": self.step / self.steps_per_epoch}
                if "tokens" in metrics:
                    metrics["tokens_per_s"] = metrics["tokens"] / seconds
                if "padding_tokens" in metrics:  # the share of the step's batch that was padding
                    pad = metrics["padding_tokens"]
                    metrics["padding"] = pad / max(1, pad + metrics["tokens"])
                last = self.step == self.total_steps
                if evaluate is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                    metrics.update(evaluate())
                    metrics["select_score"] = s = score(metrics)
                    if self.best is None or s > self.best:
                        self.best = s
                        self.checkpoints.save("best", self.write_export_model, {}, {"step": self.step, "score": s},
                                              update_latest=False)
                if self.step % cfg.log_every == 0 or last or "select_score" in metrics:
                    log.log(self.step, metrics)
                if (cfg.save_every and self.step % cfg.save_every == 0) or last:
                    self.save_step()
                self.last_metrics = metrics
                progress.update(task, completed=self.step, metrics=_short(metrics))
                if on_step is not None:
                    on_step(self.step, metrics)
        log.close()
        return self.last_metrics

    def publish(self) -> Path:
        """The final model in the run folder: the best evaluation if there was one, else the last step."""
        chosen = self.checkpoints.root / "best"
        if not (chosen / "trainer_state.json").exists():
            chosen = self.checkpoints.save("final", self.write_export_model, {}, {"step": self.step},
                                           update_latest=False)
        if self.acc.is_main_process:
            publish_model(chosen / "model", self.run_dir)
        self.acc.wait_for_everyone()
        return chosen


def _short(m: dict) -> str:
    parts = [f"loss {m['loss']:.3f}", f"lr {m['lr']:.1e}"]
    if "tokens_per_s" in m:
        parts.append(f"{m['tokens_per_s']:.0f} tok/s")
    parts += [f"eval {k.removeprefix('eval_')} {v:.3f}" for k, v in m.items() if k.startswith("eval_")]
    return "  ".join(parts)
