"""Learning efficiency: reward reached against wall-clock and episodes, rlhfkit's PPO / RLOO / GRPO vs TRL's.

    python benchmarks/rl_efficiency.py runs/demo --budget 1200

From a finished demo run: its SFT SmolLM2 as the policy and the frozen reference, its PPO prompts, and one reward
for every method: by default a programmatic one, the held-out judges' own noise-free rubric (the demo's gold score
x --reward-scale), so the reward is exact; with --reward rm the run's round-1 RM, the proxy the demo's PPO climbs
(use another --out per reward; grpo_step_parity.py --noise measured both as noise in a 64-episode update); with
--reward length the response's word count, a control every policy gradient climbs in 64-episode updates, which
measures learning speed where there is signal to learn (with --eval-every 0: the target is then TRL GRPO's final
in-sample reward, a 3-round mean).
Each method gets the same wall-clock budget on this machine, counted from the call that builds it (model loading
included) to its last update, evaluations excluded:
  rlhfkit-gae    `rlhfkit ppo --advantage gae`: a value model, GAE, KL in the reward (k1), the paper's PPO
  rlhfkit-rloo   `--advantage rloo`: no critic, the leave-one-out mean of a prompt's other samples as baseline
  rlhfkit-grpo   `--advantage grpo --kl-in loss --kl-estimator k3`: GRPO's form
  trl-grpo       TRL's GRPOTrainer (defaults: DAPO loss, group-std scaling; beta = KL coefficient, k3 in the loss)
  trl-rloo       TRL's RLOOTrainer (beta: KL in the reward)
The same batch shape for all: 8 prompts x 8 samples = 64 episodes an update round, 2 passes over each (PPO epochs
= TRL's num_iterations), one optimiser step per pass, lr, KL coefficient, temperature 1, 48 new tokens (or
--max-new-tokens); no ptx.
AdamW's beta2 is each tool's own default (rlhfkit 0.95, TRL 0.999) unless --adam-beta2 sets it for all.
Every --eval-every seconds of training, one evaluator (the demo's gold-vs-proxy check) samples the current
policy on the run's held-out headroom prompts and gives gold, proxy (the run's RM) and KL to SFT (nats per
sequence), identical for every method; and each update round's own rollouts give a free in-sample curve for every
method: their mean reward and KL to SFT (the per-sequence sum of log π − log π_SFT; `--eval-every 0` keeps only
this one, for runs over several `--seed`s). Prints the curves, when each rlhfkit method first reaches TRL GRPO's final
held-out gold (--reward rm: its held-out RM score), and writes rl_efficiency.png. Needs `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from harness import DemoRun, save_result, trl_config  # the script beside this one

from rlhfkit.data.records import as_messages
from rlhfkit.demo.config import DemoConfig
from rlhfkit.models import default_device, mixed_precision
from rlhfkit.models.reward import load_reward_model, score
from rlhfkit.train.common import Hooks
from rlhfkit.train.ppo import PPO

METHODS = ("trl-grpo", "rlhfkit-grpo", "rlhfkit-rloo", "rlhfkit-gae", "trl-rloo")
PROMPTS_PER_ROUND, SAMPLES, PASSES = 8, 8, 2


class BudgetSpent(Exception):
    """Raised by the evaluation hook once a method's training time passes the budget."""


class Clock:
    """Training time since the method was built, evaluations excluded; evaluates every `every` seconds of it."""

    def __init__(self, budget: float, every: float, check):
        self.budget, self.every, self.check = budget, every, check
        self.start, self.eval_seconds, self.next_eval = time.perf_counter(), 0.0, 0.0
        self.episodes, self.curve, self.rounds = 0, [], []

    def record_round(self, reward: float, kl: float, cut: float, update_seconds: float = 0.0) -> None:
        """An update round's own rollouts (in-sample, free): their mean reward and KL to SFT, the per-sequence sum
        of log π − log π_SFT over the sampled tokens (k1), both tools' policy and reference log-probs, and the share
        `cut` that ran out of tokens before EOS (where the word count saturates: --reward length). The time is
        when the rollouts were scored, before the round's update: TRL's hook runs then, rlhfkit's after the update,
        whose `update_seconds` it takes off (the policy that earned the reward is the one before the update)."""
        self.rounds.append({"seconds": self.training_seconds() - update_seconds, "episodes": self.episodes,
                            "reward": reward, "kl": kl, "cut": cut})
        print(f"  {self.rounds[-1]['seconds']:7.0f} s {self.episodes:6d} episodes: round's reward {reward:.3f} KL "
              f"{kl:.2f}, cut off {cut:.0%}", flush=True)

    def training_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def spent(self, args) -> bool:
        """Past the budget: --budget training seconds, or --episodes."""
        return self.training_seconds() >= self.budget or bool(args.episodes and self.episodes >= args.episodes)

    def maybe_evaluate(self, policy, tokenizer, force: bool = False) -> dict:
        spent = self.training_seconds()
        if not self.every or (not force and spent < self.next_eval and spent < self.budget):
            return {}
        t0 = time.perf_counter()
        was_training = policy.training
        policy.eval()
        with torch.no_grad(), torch.random.fork_rng():
            m = self.check(policy, tokenizer)
        policy.train(was_training)
        self.eval_seconds += time.perf_counter() - t0
        self.curve.append({"seconds": spent, "episodes": self.episodes, "gold": m["eval_gold"],
                           "proxy": m["eval_proxy"], "kl": m["eval_kl"], "all_met": m["eval_all_met"]})
        print(f"  {spent:7.0f} s {self.episodes:6d} episodes: gold {m['eval_gold']:.3f} proxy {m['eval_proxy']:+.3f} "
              f"KL {m['eval_kl']:.2f} all met {m['eval_all_met']:.1%}", flush=True)
        self.next_eval = spent + self.every
        return m


def run_rlhfkit(method: str, args, cfg: DemoConfig, reward, check) -> Clock:
    options = {"rlhfkit-gae": {"advantage": "gae"}, "rlhfkit-rloo": {"advantage": "rloo"},
               "rlhfkit-grpo": {"advantage": "grpo", "kl_in": "loss", "kl_estimator": "k3"}}[method]
    clock = Clock(args.budget, args.eval_every, check)

    def counted(prompts, responses):
        clock.episodes += len(responses)
        return reward(prompts, responses)

    def evaluate(policy, tokenizer) -> dict:  # after each iteration's update; then `record`
        return clock.maybe_evaluate(policy, tokenizer, force=clock.spent(args))

    def record(_, metrics: dict) -> None:
        clock.record_round(metrics["score"], metrics["kl"], metrics["no_eos"], metrics["seconds_train"])
        if clock.spent(args):
            raise BudgetSpent

    run = DemoRun(args.run)
    with tempfile.TemporaryDirectory() as tmp:  # validated: --rlhfkit-set gives strings
        ppo = cfg.ppo.updated(**{
            "policy": str(run.sft), "reference": str(run.sft),
            "reward_model": str(run.rm(1)), "prompts": str(run.data("ppo_prompts.jsonl")),
            "ptx": None, "output_dir": tmp, "seed": args.seed, "progress": False,
            "save_every": 0, "samples_every": 10**6, "iterations": 10**6, "missing_eos_penalty": None,
            "rollout_batch": PROMPTS_PER_ROUND * SAMPLES, "samples_per_prompt": SAMPLES,
            "minibatch_size": PROMPTS_PER_ROUND * SAMPLES, "ppo_epochs": PASSES, "lr": args.lr,
            "min_lr_ratio": 1.0, "warmup_ratio": 0.0, "kl_coef": args.kl_coef, **options,
            **({"adam_beta2": args.adam_beta2} if args.adam_beta2 is not None else {}), **args.rlhfkit_set})
        clock.start = time.perf_counter()
        try:
            PPO.build(ppo, reward_fn=counted, hooks=Hooks(evaluate=evaluate, eval_every=1, on_step=record)).train()
        except BudgetSpent:
            pass
    return clock


def run_trl(method: str, args, cfg: DemoConfig, reward, check) -> Clock:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    clock = Clock(args.budget, args.eval_every, check)
    run = DemoRun(args.run)
    policy, by_key = str(run.sft), run.ppo_prompts

    def trl_reward(prompts, completions, key, **_) -> list[float]:
        clock.episodes += len(completions)
        return reward([by_key[k].prompt for k in key], [c[-1]["content"] for c in completions]).tolist()

    class Budget(TrainerCallback):
        def on_step_end(self, a, state, control, model=None, processing_class=None, **kw):
            over = clock.spent(args)
            clock.maybe_evaluate(model, processing_class, force=over)
            if over:
                control.should_training_stop = True

    Config, Trainer = (GRPOConfig, GRPOTrainer) if method == "trl-grpo" else (RLOOConfig, RLOOTrainer)
    with tempfile.TemporaryDirectory() as tmp:
        clock.start = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(policy)
        trl_cfg = trl_config(
            # the precision rlhfkit picks on this machine (bf16 where the hardware has it, else fp32): bf16 on a
            # CPU without it is emulated, several times slower
            Config, tmp, mixed_precision(cfg.ppo.dtype, default_device()), seed=args.seed,
            per_device_train_batch_size=PROMPTS_PER_ROUND * SAMPLES // 4, gradient_accumulation_steps=4,
            num_generations=SAMPLES, num_iterations=PASSES, max_completion_length=cfg.ppo.max_new_tokens,
            temperature=1.0, top_p=1.0, learning_rate=args.lr, lr_scheduler_type="constant", beta=args.kl_coef,
            max_steps=10**6, logging_steps=10**6,
            gradient_checkpointing=False,  # TRL turns it on by default: off is faster for a 135M model
            **({"adam_beta2": args.adam_beta2} if args.adam_beta2 is not None else {}))
        dataset = Dataset.from_list([{"prompt": as_messages(x.prompt), "key": key} for key, x in by_key.items()])
        trainer = Trainer(model=policy, reward_funcs=trl_reward, args=trl_cfg, train_dataset=dataset,
                          processing_class=tok, callbacks=[Budget()])
        generate_and_score = trainer._generate_and_score_completions

        def recorded(inputs):  # the same in-sample curve as rlhfkit's iteration metrics
            out = generate_and_score(inputs)
            if trainer.model.training:
                m = out["completion_mask"]
                kl = ((out["old_per_token_logps"] - out["ref_per_token_logps"]) * m).sum(1).mean().item()
                metrics = trainer._metrics["train"]
                clock.record_round(metrics["reward"][-1], kl, metrics["completions/clipped_ratio"][-1])
            return out

        trainer._generate_and_score_completions = recorded
        trainer.train()
    return clock


def task_reward(run: DemoRun, kind: str, scale: float):
    """The reward every method climbs, one callable for both tools: `gold`, the held-out judges' noise-free rubric
    (the demo's gold score) x `scale`; or `rm`, the run's round-1 reward model (the proxy the demo's PPO climbs),
    each response read as a finished answer (both tools pass text, so neither says where a response was cut); or
    `length`, the response's word count, a control any policy gradient climbs (grpo_step_parity.py --noise)."""
    if kind == "length":
        return lambda prompts, responses: torch.tensor([float(len(r.split())) for r in responses])
    if kind == "gold":
        return lambda prompts, responses: torch.tensor(
            [scale * run.gold(q, r) for q, r in zip(prompts, responses, strict=True)])
    rm, rm_tok = load_reward_model(run.rm(1))
    rm.to(default_device()).eval()
    bf16 = mixed_precision(run.config.ppo.dtype, default_device()) == "bf16"

    def rm_reward(prompts: list, responses: list[str]) -> torch.Tensor:  # `score` runs without gradients
        return score(rm, rm_tok, prompts, responses, autocast=bf16).float().cpu()

    return rm_reward


def reached(curve: list[dict], target: float, key: str) -> dict | None:
    """The first evaluation of a curve at or above `target` in `key` (gold or proxy)."""
    return next((p for p in curve if p[key] >= target), None)


def trailing(rounds: list[dict], window: int = 3) -> list[dict]:
    """Update rounds with their reward as the mean of the last `window` rounds': one round's 64 episodes are a noisy
    estimate of the policy's reward, so a target is reached when the trailing mean reaches it."""
    return [r | {"reward": sum(x["reward"] for x in rounds[max(0, i - window + 1) : i + 1]) / min(i + 1, window)}
            for i, r in enumerate(rounds)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished demo run (runs/<name>): sft/, round1/rm, data/")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--budget", type=float, default=1200, help="training seconds per method")
    p.add_argument("--eval-every", type=float, default=150, help="training seconds between evaluations (0: none, "
                   "only the update rounds' own reward and KL)")
    p.add_argument("--seed", type=int, default=None, help="both tools' seed (default: the demo's)")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--adam-beta2", type=float, default=None, help="AdamW's beta2 for every method (default: each "
                   "tool's own, rlhfkit 0.95, TRL 0.999)")
    p.add_argument("--episodes", type=int, default=None, help="also stop a method after this many episodes")
    p.add_argument("--rlhfkit-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="PPO options for the rlhfkit methods only, e.g. dtype=fp32 frozen_dtype=fp32 (a diagnosis)")
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--max-new-tokens", type=int, default=None, help="every method's response budget (default: the "
                   "demo's PPO, 48); the word count saturates near it, so --reward length races best below it")
    p.add_argument("--reward", choices=("gold", "rm", "length"), default="gold",
                   help="what every method climbs: the judges' rubric (gold; the target is TRL's final held-out "
                        "gold), the run's RM (rm; the target is TRL's final held-out RM score, the proxy) or the "
                        "response's word count (length: a control with signal in a 64-episode update; use it with "
                        "--eval-every 0, the target then TRL's final in-sample reward)")
    p.add_argument("--reward-scale", type=float, default=5.0, help="--reward gold: the gold score (0-1) times this "
                   "is the reward")
    p.add_argument("--gold-samples", type=int, default=None,
                   help="policy samples per headroom prompt at each evaluation (default: the demo's, 2); the gold "
                        "mean's standard error on the default demo's 50 prompts is 0.011 at 2 and 0.004 at 8")
    p.add_argument("--out", type=Path, default=Path("runs/rl-efficiency"))
    p.add_argument("--json", type=Path, help="the JSON result (default runs/bench/rl_efficiency.json)")
    args = p.parse_args()
    if args.reward == "length" and args.eval_every:  # the held-out check scores gold and the RM, not length
        p.error("--reward length is measured on the update rounds' own rollouts: give it --eval-every 0")
    args.rlhfkit_set = dict(kv.split("=", 1) for kv in args.rlhfkit_set)  # pydantic converts the strings
    args.out.mkdir(parents=True, exist_ok=True)

    run = DemoRun(args.run)
    cfg = run.config
    args.seed = cfg.seed if args.seed is None else args.seed
    if args.max_new_tokens:
        cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"max_new_tokens": args.max_new_tokens})})
    if args.gold_samples:
        cfg = cfg.model_copy(update={"gold_samples": args.gold_samples})
    check = run.gold_proxy(run.rm(1), cfg) if args.eval_every else None
    reward = task_reward(run, args.reward, args.reward_scale)

    sft_gold = run.stage("headroom").get("sft_gold")
    print(f"SFT's gold on the headroom prompts (the demo's headroom stage): {sft_gold}")
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}  # a rerun adds what is missing
    for method in args.methods:
        if method in results:
            continue
        print(f"\n{method}: {args.budget:.0f} s of training", flush=True)
        train = run_rlhfkit if method.startswith("rlhfkit") else run_trl
        clock = train(method, args, cfg, reward, check)
        results[method] = {"curve": clock.curve, "rounds": clock.rounds, "episodes": clock.episodes}
        results_path.write_text(json.dumps(results, indent=1))

    for method, r in results.items():  # in-sample: each update round's own rollouts
        rounds = r.get("rounds", [])
        print(f"{method} update rounds (episodes: reward / KL): "
              + "; ".join(f"{x['episodes']}: {x['reward']:.3f} / {x['kl']:.2f}" for x in rounds))
    evaluated = {m: r for m, r in results.items() if r["curve"]}
    if evaluated:
        print("\n| method | final gold | final proxy (RM) | KL to SFT | all met | episodes | episodes/s |")
        print("|---|---|---|---|---|---|---|")
    for method, r in evaluated.items():
        last = r["curve"][-1]
        print(f"| {method} | {last['gold']:.3f} | {last['proxy']:+.3f} | {last['kl']:.2f} | {last['all_met']:.1%} | "
              f"{last['episodes']} | "
              f"{last['episodes'] / last['seconds']:.2f} |")
    key = "gold" if args.reward == "gold" else "proxy"  # the held-out score of what the methods climb
    if "trl-grpo" in evaluated:
        trl = results["trl-grpo"]["curve"]
        target = trl[-1][key]
        first = reached(trl, target, key)
        print(f"\nTRL GRPO's final held-out {key} {target:.3f} (start: {trl[0][key]:.3f}), first reached at "
              f"{first['seconds']:.0f} s, KL {first['kl']:.2f} (final KL {trl[-1]['kl']:.2f})")
        for method in (m for m in evaluated if m.startswith("rlhfkit")):
            at = reached(results[method]["curve"], target, key)
            # the same gold at a much larger KL is not the same result: print both
            print(f"  {method}: " + (f"reached it at {at['seconds']:.0f} s = {at['seconds'] / first['seconds']:.2f}x "
                                     f"TRL's time, {at['episodes']} episodes, KL {at['kl']:.2f}" if at is not None
                                     else "did not reach it in the budget"))

    if "trl-grpo" in results and results["trl-grpo"].get("rounds"):  # in-sample, free: every run has it
        trl = trailing(results["trl-grpo"]["rounds"])
        target, end = trl[-1]["reward"], results["trl-grpo"]["rounds"][-1]
        first = reached(trl, target, "reward")
        print(f"\nTRL GRPO's final in-sample reward (mean of its last 3 rounds) {target:.3f} (first round: "
              f"{trl[0]['reward']:.3f}), first reached at {first['seconds']:.0f} s, {first['episodes']} episodes, "
              f"KL {first['kl']:.2f} (final: {end['seconds']:.0f} s, {end['episodes']} episodes, KL {end['kl']:.2f})")
        for method in (m for m in results if m.startswith("rlhfkit") and results[m].get("rounds")):
            at = reached(trailing(results[method]["rounds"]), target, "reward")
            print(f"  {method}: " + (f"reached it at {at['seconds']:.0f} s = {at['seconds'] / first['seconds']:.2f}x "
                                     f"TRL's time, {at['episodes']} episodes, KL {at['kl']:.2f}" if at is not None
                                     else "did not reach it in the budget"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    # without evaluations (--eval-every 0) the first three panels show the update rounds' own rollouts
    in_sample = not any(r["curve"] for r in results.values())
    y = "reward" if in_sample else key
    for method, r in results.items():
        rounds = r.get("rounds", [])
        c = trailing(rounds) if in_sample else r["curve"]
        axes[0].plot([x["seconds"] for x in c], [x[y] for x in c], marker=".", label=method)
        axes[1].plot([x["episodes"] for x in c], [x[y] for x in c], marker=".", label=method)
        axes[2].plot([x["seconds"] for x in c], [x["kl"] for x in c], marker=".", label=method)
        axes[3].plot([x["episodes"] for x in rounds], [x["kl"] for x in rounds], marker=".", label=method)
    score = "round reward (mean of the last 3 rounds)" if in_sample else f"held-out {key}"
    kl = "KL to SFT on the round's own rollouts" if in_sample else "KL to SFT (nats/sequence)"
    for ax, (xlabel, ylabel) in zip(axes, [("training seconds", score), ("episodes", score), ("training seconds", kl),
                                           ("episodes", "KL to SFT on the round's own rollouts")], strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "rl_efficiency.png", dpi=120)
    print(f"\nplot: {args.out / 'rl_efficiency.png'}; results: {results_path}")
    save_result("rl_efficiency", {"run": str(args.run), "reward": args.reward, "budget_s": args.budget,
                                  "sft_gold": sft_gold, "methods": results}, args.json)


if __name__ == "__main__":
    main()
