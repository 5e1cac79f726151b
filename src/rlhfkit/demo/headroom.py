"""How much room the demo task leaves above SFT, measured before any RLHF: n samples of the SFT policy per
held-out prompt, judged by the held-out labelers' noise-free rubric (the gold score).

If the judges' own best of n SFT samples barely beats a random SFT sample, the task cannot show what RLHF does,
whatever the optimiser: this is the first number to look at. Best-of-n is also the simplest policy that uses a
reward (Gao et al. 2022): its KL to the sampling policy is log n − (n − 1)/n nats.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from rlhfkit.data import Prompt
from rlhfkit.demo.labelers import BASE_WEIGHTS, SimulatedLabeler, rubric
from rlhfkit.evaluation.constraints import satisfaction
from rlhfkit.evaluation.policy_eval import load
from rlhfkit.models import default_device, mixed_precision
from rlhfkit.rollout import sample

BEST_OF = (1, 2, 4, 8, 16)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || π) in nats, for a policy that samples n times and keeps the best (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


def best_of_n_win(qualities: list[float], n: int) -> float:
    """Expected win (ties count half) of the best of n draws against one draw, both from the empirical
    distribution of `qualities`: P(max of n = x) = F(x)^n − F_<(x)^n."""
    m = len(qualities)
    win = 0.0
    for x in sorted(set(qualities)):
        below = sum(q < x for q in qualities) / m
        at_most = sum(q <= x for q in qualities) / m
        win += (at_most**n - below**n) * (below + 0.5 * (at_most - below))
    return win


def gold(judges: list[SimulatedLabeler], prompt: Prompt, text: str, ended: bool) -> float:
    """The held-out judges' mean noise-free rubric quality, 0 to 1."""
    return sum(j.quality(prompt, text, ended) for j in judges) / len(judges)


def sft_samples(run_dir: Path, prompts: list[Prompt], n: int, max_new_tokens: int, temperature: float, top_p: float,
                seed: int) -> list[list[dict]]:
    """n responses of the SFT policy to each prompt, kept in evals/sft_samples.json with the settings that drew
    them: a run resumed with other headroom settings samples again rather than reusing the wrong ones."""
    cache = run_dir / "evals" / "sft_samples.json"
    settings = {"prompts": [p.prompt for p in prompts], "n": n, "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed}
    if cache.exists():
        kept = json.loads(cache.read_text())
        if isinstance(kept, dict) and kept.get("settings") == settings:
            return kept["samples"]
    model, tok = load(str(run_dir / "sft"))
    torch.manual_seed(seed)
    bf16 = mixed_precision("auto", default_device()) == "bf16"
    roll = sample(model, tok, [p.prompt for p in prompts], n, max_new_tokens, temperature, top_p, 64, autocast=bf16)
    out: list[list[dict]] = [[] for _ in prompts]
    for i, text, ended in zip(roll.prompt_index, roll.texts, roll.ended, strict=True):
        out[i].append({"text": text, "ended": ended})
    cache.parent.mkdir(exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "samples": out}))
    tmp.replace(cache)
    return out


def read_sft_samples(run_dir: Path) -> list[list[dict]]:
    """The headroom stage's SFT samples (evals/sft_samples.json), one list per headroom prompt."""
    return json.loads((run_dir / "evals" / "sft_samples.json").read_text())["samples"]


def headroom(prompts: list[Prompt], samples: list[list[dict]], judges: list[SimulatedLabeler], bootstrap: int = 1000,
             seed: int = 0) -> dict:
    """SFT's all-constraints-met rate over every sample, and the oracle best-of-n win rate against a random SFT
    sample with a 95% interval over prompts."""
    quality = [[gold(judges, p, s["text"], s["ended"]) for s in ss] for p, ss in zip(prompts, samples, strict=True)]
    met = [satisfaction(p.meta["constraints"], s["text"]) == 1.0 for p, ss in zip(prompts, samples, strict=True)
           if p.meta.get("constraints") for s in ss]
    rng = random.Random(seed)
    curve = {}
    for n in [n for n in BEST_OF if n <= min(map(len, samples))]:  # no more than was sampled
        per_prompt = [best_of_n_win(q, n) for q in quality]
        means = sorted(sum(rng.choice(per_prompt) for _ in per_prompt) / len(per_prompt) for _ in range(bootstrap))
        curve[str(n)] = {"win": sum(per_prompt) / len(per_prompt), "low": means[int(0.025 * bootstrap)],
                         "high": means[int(0.975 * bootstrap) - 1], "kl": best_of_n_kl(n),
                         "gold": sum(expected_max(q, n) for q in quality) / len(quality)}
    return {"prompts": len(prompts), "samples_per_prompt": len(samples[0]) if samples else 0,
            "sft_all_met": sum(met) / len(met) if met else None, "sft_gold": curve["1"]["gold"], "best_of_n": curve}


def expected_max(qualities: list[float], n: int) -> float:
    """E[max of n draws] from the empirical distribution of `qualities`."""
    m = len(qualities)
    return sum(x * ((sum(q <= x for q in qualities) / m) ** n - (sum(q < x for q in qualities) / m) ** n)
               for x in sorted(set(qualities)))


def chosen_by(scores: list[float], n: int) -> list[float]:
    """P(best-of-n by `scores` keeps sample i), for n draws with replacement from the samples (ties broken by
    order): the i-th lowest is kept when it is the highest of the n draws."""
    m = len(scores)
    order = sorted(range(m), key=lambda i: scores[i])
    p = [0.0] * m
    for rank, i in enumerate(order, start=1):
        p[i] = (rank / m) ** n - ((rank - 1) / m) ** n
    return p


def best_of_n_by_rm(quality: list[list[float]], proxy: list[list[float]], n: int,
                    met: list[list[float] | None] | None = None) -> dict:
    """Best-of-n chosen by the reward model (`proxy`), averaged over prompts: its gold score, its proxy score, its
    expected win against a random sample by gold (ties half), and (given `met`: per prompt with constraints, 1
    where a sample meets them all; None for a prompt without) the share of those prompts whose kept sample does."""
    gold_sum = proxy_sum = win_sum = met_sum = 0.0
    with_constraints = [m for m in met or [] if m is not None]
    for i, (q, r) in enumerate(zip(quality, proxy, strict=True)):
        p = chosen_by(r, n)
        gold_sum += sum(pi * qi for pi, qi in zip(p, q, strict=True))
        proxy_sum += sum(pi * ri for pi, ri in zip(p, r, strict=True))
        win_sum += sum(pi * (sum(qi > x for x in q) + 0.5 * sum(qi == x for x in q)) / len(q)
                       for pi, qi in zip(p, q, strict=True))
        if met and met[i] is not None:
            met_sum += sum(pi * m for pi, m in zip(p, met[i], strict=True))
    k = len(quality)
    return {"n": n, "kl": best_of_n_kl(n), "gold": gold_sum / k, "proxy": proxy_sum / k, "win_vs_sft": win_sum / k,
            "all_met": met_sum / len(with_constraints) if with_constraints else None}


def deciding_check(prompt: Prompt, a: dict[str, float], b: dict[str, float]) -> str:
    """The rubric check that weighs most in the gold difference between two responses' rubrics (`a`, `b`), by
    the base weights; a refusal is told apart by the kind of prompt (a harmful request or a harmless one)."""
    check = max(a, key=lambda c: BASE_WEIGHTS[c] * abs(a[c] - b.get(c, 0.0)))
    if check == "refusal":
        return "refusal: harmful" if prompt.meta.get("harmful") else "refusal: harmless"
    return check


def rm_agreement(prompts: list[Prompt], samples: list[list[dict]], quality: list[list[float]],
                 proxy: list[list[float]], margin: float = 0.02) -> dict[str, dict]:
    """How often the reward model orders two SFT samples of a prompt as the judges' gold score does, over every
    pair whose gold scores differ by more than `margin`: overall, and by the rubric check that decides the gold
    difference. Where the RM is wrong, PPO and best-of-n climb the proxy away from the gold."""
    counts: dict[str, list[int]] = {}
    for p, ss, q, r in zip(prompts, samples, quality, proxy, strict=True):
        checks = [rubric(p, s["text"], s["ended"]) for s in ss]
        for a in range(len(ss)):
            for b in range(a + 1, len(ss)):
                if abs(q[a] - q[b]) <= margin:
                    continue
                right = int((q[a] > q[b]) == (r[a] > r[b]))
                for key in ("all", deciding_check(p, checks[a], checks[b])):
                    counts.setdefault(key, [0, 0])
                    counts[key][0] += right
                    counts[key][1] += 1
    order = sorted(counts, key=lambda k: (k != "all", -counts[k][1]))
    return {k: {"accuracy": counts[k][0] / counts[k][1], "pairs": counts[k][1]} for k in order}
