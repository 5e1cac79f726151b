"""What SFT on the bundled demonstrations teaches beyond the demo's own prompts, before any RM or PPO.

    python benchmarks/demo_sft_habits.py --outside ../shared/data/oasst-en100/prompt_lottery_en_250_text.jsonl

Runs the default demo's first stages into runs/<name>/ (the bundled data, SFT with the demo's settings, changed
by --set, e.g. --set sft.epochs=2) and prints what decides whether RLHF has anything to show: SFT's headroom on
the held-out demo prompts (all constraints met; the judges' best of n against a random SFT sample) and its
habits on real user prompts it never trained on (refusals, mean words, answers cut off), beside the starting
model's. The demo's target: no more refusals of those prompts than the starting model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml
from harness import save_result  # the script beside this one

from rlhfkit.demo.config import DemoConfig
from rlhfkit.demo.evaluate import evaluate_outside
from rlhfkit.demo.pipeline import Run, measure_headroom, prepare_data, trainer_run
from rlhfkit.stages import STAGES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outside", required=True, help="JSONL of real user prompts (never trained on)")
    p.add_argument("--name", default="sft-habits")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE", help="demo options, e.g. sft.epochs=2")
    p.add_argument("--json", type=Path, help="where the JSON result goes (default runs/bench/demo_sft_habits.json)")
    args = p.parse_args()
    options: dict = {}
    for item in args.set:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = options
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    cfg = DemoConfig(name=args.name, runs_dir=args.runs_dir, outside_prompts=args.outside, resume=True, **options)
    run = Run(cfg)
    run.stage("data", lambda: prepare_data(run, cfg))
    sft = cfg.sft.model_copy(update={"model": cfg.model, "data": str(run.dir / "data/demonstrations.jsonl"),
                                     "output_dir": str(run.dir / "sft"), **trainer_run(cfg)})
    start = time.perf_counter()
    run.stage("sft", lambda: str(STAGES["sft"].run(sft).output), trainer_dir=run.dir / "sft")
    sft_seconds = time.perf_counter() - start
    judges = cfg.judges()
    room = run.stage("headroom", lambda: measure_headroom(run, cfg, judges))
    habits = run.stage("outside", lambda: evaluate_outside(run.dir, cfg, {"base": cfg.model,
                                                                          "sft": str(run.dir / "sft")}))
    print(f"\nSFT: {cfg.sft.epochs:g} epochs, lr {cfg.sft.lr:g}, {sft_seconds:.0f} s")
    curve = ", ".join(f"n={n} {v['win']:.1%}" for n, v in room["best_of_n"].items())
    print(f"headroom on {room.get('prompts', cfg.headroom_prompts)} held-out demo prompts: all constraints met "
          f"{room['sft_all_met']:.1%}; judges' best of n vs a random SFT sample: {curve}")
    print(f"{habits['prompts']} outside prompts, greedy, <= {habits['max_new_tokens']} tokens:")
    print(f"{'policy':8} {'refusals':>9} {'words':>6} {'no EOS':>7}")
    for name, h in habits["policies"].items():
        print(f"{name:8} {h['refusals']:9.1%} {h['words']:6.1f} {h['no_eos']:7.1%}")
    save_result("demo_sft_habits", {"options": options, "sft_seconds": sft_seconds, "headroom": room,
                                    "outside": habits}, args.json)


if __name__ == "__main__":
    main()
