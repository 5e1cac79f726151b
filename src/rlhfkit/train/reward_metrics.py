"""Held-out metrics of a reward model from its rewards on ranked responses."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class Pair:
    k: int  # responses in the ranking
    margin: float  # r(first) - r(second), the pair taken in slot order
    first_better: bool
    top_bottom: bool  # the unique best against the unique worst of a ranking


def ranking_pairs(rewards: list[float], ranks: list[int]) -> list[Pair]:
    k = len(ranks)
    best, worst = min(ranks), max(ranks)
    unique_best, unique_worst = ranks.count(best) == 1, ranks.count(worst) == 1
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            if ranks[i] == ranks[j]:
                continue
            extremes = {ranks[i], ranks[j]} == {best, worst} and unique_best and unique_worst
            pairs.append(Pair(k, rewards[i] - rewards[j], ranks[i] < ranks[j], extremes))
    return pairs


def _correct(p: Pair) -> float:
    if p.margin == 0:
        return 0.5
    return float((p.margin > 0) == p.first_better)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, x))))


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > -30 else x


def reward_metrics(pairs_by_ranking: list[list[Pair]], bins: int = 10) -> dict:
    """Pairwise accuracy and loss, accuracy by K and on top-vs-bottom pairs, and a calibration table
    (predicted P(first better) = σ(margin) against the observed share, in `bins` equal-width bins;
    every pair counted in both orders)."""
    rankings = [ps for ps in pairs_by_ranking if ps]
    pairs = [p for ps in rankings for p in ps]
    if not pairs:
        return {}
    loss = sum(-sum(_log_sigmoid(p.margin if p.first_better else -p.margin) for p in ps) / len(ps)
               for ps in rankings) / len(rankings)
    by_k: dict[int, list[float]] = defaultdict(list)
    for p in pairs:
        by_k[p.k].append(_correct(p))
    top_bottom = [_correct(p) for p in pairs if p.top_bottom]
    binned: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for p in pairs:
        # Each pair in both orientations: which slot holds the better response says nothing about the model
        # (in pairwise data the chosen one is often always first), so the table is symmetric around 0.5.
        for prob, first_better in ((_sigmoid(p.margin), p.first_better), (_sigmoid(-p.margin), not p.first_better)):
            binned[min(bins - 1, int(prob * bins))].append((prob, first_better))
    table = [{"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "pairs": len(v),
              "predicted": sum(x for x, _ in v) / len(v), "observed": sum(y for _, y in v) / len(v)}
             for b, v in sorted(binned.items())]
    return {
        "accuracy": sum(map(_correct, pairs)) / len(pairs),
        "loss": loss,
        "pairs": len(pairs),
        "rankings": len(rankings),
        "accuracy_by_k": {k: sum(v) / len(v) for k, v in sorted(by_k.items())},
        "top_bottom_accuracy": sum(top_bottom) / len(top_bottom) if top_bottom else None,
        "calibration": table,
    }
