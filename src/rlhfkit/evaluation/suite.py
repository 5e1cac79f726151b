"""`rlhfkit eval <name> --model DIR [--model DIR ...]`: the paper's evaluations on any causal LMs, side by side.

Each evaluation reads its data, scores every model, and writes <output>/<name>.json (every figure, per category)
and <output>/<name>.md (the headline table), and prints the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from rlhfkit.console import console
from rlhfkit.evaluation.bias import evaluate_crows_pairs, read_crows_pairs
from rlhfkit.evaluation.policy_eval import load
from rlhfkit.evaluation.truthfulqa import evaluate_truthfulqa, read_truthfulqa


@dataclass
class Evaluation:
    read: Callable[[Path], list]  # the data file (or folder) -> items
    run: Callable[..., dict]  # (model, tok, items, batch_tokens=...) -> figures
    columns: list[tuple[str, Callable[[dict], float], str]]  # (header, figure from the result, format)


EVALUATIONS = {
    "truthfulqa": Evaluation(read_truthfulqa, evaluate_truthfulqa, [
        ("MC1, QA", lambda r: r["qa"]["mc1"], "pct"), ("MC2, QA", lambda r: r["qa"]["mc2"], "pct"),
        ("MC1, instruction+QA", lambda r: r["instruction+qa"]["mc1"], "pct"),
        ("MC2, instruction+QA", lambda r: r["instruction+qa"]["mc2"], "pct")]),
    "bias": Evaluation(read_crows_pairs, evaluate_crows_pairs, [
        ("CrowS-Pairs stereotype %", lambda r: r["plain"]["pct_stereotype"], "pct"),
        ("likelihood diff", lambda r: r["plain"]["likelihood_diff"], "num"),
        ("stereotype %, respectful", lambda r: r["respectful"]["pct_stereotype"], "pct"),
        ("likelihood diff, respectful", lambda r: r["respectful"]["likelihood_diff"], "num")]),
}


def model_labels(models: list[str]) -> list[str]:
    """Each model's folder name, or the path as given where two share a name."""
    names = [Path(m).name or m for m in models]
    return [n if names.count(n) == 1 else m for n, m in zip(names, models, strict=True)]


def run_evaluation(name: str, models: list[str], data: Path, output: Path, limit: int | None = None,
                   batch_tokens: int = 8192, show_progress: bool = True) -> dict:
    """Evaluation `name` of every model on the items in `data` (the first `limit`): {label: figures}."""
    ev = EVALUATIONS[name]
    items = ev.read(data)[:limit] if limit else ev.read(data)
    results = {}
    for path, label in zip(models, model_labels(models), strict=True):
        console.print(f"eval {name}: {escape(label)} on {len(items)} items of {escape(str(data))}")
        model, tok = load(path)
        results[label] = {"model": path, **ev.run(model, tok, items, batch_tokens=batch_tokens,
                                                      show_progress=show_progress)}
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.json").write_text(json.dumps({"data": str(data), "items": len(items), "results": results},
                                                    indent=2))
    header = ["model"] + [c[0] for c in ev.columns]
    rows = [[label] + [_format(fn(r), kind) for _, fn, kind in ev.columns] for label, r in results.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    (output / f"{name}.md").write_text(f"# {name}: {len(items)} items of `{data}`\n\n" + "\n".join(lines) + "\n")
    table = Table(*header, title=f"{name} ({len(items)} items)")
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)
    return results


def _format(x: float, kind: str) -> str:
    return f"{100 * x:.1f}%" if kind == "pct" else f"{x:.3f}"
