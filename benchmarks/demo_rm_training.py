"""How the demo's reward model's training settings change what it learns from the same labels.

    python benchmarks/demo_rm_training.py runs/demo base: seed1:seed=1 ep2:epochs=2 lr1e-4:lr=1e-4

From a finished `rlhfkit demo` run: trains the RM again from its SFT model on round 1's rankings (the labels the
run's RM learnt from) once per variant, a variant being `name:key=value,...` over the demo's `rm` settings (an
empty list is the demo's own), and measures each RM as the demo does: held-out pairwise accuracy on the
rankings it did not train on, agreement with the held-out judges' gold order on the headroom prompts' SFT
samples (overall and by the rubric check that decides the pair), and the gold score of best-of-4 / best-of-16
by that RM. A seed repeat of the demo's own settings tells how much of a difference is noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml
from harness import DemoRun, save_result, timed  # the script beside this one

from rlhfkit.stages import STAGES

CHECKS = ("all", "constraints", "correct", "content", "refusal: harmful", "refusal: harmless")


def variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    update = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        update[key] = yaml.safe_load(value)
    return name, update


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished demo run folder (runs/<name>)")
    p.add_argument("variants", nargs="+", help="name:key=value,... over the demo's rm settings")
    p.add_argument("--json", type=Path, help="where the JSON result goes (default runs/bench/demo_rm_training.json)")
    args = p.parse_args()
    run = DemoRun(args.run)
    cfg = run.config
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.variants:
            name, update = variant(text)
            out = Path(tmp) / name
            with timed() as seconds:
                # validated, so "1e-4" is a float and a misspelt setting is an error
                result = STAGES["rm"].run(type(cfg.rm).model_validate({
                    **cfg.rm.model_dump(), "model": str(run.sft), "data": str(run.rankings(1)),
                    "demos": str(run.data("demonstrations.jsonl")), "output_dir": str(out), "save_every": 0,
                    "progress": False, **update}))
            curve = run.best_of_n(out)
            gold = {b["n"]: b["gold"] for b in curve["best_of_n"]}
            rows.append({"variant": name, "settings": update, "train_s": seconds.value,
                         "heldout": result.metrics.get("accuracy"), "gold_bo4": gold.get(4),
                         "gold_bo16": gold.get(16), "vs_gold": curve["rm_vs_gold"]})
            print(json.dumps(rows[-1]), flush=True)
    head = " ".join(f"{c[:12]:>12}" for c in CHECKS)
    print(f"\n{'variant':<10} {'train s':>7} {'held-out':>8} {'bo4 gold':>8} {'bo16 gold':>9} {head}")
    for r in rows:
        agree = " ".join(f"{r['vs_gold'][c]['accuracy']:>12.3f}" if c in r["vs_gold"] else f"{'-':>12}"
                         for c in CHECKS)
        print(f"{r['variant']:<10} {r['train_s']:>7.0f} {r['heldout']:>8.3f} {r['gold_bo4']:>8.3f} "
              f"{r['gold_bo16']:>9.3f} {agree}")
    pairs = " ".join(f"{rows[0]['vs_gold'].get(c, {}).get('pairs', 0):>12}" for c in CHECKS)
    print(f"{'pairs':<47} {pairs}")
    save_result("demo_rm_training", {"run": str(args.run), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
