"""SFT throughput: rlhfkit vs TRL's SFTTrainer on SmolLM2-135M, same data, dtype and batch, in one run.

    python benchmarks/sft_throughput.py ../shared/data/self-instruct/seed_tasks.jsonl

Prints trained (non-pad) tokens/s for each, their ratio, and MFU = 6 * params * tokens/s divided by
this machine's bf16 (or fp32) matmul peak, measured here first. TRL runs twice: with its defaults
(gradient checkpointing on) and with checkpointing off, its faster setting; the ratio is taken
against the faster one. Needs `pip install -e '.[bench]'` for TRL.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from harness import StepTimes, save_result, trl_config, trl_prompt_completion  # the script beside this one

from rlhfkit.config import SFTConfig
from rlhfkit.data import read_demonstrations
from rlhfkit.models import load_causal_lm
from rlhfkit.stages import STAGES


def matmul_peak(dtype: torch.dtype) -> float:
    """Best FLOP/s of square matmuls in `dtype` on this machine with the current thread count."""
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps = max(3, int(2e10 / (2 * n**3)))
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def seed_tasks_to_jsonl(src: Path, dst: Path) -> None:
    """self-instruct seed tasks {instruction, instances[{input, output}]} -> Alpaca-style records."""
    with open(src) as f, open(dst, "w") as out:
        for line in f:
            task = json.loads(line)
            inst = task["instances"][0]
            out.write(json.dumps({"instruction": task["instruction"], "input": inst["input"],
                                  "output": inst["output"]}) + "\n")


def run_rlhfkit(data: Path, work: Path, args) -> dict:
    cfg = SFTConfig(
        model="smollm2-135m", data=str(data), output_dir=str(work / "rlhfkit"), max_length=args.max_length,
        batch_size=args.rows_per_micro, grad_accum=args.rows_per_step // args.rows_per_micro,
        max_steps=args.warmup + args.steps, dtype=args.dtype, eval_fraction=0.0, eval_every=0, save_every=0,
        lr=2e-5, progress=False,
    )
    STAGES["sft"].run(cfg)
    rows = [json.loads(x) for x in (work / "rlhfkit" / "logs" / "metrics.jsonl").read_text().splitlines()]
    measured = rows[args.warmup:]
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in measured)
    tokens = sum(r["tokens"] for r in measured)
    padding = sum(r["padding_tokens"] for r in measured)
    return {"tokens_per_s": tokens / seconds, "tokens_per_step": tokens / len(measured),
            "padding": padding / (tokens + padding)}


def run_trl(data: Path, work: Path, args, checkpointing: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    # TRL's prompt-completion form: chat template applied, loss on the completion only, like ours.
    dataset = Dataset.from_list(trl_prompt_completion(read_demonstrations(data).records))
    model, tok = load_causal_lm("smollm2-135m")
    tokens: list[int] = []

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            tokens[-1] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    times = StepTimes(on_begin=lambda: tokens.append(0))
    cfg = trl_config(TRLConfig, work / f"trl-{checkpointing}", args.dtype, per_device_train_batch_size=args.trl_batch,
                     gradient_accumulation_steps=args.trl_accum, max_length=args.max_length,
                     max_steps=args.warmup + args.steps, learning_rate=2e-5, logging_steps=1000,
                     gradient_checkpointing=checkpointing)
    Counting(model=model, args=cfg, train_dataset=dataset, processing_class=tok, callbacks=[times]).train()
    seconds, n = sum(times.seconds[args.warmup:]), sum(tokens[args.warmup:])
    return {"tokens_per_s": n / seconds, "tokens_per_step": n / len(tokens[args.warmup:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="seed_tasks.jsonl (self-instruct) or any demonstrations file")
    p.add_argument("--steps", type=int, default=8, help="measured optimiser steps per trainer")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rows-per-step", type=int, default=16, help="rlhfkit: packed rows of --max-length per step")
    p.add_argument("--rows-per-micro", type=int, default=4)
    p.add_argument("--trl-batch", type=int, default=8, help="TRL: examples per micro-batch")
    p.add_argument("--trl-accum", type=int, default=8, help="TRL: micro-batches per step")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="the JSON result (default runs/bench/SCRIPT.json)")
    args = p.parse_args()

    peak = matmul_peak(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    params = 134_515_008
    print(f"threads {torch.get_num_threads()}, {args.dtype} matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data
        if "instances" in data.read_text().splitlines()[0]:
            data = work / "seed_tasks.alpaca.jsonl"
            seed_tasks_to_jsonl(args.data, data)
        results = {"rlhfkit": run_rlhfkit(data, work, args)}
        if not args.skip_trl:
            results["trl (defaults: grad ckpt on)"] = run_trl(data, work, args, checkpointing=True)
            results["trl (grad ckpt off)"] = run_trl(data, work, args, checkpointing=False)

    print(f"\n{'trainer':32} {'tokens/s':>9} {'tokens/step':>12} {'MFU':>6}")
    for name, r in results.items():
        mfu = 6 * params * r["tokens_per_s"] / peak
        print(f"{name:32} {r['tokens_per_s']:9.1f} {r['tokens_per_step']:12.0f} {mfu:6.1%}")
    trl = [r["tokens_per_s"] for n, r in results.items() if n.startswith("trl")]
    if trl:
        print(f"\nrlhfkit / fastest TRL: {results['rlhfkit']['tokens_per_s'] / max(trl):.2f}x")
    save_result("sft_throughput", {"peak_flops": peak, "results": results}, args.json)


if __name__ == "__main__":
    main()
