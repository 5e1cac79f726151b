"""How far PPO can climb the judges' gold score in the demo's budget, with a perfect reward and with the RM.

    python benchmarks/demo_ppo_ceiling.py runs/demo --reward oracle rm --set advantage=rloo ptx_coef=0

From a demo run past its round-1 RM: trains PPO from the run's SFT policy on its PPO prompts with the run's PPO
settings (changed by --set), once for each reward asked for:
  oracle  the held-out judges' own noise-free rubric (the gold score, x --oracle-scale): a reward model that
          makes no mistakes. If PPO cannot lift the gold score with this reward, no reward model will help:
          the optimiser's budget (episodes, steps) is the limit, not the RM.
  rm      the run's round-1 reward model (what the demo does).
Every --gold-every iterations the policy is sampled on the headroom prompts and scored by the judges (gold) and
the RM (proxy), with KL to SFT, as the demo's gold-vs-proxy check. The run's headroom stage gives the best-of-n
numbers to hold these against (the judges' best of n SFT samples, at KL log n - (n - 1)/n).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml
from harness import DemoRun, save_result, timed  # the script beside this one

from rlhfkit.train.common import Hooks
from rlhfkit.train.ppo import PPO


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a demo run folder (runs/<name>)")
    p.add_argument("--reward", nargs="+", choices=["oracle", "rm"], default=["oracle", "rm"])
    p.add_argument("--rm", type=Path, help="reward model folder (default: the run's round1/rm)")
    p.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE", help="PPO options to change")
    p.add_argument("--oracle-scale", type=float, default=5.0, help="the gold score (0-1) times this is the reward")
    p.add_argument("--gold-every", type=int, default=5)
    p.add_argument("--json", type=Path, help="where the JSON result goes (default runs/bench/demo_ppo_ceiling.json)")
    args = p.parse_args()

    run = DemoRun(args.run)
    cfg = run.config
    changes = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.set)}
    ppo = cfg.ppo.updated(**changes)
    rm_dir = args.rm or run.rm(1)
    check = run.gold_proxy(rm_dir, cfg.model_copy(update={"ppo": ppo}))

    def oracle(prompts: list, responses: list[str]) -> torch.Tensor:
        return torch.tensor([args.oracle_scale * run.gold(q, r) for q, r in zip(prompts, responses, strict=True)])

    headroom = run.stage("headroom")
    best = headroom.get("best_of_n", {})
    print(f"SFT gold {headroom.get('sft_gold', float('nan')):.3f}; the judges' best of n SFT samples: " +
          ", ".join(f"n={n} gold {v['gold']:.3f} at KL {v['kl']:.2f}" for n, v in best.items()))
    print(f"PPO: {changes or 'the run settings'}")
    curves = {}
    for reward in args.reward:
        with tempfile.TemporaryDirectory() as tmp, timed() as seconds:
            result = PPO.build(ppo.updated(**{
                "policy": str(run.sft), "reference": str(run.sft), "reward_model": str(rm_dir),
                "prompts": str(run.data("ppo_prompts.jsonl")),
                **({"ptx": {"data": str(run.data("ptx.txt"))}} if ppo.ptx else {}),
                "output_dir": tmp, "seed": cfg.seed, "progress": False, "save_every": 0}),
                reward_fn=oracle if reward == "oracle" else None,
                hooks=Hooks(evaluate=check, eval_every=args.gold_every)).train()
        episodes = ppo.iterations * ppo.rollout_batch
        print(f"\nreward {reward}: {ppo.iterations} iterations, {episodes} episodes, {seconds.value:.0f} s")
        print(f"{'iteration':>9} {'gold':>6} {'proxy':>7} {'KL':>6} {'all met':>8}")
        curves[reward] = {"seconds": seconds.value, "episodes": episodes, "checks": []}
        for step, m in enumerate(result.history, start=1):
            if "eval_gold" in m:
                print(f"{step:>9} {m['eval_gold']:>6.3f} {m['eval_proxy']:>7.3f} {m['eval_kl']:>6.2f} "
                      f"{m['eval_all_met']:>8.3f}")
                curves[reward]["checks"].append({"iteration": step, **{k.removeprefix("eval_"): v for k, v in m.items()
                                                                       if k.startswith("eval_")}})
    save_result("demo_ppo_ceiling", {"run": str(args.run), "changes": changes, "headroom": headroom,
                                     "rewards": curves}, args.json)


if __name__ == "__main__":
    main()
