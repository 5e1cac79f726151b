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
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from rlhfkit.data import prompt_key, read_prompts
from rlhfkit.demo.config import DemoConfig
from rlhfkit.demo.evaluate import GoldProxy
from rlhfkit.demo.headroom import gold
from rlhfkit.train.common import Hooks
from rlhfkit.train.ppo import train_ppo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a demo run folder (runs/<name>)")
    p.add_argument("--reward", nargs="+", choices=["oracle", "rm"], default=["oracle", "rm"])
    p.add_argument("--rm", type=Path, help="reward model folder (default: the run's round1/rm)")
    p.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE", help="PPO options to change")
    p.add_argument("--oracle-scale", type=float, default=5.0, help="the gold score (0-1) times this is the reward")
    p.add_argument("--gold-every", type=int, default=5)
    args = p.parse_args()

    cfg = DemoConfig.of_run(args.run)
    changes = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.set)}
    ppo = cfg.ppo.updated(**changes)
    rm_dir = args.rm or args.run / "round1" / "rm"
    judges = cfg.judges()
    check = GoldProxy(args.run, cfg.model_copy(update={"ppo": ppo}), rm_dir, judges)
    by_key = {prompt_key(x.prompt): x for x in read_prompts(args.run / "data" / "ppo_prompts.jsonl").records}

    def oracle(prompts: list, responses: list[str]) -> torch.Tensor:
        return torch.tensor([args.oracle_scale * gold(judges, by_key[prompt_key(q)], r, True)
                             for q, r in zip(prompts, responses, strict=True)])

    headroom = json.loads((args.run / "stages.json").read_text()).get("headroom", {}).get("result", {})
    best = headroom.get("best_of_n", {})
    print(f"SFT gold {headroom.get('sft_gold', float('nan')):.3f}; the judges' best of n SFT samples: " +
          ", ".join(f"n={n} gold {v['gold']:.3f} at KL {v['kl']:.2f}" for n, v in best.items()))
    print(f"PPO: {changes or 'the run settings'}")
    for reward in args.reward:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = train_ppo(ppo.updated(**{
                "policy": str(args.run / "sft"), "reference": str(args.run / "sft"), "reward_model": str(rm_dir),
                "prompts": str(args.run / "data" / "ppo_prompts.jsonl"),
                **({"ptx": {"data": str(args.run / "data" / "ptx.txt")}} if ppo.ptx else {}),
                "output_dir": tmp, "seed": cfg.seed, "progress": False, "save_every": 0}),
                reward_fn=oracle if reward == "oracle" else None,
                hooks=Hooks(evaluate=check, eval_every=args.gold_every))
            seconds = time.perf_counter() - t0
        episodes = ppo.iterations * ppo.rollout_batch
        print(f"\nreward {reward}: {ppo.iterations} iterations, {episodes} episodes, {seconds:.0f} s")
        print(f"{'iteration':>9} {'gold':>6} {'proxy':>7} {'KL':>6} {'all met':>8}")
        for step, m in enumerate(result.history, start=1):
            if "eval_gold" in m:
                print(f"{step:>9} {m['eval_gold']:>6.3f} {m['eval_proxy']:>7.3f} {m['eval_kl']:>6.2f} "
                      f"{m['eval_all_met']:>8.3f}")


if __name__ == "__main__":
    main()
