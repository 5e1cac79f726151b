"""rl_efficiency.py over several seeds: how long each rlhfkit method takes to reach TRL GRPO's final reward.

    python benchmarks/rl_efficiency_seeds.py runs/rl-eff/length runs/rl-eff/length-s2 runs/rl-eff/length-s3

Each directory is one `rl_efficiency.py --eval-every 0 --seed S --out DIR` (its results.json, the update rounds'
own rollouts). One seed's 64-episode rounds are a noisy estimate of a policy's reward, so the figures are given
two ways:
  per seed pair   for every TRL GRPO seed (its final 3-round mean reward the target, and when it first reached it)
                  and every rlhfkit seed: rlhfkit's time to the same target as a multiple of TRL's
  seed means      each tool's round-by-round reward, KL and seconds averaged over its seeds (rounds every seed has),
                  the target TRL's mean final reward: the ratio of the two mean curves' times
and the KL to SFT each had when it got there. Reward bought per nat of KL: each seed's least-squares slope, through
the origin, of its rounds' reward gain (over its first round) against their KL to SFT: the same slope is the same
reward at the same KL, whichever tool gets there sooner. Writes rl_efficiency_seeds.png (mean curves, each seed
thin; the rounds' reward gain against KL).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from harness import save_result  # the script beside this one
from rl_efficiency import reached, trailing

REFERENCE = "trl-grpo"


def mean_rounds(runs: list[list[dict]]) -> list[dict]:
    """Round-by-round means over seeds of seconds, episodes, reward and KL, for the rounds every seed has."""
    n = min(map(len, runs))
    return [{k: statistics.fmean(r[i][k] for r in runs) for k in ("seconds", "episodes", "reward", "kl")}
            for i in range(n)]


def gain_per_nat(rounds: list[dict]) -> float:
    """Least-squares slope through the origin of (reward − the first round's reward) against KL to SFT."""
    gains = [(r["reward"] - rounds[0]["reward"], r["kl"]) for r in rounds]
    return sum(g * k for g, k in gains) / sum(k * k for _, k in gains)


def first_at(rounds: list[dict], target: float) -> dict | None:
    """The first round whose trailing 3-round mean reward reaches `target`, with its trailing mean."""
    return reached(trailing(rounds), target, "reward")


def describe(at: dict | None, reference: dict) -> str:
    if at is None:
        return "not reached"
    return (f"{at['seconds']:.0f} s = {at['seconds'] / reference['seconds']:.2f}x, {at['episodes']:.0f} episodes, "
            f"KL {at['kl']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="rl_efficiency.py --out directories, one seed each")
    p.add_argument("--out", type=Path, default=None, help="where the plot goes (default: the first run's directory)")
    p.add_argument("--json", type=Path, help="the JSON result (default runs/bench/rl_efficiency_seeds.json)")
    args = p.parse_args()
    results = {d: json.loads((d / "results.json").read_text()) for d in args.runs}
    by_method: dict[str, dict[Path, list[dict]]] = {}
    for d, r in results.items():
        for method, res in r.items():
            if res.get("rounds"):
                by_method.setdefault(method, {})[d] = res["rounds"]
    if REFERENCE not in by_method:
        raise SystemExit(f"no {REFERENCE} rounds in {', '.join(map(str, args.runs))}: run rl_efficiency.py "
                         f"--methods {REFERENCE} --eval-every 0 for at least one seed")
    others = [m for m in by_method if m != REFERENCE]

    print("per seed pair: the TRL seed's final 3-round mean reward as the target")
    ratios: dict[str, list[float]] = {m: [] for m in others}
    for trl_dir, trl_rounds in by_method[REFERENCE].items():
        target = trailing(trl_rounds)[-1]["reward"]
        ref = first_at(trl_rounds, target)
        print(f"\n{REFERENCE} {trl_dir}: target {target:.3f}, reached at {ref['seconds']:.0f} s, "
              f"{ref['episodes']} episodes, KL {ref['kl']:.2f}")
        for method in others:
            for d, rounds in by_method[method].items():
                at = first_at(rounds, target)
                print(f"  {method} {d}: {describe(at, ref)}")
                ratios[method].append(at["seconds"] / ref["seconds"] if at else float("inf"))
    for method, rs in ratios.items():
        print(f"{method}: time ratio over the {len(rs)} pairs: median {statistics.median(rs):.2f}, "
              f"range {min(rs):.2f}-{max(rs):.2f}, at most 0.5 in {sum(r <= 0.5 for r in rs)} of {len(rs)}")

    means = {m: mean_rounds(list(runs.values())) for m, runs in by_method.items()}
    target = trailing(means[REFERENCE])[-1]["reward"]
    ref = first_at(means[REFERENCE], target)
    print(f"\nseed means: {REFERENCE} over {len(by_method[REFERENCE])} seeds, final 3-round mean {target:.3f}, reached "
          f"at {ref['seconds']:.0f} s, {ref['episodes']:.0f} episodes, KL {ref['kl']:.2f}")
    for method in others:
        print(f"  {method} over {len(by_method[method])} seeds: {describe(first_at(means[method], target), ref)}")
    for method, rounds in means.items():
        print(f"  {method} mean rounds (episodes: reward / KL / s): "
              + "; ".join(f"{x['episodes']:.0f}: {x['reward']:.2f} / {x['kl']:.2f} / {x['seconds']:.0f}"
                          for x in rounds))

    print("\nreward gained per nat of KL to SFT (each seed's slope through the origin):")
    slopes = {}
    for method, runs in by_method.items():
        slopes[method] = [gain_per_nat(rounds) for rounds in runs.values()]
        print(f"  {method}: mean {statistics.fmean(slopes[method]):.2f} "
              f"(seeds: {', '.join(f'{x:.2f}' for x in slopes[method])})")
    save_result("rl_efficiency_seeds", {"runs": [str(d) for d in args.runs], "reference": REFERENCE,
                                        "time_ratios": ratios, "gain_per_nat": slopes}, args.json)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for i, (method, runs) in enumerate(by_method.items()):
        color = f"C{i}"
        for rounds in runs.values():
            t = trailing(rounds)
            axes[0].plot([x["seconds"] for x in t], [x["reward"] for x in t], color=color, alpha=0.3, lw=0.8)
            axes[1].plot([x["episodes"] for x in t], [x["reward"] for x in t], color=color, alpha=0.3, lw=0.8)
            axes[2].plot([x["episodes"] for x in rounds], [x["kl"] for x in rounds], color=color, alpha=0.3, lw=0.8)
            axes[3].scatter([x["kl"] for x in rounds], [x["reward"] - rounds[0]["reward"] for x in rounds],
                            color=color, s=12, label=method if rounds is next(iter(runs.values())) else None)
        m, t = means[method], trailing(means[method])
        label = f"{method} (mean of {len(runs)} seeds)"
        axes[0].plot([x["seconds"] for x in t], [x["reward"] for x in t], color=color, marker=".", label=label)
        axes[1].plot([x["episodes"] for x in t], [x["reward"] for x in t], color=color, marker=".", label=label)
        axes[2].plot([x["episodes"] for x in m], [x["kl"] for x in m], color=color, marker=".", label=label)
    for ax in axes[:2]:
        ax.axhline(target, color="grey", ls=":", lw=0.8)
    for ax, (xlabel, ylabel) in zip(axes, [("training seconds", "round reward (mean of the last 3 rounds)"),
                                           ("episodes", "round reward (mean of the last 3 rounds)"),
                                           ("episodes", "KL to SFT on the round's own rollouts"),
                                           ("KL to SFT on the round's own rollouts",
                                            "round reward less the seed's first round's")], strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "rl_efficiency_seeds.png", dpi=120)
    print(f"\nplot: {out / 'rl_efficiency_seeds.png'}")


if __name__ == "__main__":
    main()
