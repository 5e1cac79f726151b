"""The alignment tax (InstructGPT section 4.2): what aligning costs on tasks nobody aligned for.

Three measures, each on any model: perplexity of held-out prose, TruthfulQA MC (evaluation/truthfulqa.py), and any
multiple-choice task given as JSONL {question, choices, answer} scored by log-likelihood, zero- or few-shot, the
way lm-evaluation-harness scores ARC or PIQA: the prompt "Question: ...\\nAnswer:", each choice after it with a
space; accuracy is the most likely choice, accuracy normalised by the choice's length in characters beside it.
The tax is the fall of these figures from the model the alignment started from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data import DataError
from rlhfkit.data.io import iter_raw
from rlhfkit.errors import UsageError
from rlhfkit.evaluation.loglik import Choices, choice_logliks
from rlhfkit.evaluation.policy_eval import perplexity


@dataclass
class MultipleChoice:
    question: str
    choices: list[str]
    answer: int  # index of the right choice
    category: str = ""


def _item(raw, where: str) -> MultipleChoice:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object with question, choices and answer")
    for field in ("question", "choices", "answer"):
        if field not in raw:
            raise DataError(f"{where}: field '{field}' is missing")
    question, choices, answer = raw["question"], raw["choices"], raw["answer"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: field 'choices' must be a list of two or more non-empty strings")
    if isinstance(answer, str) and answer in choices:
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(f"{where}: field 'answer' must be the index of a choice (0 to {len(choices) - 1}) or a "
                        f"choice's text; got {answer!r}")
    category = raw.get("category", raw.get("subject", ""))
    return MultipleChoice(question, choices, answer, str(category or ""))


def read_multiple_choice(path: str | Path) -> list[MultipleChoice]:
    """JSONL of {question, choices, answer (index or text), category?}."""
    out = []
    for lineno, raw in iter_raw(path):
        if isinstance(raw, DataError):
            raise raw
        out.append(_item(raw, f"{path}:{lineno}"))
    if not out:
        raise DataError(f"{path}: no items")
    return out


def read_prose(path: str | Path) -> list[str]:
    """Held-out text: one passage a line of a .txt file, or the `text` field of each JSONL record."""
    path = Path(path)
    if path.suffix in (".txt", ".md"):
        if not path.exists():
            raise DataError(f"{path}: no such file")
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:
        lines = []
        for lineno, raw in iter_raw(path):
            if isinstance(raw, DataError):
                raise raw
            if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
                raise DataError(f"{path}:{lineno}: field 'text' is missing or not a string")
            lines.append(raw["text"])
    if not lines:
        raise DataError(f"{path}: no text")
    return lines


def _prompt(item: MultipleChoice) -> str:
    return f"Question: {item.question}\nAnswer:"


def evaluate_multiple_choice(model, tok, items: list[MultipleChoice], shots: int = 0, batch_tokens: int = 8192,
                             show_progress: bool = True) -> dict:
    """Accuracy (and length-normalised accuracy) over the items after the first `shots`, which become the
    few-shot examples before every question (the same examples for all, so runs compare)."""
    if shots >= len(items):
        raise UsageError(f"{shots} shots leave none of the {len(items)} items to score")
    prefix = "".join(f"{_prompt(x)} {x.choices[x.answer]}\n\n" for x in items[:shots])
    scored = items[shots:]
    logliks = choice_logliks(model, tok, [Choices(prefix + _prompt(x) + " ", x.choices) for x in scored],
                             batch_tokens, show_progress=show_progress, description="multiple choice")
    right, right_norm = [], []
    for x, ll in zip(scored, logliks, strict=True):
        right.append(max(range(len(ll)), key=ll.__getitem__) == x.answer)
        norm = [v / len(c) for v, c in zip(ll, x.choices, strict=True)]
        right_norm.append(max(range(len(norm)), key=norm.__getitem__) == x.answer)
    by_category: dict[str, list[bool]] = {}
    for x, r in zip(scored, right, strict=True):
        by_category.setdefault(x.category or "all", []).append(r)
    return {"acc": sum(right) / len(right), "acc_norm": sum(right_norm) / len(right_norm), "items": len(scored),
            "shots": shots, "chance": sum(1 / len(x.choices) for x in scored) / len(scored),
            "by_category": {k: sum(v) / len(v) for k, v in sorted(by_category.items())}}


def evaluate_prose(model, tok, lines: list[str]) -> dict:
    return {"perplexity": perplexity(model, tok, lines), "lines": len(lines)}
