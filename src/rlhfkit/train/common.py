"""What every trainer shares: Accelerate set-up, optimiser and schedule, atomic checkpoints, logs.

A run folder looks like
    <output_dir>/config.yaml          the resolved config
    <output_dir>/checkpoints/step-N/  model/ + trainer_state.pt + rng-rank*.pt + trainer_state.json
    <output_dir>/checkpoints/latest   name of the newest complete checkpoint
    <output_dir>/logs/metrics.jsonl   one JSON object per logged step; logs/tb/ for TensorBoard
    <output_dir>/                     the final model (HF folder) when training ends
Checkpoints are written to a temporary folder and renamed, so a run killed at any moment leaves the
previous checkpoint intact and `--resume` continues from it.

Every trainer is a `Trainer` (below): `build(cfg, hooks)` does steps 1-4, `train()` steps 5-6, in one order:
    1. read and validate its data                 (a bad line stops the run before anything is written)
    2. loop = TrainLoop(cfg, name)                the accelerator, the run folder and its config.yaml
    3. loop.prepare(...) / loop.frozen(...)       its trained models with their optimisers, its frozen ones
    4. loop.start(trainer)                        resuming: the checkpoint's optimiser states and RNG, and the
                                                  trainer's own state (`Trainer.load_state`)
    5. loop.run(trainer, on_step)                 `trainer.step(step) -> metrics` to the last step; evaluations,
                                                  logs, checkpoints (`Trainer.checkpoint`, `Trainer.state`)
    6. loop.publish(trainer)                      the best evaluation's models, else the last step's
                                                  (`Trainer.export`)
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Hashable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.markup import escape
from torch import nn

from rlhfkit.config import TrainConfig
from rlhfkit.console import console, make_progress
from rlhfkit.errors import UsageError
from rlhfkit.models import apply_lora, default_device, is_peft, load_causal_lm, mixed_precision, save_model


class NonFiniteLoss(RuntimeError):
    pass


class RunExists(RuntimeError):
    pass


@dataclass(frozen=True)
class Launch:
    """How this process was launched, read once from what the launcher set: every stage the process runs (the demo
    runs several) sees the same. `fsdp`: an Accelerate FSDP config (configs/accelerate/fsdp2.yaml)."""

    fsdp: bool = False

    @classmethod
    def of_this_process(cls) -> Launch:
        global _LAUNCH
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            raise UsageError("DeepSpeed is not supported: rlhfkit shards with FSDP2 (ZeRO-3's sharding of weights, "
                             "gradients and optimiser states); launch with configs/accelerate/fsdp2.yaml")
        if _LAUNCH is None:
            # Accelerate's own FSDP path needs a GPU and wraps modules its own way: the processes are set up as for
            # DDP and TrainLoop shards the modules itself, the same on CPUs (gloo) and GPUs. So the launch's FSDP is
            # taken here, and its variable removed before an Accelerator would take it too.
            _LAUNCH = cls(fsdp=os.environ.pop("ACCELERATE_USE_FSDP", "false").lower() == "true")
        return _LAUNCH


_LAUNCH: Launch | None = None


def shard(module: nn.Module, frozen: bool = False) -> nn.Module:
    """FSDP2 in place: each decoder layer (the classes a HF model names in `_no_split_modules`) one unit, the rest
    (embeddings, final norm, heads) the root's; parameters become DTensor shards over the processes. A trained
    model's root keeps its part gathered between forward and backward (FSDP's default); a `frozen` one, which
    has no backward, lets every part go after its forward."""
    from torch.distributed.fsdp import fully_shard

    layers = {n for m in module.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    for m in module.modules():
        if type(m).__name__ in layers:
            fully_shard(m)
    fully_shard(module, reshard_after_forward=True if frozen else None)
    return module


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
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.requires_grad]
    # The fused kernel updates each tensor in one pass over memory instead of one pass per arithmetic step
    # (FSDP's DTensor shards take the foreach path).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16)
                and not isinstance(p, DTensor) for p in params)
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

    def save(self, name: str, write_models: Callable[[Path], None], state: dict, info: dict,
             update_latest: bool = True, write_shards: Callable[[Path], None] | None = None) -> Path:
        """write_models(checkpoint) runs on the main process and writes checkpoint/model (and any other model
        folder); write_shards(checkpoint), on every process, what each holds a shard of (FSDP's optimiser
        states); `state` (tensors, numbers) is saved with torch.save and read back with weights_only=True;
        `info` goes to trainer_state.json."""
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        if write_shards is not None:
            write_shards(tmp)
        torch.save(_rng_state(), tmp / f"rng-rank{self.acc.process_index}.pt")
        if self.acc.is_main_process:
            write_models(tmp)
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


def seconds_before_resume(run_dir: Path) -> float:
    """Wall seconds a trainer had run up to the checkpoint that --resume continues from (0 without one)."""
    latest = Checkpoints(run_dir, None, 0).latest()
    return json.loads((latest / "trainer_state.json").read_text()).get("seconds", 0.0) if latest else 0.0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def publish(checkpoint: Path, run_dir: Path) -> None:
    """Put a checkpoint's models in the run folder: the files of its model/ in the run folder itself, each
    replaced atomically, and any other folder (a PPO value model) as a subfolder, swapped in whole. Hard links
    where the filesystem allows (checkpoint files are never modified after they are written, so a link is a
    copy that costs no space), else copies."""
    for f in (checkpoint / "model").iterdir():
        if f.is_file():
            if (run_dir / f.name).exists() and os.path.samefile(f, run_dir / f.name):
                continue  # published already (a resumed run that had finished): renaming a link onto itself is a no-op
            tmp = run_dir / f".{f.name}.tmp"
            tmp.unlink(missing_ok=True)
            _link_or_copy(str(f), str(tmp))
            os.replace(tmp, run_dir / f.name)
    for folder in checkpoint.iterdir():
        if folder.is_dir() and folder.name != "model":
            tmp, old = run_dir / f".{folder.name}.tmp", run_dir / f".{folder.name}.old"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(folder, tmp, copy_function=_link_or_copy)
            if (run_dir / folder.name).exists():
                os.replace(run_dir / folder.name, old)
            os.replace(tmp, run_dir / folder.name)
            shutil.rmtree(old, ignore_errors=True)


# ---- logs --------------------------------------------------------------------------------------

class MetricsLog:
    """Metrics to logs/metrics.jsonl and the trackers of --report-to, from the main process only.

    On resume, lines past the resumed step (work the killed run did after its last checkpoint, which
    is about to be redone) are dropped so the log reads as one run; TensorBoard purges them too. wandb and
    MLflow come through Accelerate's trackers, named after the run folder, with the run's config.
    """

    def __init__(self, run_dir: Path, accelerator: Accelerator, resume_step: int = 0,
                 report_to: tuple[str, ...] = ("tensorboard",), config: dict | None = None):
        self.enabled = accelerator.is_main_process
        if not self.enabled:
            return
        self.path = run_dir / "logs" / "metrics.jsonl"
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if _step_of(ln) <= resume_step]
            _write_atomic(self.path, "".join(ln + "\n" for ln in kept))
        self.tb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "logs" / "tb"), purge_step=resume_step + 1 if resume_step else None)
        self.trackers = [_tracker(name, run_dir, config or {}) for name in report_to if name != "tensorboard"]

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        for tracker in self.trackers:
            tracker.log(scalars, step=step)

    def close(self) -> None:
        if self.enabled:
            if self.tb is not None:
                self.tb.close()
            for tracker in self.trackers:
                tracker.finish()


def _tracker(name: str, run_dir: Path, config: dict):
    """An Accelerate tracker (wandb, mlflow), started, with the run's config stored."""
    import importlib.util

    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    if importlib.util.find_spec(name) is None:
        raise UsageError(f"--report-to {name}: the {name} package is not installed (pip install {name})")
    tracker = LOGGER_TYPE_TO_CLASS[name](run_dir.resolve().name)
    tracker.start()
    tracker.store_init_configuration(config)
    return tracker


def _step_of(line: str) -> float:
    """The step of a metrics line; a line torn by a kill counts as past any resume point (dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


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


def read_splits(read: Callable[[str, bool], Any], cfg, key: Callable[[Any], Hashable] | None = None
                ) -> tuple[list, list]:
    """(train, held-out) records of a supervised stage: --data read in full (a bad line stops the run here,
    before any model work), held out by --eval-data or a seeded --eval-fraction (by `key`, if given)."""
    if cfg.data is None:
        raise UsageError("no training data: pass --data FILE (or data: in the config)")
    result = read(cfg.data, cfg.skip_invalid)
    if result.skipped:
        console.print(f"[yellow]skipped {result.skipped} invalid records in {cfg.data}; "
                      f"first: {escape(result.errors[0])}")
    if cfg.eval_data:
        return result.records, read(cfg.eval_data, cfg.skip_invalid).records
    return split_holdout(result.records, cfg.eval_fraction, cfg.seed, key=key)


# ---- the loop ----------------------------------------------------------------------------------

@dataclass
class Schedule:
    """How a supervised stage walks its data: items (rows, prompts) per optimiser step over all processes."""

    items_per_step: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, n_items: int, cfg, world: int) -> Schedule:
        per_step = cfg.batch_size * cfg.grad_accum * world
        steps_per_epoch = math.ceil(n_items / per_step)
        return cls(per_step, steps_per_epoch, cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch)))


@dataclass
class Hooks:
    """What a caller hangs on a training run; every trainer takes the same (`train_sft(cfg, Hooks(...))`) and
    refuses one it has no use for."""

    on_step: Callable[[int, dict], None] | None = None  # after every step (PPO: iteration) and its checkpoint
    evaluate: Callable[[nn.Module, object], dict] | None = None  # PPO: (policy, tokenizer) -> {"eval_...": ...}
    eval_every: int = 0  # ... every N iterations and after the last
    select: Callable[[nn.Module, object], float] | None = None  # SFT: (model, tokenizer) -> score; best is published

    def only(self, stage: str, *allowed: str) -> Hooks:
        """These hooks, for a trainer that takes only `allowed` of them."""
        given = [name for name in ("evaluate", "select") if getattr(self, name) is not None and name not in allowed]
        if given:
            raise UsageError(f"{stage} takes no {given[0]} hook (it takes: {', '.join(('on_step', *allowed))})")
        return self


class Trainer:
    """The protocol the loop drives (SFT, RewardTraining, DPO, PPO). A trainer's `build(cfg, hooks)` does steps
    1-4 of the order at the top of this file and returns it ready to `train()`; a test or benchmark may instead
    call `step` itself. What a trainer supplies:

        step(step) -> metrics          one optimiser step (PPO: one iteration) on the step's share of the data
        evaluate() -> metrics          held-out metrics named eval_*; None where nothing is held out
        selection_score(metrics)       which evaluation is the best, to be published (None: the last step is)
        checkpoint(folder)             writes the models a resumed run continues from (folder/model, ...)
        export(folder)                 writes the models that are published (LoRA merged as configured)
        state() / load_state(info)     its own numbers beside the optimisers' (PPO: the KL controller)
    """

    name: str
    loop: TrainLoop
    total_steps: int

    def step(self, step: int) -> dict:
        raise NotImplementedError

    def evaluate(self) -> dict | None:
        return None

    def selection_score(self, metrics: dict) -> float | None:
        return None

    def checkpoint(self, folder: Path) -> None:
        raise NotImplementedError

    def export(self, folder: Path) -> None:
        self.checkpoint(folder)

    def state(self) -> dict:
        return {}

    def load_state(self, info: dict) -> None:
        pass

    def describe(self, metrics: dict) -> str:
        """The progress bar's text."""
        return _short(metrics)

    def fit(self, on_step: Callable[[int, dict], None] | None = None, eval_every: int | None = None
            ) -> tuple[dict, Path]:
        """Steps 5-6: every step left, then the published models. (The last metrics, the checkpoint published.)"""
        last = self.loop.run(self, on_step, eval_every)
        return last, self.loop.publish(self)


class CausalLMTrainer(Trainer):
    """A trainer whose one trained model is a causal LM, prepared as part "model" around it (SFT, DPO): checkpoints
    keep LoRA adapters apart; the published folder merges them with --merge-lora."""

    lm: nn.Module
    tokenizer: object
    merge_lora: bool

    def checkpoint(self, folder: Path) -> None:
        save_model(self.lm, self.tokenizer, folder / "model", merge_lora=False,
                   state_dict=self.loop.weights("model", "model."))

    def export(self, folder: Path) -> None:
        save_model(self.lm, self.tokenizer, folder / "model", merge_lora=self.merge_lora,
                   state_dict=self.loop.weights("model", "model."))


@dataclass
class Optimised:
    """A trained module as the loop holds it: wrapped for the processes, with its optimiser and schedule."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


class TrainLoop:
    """What every trainer shares: the accelerator, the run folder, resume, atomic checkpoints, logs and
    TensorBoard, the progress bar, publishing the final model, gradient accumulation, clipping and the NaN
    guard. A `Trainer` supplies its models (`prepare`), how they are written, and `step(step) -> metrics`: one
    optimiser step over its micro-batches (SFT, RM: `supervised_step`) or one whole iteration (PPO: several
    `optimizer_step`s)."""

    def __init__(self, cfg: TrainConfig, name: str, launch: Launch | None = None):
        self.cfg, self.name = cfg, name
        # --fsdp, or a launch with an FSDP config (read, always, before the accelerator, which must not take it)
        this_process = Launch.of_this_process()
        self.fsdp = cfg.fsdp or (launch or this_process).fsdp
        if self.fsdp and cfg.lora_r:
            raise UsageError("--fsdp with --lora-r: not supported yet (shard the full model, or train LoRA with DDP)")
        self.acc = make_accelerator(cfg)
        self.run_dir = prepare_run_dir(cfg, self.acc)
        self.checkpoints = Checkpoints(self.run_dir, self.acc, cfg.keep_checkpoints)
        self._full_weights: dict[str, dict] | None = None  # while a checkpoint is written under FSDP
        self.resume_from = self.checkpoints.latest() if cfg.resume else None
        if cfg.resume and self.resume_from is None:
            console.print(f"[yellow]--resume: no checkpoint in {self.run_dir}, starting from the beginning")
        self.parts: dict[str, Optimised] = {}
        self.trainer: Trainer | None = None  # given by start()
        self.step, self.best = 0, None
        self.history: list[dict] = []
        # wall seconds of this training so far, kept in each checkpoint so a resumed run reports its whole time
        self.started, self.seconds_before = time.perf_counter(), 0.0

    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def rank(self) -> int:
        return self.acc.process_index

    def prepare(self, name: str, module: nn.Module, lr: float | None = None, total_steps: int | None = None
                ) -> Optimised:
        """`module` wrapped for the processes (DDP, or sharded by FSDP2) with its AdamW (and, given `total_steps`,
        warmup + cosine)."""
        if self.fsdp:
            shard(module.to(self.device))  # before the optimiser: its states are shards too
        optimizer = make_optimizer(module.parameters(), self.cfg, lr)
        scheduler = (warmup_cosine(optimizer, total_steps, self.cfg.warmup_ratio, self.cfg.min_lr_ratio)
                     if total_steps else None)
        if not self.fsdp:
            module, optimizer = self.acc.prepare(module, optimizer)
        self.parts[name] = Optimised(module, optimizer, scheduler)
        return self.parts[name]

    def frozen(self, module: nn.Module, offload: bool = False) -> nn.Module:
        """A frozen model (no gradients, no optimiser: PPO's reference and reward model) placed for the processes:
        under FSDP sharded like the trained ones, each layer gathered for its own forward and let go after, so a
        process holds 1/world of it between forwards (every process must then run the same number of its
        forwards); else whole on the device, or with `offload` in CPU memory (moved in for each use)."""
        module.eval().requires_grad_(False)
        if self.fsdp:
            if offload:
                raise UsageError("--offload-frozen with --fsdp: under FSDP the frozen models are sharded over the "
                                 "processes instead; drop --offload-frozen")
            return shard(module.to(self.device), frozen=True)
        return module.to("cpu" if offload else self.device)

    @contextmanager
    def gathered(self, *modules: nn.Module | None):
        """Under FSDP, the whole of each (sharded) module on every process for the block, gathered once. Sampling
        and scoring run a different number of forwards on each process (responses end at different steps),
        which FSDP's per-layer gathers cannot: every process must join each one. Costs a full copy of the
        weights while the block runs; without FSDP, nothing."""
        from torch.distributed.fsdp import FSDPModule

        units = [(m, m is root) for root in modules if self.fsdp and root is not None
                 for m in root.modules() if isinstance(m, FSDPModule)]
        for unit, is_root in units:
            if is_root:  # as its first forward would: else the first layer called directly makes itself a root
                unit._get_fsdp_state()._lazy_init()
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for unit, is_root in units:  # FSDP's own defaults: the root keeps its (small) part between passes
                unit.set_reshard_after_forward(not is_root, recurse=False)
                unit.reshard()

    def weights(self, name: str, prefix: str = "") -> dict | None:
        """For the writers of model folders: part `name`'s full weights (the keys under `prefix`, without it)
        gathered from the shards while a checkpoint is written under FSDP; None otherwise (the module's own)."""
        if self._full_weights is None:
            return None
        return {k.removeprefix(prefix): v for k, v in self._full_weights[name].items() if k.startswith(prefix)}

    def save(self, name: str, write: Callable[[Path], None], state: dict, info: dict, update_latest: bool = True,
             optimizers: bool = False) -> Path:
        """A checkpoint; under FSDP the weights are first gathered to the main process (every process takes
        part) and the optimiser states, with `optimizers`, written as shards (torch.distributed.checkpoint)."""
        if not self.fsdp:
            return self.checkpoints.save(name, write, state, info, update_latest)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        self._full_weights = {n: get_model_state_dict(p.module, options=full) for n, p in self.parts.items()}
        try:
            return self.checkpoints.save(name, write, state, info, update_latest,
                                         self._write_optimizer_shards if optimizers else None)
        finally:
            self._full_weights = None

    def _write_optimizer_shards(self, checkpoint: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        for name, part in self.parts.items():
            dcp.save({"optimizer": get_optimizer_state_dict(part.module, part.optimizer)},
                     checkpoint_id=str(checkpoint / f"optimizer-{name}"))

    def _read_optimizer_shards(self, checkpoint: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        for name, part in self.parts.items():
            state = {"optimizer": get_optimizer_state_dict(part.module, part.optimizer)}
            dcp.load(state, checkpoint_id=str(checkpoint / f"optimizer-{name}"))
            set_optimizer_state_dict(part.module, part.optimizer, state["optimizer"])

    def start(self, trainer: Trainer) -> None:
        """Step 4 of the order: the trainer whose models the loop writes, then, resuming, the optimiser and schedule
        states (and RNG) of the checkpoint, and the trainer's own state from its trainer_state.json."""
        self.trainer = trainer
        if self.resume_from is None:
            return
        state, info = self.checkpoints.load_state(self.resume_from)
        if self.fsdp:
            self._read_optimizer_shards(self.resume_from)
        for name, part in self.parts.items():
            if not self.fsdp:
                part.optimizer.load_state_dict(state[f"{name}.optimizer"])
            if part.scheduler is not None:
                part.scheduler.load_state_dict(state[f"{name}.scheduler"])
        self.step, self.best = info["step"], info.get("best_metric")
        self.seconds_before = info.get("seconds", 0.0)
        trainer.load_state(info)
        console.print(f"resumed from {self.resume_from} at step {self.step}")

    def save_step(self) -> None:
        state = {}
        for name, part in self.parts.items():
            if not self.fsdp:  # (FSDP: written as shards by every process)
                state[f"{name}.optimizer"] = part.optimizer.state_dict()
            if part.scheduler is not None:
                state[f"{name}.scheduler"] = part.scheduler.state_dict()
        info = {"step": self.step, "best_metric": self.best,
                "seconds": round(self.seconds_before + time.perf_counter() - self.started, 3), **self.trainer.state()}
        self.save(f"step-{self.step}", self.trainer.checkpoint, state, info, optimizers=True)

    # ---- one optimiser step ----

    def accumulate(self, part: Optimised, n_micro: int, loss_fn: Callable[[int], tuple[torch.Tensor, dict]]
                   ) -> tuple[float, dict]:
        """Forward and backward `loss_fn(micro)` for each micro-batch, gradients all-reduced once (on the
        last). Returns the step's loss (summed over micro-batches, averaged over processes) and the counts
        `loss_fn` reported, summed over micro-batches and processes."""
        total = torch.zeros((), device=self.device)
        counts: dict[str, float] = {}
        for micro in range(n_micro):
            last = micro == n_micro - 1
            if self.fsdp:  # reduce-scatter the gradients once, after the last micro-batch
                part.module.set_requires_gradient_sync(last)
            with self.acc.no_sync(part.module) if not last and not self.fsdp else nullcontext():
                with self.acc.autocast():
                    loss, c = loss_fn(micro)
                self.acc.backward(loss)
            total += loss.detach()
            for k, v in c.items():
                counts[k] = counts.get(k, 0.0) + float(v)
        loss = (self.acc.reduce(total.float(), "sum") / self.world).item()
        return loss, self.sum_over_processes(counts)

    def optimizer_step(self, part: Optimised, loss: float, what: str = "the loss") -> float:
        """Clip, refuse a non-finite loss or gradient (before the weights change), step, schedule, zero."""
        max_norm = self.cfg.max_grad_norm or float("inf")
        if self.fsdp:  # the norm over every process's shards
            norm = torch.nn.utils.clip_grad_norm_(part.module.parameters(), max_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        else:
            grad_norm = float(self.acc.clip_grad_norm_(part.module.parameters(), max_norm))
        check_finite(loss, what, self.step + 1, self.checkpoints.latest())
        check_finite(grad_norm, f"the gradient norm of {what}", self.step + 1, self.checkpoints.latest())
        part.optimizer.step()
        if part.scheduler is not None:
            part.scheduler.step()
        part.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def supervised_step(self, part: Optimised, n_micro: int, loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
                        steps_per_epoch: int) -> dict:
        """One optimiser step of SFT or the RM, and its metrics (`tokens` and `padding_tokens` counts, if
        `loss_fn` reports them, become throughput and the padding share)."""
        t0 = time.perf_counter()
        loss, counts = self.accumulate(part, n_micro, loss_fn)
        grad_norm = self.optimizer_step(part, loss)
        seconds = time.perf_counter() - t0
        metrics = {"loss": loss, "lr": part.scheduler.get_last_lr()[0], "grad_norm": grad_norm, **counts,
                   "step_seconds": seconds, "epoch": (self.step + 1) / steps_per_epoch}
        if "tokens" in metrics:
            metrics["tokens_per_s"] = metrics["tokens"] / seconds
        if "padding_tokens" in metrics:  # the share of the step's batch that was padding
            metrics["padding"] = metrics["padding_tokens"] / max(1, metrics["padding_tokens"] + metrics["tokens"])
        return metrics

    def micro_batch(self, items: list[int], micro: int, batch_size: int) -> list[int]:
        """This process's share of a step's items for micro-batch `micro` (processes interleave)."""
        start = (micro * self.world + self.rank) * batch_size
        return items[start : start + batch_size]

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """A tensor summed over processes (detached, fp32)."""
        x = x.detach().float()
        return self.acc.reduce(x, "sum") if self.world > 1 else x

    def sum_over_processes(self, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """Each named value summed over processes."""
        keys = sorted(values)
        local = torch.tensor([float(values[k]) for k in keys], device=self.device, dtype=torch.float64)
        summed = self.acc.reduce(local, "sum") if self.world > 1 else local
        return dict(zip(keys, summed.tolist(), strict=True))

    # ---- the loop ----

    def run(self, trainer: Trainer, on_step: Callable[[int, dict], None] | None = None,
            eval_every: int | None = None) -> dict:
        """Step 5: `trainer.step(step)` until `trainer.total_steps`, then the last metrics. After each step: evaluation
        every `eval_every` (default --eval-every) steps and at the end (the best by `trainer.score`, if it scores, is
        kept as the `best` checkpoint), the metrics log, a checkpoint every --save-every steps and at the end, the
        progress bar, `on_step(step, metrics)`."""
        cfg, acc, total_steps = self.cfg, self.acc, trainer.total_steps
        if self.trainer is not trainer:
            raise RuntimeError("TrainLoop.run before start(trainer): the order is at the top of train/common.py")
        eval_every = getattr(cfg, "eval_every", 0) if eval_every is None else eval_every
        log = MetricsLog(self.run_dir, acc, resume_step=self.step, report_to=tuple(getattr(cfg, "report_to", [])),
                         config=cfg.model_dump(mode="json"))
        metrics: dict = {}
        with make_progress(cfg.progress and acc.is_main_process) as progress:
            task = progress.add_task(self.name, total=total_steps, completed=self.step, metrics="")
            while self.step < total_steps:
                t0 = time.perf_counter()
                metrics = trainer.step(self.step)
                self.step += 1
                metrics.setdefault("step_seconds", time.perf_counter() - t0)
                last = self.step == total_steps
                held_out = trainer.evaluate() if (eval_every and self.step % eval_every == 0) or last else None
                if held_out is not None:
                    metrics.update(held_out)
                    if (s := trainer.selection_score(metrics)) is not None:
                        metrics["select_score"] = s
                        if self.best is None or s > self.best:
                            self.best = s
                            self.save("best", trainer.export, {}, {"step": self.step, "score": s},
                                      update_latest=False)
                if self.step % cfg.log_every == 0 or last or held_out is not None:
                    log.log(self.step, metrics)
                if (cfg.save_every and self.step % cfg.save_every == 0) or last:
                    self.save_step()
                self.history.append(metrics)
                progress.update(task, completed=self.step, metrics=trainer.describe(metrics))
                if on_step is not None:
                    on_step(self.step, metrics)
        log.close()
        return metrics

    def publish(self, trainer: Trainer) -> Path:
        """Step 6: the final models in the run folder: the best evaluation if there was one, else the last step."""
        chosen = self.checkpoints.root / "best"
        if not (chosen / "trainer_state.json").exists():
            chosen = self.save("final", trainer.export, {}, {"step": self.step}, update_latest=False)
        if self.acc.is_main_process:
            publish(chosen, self.run_dir)
        self.acc.wait_for_everyone()
        return chosen


def _short(m: dict) -> str:
    parts = [f"loss {m['loss']:.3f}", f"lr {m['lr']:.1e}"]
    if "tokens_per_s" in m:
        parts.append(f"{m['tokens_per_s']:.0f} tok/s")
    parts += [f"eval {k.removeprefix('eval_')} {v:.3f}" for k, v in m.items() if k.startswith("eval_")]
    return "  ".join(parts)
