"""Is the demo's reward model paying for length? (Singhal et al. 2023: much of RLHF's gain can be length.)

    python benchmarks/demo_rm_length.py runs/demo [--rm runs/demo/round1/rm]

From a demo run past its round-1 RM: the RM scores the headroom stage's SFT samples (held-out prompts, several
samples each, never trained on), and three figures say how much of its reward is length:
  equal-gold pairs   pairs of one prompt's samples that the judges' gold score calls equal (within 0.02) but whose
                     lengths differ by 5 words or more: the share where the RM prefers the longer (0.5: no length
                     bias; the judges, by construction, have none here);
  within-prompt r    the correlation of reward with length in words, each prompt's mean taken out, beside the same
                     correlation for the gold score (the length the task itself rewards);
  partial r          reward against length with gold held fixed (the residuals of both on gold, within prompts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from harness import DemoRun, save_result  # the script beside this one

from rlhfkit.models.reward import load_reward_model, score


def centred(rows: list[list[float]]) -> torch.Tensor:
    """Each prompt's values less their mean, all prompts end to end."""
    return torch.cat([torch.tensor(r, dtype=torch.float64) - sum(r) / len(r) for r in rows])


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-12))


def residual(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y less its least-squares fit on x (both centred)."""
    return y - (x @ y) / (x @ x).clamp(min=1e-12) * x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a demo run folder (runs/<name>)")
    p.add_argument("--rm", type=Path, help="reward model folder (default: the run's round1/rm)")
    p.add_argument("--margin", type=float, default=0.02, help="gold scores this close count as equal")
    p.add_argument("--min-gap", type=int, default=5, help="equal-gold pairs must differ by this many words")
    p.add_argument("--json", type=Path, help="the JSON result (default runs/bench/demo_rm_length.json)")
    args = p.parse_args()
    run = DemoRun(args.run)
    prompts, samples = run.headroom_samples()
    rm, tok = load_reward_model(args.rm or run.rm(1))
    flat = [(q, s) for q, ss in zip(prompts, samples, strict=True) for s in ss]
    rewards = score(rm, tok, [q.prompt for q, _ in flat], [s["text"] for _, s in flat], autocast=True,
                    ended=[s["ended"] for _, s in flat]).tolist()
    k = len(samples[0])
    reward = [rewards[i * k : (i + 1) * k] for i in range(len(prompts))]
    gold = [[run.gold(q, s["text"], s["ended"]) for s in ss] for q, ss in zip(prompts, samples, strict=True)]
    length = [[float(len(s["text"].split())) for s in ss] for ss in samples]

    longer = pairs = 0
    for r, g, n in zip(reward, gold, length, strict=True):
        for a in range(k):
            for b in range(a + 1, k):
                if abs(g[a] - g[b]) <= args.margin and abs(n[a] - n[b]) >= args.min_gap:
                    pairs += 1
                    longer += (r[a] > r[b]) == (n[a] > n[b])
    rc, gc, nc = centred(reward), centred(gold), centred(length)
    result = {
        "samples": len(flat), "prompts": len(prompts), "mean_words": float(sum(map(sum, length)) / len(flat)),
        "equal_gold_pairs": pairs, "rm_prefers_longer": longer / pairs if pairs else None,
        "r_reward_length": corr(rc, nc), "r_gold_length": corr(gc, nc),
        "partial_r_reward_length_given_gold": corr(residual(rc, gc), residual(nc, gc)),
    }
    print(f"{len(flat)} SFT samples of {len(prompts)} held-out prompts, {result['mean_words']:.0f} words on average")
    print(f"equal-gold pairs {args.min_gap}+ words apart: {pairs}; the RM prefers the longer in "
          + (f"{result['rm_prefers_longer']:.1%}" if pairs else "–"))
    partial = result["partial_r_reward_length_given_gold"]
    print(f"within-prompt correlation with length: reward {result['r_reward_length']:+.3f}, gold "
          f"{result['r_gold_length']:+.3f}; reward with gold held fixed {partial:+.3f}")
    save_result("demo_rm_length", {"run": str(args.run), "rm": str(args.rm or run.rm(1)), **result}, args.json)


if __name__ == "__main__":
    main()
