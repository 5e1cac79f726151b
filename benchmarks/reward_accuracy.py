"""Reward-model accuracy: rlhfkit vs TRL's RewardTrainer trained the same way, on real preference data.

    python benchmarks/reward_accuracy.py ../shared/data/hh-rlhf/harmless-base_test.jsonl.gz \\
        --oasst ../shared/data/oasst-en100/en_100_tree.jsonl

HH-RLHF harmless-base: train on the first 80% of the pairs, report held-out pairwise accuracy for both
(same backbone SmolLM2-135M, epochs, learning rate, batch of pairs, max length). Then rlhfkit alone on
the K-way OpenAssistant rankings (80/20 split by ranking), held-out accuracy over all their pairs.
`--limit` trains on fewer pairs, for a quicker run on a CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from harness import save_result, trl_config, trl_preference_pairs  # the script beside this one

from rlhfkit.config import RMConfig
from rlhfkit.data import write_jsonl
from rlhfkit.data.rankings import read_rankings
from rlhfkit.models import resolve_model_path
from rlhfkit.stages import STAGES


def rlhfkit_accuracy(train, held_out, work: Path, args, name: str) -> dict:
    write_jsonl(work / f"{name}-train.jsonl", train)
    write_jsonl(work / f"{name}-eval.jsonl", held_out)
    cfg = RMConfig(model=args.model, data=str(work / f"{name}-train.jsonl"), eval_data=str(work / f"{name}-eval.jsonl"),
                   output_dir=str(work / f"rlhfkit-{name}"), max_length=args.max_length, batch_size=args.batch,
                   epochs=args.epochs, lr=args.lr, dtype=args.dtype, eval_every=0, save_every=0, progress=True,
                   warmup_ratio=0.03)
    return STAGES["rm"].run(cfg).metrics


def trl_accuracy(train, held_out, work: Path, args) -> float:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = str(resolve_model_path(args.model))
    tok = AutoTokenizer.from_pretrained(path)
    cfg = trl_config(RewardConfig, work / "trl", args.dtype, per_device_train_batch_size=args.batch,
                     num_train_epochs=args.epochs, learning_rate=args.lr, max_length=args.max_length,
                     lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=50, gradient_checkpointing=False,
                     disable_tqdm=False)
    trainer = RewardTrainer(model=path, args=cfg, train_dataset=Dataset.from_list(trl_preference_pairs(train)),
                            processing_class=tok)
    trainer.train()
    # Score held-out pairs with TRL's model and template; TRL drops pairs longer than max_length, so we
    # truncate from the left to score every pair.
    model = trainer.model.eval()
    correct = 0.0
    with torch.no_grad():
        for r in held_out:
            rewards = []
            for response in r.responses:
                msgs = [m.model_dump() for m in r.prompt] + [{"role": "assistant", "content": response}]
                ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=False)[-args.max_length:]
                rewards.append(model(input_ids=torch.tensor([ids], device=model.device)).logits[0, 0].item())
            correct += 1.0 if rewards[0] > rewards[1] else 0.5 if rewards[0] == rewards[1] else 0.0
    return correct / len(held_out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hh", type=Path, help="harmless-base_test.jsonl.gz")
    p.add_argument("--oasst", type=Path, help="en_100_tree.jsonl for the K-way run")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs of the file")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch", type=int, default=8, help="pairs (rankings) per optimiser step")
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="the JSON result (default runs/bench/SCRIPT.json)")
    args = p.parse_args()

    hh = read_rankings(args.hh, skip_invalid=True)
    pairs = hh.records[: args.limit] if args.limit else hh.records
    cut = int(0.8 * len(pairs))
    train, held_out = pairs[:cut], pairs[cut:]
    print(f"HH-RLHF harmless-base: {len(train)} train / {len(held_out)} held-out pairs "
          f"({hh.skipped} unreadable records skipped)", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["rlhfkit_hh"] = rlhfkit_accuracy(train, held_out, work, args, "hh")["accuracy"]
        print(f"rlhfkit held-out accuracy (HH): {results['rlhfkit_hh']:.3f}", flush=True)
        if not args.skip_trl:
            results["trl_hh"] = trl_accuracy(train, held_out, work, args)
            print(f"TRL     held-out accuracy (HH): {results['trl_hh']:.3f}", flush=True)
        if args.oasst:
            oa = read_rankings(args.oasst).records
            cut = int(0.8 * len(oa))
            m = rlhfkit_accuracy(oa[:cut], oa[cut:], work, args, "oasst")
            results["rlhfkit_oasst"] = m
            print(f"rlhfkit held-out accuracy (OpenAssistant, {m['rankings']} rankings, {m['pairs']} pairs): "
                  f"{m['accuracy']:.3f}; by K: {m['accuracy_by_k']}", flush=True)
    save_result("reward_accuracy", {k: v if not isinstance(v, dict) else
                                    {kk: vv for kk, vv in v.items() if kk != "calibration"}
                                    for k, v in results.items()}, args.json)


if __name__ == "__main__":
    main()
