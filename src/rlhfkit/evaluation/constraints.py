"""Verifiable constraints of instructions ("at most 30 words", "all lowercase", "3 bullet points", ...).

A constraint is a dict {"type": ..., "value": ..., ...} stored with a prompt (its `meta["constraints"]`);
`instruction(c)` is the sentence the prompt carries and `satisfied(c, response)` checks a response against
it by code. The simulated labelers and the evaluation both use these checks. `TYPES` lists every type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]]*)(?:\s+|$)")
PARAGRAPH_MARK = "***"
ANSWER_MARK = "******"


def words(text: str) -> list[str]:
    return WORD.findall(text)


def sentences(text: str) -> list[str]:
    parts = [p.strip() for p in SENTENCE_END.split(text.strip())]
    return [p for p in parts if words(p)]


def nonblank_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def bullet_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"^\s*[-*•]\s+\S", ln)]


def numbered_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"^\s*\d+[.)]\s+\S", ln)]


def _json_value(text: str):
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    if fence:
        body = fence.group(1)
    return json.loads(body)


def _parts(text: str, marker: str) -> list[str]:
    """The pieces of `text` between lines that hold only `marker`."""
    pieces, current = [], []
    for line in text.splitlines():
        if line.strip() == marker:
            pieces.append("\n".join(current))
            current = []
        else:
            current.append(line)
    pieces.append("\n".join(current))
    return pieces


def _count_word(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, re.I))


def _numbered_ok(text: str, n: int) -> bool:
    lines = nonblank_lines(text)
    return len(lines) == n and all(re.match(rf"^\s*{i}[.)]\s+\S", ln) for i, ln in enumerate(lines, start=1))


def _sections_ok(text: str, n: int, header: str) -> bool:
    heads = [m.group(1) for m in re.finditer(rf"(?m)^{re.escape(header)} (\d+)\b", text)]
    if heads != [str(i) for i in range(1, n + 1)]:
        return False
    bodies = re.split(rf"(?m)^{re.escape(header)} \d+\b.*$", text)[1:]
    return all(words(b) for b in bodies)


def _table_ok(text: str, rows: int) -> bool:
    lines = [ln.strip() for ln in nonblank_lines(text)]
    if len(lines) != rows + 2 or not all(ln.startswith("|") and ln.endswith("|") for ln in lines):
        return False
    if not re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", lines[1]):
        return False
    columns = {ln.count("|") for ln in lines}
    return len(columns) == 1 and columns.pop() >= 3


def _json_object_ok(text: str, keys: list[str]) -> bool:
    try:
        value = _json_value(text)
    except ValueError:
        return False
    return isinstance(value, dict) and sorted(value) == sorted(keys) and all(
        isinstance(v, str | int | float | list) and v not in ("", []) for v in value.values())


def _json_list_ok(text: str, n: int) -> bool:
    try:
        value = _json_value(text)
    except ValueError:
        return False
    return isinstance(value, list) and len(value) == n and all(isinstance(x, str) and x.strip() for x in value)


def _postscript_ok(text: str, marker: str) -> bool:
    lines = nonblank_lines(text)
    body_before = len(lines) > 1 and words(" ".join(lines[:-1]))
    return bool(body_before) and lines[-1].lstrip().startswith(marker) and words(lines[-1][len(marker):])


def _two_answers_ok(text: str) -> bool:
    parts = [p.strip() for p in _parts(text, ANSWER_MARK)]
    return len(parts) == 2 and all(words(p) for p in parts) and parts[0] != parts[1]


def _capitalised_words(text: str) -> int:
    return sum(1 for w in words(text) if len(w) > 1 and w.isupper())


# type -> (instruction, check). `c` is the whole constraint dict; its "value" is the main parameter.
Check = Callable[[dict, str], bool]
TYPES: dict[str, tuple[Callable[[dict], str], Check]] = {
    # counts
    "min_words": (lambda c: f"Answer with at least {c['value']} words.",
                  lambda c, t: len(words(t)) >= c["value"]),
    "max_words": (lambda c: f"Answer in at most {c['value']} words.",
                  lambda c, t: len(words(t)) <= c["value"]),
    "max_sentences": (lambda c: "Answer in one sentence." if c["value"] == 1 else
                      f"Use at most {c['value']} sentences.",
                      lambda c, t: len(sentences(t)) <= c["value"]),
    "min_sentences": (lambda c: f"Write at least {c['value']} sentences.",
                      lambda c, t: len(sentences(t)) >= c["value"]),
    "paragraphs": (lambda c: f"Write exactly {c['value']} paragraphs, separated from each other by a line "
                   f"holding only {PARAGRAPH_MARK}.",
                   lambda c, t: len(ps := _parts(t, PARAGRAPH_MARK)) == c["value"] and all(words(p) for p in ps)),
    "bullets": (lambda c: f'Answer with exactly {c["value"]} bullet points, each on its own line starting with "- ".',
                lambda c, t: len(bullet_lines(t)) == c["value"] == len(nonblank_lines(t))),
    "numbered_steps": (lambda c: f"Answer with exactly {c['value']} numbered steps, one per line: \"1. \", "
                       "\"2. \" and so on.",
                       lambda c, t: _numbered_ok(t, c["value"])),
    "sections": (lambda c: f"Divide your answer into {c['value']} sections; start each with a line \"{c['header']} "
                 f"N\" (N = 1, 2, ...).",
                 lambda c, t: _sections_ok(t, c["value"], c["header"])),
    "table": (lambda c: f"Answer with a markdown table of exactly {c['value']} rows below its header row, and "
              "nothing else.",
              lambda c, t: _table_ok(t, c["value"])),
    # words and letters
    "include_word": (lambda c: f'Include the word "{c["value"]}".',
                     lambda c, t: _count_word(t, c["value"]) > 0),
    "avoid_word": (lambda c: f'Do not use the word "{c["value"]}".',
                   lambda c, t: _count_word(t, c["value"]) == 0),
    "word_frequency": (lambda c: f'Use the word "{c["value"]}" at least {c["times"]} times.',
                       lambda c, t: _count_word(t, c["value"]) >= c["times"]),
    "letter_frequency": (lambda c: f'Use the letter "{c["value"]}" at least {c["times"]} times.',
                         lambda c, t: t.lower().count(c["value"].lower()) >= c["times"]),
    "no_commas": (lambda c: "Do not use any commas.", lambda c, t: "," not in t),
    # case
    "lowercase": (lambda c: "Write your whole answer in lowercase letters.",
                  lambda c, t: t == t.lower() and any(ch.isalpha() for ch in t)),
    "uppercase": (lambda c: "Write your whole answer in capital letters.",
                  lambda c, t: t == t.upper() and any(ch.isalpha() for ch in t)),
    "max_capitalised_words": (lambda c: f"Use at most {c['value']} words written in all capital letters.",
                              lambda c, t: _capitalised_words(t) <= c["value"]),
    # start, end, wrapping
    "starts_with": (lambda c: f'Start your answer with the word "{c["value"]}".',
                    lambda c, t: re.match(rf"^\W*{re.escape(c['value'])}\b", t, re.I) is not None),
    "ends_with": (lambda c: f'End your answer with the exact phrase "{c["value"]}"' +
                  ("" if c["value"][-1] in ".!?" else "."),
                  lambda c, t: t.rstrip().endswith(c["value"])),
    "quoted": (lambda c: "Wrap your whole answer in double quotation marks.",
               lambda c, t: len(t) > 2 and t[0] == '"' and t[-1] == '"' and bool(words(t))),
    "title": (lambda c: "Give your answer a title wrapped in double angular brackets, like <<a title>>.",
              lambda c, t: re.search(r"<<[^<>\n]*\w[^<>\n]*>>", t) is not None),
    "postscript": (lambda c: f'End with a postscript starting with "{c["value"]}".',
                   lambda c, t: _postscript_ok(t, c["value"])),
    "repeat_request": (lambda c: "First repeat the request word for word without change, then give your answer.",
                       lambda c, t: t.startswith(c["value"]) and bool(words(t[len(c["value"]):]))),
    "two_answers": (lambda c: f"Give two different answers, separated by a line holding only {ANSWER_MARK}.",
                    lambda c, t: _two_answers_ok(t)),
    # markup
    "highlights": (lambda c: f"Highlight at least {c['value']} parts of your answer with markdown, like "
                   "*highlighted part*.",
                   lambda c, t: len(re.findall(r"(?<!\*)\*[^*\n]*\w[^*\n]*\*(?!\*)", t)) >= c["value"]),
    "placeholders": (lambda c: f"Include at least {c['value']} placeholders in square brackets, like [name].",
                     lambda c, t: len(re.findall(r"\[[^\[\]\n]*\w[^\[\]\n]*\]", t)) >= c["value"]),
    # structured
    "json_list": (lambda c: f"Return only a JSON list of {c['value']} strings.",
                  lambda c, t: _json_list_ok(t, c["value"])),
    "json_object": (lambda c: "Return only a JSON object with the keys " + ", ".join(f'"{k}"' for k in c["value"]) +
                    ".",
                    lambda c, t: _json_object_ok(t, c["value"])),
}


def instruction(c: dict) -> str:
    if c["type"] not in TYPES:
        raise ValueError(f"unknown constraint type {c['type']!r}")
    return TYPES[c["type"]][0](c)


def satisfied(c: dict, response: str) -> bool:
    if c["type"] not in TYPES:
        raise ValueError(f"unknown constraint type {c['type']!r}")
    text = response.strip()
    return bool(text) and bool(TYPES[c["type"]][1](c, text))


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
