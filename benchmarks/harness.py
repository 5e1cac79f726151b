"""What the benchmark scripts share, so each script holds only its own measurement:

    save_result(script, result)     its figures as JSON beside the printout (runs/bench/<script>.json, or --json),
                                    with when and where they were measured (cores, native bf16, GPU)
    timed()                         wall seconds of a block
    DemoRun(run_dir)                a finished `rlhfkit demo` run: its config, judges and panel, its folders, the
                                    judges' gold score, the gold-vs-proxy check PPO runs with
    trl_config(...), StepTimes,     TRL, the peer, set up the same way in every script: this machine's device and
    trl_prompt_completion(...),     precision, no reports, checkpoints or progress bars, seed 0; its per-step wall
    trl_preference_pairs(...)       times; rlhfkit's records in TRL's dataset shapes
    lm_eval_model(...)              lm-evaluation-harness, the peer for the evaluations, on this machine

The peers are optional (`pip install -e '.[bench]'`); they are imported when a script asks for them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch


def machine() -> dict:
    """Where a figure was measured."""
    from rlhfkit.models import default_device, mixed_precision

    device = default_device()
    return {"cores": os.cpu_count(), "device": str(device), "torch": torch.__version__,
            "bf16": mixed_precision("auto", device) == "bf16", "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def save_result(script: str, result: Any, path: str | Path | None = None) -> Path:
    """`result` with the date and the machine, as JSON at `path` (default runs/bench/<script>.json)."""
    out = Path(path) if path else Path("runs") / "bench" / f"{script}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"script": script, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(), "result": result}
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"result -> {out}", flush=True)
    return out


@dataclass
class Seconds:
    value: float = 0.0


@contextmanager
def timed() -> Iterator[Seconds]:
    """`with timed() as t: ...`, then t.value: the block's wall seconds."""
    t, start = Seconds(), time.perf_counter()
    try:
        yield t
    finally:
        t.value = time.perf_counter() - start


# ---- a finished demo run ---------------------------------------------------------------------------

class DemoRun:
    """A finished (or partly finished) `rlhfkit demo` run folder, read back as it ran."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not (self.dir / "demo.yaml").exists():
            raise SystemExit(f"{self.dir}: not a demo run folder (no demo.yaml)")

    @cached_property
    def config(self):
        from rlhfkit.demo.config import DemoConfig

        return DemoConfig.of_run(self.dir)

    @cached_property
    def judges(self) -> list:
        """The held-out judges (the gold standard, never trained on)."""
        return self.config.judges()

    @cached_property
    def panel(self) -> list:
        """The labelers whose rankings the RM was trained on."""
        return self.config.panel()

    @property
    def sft(self) -> Path:
        return self.dir / "sft"

    def rm(self, round_: int = 1) -> Path:
        return self.dir / f"round{round_}" / "rm"

    def rankings(self, round_: int = 1) -> Path:
        """Every ranking the round's RM was trained on (this round's and the earlier ones')."""
        return self.dir / f"round{round_}" / "rankings.jsonl"

    def data(self, name: str) -> Path:
        """A file of the run's data/ (ppo_prompts.jsonl, demonstrations.jsonl, ptx.txt, ...)."""
        return self.dir / "data" / name

    def stage(self, name: str) -> dict:
        """A finished stage's result as stages.json holds it ({} if it has not run)."""
        path = self.dir / "stages.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        return state.get(name, {}).get("result", {})

    @cached_property
    def ppo_prompts(self) -> dict:
        """The PPO prompts by their key (`rlhfkit.data.prompt_key`), to look up a prompt's constraints."""
        from rlhfkit.data import prompt_key, read_prompts

        return {prompt_key(p.prompt): p for p in read_prompts(self.data("ppo_prompts.jsonl")).records}

    def bundled_prompts(self, split: str, n: int | None = None) -> list:
        """The demo's bundled prompts of one split (sft, rm, ppo, eval), the first `n` taking the categories in turn
        as the demo selects them."""
        from importlib.resources import files

        from rlhfkit.data import read_prompts
        from rlhfkit.demo.pipeline import spread

        records = [x for x in read_prompts(files("rlhfkit.demo") / "data" / "prompts.jsonl").records
                   if x.meta["split"] == split]
        return spread(records, n)

    def gold(self, prompt, response: str, ended: bool = True) -> float:
        """The judges' noise-free rubric score (0-1) of `response` to `prompt`: a prompt record (its constraints in
        its meta), or the text of one of the run's PPO prompts."""
        from rlhfkit.data import Prompt, prompt_key
        from rlhfkit.demo.headroom import gold

        record = prompt if isinstance(prompt, Prompt) else self.ppo_prompts[prompt_key(prompt)]
        return gold(self.judges, record, response, ended)

    def headroom_samples(self) -> tuple[list, list[list[dict]]]:
        """The headroom stage's held-out prompts and SFT's samples of each ({"text", "ended", ...})."""
        from rlhfkit.data import read_prompts
        from rlhfkit.demo.headroom import read_sft_samples

        return read_prompts(self.data("headroom_prompts.jsonl")).records, read_sft_samples(self.dir)

    def best_of_n(self, rm_dir: Path | None = None, round_: int = 1) -> dict:
        """Best-of-n from the headroom samples chosen by an RM (default: the round's): gold, proxy and KL per n, and
        where that RM agrees with the judges (as the demo's report)."""
        from rlhfkit.demo.evaluate import best_of_n_curve

        return best_of_n_curve(self.dir, self.config, round_, self.judges, rm_dir=rm_dir)

    def gold_proxy(self, rm_dir: Path | None = None, config=None):
        """The check the demo runs during PPO (`Hooks.evaluate`): gold, proxy (the RM) and KL to SFT on the held-out
        headroom prompts. `config`: the run's DemoConfig changed (its PPO sampling, gold_samples)."""
        from rlhfkit.demo.evaluate import GoldProxy

        return GoldProxy(self.dir, config or self.config, rm_dir or self.rm(1), self.judges)


# ---- TRL ---------------------------------------------------------------------------------------------

def trl_config(config_class, output_dir: str | Path, dtype: str, **options):
    """A TRL trainer config (SFTConfig, RewardConfig, GRPOConfig, ...) as every benchmark runs TRL: on this
    machine's device, in `dtype` (bf16 | fp32) like rlhfkit beside it, no reports, checkpoints or progress bars,
    seed 0; `options` are the measurement's own."""
    base = {"output_dir": str(output_dir), "use_cpu": not torch.cuda.is_available(), "bf16": dtype == "bf16",
            "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "seed": 0}
    return config_class(**(base | options))


def StepTimes(on_begin=None, on_end=None):  # noqa: N802 (made on demand: transformers is imported when TRL runs)
    """A transformers `TrainerCallback` that keeps each optimiser step's wall seconds in `.seconds`; `on_begin()` is
    called as each step starts (to reset a counter), `on_end()` before its time is taken (to wait for the GPU)."""
    from transformers import TrainerCallback

    class _StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            if on_begin is not None:
                on_begin()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if on_end is not None:
                on_end()
            self.seconds.append(time.perf_counter() - self._t)

    return _StepTimes()


def trl_prompt_completion(demos: list) -> list[dict]:
    """Demonstrations in TRL's conversational prompt-completion form (loss on the completion, like rlhfkit's SFT)."""
    from rlhfkit.data.records import as_messages

    return [{"prompt": as_messages(d.prompt), "completion": [{"role": "assistant", "content": d.response}]}
            for d in demos]


def trl_preference_pairs(rankings: list) -> list[dict]:
    """Every ordered pair of each ranking as TRL's conversational chosen/rejected rows (a K-way ranking becomes up to
    C(K,2) rows: TRL trains on pairs)."""
    from rlhfkit.data.records import as_messages

    rows = []
    for r in rankings:
        prompt = as_messages(r.prompt)
        for i, better in enumerate(r.responses):
            for j, worse in enumerate(r.responses):
                if r.ranks[i] < r.ranks[j]:
                    rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": better}],
                                 "rejected": [{"role": "assistant", "content": worse}]})
    return rows


# ---- lm-evaluation-harness ---------------------------------------------------------------------------

def lm_eval_model(path: str | Path, batch_size: int, dtype: str = "float32"):
    """lm-evaluation-harness's HF model on this machine's device, for `lm_eval.simple_evaluate(model=...)`."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(path), dtype=dtype, batch_size=batch_size,
                device="cuda" if torch.cuda.is_available() else "cpu")
