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
from collections.abc import Callable
from pathlib import Path

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

from rlhfkit.config import TrainConfig
from rlhfkit.models import default_device, mixed_precision

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


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
    )


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
    """Copy a checkpoint's model files into the run folder, each file replaced atomically."""
    for f in src.iterdir():
        if f.is_file():
            tmp = run_dir / f".{f.name}.tmp"
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
            kept = [ln for ln in self.path.read_text().splitlines() if json.loads(ln).get("step", 0) <= resume_step]
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


def make_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
        console=console, disable=not enabled,
    )
