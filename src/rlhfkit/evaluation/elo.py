"""Comparing policies from human rankings: Bradley–Terry strengths with bootstrap intervals, and online Elo.

Every ranking whose responses come from different policies (its `sources[i]["policy"]`) gives one
outcome per pair of responses from two different policies: 1 to the better, 0 to the worse, ½ each
for a tie. Bradley–Terry models P(a beats b) = σ(s_a − s_b); we fit s by maximum likelihood (the
MM algorithm of Hunter 2004, fractional wins allowed) and report it on the Elo scale
(400/ln 10 · s, centred at 1000). Intervals resample whole rankings, since the pairs of one
ranking are correlated.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.config import EloConfig
from rlhfkit.data.records import Ranking
from rlhfkit.errors import UsageError

ELO_SCALE = 400 / math.log(10)

Outcome = tuple[str, str, float]  # (policy a, policy b, score of a: 1, ½ or 0)


def ranking_outcomes(r: Ranking) -> list[Outcome]:
    if r.ranks is None or r.sources is None:
        return []
    policies = [s.get("policy") for s in r.sources]
    out = []
    for i in range(len(r.responses)):
        for j in range(i + 1, len(r.responses)):
            a, b = policies[i], policies[j]
            if a is None or b is None or a == b:
                continue
            ri, rj = r.ranks[i], r.ranks[j]
            out.append((a, b, 1.0 if ri < rj else 0.0 if ri > rj else 0.5))
    return out


def bradley_terry(outcomes: list[Outcome], iters: int = 500, prior: float = 0.5) -> dict[str, float]:
    """Maximum-likelihood strengths (natural-log scale, mean 0). `prior` adds that many half-games of a
    tie between every pair of policies that met, so a policy that always wins stays finite."""
    players = sorted({p for a, b, _ in outcomes for p in (a, b)})
    wins: dict[str, float] = defaultdict(float)
    games: dict[tuple[str, str], float] = defaultdict(float)
    for a, b, s in outcomes:
        wins[a] += s
        wins[b] += 1 - s
        games[a, b] += 1
        games[b, a] += 1
    for a, b in list(games):
        games[a, b] += prior
        wins[a] += prior / 2
    strength = dict.fromkeys(players, 1.0)
    for _ in range(iters):
        new = {}
        for i in players:
            denom = sum(n / (strength[i] + strength[j]) for (x, j), n in games.items() if x == i)
            new[i] = wins[i] / denom if denom > 0 else strength[i]
        geo = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        delta = max(abs(math.log(new[p] / geo) - math.log(strength[p])) for p in players)
        strength = {p: v / geo for p, v in new.items()}
        if delta < 1e-10:
            break
    return {p: math.log(v) for p, v in strength.items()}


def online_elo(outcomes: list[Outcome], k: float = 16.0, start: float = 1000.0) -> dict[str, float]:
    rating: dict[str, float] = defaultdict(lambda: start)
    for a, b, s in outcomes:
        expected = 1 / (1 + 10 ** ((rating[b] - rating[a]) / 400))
        rating[a] += k * (s - expected)
        rating[b] -= k * (s - expected)
    return dict(rating)


@dataclass
class PolicyScore:
    policy: str
    bt_elo: float  # Bradley–Terry strength on the Elo scale
    ci_low: float
    ci_high: float
    online_elo: float
    games: int
    win_rate: float  # share of its games won, ties counting half


def compare_policies(rankings: list[Ranking], bootstrap: int = 1000, seed: int = 0) -> list[PolicyScore]:
    per_ranking = [o for o in (ranking_outcomes(r) for r in rankings) if o]
    outcomes = [o for os in per_ranking for o in os]
    if not outcomes:
        raise UsageError("no ranking compares responses from two different policies (sources[i].policy)")
    fit = bradley_terry(outcomes)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(bootstrap):
        resampled = [o for _ in per_ranking for o in per_ranking[rng.randrange(len(per_ranking))]]
        for p, s in bradley_terry(resampled, iters=200).items():
            samples[p].append(s)
    elo = online_elo(outcomes)
    games: dict[str, int] = defaultdict(int)
    won: dict[str, float] = defaultdict(float)
    for a, b, s in outcomes:
        games[a] += 1
        games[b] += 1
        won[a] += s
        won[b] += 1 - s
    result = []
    for p, s in sorted(fit.items(), key=lambda kv: -kv[1]):
        boot = sorted(samples[p]) or [s]
        lo, hi = boot[int(0.025 * (len(boot) - 1))], boot[int(math.ceil(0.975 * (len(boot) - 1)))]
        result.append(PolicyScore(p, 1000 + ELO_SCALE * s, 1000 + ELO_SCALE * lo, 1000 + ELO_SCALE * hi,
                                  elo[p], games[p], won[p] / games[p]))
    return result


def print_comparison(cfg: EloConfig) -> list[dict]:
    """`rlhfkit eval elo`: the policies compared in a rankings file, as a table (and JSON with --output)."""
    from rich.table import Table

    from rlhfkit.console import console
    from rlhfkit.data.rankings import read_rankings

    scores = compare_policies(read_rankings(cfg.rankings).records, cfg.bootstrap, cfg.seed)
    table = Table("policy", "Bradley-Terry (Elo scale)", "95% interval", "online Elo", "games", "win rate",
                  title=f"policies compared in {cfg.rankings}")
    for s in scores:
        table.add_row(s.policy, f"{s.bt_elo:.0f}", f"{s.ci_low:.0f} to {s.ci_high:.0f}", f"{s.online_elo:.0f}",
                      str(s.games), f"{s.win_rate:.1%}")
    console.print(table)
    rows = [asdict(s) for s in scores]
    if cfg.output is not None:
        Path(cfg.output).write_text(json.dumps(rows, indent=2))
    return rows
