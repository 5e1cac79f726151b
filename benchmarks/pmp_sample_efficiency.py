"""Preference-model pretraining (PMP): does an RM first trained on public comparisons need fewer of the task's own?

    python benchmarks/pmp_sample_efficiency.py runs/demo \\
        --hh ../shared/data/hh-rlhf/harmless-base_test.jsonl.gz --oasst ../shared/data/oasst-en100/en_100_tree.jsonl

Askell et al. 2021 §4: LM pretraining -> PMP -> RM fine-tuning. From a demo run's SFT model:
1. PMP: `rlhfkit rm` on public comparisons (HH-RLHF harmless-base pairs, OpenAssistant's ranked replies);
2. the demo's round-1 task rankings split by prompt: a fixed 20% held out, and RMs fine-tuned on 12.5%, 25%, 50%
   and 100% of the rest, from the SFT model (a new head, as `rlhfkit rm` does) and from the PMP RM
   (`rlhfkit rm --init-from`), with the demo's own RM settings, over --seeds seeds (each seed draws its own subset);
3. held-out accuracy over every pair of every labeler's ranking of the held-out prompts (the simulated labelers
   agree with each other about 70% of the time: that is roughly the ceiling), as a table with the mean and a 95%
   t-interval over seeds, and a plot (the paper's sample-efficiency figure).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

from harness import save_result  # the script beside this one

from rlhfkit.config import RMConfig
from rlhfkit.data import write_jsonl
from rlhfkit.data.rankings import read_rankings
from rlhfkit.demo.config import STAGE_DEFAULTS
from rlhfkit.stages import STAGES
from rlhfkit.train.common import split_holdout
from rlhfkit.train.reward import ranked_prompt

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # two-sided, by df


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and a 95% t-interval over seeds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def pmp_data(args, work: Path) -> Path:
    # a few HH-RLHF pairs differ before their last turn: not a comparison of two answers, left out
    records = read_rankings(args.hh, skip_invalid=True).records[: args.hh_limit] if args.hh else []
    if args.oasst:
        records += read_rankings(args.oasst).records
    if not records:
        raise SystemExit("PMP needs public comparisons: pass --hh and/or --oasst (or --pmp-model)")
    path = work / "pmp.jsonl"
    write_jsonl(path, records)
    print(f"PMP data: {len(records)} rankings ({args.hh_limit or 'all'} HH-RLHF pairs + OpenAssistant trees)")
    return path


def rm_config(**update) -> RMConfig:
    return RMConfig(**{**STAGE_DEFAULTS["rm"], "progress": False, "keep_checkpoints": 1, **update})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished demo run: its sft/ model and rm-round1.jsonl rankings")
    p.add_argument("--hh", help="HH-RLHF transcripts (JSONL, .gz)")
    p.add_argument("--hh-limit", type=int, default=1000, help="HH-RLHF pairs used for PMP (0: all)")
    p.add_argument("--oasst", help="OpenAssistant message trees (JSONL)")
    p.add_argument("--pmp-model", help="an existing PMP RM folder instead of training one")
    p.add_argument("--pmp-epochs", type=float, default=1.0)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("runs/pmp-benchmark"))
    p.add_argument("--json", type=Path, help="the JSON result (default runs/bench/pmp_sample_efficiency.json)")
    args = p.parse_args()
    args.hh_limit = args.hh_limit or None
    args.out.mkdir(parents=True, exist_ok=True)
    sft = str(args.run / "sft")

    started = time.perf_counter()
    pmp = args.pmp_model
    if pmp is None:
        pmp = str(args.out / "pmp")
        if not (Path(pmp) / "config.json").exists():  # published when PMP finished
            STAGES["rm"].run(rm_config(model=sft, data=str(pmp_data(args, args.out)), output_dir=pmp,
                                       epochs=args.pmp_epochs, eval_fraction=0.05, max_length=384))
    pmp_seconds = time.perf_counter() - started

    task = read_rankings(args.run / "rm-round1.jsonl").records
    train_all, held_out = split_holdout(task, 0.2, seed=0, key=ranked_prompt)
    write_jsonl(args.out / "task-held-out.jsonl", held_out)
    prompts = list(dict.fromkeys(ranked_prompt(r) for r in train_all))
    print(f"task: {len(prompts)} training prompts ({len(train_all)} rankings), "
          f"{len({ranked_prompt(r) for r in held_out})} held-out prompts ({len(held_out)} rankings)")

    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []  # rerun: continue
    done = {(r["init"], r["fraction"], r["seed"]) for r in results}
    for fraction in args.fractions:
        for seed in range(args.seeds):
            order = prompts[:]
            random.Random(seed).shuffle(order)  # a seed's smaller subsets lie inside its larger ones
            chosen = set(order[: max(2, round(fraction * len(prompts)))])
            subset = [r for r in train_all if ranked_prompt(r) in chosen]
            data = args.out / f"task-{fraction}-{seed}.jsonl"
            write_jsonl(data, subset)
            for init in ("sft", "pmp"):
                if (init, fraction, seed) in done:
                    continue
                t0 = time.perf_counter()
                out = args.out / f"rm-{init}-{fraction}-{seed}"
                cfg = rm_config(model=sft, init_from=pmp if init == "pmp" else None, data=str(data),
                                eval_data=str(args.out / "task-held-out.jsonl"), output_dir=str(out), seed=seed)
                report = STAGES["rm"].run(cfg).metrics
                results.append({"init": init, "fraction": fraction, "seed": seed, "prompts": len(chosen),
                                "rankings": len(subset), "accuracy": report["accuracy"],
                                "pairs": report["pairs"], "seconds": time.perf_counter() - t0})
                results_path.write_text(json.dumps(results, indent=1))
                print(f"{init} {fraction:.3f} seed {seed}: accuracy {report['accuracy']:.3f} "
                      f"on {report['pairs']} pairs")
    print(f"\nPMP: {pmp_seconds:.0f} s; held-out accuracy on the task's rankings "
          f"(mean over {args.seeds} seeds, 95% t-interval)\n")
    print("| share of task rankings | prompts | from SFT | from PMP | PMP − SFT |")
    print("|---|---|---|---|---|")
    curve = {"sft": [], "pmp": []}
    for fraction in args.fractions:
        row = {init: [r for r in results if r["init"] == init and r["fraction"] == fraction] for init in curve}
        cells = []
        for init in curve:
            mean, lo, hi = interval([r["accuracy"] for r in row[init]])
            curve[init].append((fraction, mean, lo, hi))
            cells.append(f"{mean:.1%} ({lo:.1%} – {hi:.1%})")
        by_seed = {init: sorted(row[init], key=lambda r: r["seed"]) for init in curve}
        diffs = [a["accuracy"] - b["accuracy"] for a, b in zip(by_seed["pmp"], by_seed["sft"], strict=True)]
        mean, lo, hi = interval(diffs)  # paired by seed: the same subset of prompts
        print(f"| {fraction:.1%} | {row['sft'][0]['prompts']} | {cells[0]} | {cells[1]} | "
              f"{mean * 100:+.1f} ({lo * 100:+.1f} – {hi * 100:+.1f}) points |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for init, label in (("sft", "RM from SFT"), ("pmp", "RM from PMP")):
        xs, ms, los, his = zip(*curve[init], strict=True)
        ax.plot(xs, ms, marker="o", label=label)
        ax.fill_between(xs, los, his, alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("share of the task's training rankings")
    ax.set_ylabel("held-out ranking accuracy")
    ax.set_title("Preference-model pretraining: sample efficiency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "pmp_sample_efficiency.png", dpi=120)
    print(f"\nplot: {args.out / 'pmp_sample_efficiency.png'}; results: {results_path}")
    save_result("pmp_sample_efficiency", {"run": str(args.run), "pmp_seconds": pmp_seconds, "runs": results,
                                          "curve": {init: [dict(zip(("fraction", "mean", "low", "high"), row,
                                                                    strict=True)) for row in rows]
                                                    for init, rows in curve.items()}}, args.json)


if __name__ == "__main__":
    main()
