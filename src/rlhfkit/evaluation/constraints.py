"""Verifiable constraints of instructions ("at most 30 words", "all lowercase", "3 bullet points", ...).

A constraint is a dict {"type": ..., "value": ...} stored with a prompt (its `meta["constraints"]`);
`instruction(c)` is the sentence the prompt carries and `satisfied(c, response)` checks a response against
it by code. The simulated labelers and the evaluation both use these checks.
"""

from __future__ import annotations

import json
import re

WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]]*)(?:\s+|$)")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def sentences(text: str) -> list[str]:
    parts = [p.strip() for p in SENTENCE_END.split(text.strip())]
    return [p for p in parts if words(p)]


def bullet_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"^\s*[-*•]\s+\S", ln)]


def _json_value(text: str):
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    if fence:
        body = fence.group(1)
    return json.loads(body)


def instruction(c: dict) -> str:
    t, v = c["type"], c.get("value")
    return {
        "max_words": lambda: f"Answer in at most {v} words.",
        "max_sentences": lambda: "Answer in one sentence." if v == 1 else f"Use at most {v} sentences.",
        "include_word": lambda: f'Include the word "{v}".',
        "avoid_word": lambda: f'Do not use the word "{v}".',
        "lowercase": lambda: "Write your whole answer in lowercase letters.",
        "bullets": lambda: f'Answer with exactly {v} bullet points, each on its own line starting with "- ".',
        "ends_with": lambda: f'End your answer with the exact phrase "{v}"' + ("" if v[-1] in ".!?" else "."),
        "starts_with": lambda: f'Start your answer with the word "{v}".',
        "json_list": lambda: f"Return only a JSON list of {v} strings.",
        "no_commas": lambda: "Do not use any commas.",
    }[t]()


def satisfied(c: dict, response: str) -> bool:
    t, v = c["type"], c.get("value")
    text = response.strip()
    if not text:
        return False
    if t == "max_words":
        return len(words(text)) <= v
    if t == "max_sentences":
        return len(sentences(text)) <= v
    if t == "include_word":
        return re.search(rf"\b{re.escape(v)}\b", text, re.I) is not None
    if t == "avoid_word":
        return re.search(rf"\b{re.escape(v)}\b", text, re.I) is None
    if t == "lowercase":
        return text == text.lower() and any(ch.isalpha() for ch in text)
    if t == "bullets":
        return len(bullet_lines(text)) == v and len([ln for ln in text.splitlines() if ln.strip()]) == v
    if t == "ends_with":
        return text.rstrip().endswith(v)
    if t == "starts_with":
        return re.match(rf"^\W*{re.escape(v)}\b", text, re.I) is not None
    if t == "json_list":
        try:
            value = _json_value(text)
        except ValueError:
            return False
        return isinstance(value, list) and len(value) == v and all(isinstance(x, str) and x.strip() for x in value)
    if t == "no_commas":
        return "," not in text
    raise ValueError(f"unknown constraint type {t!r}")


def satisfaction(constraints: list[dict], response: str) -> float | None:
    """Share of the constraints the response meets (None when there are none)."""
    if not constraints:
        return None
    return sum(satisfied(c, response) for c in constraints) / len(constraints)


REFUSAL = re.compile(
    r"\b(I('m| am) sorry|I can(no|')t (help|assist|do|provide|write|give|share)|I (won't|will not) (help|assist|"
    r"provide|write)|I('m| am) (not able|unable) to|cannot help|can't help with|not something I can)", re.I)


def is_refusal(response: str) -> bool:
    """A polite refusal: the response declines within its first two sentences."""
    head = " ".join(sentences(response)[:2]) or response
    return REFUSAL.search(head) is not None
