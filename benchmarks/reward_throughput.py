"""Reward-model training throughput: rlhfkit vs TRL's RewardTrainer, same K-way rankings, in one run.

    python benchmarks/reward_throughput.py ../shared/data/oasst-en100/en_100_tree.jsonl

SmolLM2-135M backbone, bf16, sequences of about 100 tokens. rlhfkit trains on the rankings as they are
(one forward per response, the prompt computed once per ranking); TRL gets each ranking expanded
into its C(K,2) chosen/rejected pairs, its only input form. Prints rankings/s for each at K = 4 and
K = 9 and the ratio. TRL runs with gradient checkpointing off (faster than its default, on);
`--trl-defaults` also measures its defaults. Needs `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from pathlib import Path

from harness import StepTimes, save_result, trl_config, trl_preference_pairs  # the script beside this one

from rlhfkit.config import RMConfig
from rlhfkit.data import Ranking, write_jsonl
from rlhfkit.data.rankings import read_rankings
from rlhfkit.models import resolve_model_path
from rlhfkit.stages import STAGES


def clip_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def k_way_rankings(source: Path, k: int, n: int, seed: int) -> list[Ranking]:
    """n rankings of exactly k responses: OpenAssistant prompts and replies, cut to ~100 tokens a sequence,
    topped up with replies from other prompts, in a random strict order."""
    rng = random.Random(seed)
    oa = read_rankings(source).records
    pool = [clip_words(x, 45) for r in oa for x in r.responses]
    out = []
    for i in range(n):
        base = oa[i % len(oa)]
        responses = [clip_words(x, 45) for x in base.responses][:k]
        while len(responses) < k:
            responses.append(rng.choice(pool))
        ranks = list(range(k))
        rng.shuffle(ranks)
        prompt = clip_words(base.prompt[-1].content if not isinstance(base.prompt, str) else base.prompt, 30)
        out.append(Ranking(prompt=prompt, responses=responses, ranks=ranks))
    return out


def run_rlhfkit(rankings: list[Ranking], work: Path, args, per_step: int) -> float:
    data = work / "rankings.jsonl"
    write_jsonl(data, rankings)
    cfg = RMConfig(model="smollm2-135m", data=str(data), output_dir=str(work / "rlhfkit"), max_length=args.max_length,
                   batch_size=per_step, max_steps=args.warmup + args.steps, dtype=args.dtype, eval_fraction=0.0,
                   eval_every=0, save_every=0, progress=False)
    STAGES["rm"].run(cfg)
    rows = [json.loads(x) for x in (work / "rlhfkit" / "logs" / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r["step_seconds"] for r in rows[args.warmup:])
    return per_step * args.steps / seconds


def run_trl(rankings: list[Ranking], work: Path, args, per_step: int, checkpointing: bool) -> float:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    pairs = trl_preference_pairs(rankings)
    k = len(rankings[0].responses)
    pairs_per_step = per_step * math.comb(k, 2)
    micro = min(args.trl_micro, pairs_per_step)
    times = StepTimes()
    path = str(resolve_model_path("smollm2-135m"))
    cfg = trl_config(RewardConfig, work / f"trl-{checkpointing}", args.dtype, per_device_train_batch_size=micro,
                     gradient_accumulation_steps=pairs_per_step // micro, max_length=args.max_length,
                     max_steps=args.warmup + args.steps, logging_steps=1000, gradient_checkpointing=checkpointing,
                     learning_rate=1e-5)
    trainer = RewardTrainer(model=path, args=cfg, train_dataset=Dataset.from_list(pairs),
                            processing_class=AutoTokenizer.from_pretrained(path), callbacks=[times])
    trainer.train()
    return pairs_per_step * args.steps / sum(times.seconds[args.warmup:]) / math.comb(k, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("oasst", type=Path, help="en_100_tree.jsonl (OpenAssistant trees)")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 9])
    p.add_argument("--rankings-per-step", type=int, nargs="+", default=[8, 4], help="one value per K")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--trl-micro", type=int, default=8, help="TRL: pairs per micro-batch")
    p.add_argument("--trl-defaults", action="store_true", help="also run TRL with its defaults (grad ckpt on)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--json", type=Path, help="where the JSON result goes (default runs/bench/reward_throughput.json)")
    args = p.parse_args()

    by_k = {}
    print(f"{'K':>2} {'trainer':28} {'rankings/s':>10} {'pairs/s':>8}")
    for k, per_step in zip(args.ks, args.rankings_per_step, strict=True):
        rankings = k_way_rankings(args.oasst, k, per_step * (args.warmup + args.steps), seed=k)
        with tempfile.TemporaryDirectory() as tmp:
            results = {"rlhfkit": run_rlhfkit(rankings, Path(tmp), args, per_step)}
            if not args.skip_trl:
                results["trl (grad ckpt off)"] = run_trl(rankings, Path(tmp), args, per_step, False)
                if args.trl_defaults:
                    results["trl (defaults)"] = run_trl(rankings, Path(tmp), args, per_step, True)
        for name, rate in results.items():
            print(f"{k:2d} {name:28} {rate:10.3f} {rate * math.comb(k, 2):8.2f}", flush=True)
        trl = [v for n, v in results.items() if n.startswith("trl")]
        by_k[k] = {"rankings_per_s": results, "ratio": results["rlhfkit"] / max(trl) if trl else None}
        if trl:
            print(f"{k:2d} rlhfkit / fastest TRL: {results['rlhfkit'] / max(trl):.2f}x", flush=True)
    save_result("reward_throughput", {"dtype": args.dtype, "steps": args.steps, "by_k": by_k}, args.json)


if __name__ == "__main__":
    main()
