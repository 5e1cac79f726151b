"""Which K and how many RM prompts buy the most reward-model accuracy per minute, on the demo task.

    python benchmarks/demo_rm_choice.py runs/demo --ks 4 8 --prompts 80 130

From a finished (or at least past its headroom stage) `rlhfkit demo` run: samples max(K) responses of its SFT
policy to each RM-split prompt once, has the run's simulated panel rank them (3 labelers a prompt), trains an RM
from its SFT model for each (K, prompts) on the first K samples of the first N prompts, and measures each RM the
way PPO will use it: pairwise accuracy against the held-out judges' gold score on the headroom stage's SFT
samples (held-out prompts, every pair whose gold scores differ by more than 0.02). Prints accuracy, seconds of
sampling (prorated) + training, and accuracy points above chance per minute.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from harness import DemoRun, save_result, timed  # the script beside this one

from rlhfkit.data import Ranking, write_jsonl
from rlhfkit.data.rankings import read_rankings
from rlhfkit.models.reward import load_reward_model, score
from rlhfkit.stages import STAGES


def gold_accuracy(run: DemoRun, rm_dir: Path) -> tuple[float, int]:
    prompts, samples = run.headroom_samples()
    quality = [[run.gold(p, s["text"], s["ended"]) for s in ss] for p, ss in zip(prompts, samples, strict=True)]
    rm, tok = load_reward_model(rm_dir)
    flat = [(p, s) for p, ss in zip(prompts, samples, strict=True) for s in ss]
    rewards = score(rm, tok, [p.prompt for p, _ in flat], [s["text"] for _, s in flat], autocast=True,
                    ended=[s["ended"] for _, s in flat]).tolist()
    k, right, total = len(samples[0]), 0, 0
    for i, q in enumerate(quality):
        r = rewards[i * k : (i + 1) * k]
        for a in range(k):
            for b in range(a + 1, k):
                if abs(q[a] - q[b]) > 0.02:
                    total += 1
                    right += (q[a] > q[b]) == (r[a] > r[b])
    return right / total, total


def rank_all(records, by_id, panel, ks) -> dict[int, list[Ranking]]:
    """Each prompt's first K responses (for every K) ranked by 3 panel labelers, responses shown shuffled."""
    ranked: dict[int, list[Ranking]] = {k: [] for k in ks}
    for i, r in enumerate(records):
        for j in range(3):
            lab = panel[(i + j) % len(panel)]
            for k in ks:
                order = list(range(k))
                random.Random(f"{i}:{j}:{k}").shuffle(order)
                judged = lab.rank(by_id[r.id], [r.responses[o] for o in order], [r.sources[o]["ended"] for o in order])
                ranks = [0] * k
                for pos, o in enumerate(order):
                    ranks[o] = judged["ranks"][pos]
                ranked[k].append(Ranking(prompt=r.prompt, responses=r.responses[:k], ranks=ranks, labeler=lab.name,
                                         sources=r.sources[:k], id=r.id))
    return ranked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a demo run folder (runs/<name>)")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 8])
    p.add_argument("--prompts", type=int, nargs="+", default=[80, 130])
    p.add_argument("--json", type=Path, help="where the JSON result goes (default runs/bench/demo_rm_choice.json)")
    args = p.parse_args()
    run = DemoRun(args.run)
    cfg = run.config
    rm_split = run.bundled_prompts("rm")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_jsonl(work / "prompts.jsonl", rm_split)
        with timed() as sampling:
            STAGES["sample"].run(cfg.sample.model_copy(update={
                "model": str(run.sft), "prompts": str(work / "prompts.jsonl"), "output": str(work / "s.jsonl"),
                "k": max(args.ks), "seed": cfg.seed + 1, "progress": False}))
        records = read_rankings(work / "s.jsonl", require_ranks=False).records
        ranked = rank_all(records, {x.id: x for x in rm_split}, run.panel, args.ks)
        rows = []
        for n in args.prompts:
            keep = {x.id for x in run.bundled_prompts("rm", n)}
            for k in args.ks:
                data = work / f"k{k}-p{n}.jsonl"
                write_jsonl(data, [x for x in ranked[k] if x.id in keep])
                with timed() as training:
                    STAGES["rm"].run(cfg.rm.model_copy(update={
                        "model": str(run.sft), "data": str(data), "output_dir": str(work / f"rm-k{k}-p{n}"),
                        "eval_fraction": 0.0, "save_every": 0, "progress": False, "seed": cfg.seed}))
                acc, pairs = gold_accuracy(run, work / f"rm-k{k}-p{n}")
                sampled = sampling.value * (k / max(args.ks)) * (len(keep) / len(rm_split))
                rows.append({"k": k, "prompts": len(keep), "accuracy_vs_gold": acc, "pairs": pairs,
                             "sample_s": sampled, "train_s": training.value,
                             "points_per_min": 100 * (acc - 0.5) / ((sampled + training.value) / 60)})
    print(f"\n{'K':>2} {'prompts':>7} {'acc vs gold':>11} {'pairs':>6} {'sample s':>8} {'train s':>8} {'pts/min':>8}")
    for r in rows:
        print(f"{r['k']:>2} {r['prompts']:>7} {r['accuracy_vs_gold']:>11.3f} {r['pairs']:>6} {r['sample_s']:>8.0f} "
              f"{r['train_s']:>8.0f} {r['points_per_min']:>8.2f}")
    save_result("demo_rm_choice", {"run": str(args.run), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
