"""`rlhfkit demo`'s evaluation, as the paper's section 4: held-out prompts judged by held-out (simulated) labelers.

For each policy: responses to the held-out prompts; win rates between policies with 95% bootstrap intervals
(resampling prompts); a Likert-style mean score; the share of prompts whose constraints are all met; refusal
rates on harmful and on harmless prompts; mean reward-model score; KL to the SFT policy on the policy's own
samples; perplexity on held-out prose (the alignment tax).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.console import console
from rlhfkit.data import Prompt, read_prompts, write_jsonl
from rlhfkit.demo.config import DemoConfig
from rlhfkit.demo.headroom import BEST_OF, best_of_n_by_rm, read_sft_samples, rm_agreement
from rlhfkit.demo.headroom import gold as gold_quality
from rlhfkit.demo.labelers import SimulatedLabeler
from rlhfkit.evaluation.constraints import is_refusal, satisfaction
from rlhfkit.evaluation.instructions import paired_difference
from rlhfkit.evaluation.policy_eval import generate, load, perplexity, sequence_logprobs
from rlhfkit.evaluation.suite import Options, run_evaluation
from rlhfkit.models import default_device, mixed_precision
from rlhfkit.models.reward import load_reward_model, score
from rlhfkit.rollout import Rollout


@dataclass
class PolicyOutputs:
    name: str
    path: str
    rollout: Rollout  # `samples` responses per prompt, prompt after prompt


def win_rate(judges: list[SimulatedLabeler], prompts: list[Prompt], a: PolicyOutputs, b: PolicyOutputs,
             samples: int = 1, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Expected share of comparisons a's response wins against b's (ties count half): each prompt's k-th sample
    of a against its k-th of b, judged by every held-out labeler, averaged per prompt; the 95% interval
    resamples prompts. `prompts` holds each prompt `samples` times, as the rollouts do."""
    per_prompt = []
    for start in range(0, len(prompts), samples):
        votes = [j.compare(prompts[i], a.rollout.texts[i], b.rollout.texts[i], (a.rollout.ended[i], b.rollout.ended[i]))
                 for i in range(start, start + samples) for j in judges]
        per_prompt.append(sum(votes) / len(votes))
    rng = random.Random(seed)
    n = len(per_prompt)
    means = sorted(sum(per_prompt[rng.randrange(n)] for _ in range(n)) / n for _ in range(bootstrap))
    return {"win_rate": sum(per_prompt) / n, "low": means[int(0.025 * bootstrap)],
            "high": means[int(0.975 * bootstrap) - 1], "prompts": n, "samples_per_prompt": samples}


def policy_metrics(out: PolicyOutputs, prompts: list[Prompt], judges: list[SimulatedLabeler]) -> dict:
    texts, ended = out.rollout.texts, out.rollout.ended
    with_constraints = [i for i, p in enumerate(prompts) if p.meta.get("constraints")]
    harmful = [i for i, p in enumerate(prompts) if p.meta.get("harmful")]
    harmless = [i for i, p in enumerate(prompts) if not p.meta.get("harmful")]
    likert = [sum(j.likert(j.quality(p, texts[i], ended[i])) for j in judges) / len(judges)
              for i, p in enumerate(prompts)]

    def share(idx, fn):
        return sum(fn(i) for i in idx) / len(idx) if idx else None

    return {
        "likert": sum(likert) / len(likert),
        "gold": sum(gold_quality(judges, p, texts[i], ended[i]) for i, p in enumerate(prompts)) / len(prompts),
        "constraints_all_met": share(with_constraints, lambda i: satisfaction(prompts[i].meta["constraints"],
                                                                               texts[i]) == 1.0),
        "constraints_met": share(with_constraints, lambda i: satisfaction(prompts[i].meta["constraints"], texts[i])),
        "refusal_harmful": share(harmful, lambda i: is_refusal(texts[i])),
        "refusal_harmless": share(harmless, lambda i: is_refusal(texts[i])),
        "no_eos": share(range(len(prompts)), lambda i: not ended[i]),
        "response_words": share(range(len(prompts)), lambda i: len(texts[i].split())),
    }


# `compare`'s alternatives: their folders in round1/ and their names in the report
ALTERNATIVE_DIRS = {"no-ptx": "ppo-no-ptx", "gae": "ppo-gae", "grpo": "grpo", "dpo": "dpo"}
ALTERNATIVE_NAMES = {"no-ptx": "ppo r1 (γ=0)", "gae": "ppo-ptx gae r1", "grpo": "grpo-ptx r1", "dpo": "dpo r1"}


def _policies(run_dir: Path, cfg: DemoConfig, r: int) -> dict[str, str]:
    if r == 1:
        out = {"base": cfg.model, "sft": str(run_dir / "sft"), "ppo-ptx r1": str(run_dir / "round1/ppo")}
        for alt in cfg.compare:
            out[ALTERNATIVE_NAMES[alt]] = str(run_dir / "round1" / ALTERNATIVE_DIRS[alt])
        return out
    return {f"ppo-ptx r{r}": str(run_dir / f"round{r}/ppo")}


def _policy_outputs(run_dir: Path, name: str, path: str, prompts, prose: list[str], cfg: DemoConfig) -> dict:
    """What a policy's evaluation needs from the policy itself (its held-out responses, their log-probs under
    it, its prose perplexity), computed once with one load of the model and kept in evals/."""
    cache = run_dir / "evals" / (name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "") + ".json")
    if cache.exists():
        return json.loads(cache.read_text())
    model, tok = load(path)
    repeated = [p for p in prompts for _ in range(cfg.eval_samples)]
    roll = generate(model, tok, repeated, cfg.ppo.max_new_tokens, cfg.eval_temperature, cfg.eval_top_p, cfg.seed)
    # log-probs at the temperature sampled at: the KL column is KL(π_T || π_SFT_T), as best-of-n's
    out = {"rollout": roll.__dict__, "logprobs": sequence_logprobs(model, tok, roll.prompt_ids, roll.response_ids,
                                                                   temperature=cfg.eval_temperature),
           "prose_perplexity": perplexity(model, tok, prose)}
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def evaluate_round(run_dir: Path, cfg: DemoConfig, r: int, judges: list[SimulatedLabeler]) -> dict:
    held_out = read_prompts(run_dir / "data/eval_prompts.jsonl").records
    prompts = [p for p in held_out for _ in range(cfg.eval_samples)]  # as the rollouts hold them
    prose = [ln for ln in (run_dir / "data/prose_heldout.txt").read_text().splitlines() if ln.strip()]
    cached, outputs = {}, {}
    for round_ in range(1, r + 1):
        for name, path in _policies(run_dir, cfg, round_).items():
            console.print(f"eval: {name}")
            cached[name] = _policy_outputs(run_dir, name, path, held_out, prose, cfg)
            outputs[name] = PolicyOutputs(name, path, Rollout(**cached[name]["rollout"]))
    rm, rm_tok = load_reward_model(run_dir / f"round{r}/rm")
    rm.to(default_device())
    bf16 = mixed_precision("auto", default_device()) == "bf16"
    sft_model, sft_tok = load(str(run_dir / "sft"))
    metrics = {}
    for name, out in outputs.items():
        m = policy_metrics(out, prompts, judges)
        m["rm_score"] = score(rm, rm_tok, [p.prompt for p in prompts], out.rollout.texts, autocast=bf16,
                             ended=out.rollout.ended).mean().item()
        if name != "base":  # KL(π || π_SFT) on the policy's own samples, summed over tokens
            ref = sequence_logprobs(sft_model, sft_tok, out.rollout.prompt_ids, out.rollout.response_ids,
                                    temperature=cfg.eval_temperature)
            m["kl_to_sft"] = sum(a - b for a, b in zip(cached[name]["logprobs"], ref, strict=True)) / len(ref)
        m["prose_perplexity"] = cached[name]["prose_perplexity"]
        metrics[name] = m
    ppo = f"ppo-ptx r{r}"
    pairs = [(ppo, "sft"), (ppo, "base")] + ([("sft", "base")] if r == 1 else [(ppo, f"ppo-ptx r{r - 1}")])
    if r == 1:
        pairs += [(ALTERNATIVE_NAMES[alt], "sft") for alt in cfg.compare]
    wins = {f"{a} vs {b}": win_rate(judges, prompts, outputs[a], outputs[b], cfg.eval_samples, seed=cfg.seed)
            for a, b in pairs}
    return {"policies": metrics, "win_rates": wins, "prompts": len(held_out), "samples_per_prompt": cfg.eval_samples,
            **best_of_n_curve(run_dir, cfg, r, judges), "gold_proxy": ppo_gold_proxy(run_dir / f"round{r}/ppo")}


def ppo_gold_proxy(ppo_dir: Path) -> list[dict]:
    """The gold/proxy points PPO logged (see GoldProxy), with their iteration."""
    rows = [json.loads(x) for x in (ppo_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [{"iteration": m["step"], "gold": m["eval_gold"], "proxy": m["eval_proxy"], "kl": m["eval_kl"],
             "all_met": m["eval_all_met"]} for m in rows if "eval_gold" in m]


def evaluate_outside(run_dir: Path, cfg: DemoConfig, policies: dict[str, str] | None = None) -> dict:
    """Refusals and response lengths on real user prompts the demo never trains on (`outside_prompts`), for the
    starting model, SFT and the final PPO-ptx policy (or the named `policies`), answering greedily: the habits
    (brevity, refusing harmless requests) that the demo's own prompts cannot show."""
    prompts = read_prompts(cfg.outside_prompts).records[: cfg.outside_limit]
    policies = policies or {"base": cfg.model, "sft": str(run_dir / "sft"),
                            f"ppo-ptx r{cfg.rounds}": str(run_dir / f"round{cfg.rounds}/ppo")}
    out = {}
    for name, path in policies.items():
        console.print(f"outside prompts: {name}")
        cache = run_dir / "evals" / f"outside-{name.replace(' ', '_')}.json"
        if not cache.exists():
            model, tok = load(path)
            roll = generate(model, tok, prompts, cfg.outside_max_new_tokens, 0.0, 1.0, cfg.seed)
            cache.parent.mkdir(exist_ok=True)
            cache.write_text(json.dumps({"texts": roll.texts, "ended": roll.ended}))
        answers = json.loads(cache.read_text())
        n = len(answers["texts"])
        out[name] = {"refusals": sum(map(is_refusal, answers["texts"])) / n,
                     "words": sum(len(t.split()) for t in answers["texts"]) / n,
                     "no_eos": sum(not e for e in answers["ended"]) / n}
    return {"prompts": len(prompts), "max_new_tokens": cfg.outside_max_new_tokens, "source": str(cfg.outside_prompts),
            "policies": out}


def evaluate_instructions_outside(run_dir: Path, cfg: DemoConfig) -> dict:
    """The outside instruction check (`rlhfkit eval instructions`) on the first `instructions_limit` outside prompts,
    for the starting model, SFT and every policy the run trained: does what RLHF taught carry over to instructions
    and requests it never saw? Written to evals/instructions/; SFT is compared with the start, and each policy with
    SFT, paired by prompt."""
    policies = {"base": cfg.model, "sft": str(run_dir / "sft")}
    policies |= {f"ppo-ptx r{r}": str(run_dir / f"round{r}/ppo") for r in range(1, cfg.rounds + 1)}
    policies |= {ALTERNATIVE_NAMES[k]: str(run_dir / "round1" / ALTERNATIVE_DIRS[k]) for k in cfg.compare}
    options = Options(instructions_max_new_tokens=cfg.instructions_max_new_tokens, progress=True)
    results = run_evaluation("instructions", list(policies.values()), {"instructions": Path(cfg.outside_prompts)},
                             run_dir / "evals/instructions", cfg.instructions_limit, options, labels=list(policies))
    scored = {name: r["instructions"] for name, r in results.items()}
    paired = {"sft vs base": paired_difference(scored["base"], scored["sft"])}
    paired |= {f"{name} vs sft": paired_difference(scored["sft"], s) for name, s in scored.items()
               if name not in ("base", "sft")}
    return {"prompts": scored["base"]["prompts"], "instructions": scored["base"]["instructions"],
            "max_new_tokens": cfg.instructions_max_new_tokens, "source": str(cfg.outside_prompts),
            "policies": {name: {k: v for k, v in s.items() if k != "answers"} for name, s in scored.items()},
            "paired": paired}


def evaluate_suite(run_dir: Path, cfg: DemoConfig) -> dict:
    """The paper's other evaluations (`rlhfkit eval all`) on every policy of the run, time-boxed: hallucination on
    the held-out passage prompts, and with `eval_data` the first `eval_data_limit` items of TruthfulQA, CrowS-Pairs,
    Winogender and ToxiGen's prompts. Written to evals/suite/ (all.md, all.png, all.json)."""
    passages = [p for p in read_prompts(run_dir / "data/eval_prompts.jsonl").records if p.meta.get("passage")]
    data: dict[str, Path | None] = {}
    if passages:
        data["hallucination"] = run_dir / "data/passage_prompts.jsonl"
        write_jsonl(data["hallucination"], passages)
    if cfg.eval_data:
        root = Path(cfg.eval_data)
        found = {"truthfulqa": root / "truthfulqa", "crows": root / "crows-pairs", "winogender": root / "winogender",
                 "toxicity": root / "toxigen/prompts_sample.jsonl"}
        data.update({k: v for k, v in found.items() if v.exists()})
    if not data:
        return {}
    policies = {"base": cfg.model, "sft": str(run_dir / "sft")}
    if (run_dir / "round1/ppo-no-ptx").exists():
        policies["ppo r1"] = str(run_dir / "round1/ppo-no-ptx")
    policies[f"ppo-ptx r{cfg.rounds}"] = str(run_dir / f"round{cfg.rounds}/ppo")
    options = Options(max_new_tokens=cfg.ppo.max_new_tokens, samples=2, progress=True)
    results = run_evaluation("all", list(policies.values()), data, run_dir / "evals/suite", cfg.eval_data_limit,
                             options, labels=list(policies))
    return {"data": {k: str(v) for k, v in data.items()}, "limit": cfg.eval_data_limit, "results": results}


class GoldProxy:
    """The over-optimisation check of Gao et al. 2022, run during PPO: on the headroom prompts, samples of the
    current policy (at the evaluation temperature) scored by the held-out judges' noise-free rubric (gold) and by
    the reward model PPO optimises (proxy), with KL(π || π_SFT) between the two sampling distributions."""

    def __init__(self, run_dir: Path, cfg: DemoConfig, rm_dir: Path, judges: list[SimulatedLabeler]):
        self.cfg, self.judges = cfg, judges
        self.prompts = read_prompts(run_dir / "data" / "headroom_prompts.jsonl").records
        self.rm, self.rm_tok = load_reward_model(rm_dir)
        self.rm.to(default_device()).eval()
        self.sft, _ = load(str(run_dir / "sft"))
        self.bf16 = mixed_precision("auto", default_device()) == "bf16"

    def __call__(self, policy, tok) -> dict:
        cfg = self.cfg
        prompts = [p for p in self.prompts for _ in range(cfg.gold_samples)]
        roll = generate(policy, tok, prompts, cfg.ppo.max_new_tokens, cfg.eval_temperature, cfg.eval_top_p, cfg.seed)
        t = cfg.eval_temperature
        mine = sequence_logprobs(policy, tok, roll.prompt_ids, roll.response_ids, temperature=t)
        ref = sequence_logprobs(self.sft, tok, roll.prompt_ids, roll.response_ids, temperature=t)
        proxy = score(self.rm, self.rm_tok, [p.prompt for p in prompts], roll.texts, autocast=self.bf16,
                      ended=roll.ended)
        gold = [gold_quality(self.judges, p, x, e) for p, x, e in zip(prompts, roll.texts, roll.ended, strict=True)]
        met = [satisfaction(p.meta["constraints"], x) == 1.0 for p, x in zip(prompts, roll.texts, strict=True)
               if p.meta.get("constraints")]
        return {"eval_gold": sum(gold) / len(gold), "eval_proxy": proxy.mean().item(),
                "eval_kl": sum(a - b for a, b in zip(mine, ref, strict=True)) / len(ref),
                "eval_all_met": sum(met) / max(1, len(met))}


def best_of_n_curve(run_dir: Path, cfg: DemoConfig, r: int, judges: list[SimulatedLabeler],
                    rm_dir: Path | None = None) -> dict:
    """Best-of-n by round r's reward model (or the one in `rm_dir`) from the headroom stage's SFT samples, n = 1,
    2, 4, ...: gold, proxy, KL and win rate against a random SFT sample (`best_of_n`); and where that RM agrees
    with the judges on those samples (`rm_vs_gold`)."""
    prompts = read_prompts(run_dir / "data" / "headroom_prompts.jsonl").records
    samples = read_sft_samples(run_dir)
    rm, rm_tok = load_reward_model(rm_dir or run_dir / f"round{r}/rm")
    rm.to(default_device()).eval()
    flat = [(p, s) for p, ss in zip(prompts, samples, strict=True) for s in ss]
    scores = score(rm, rm_tok, [p.prompt for p, _ in flat], [s["text"] for _, s in flat],
                   autocast=mixed_precision("auto", default_device()) == "bf16", ended=[s["ended"] for _, s in flat])
    k = len(samples[0])
    proxy = [scores[i * k : (i + 1) * k].tolist() for i in range(len(prompts))]
    quality = [[gold_quality(judges, p, s["text"], s["ended"]) for s in ss] for p, ss in zip(prompts, samples,
                                                                                               strict=True)]
    met = [[float(satisfaction(p.meta["constraints"], s["text"]) == 1.0) for s in ss] if p.meta.get("constraints")
           else None for p, ss in zip(prompts, samples, strict=True)]
    return {"best_of_n": [best_of_n_by_rm(quality, proxy, n, met) for n in BEST_OF if n <= k],
            "rm_vs_gold": rm_agreement(prompts, samples, quality, proxy)}
