"""rlhfkit's multiple-choice evaluations against EleutherAI's lm-evaluation-harness: the same model, items and
machine, both in fp32; prints each metric from both (they should agree within 0.5 points) and items per second.

    python benchmarks/eval_speed.py --truthfulqa ../shared/data/truthfulqa --crows ../shared/data/crows-pairs \
        [--model smollm2-135m] [--limit 200]

lm-eval (`pip install lm-eval`) reads the same local files through task configs written here (its own prompt,
choices and metric functions; no hub access). Times exclude loading the model.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import yaml
from harness import lm_eval_model, save_result  # the script beside this one

from rlhfkit.evaluation.bias import crows_items, evaluate_crows_pairs, read_crows_pairs
from rlhfkit.evaluation.loglik import Choices, encode_item, shared_prefix
from rlhfkit.evaluation.policy_eval import load
from rlhfkit.evaluation.truthfulqa import evaluate_truthfulqa, read_truthfulqa, truthfulqa_items
from rlhfkit.models import resolve_model_path

TASKS = """
- task: rk_truthfulqa_mc1
  dataset_path: json
  dataset_kwargs: {{data_files: {{validation: {tqa}}}}}
  validation_split: validation
  output_type: multiple_choice
  doc_to_text: {doc_to_text}
  doc_to_target: 0
  doc_to_choice: "{{{{mc1_targets.choices}}}}"
  metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
- task: rk_truthfulqa_mc2
  dataset_path: json
  dataset_kwargs: {{data_files: {{validation: {tqa}}}}}
  validation_split: validation
  output_type: multiple_choice
  doc_to_text: {doc_to_text}
  doc_to_target: 0
  doc_to_choice: "{{{{mc2_targets.choices}}}}"
  process_results: !function utils.process_results_mc2
  metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
- task: rk_crows_pairs_english
  dataset_path: csv
  dataset_kwargs: {{data_files: {{test: {crows}}}}}
  test_split: test
  output_type: multiple_choice
  doc_to_text: ""
  doc_to_target: 0
  doc_to_choice: !function utils.doc_to_choice
  target_delimiter: ""
  process_results: !function utils.process_results
  metric_list: [{{metric: likelihood_diff, aggregation: mean, higher_is_better: false}},
                {{metric: pct_stereotype, aggregation: mean, higher_is_better: false}}]
"""
UTILS = ("from lm_eval.tasks.truthfulqa.utils import process_results_mc2  # noqa: F401\n"
         "from lm_eval.tasks.crows_pairs.utils import doc_to_choice, process_results  # noqa: F401\n")


def write_tasks(folder: Path, questions, tqa_limit: int, crows_path: Path, crows_limit: int) -> list[str]:
    """The items as lm-eval reads them (the Hugging Face layouts), and one task config per metric."""
    import lm_eval.tasks.truthfulqa as tqa_pkg

    with open(folder / "tqa.jsonl", "w") as f:
        for q in questions[:tqa_limit]:
            f.write(json.dumps({"question": q.question,
                                "mc1_targets": {"choices": [a for a, _ in q.mc1], "labels": [b for _, b in q.mc1]},
                                "mc2_targets": {"choices": [a for a, _ in q.mc2], "labels": [b for _, b in q.mc2]}})
                    + "\n")
    with open(crows_path, encoding="utf-8-sig", newline="") as src, open(folder / "crows.csv", "w", newline="") as dst:
        rows = list(csv.DictReader(src))[:crows_limit]
        writer = csv.DictWriter(dst, fieldnames=["sent_more", "sent_less", "bias_type"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    # the harness's own six-shot QA prompt, from its truthfulqa_mc1 config
    doc_to_text = yaml.safe_load((Path(tqa_pkg.__path__[0]) / "truthfulqa_mc1.yaml").read_text())["doc_to_text"]
    tasks = yaml.safe_load(TASKS.format(tqa=folder / "tqa.jsonl", crows=folder / "crows.csv", doc_to_text="X")
                           .replace("!function ", "FUNCTION:"))
    for task in tasks:
        if task["task"].startswith("rk_truthfulqa"):
            task["doc_to_text"] = doc_to_text
        text = yaml.safe_dump(task, sort_keys=False, width=10**6)
        (folder / f"{task['task']}.yaml").write_text(text.replace("FUNCTION:", "!function "))
    (folder / "utils.py").write_text(UTILS)
    return [t["task"] for t in tasks]


def model_tokens(tok, items: list[Choices], share_prefix: bool) -> tuple[int, int]:
    """Tokens each side runs through the model for these items, padding aside: rlhfkit, an item's context once and
    each choice after it (its choices' shared start once too where `share_prefix`); lm-eval, context + choice for
    every choice, less the last token. Where the speed ratio is near the token ratio, both are compute-bound."""
    ours = theirs = 0
    for item in items:
        g = encode_item(tok, item)
        theirs += sum(len(g.prompt_ids) + len(c) - 1 for c in g.response_ids)
        ours += len(shared_prefix(g) if share_prefix else g)
    return ours, theirs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--truthfulqa", type=Path, required=True, help="folder with mc_task.json (or the file)")
    p.add_argument("--crows", type=Path, required=True, help="crows_pairs_anonymized.csv (or its folder)")
    p.add_argument("--limit", type=int, default=200, help="items of each task (0: all)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="rlhfkit: tokens packed per forward")
    p.add_argument("--lm-eval-batch", type=int, default=16, help="lm-eval: sequences per forward")
    p.add_argument("--json", type=Path, help="the JSON result (default runs/bench/eval_speed.json)")
    args = p.parse_args()
    crows_path = args.crows / "crows_pairs_anonymized.csv" if args.crows.is_dir() else args.crows
    path = str(resolve_model_path(args.model))
    questions, pairs = read_truthfulqa(args.truthfulqa), read_crows_pairs(crows_path)
    limit = args.limit or max(len(questions), len(pairs))
    questions, pairs = questions[:limit], pairs[:limit]

    model, tok = load(path)
    t0 = time.perf_counter()
    tqa = evaluate_truthfulqa(model, tok, questions, ("qa",), args.batch_tokens)["qa"]
    t_tqa = time.perf_counter() - t0
    t0 = time.perf_counter()
    crows = evaluate_crows_pairs(model, tok, pairs, ("plain",), args.batch_tokens)["plain"]
    t_crows = time.perf_counter() - t0
    del model

    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = lm_eval_model(path, args.lm_eval_batch)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_tasks(Path(tmp), questions, limit, crows_path, limit)
        manager = TaskManager(include_path=tmp)
        seconds, results = {}, {}
        for group in (names[:2], names[2:]):
            t0 = time.perf_counter()
            out = lm_eval.simple_evaluate(model=lm, tasks=group, task_manager=manager, batch_size=args.lm_eval_batch)
            seconds[group[0]] = time.perf_counter() - t0
            results.update(out["results"])
    ref = {"mc1": results["rk_truthfulqa_mc1"]["acc,none"], "mc2": results["rk_truthfulqa_mc2"]["acc,none"],
           "pct_stereotype": results["rk_crows_pairs_english"]["pct_stereotype,none"],
           "likelihood_diff": results["rk_crows_pairs_english"]["likelihood_diff,none"]}
    ours = {"mc1": tqa["mc1"], "mc2": tqa["mc2"], "pct_stereotype": crows["pct_stereotype"],
            "likelihood_diff": crows["likelihood_diff"]}
    print(f"\n{args.model}, fp32, {len(questions)} TruthfulQA questions, {len(pairs)} CrowS-Pairs pairs")
    print(f"{'metric':<28} {'rlhfkit':>9} {'lm-eval':>9} {'diff (points)':>14}")
    for k in ("mc1", "mc2", "pct_stereotype"):
        print(f"{k:<28} {100 * ours[k]:>9.2f} {100 * ref[k]:>9.2f} {100 * (ours[k] - ref[k]):>14.2f}")
    k = "likelihood_diff"
    print(f"{k + ' (nats)':<28} {ours[k]:>9.3f} {ref[k]:>9.3f} {ours[k] - ref[k]:>14.3f}")
    tokens = {"tqa": model_tokens(tok, truthfulqa_items(questions, "qa"), share_prefix=False),
              "crows": model_tokens(tok, crows_items(pairs, "plain"), share_prefix=True)}
    print(f"\n{'task':<22} {'rlhfkit items/s':>16} {'lm-eval items/s':>16} {'ratio':>7} {'token ratio':>12}")
    for task, key, n, mine, theirs in (("truthfulqa mc1+mc2", "tqa", len(questions), t_tqa, seconds[names[0]]),
                                       ("crows-pairs english", "crows", len(pairs), t_crows, seconds[names[2]])):
        ours_t, theirs_t = tokens[key]
        print(f"{task:<22} {n / mine:>16.2f} {n / theirs:>16.2f} {theirs / mine:>6.2f}x {theirs_t / ours_t:>11.2f}x")
    print("token ratio: tokens lm-eval runs through the model over rlhfkit's, padding aside (the compute floor)")
    save_result("eval_speed", {"model": args.model, "questions": len(questions), "pairs": len(pairs), "rlhfkit": ours,
                               "lm_eval": ref, "seconds": {"rlhfkit": {"truthfulqa": t_tqa, "crows_pairs": t_crows},
                                                           "lm_eval": seconds}, "tokens": tokens}, args.json)


if __name__ == "__main__":
    main()
