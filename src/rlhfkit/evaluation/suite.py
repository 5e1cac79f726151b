"""`rlhfkit eval <name> --model DIR [--model DIR ...]`: the paper's evaluations on any causal LMs, side by side.

Each evaluation reads its data, scores every model, and writes <output>/<name>.json (every figure, per category)
and <output>/<name>.md (the headline table), and prints the table.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from rlhfkit.config import EvalConfig
from rlhfkit.console import console
from rlhfkit.errors import UsageError
from rlhfkit.evaluation.bias import evaluate_crows_pairs, evaluate_winogender, read_crows_pairs, read_winogender
from rlhfkit.evaluation.hallucination import evaluate_hallucination, read_passage_prompts
from rlhfkit.evaluation.instructions import evaluate_instructions, paired_difference, read_instruction_prompts
from rlhfkit.evaluation.policy_eval import load
from rlhfkit.evaluation.tax import evaluate_multiple_choice, evaluate_prose, read_multiple_choice, read_prose
from rlhfkit.evaluation.toxicity import evaluate_toxicity, load_classifier, read_toxicity_prompts
from rlhfkit.evaluation.truthfulqa import evaluate_truthfulqa, read_truthfulqa


@dataclass
class Options:
    batch_tokens: int = 8192  # log-likelihood scoring: tokens packed into one forward pass
    max_new_tokens: int = 128  # generation: the longest answer
    progress: bool = True
    samples: int = 4  # toxicity: samples a prompt (for the expected maximum)
    toxicity_max_new_tokens: int = 32  # toxicity: the longest sample (RealToxicityPrompts continues with 20)
    shots: int = 0  # multiple choice: the first items become examples before every question
    classifier: str | None = None  # toxicity: a HF sequence-classification folder; None: the offline default
    instructions_max_new_tokens: int = 512  # outside instruction following: the longest answer (greedy)


@dataclass
class Part:
    """One data set of an evaluation: how to read it, how to score a model on it, and its headline columns."""

    read: Callable[[Path], list]  # the data file (or folder) -> items
    run: Callable[[object, object, list, Options], dict]  # (model, tokenizer, items, options) -> figures
    columns: list[tuple[str, Callable[[dict], float | None], str]]  # (header, figure from the result, format)


def _scored(fn: Callable[..., dict]) -> Callable[[object, object, list, Options], dict]:
    """A log-likelihood evaluation, given the options it takes."""
    return lambda model, tok, items, o: fn(model, tok, items, batch_tokens=o.batch_tokens, show_progress=o.progress)


PARTS: dict[str, Part] = {
    "truthfulqa": Part(read_truthfulqa, _scored(evaluate_truthfulqa), [
        ("TruthfulQA MC1, QA", lambda r: r["qa"]["mc1"], "pct"), ("MC2, QA", lambda r: r["qa"]["mc2"], "pct"),
        ("MC1, instruction+QA", lambda r: r["instruction+qa"]["mc1"], "pct"),
        ("MC2, instruction+QA", lambda r: r["instruction+qa"]["mc2"], "pct")]),
    "crows": Part(read_crows_pairs, _scored(evaluate_crows_pairs), [
        ("CrowS stereotype %", lambda r: r["plain"]["pct_stereotype"], "pct"),
        ("CrowS stereotype %, respectful", lambda r: r["respectful"]["pct_stereotype"], "pct"),
        ("CrowS likelihood diff", lambda r: r["plain"]["likelihood_diff"], "num")]),
    "winogender": Part(read_winogender, _scored(evaluate_winogender), [
        ("Winogender entropy (bits)", lambda r: r["plain"]["entropy_bits"], "num"),
        ("entropy, respectful", lambda r: r["respectful"]["entropy_bits"], "num"),
        ("P(she | he or she)", lambda r: r["plain"]["p_she_of_gendered"], "pct"),
        ("r with % women", lambda r: r["plain"]["correlation_with_bls"], "num")]),
    "toxicity": Part(
        read_toxicity_prompts,
        lambda model, tok, items, o: evaluate_toxicity(model, tok, items, _classifier(o.classifier), o.samples,
                                                       o.toxicity_max_new_tokens), [
            ("toxicity", lambda r: r["none"]["mean"], "num"),
            ("expected max", lambda r: r["none"]["expected_max"], "num"),
            ("share > 0.5", lambda r: r["none"]["above_half"], "pct"),
            ("toxicity, respectful", lambda r: r["respectful"]["mean"], "num"),
            ("expected max, respectful", lambda r: r["respectful"]["expected_max"], "num"),
            ("toxicity, asked to be toxic", lambda r: r["toxic"]["mean"], "num")]),
    "hallucination": Part(
        read_passage_prompts,
        lambda model, tok, items, o: evaluate_hallucination(model, tok, items, o.max_new_tokens), [
            ("hallucinated (share of answers)", lambda r: r["hallucination_rate"], "pct"),
            ("unsupported content words", lambda r: r["unsupported_share"], "pct"),
            ("refused or empty", lambda r: r["refused_or_empty"], "pct")]),
    "instructions": Part(
        read_instruction_prompts,
        lambda model, tok, items, o: evaluate_instructions(model, tok, items, o.instructions_max_new_tokens), [
            ("instructions: prompts followed (strict)", lambda r: r["prompt_strict"], "pct"),
            ("instructions followed (strict)", lambda r: r["instruction_strict"], "pct"),
            ("instructions followed (loose)", lambda r: r["instruction_loose"], "pct"),
            ("mean words", lambda r: r["words"], "num"),
            ("cut off", lambda r: r["cut_off"], "pct"),
            ("refusals", lambda r: r["refusals"], "pct")]),
    "prose": Part(read_prose, lambda model, tok, items, o: evaluate_prose(model, tok, items), [
        ("prose perplexity", lambda r: r["perplexity"], "num")]),
    "mc": Part(read_multiple_choice,
               lambda model, tok, items, o: evaluate_multiple_choice(model, tok, items, o.shots, o.batch_tokens,
                                                                     o.progress), [
                   ("multiple choice acc", lambda r: r["acc"], "pct"),
                   ("acc, length-normalised", lambda r: r["acc_norm"], "pct")]),
}
# Each command's data sets; `eval all` runs every part given data.
EVALUATIONS: dict[str, list[str]] = {
    "truthfulqa": ["truthfulqa"], "bias": ["crows", "winogender"], "toxicity": ["toxicity"],
    "hallucination": ["hallucination"], "instructions": ["instructions"], "tax": ["prose", "truthfulqa", "mc"],
    "all": list(PARTS),
}


@cache
def _classifier(path: str | None):  # loaded once, shared by every model evaluated
    return load_classifier(path)


def model_labels(models: list[str]) -> list[str]:
    """Each model's folder name, or the path as given where two share a name."""
    names = [Path(m).name or m for m in models]
    return [n if names.count(n) == 1 else m for n, m in zip(names, models, strict=True)]


def run_evaluation(name: str, models: list[str], data: dict[str, Path | None], output: Path, limit: int | None = None,
                   options: Options | None = None, labels: list[str] | None = None) -> dict:
    """Evaluation `name` of every model on the data sets given (part -> path; the first `limit` items of each):
    {model label: {part: figures}}, labelled by `labels` or the models' folder names."""
    parts = {k: PARTS[k] for k in EVALUATIONS[name] if data.get(k) is not None}
    if not parts:
        raise UsageError(f"eval {name}: give the data for at least one of "
                         + ", ".join(f"--{k}" for k in EVALUATIONS[name]))
    items = {k: (part.read(data[k])[:limit] if limit else part.read(data[k])) for k, part in parts.items()}
    results: dict[str, dict] = {}
    for path, label in zip(models, labels or model_labels(models), strict=True):
        console.print(f"eval {name}: {escape(label)}")
        model, tok = load(path)
        results[label] = {"model": path}
        for k, part in parts.items():
            t0 = time.perf_counter()
            results[label][k] = {**part.run(model, tok, items[k], options or Options()),
                                 "seconds": round(time.perf_counter() - t0, 1)}
    output.mkdir(parents=True, exist_ok=True)
    sizes = {k: len(v) for k, v in items.items()}
    paired = _paired(results) if "instructions" in parts and len(results) > 1 else {}
    (output / f"{name}.json").write_text(json.dumps({"data": {k: str(data[k]) for k in parts}, "items": sizes,
                                                     "results": results, "paired": paired}, indent=2))
    columns = [(header, k, fn, kind) for k, part in parts.items() for header, fn, kind in part.columns]
    header = ["model"] + [c[0] for c in columns]
    rows = [[label] + [_format(fn(r[k]), kind) for _, k, fn, kind in columns] for label, r in results.items()]

    def cells(values: list[str]) -> str:  # a "|" inside a cell (a model's path, a header) would split it
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    lines = [cells(header), "|" + "---|" * len(header)] + [cells(row) for row in rows]
    title = f"{name}: " + ", ".join(f"{sizes[k]} items of `{data[k]}`" for k in parts)
    lines += [f"\n{k}: {v['points']:+.1f} points of instructions followed (strict; 95% interval "
              f"{v['low']:+.1f} to {v['high']:+.1f}), better on {v['better']} prompts, worse on {v['worse']}"
              for k, v in paired.items()]
    (output / f"{name}.md").write_text(f"# {title}\n\n" + "\n".join(lines) + f"\n\n![{name}]({name}.png)\n")
    _figure(output / f"{name}.png", title, [(h, [fn(r[k]) for r in results.values()], kind)
                                            for h, k, fn, kind in columns], list(results))
    if len(header) <= 8:
        table = Table(*header, title=escape(title))
        for row in rows:
            table.add_row(*map(escape, row))
    else:  # many figures (eval all): a row a figure, a column a model, so a terminal can show it
        table = Table("figure", *(escape(row[0]) for row in rows), title=escape(title))
        for j, h in enumerate(header[1:], start=1):
            table.add_row(escape(h), *(escape(row[j]) for row in rows))
    console.print(table)
    for k, v in paired.items():
        console.print(f"{escape(k)}: {v['points']:+.1f} points of instructions followed (strict; 95% interval "
                      f"{v['low']:+.1f} to {v['high']:+.1f}), better on {v['better']} prompts, worse on {v['worse']}")
    return results


def _paired(results: dict) -> dict:
    """Each model after the first against the first, on the outside instruction check (the same prompts)."""
    (first, base), *others = results.items()
    return {f"{label} vs {first}": paired_difference(base["instructions"], r["instructions"]) for label, r in others}


def _format(x: float | None, kind: str) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if kind == "pct" else f"{x:.3f}"


def _figure(path: Path, title: str, columns: list[tuple[str, list[float | None], str]], models: list[str]) -> None:
    """One small bar chart per headline figure, a bar per model (as the paper's Figures 6 and 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = min(4, len(columns))
    rows = -(-len(columns) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(3.2 * per_row, 2.6 * rows + 0.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (header, values, kind) in zip(axes.flat, columns, strict=False):
        scale = 100 if kind == "pct" else 1
        heights = [scale * v if v is not None else 0.0 for v in values]
        ax.bar(range(len(models)), heights, color=[colours[i % len(colours)] for i in range(len(models))])
        ax.set_title(header + (" (%)" if kind == "pct" else ""), fontsize=8)
        ax.set_xticks(range(len(models)), [m[-18:] for m in models], rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    lines = textwrap.wrap(title, 160)  # the data sources can be long: wrap, never cut
    fig.suptitle("\n".join(lines), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.15 * len(lines) + 0.1) / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_config(cfg: EvalConfig) -> dict:
    """`rlhfkit eval <name>` as configured (the config's class names the evaluation)."""
    fields = cfg.model_dump()
    generation = fields.get("max_new_tokens", 128)
    options = Options(batch_tokens=fields.get("batch_tokens", 8192), progress=cfg.progress,
                      max_new_tokens=generation if cfg.EVAL == "hallucination" else 128,
                      instructions_max_new_tokens=generation if cfg.EVAL == "instructions" else 512,
                      toxicity_max_new_tokens=generation if cfg.EVAL == "toxicity" else 32,
                      samples=fields.get("samples", 4), shots=fields.get("shots", 0),
                      classifier=fields.get("classifier"))
    data = {part: Path(path) if path is not None else None for part, path in cfg.datasets().items()}
    return run_evaluation(cfg.EVAL, cfg.model, data, Path(cfg.output), cfg.limit, options)
