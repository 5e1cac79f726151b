"""Reading rankings in the shapes preference data comes in, all into `Ranking` records.

One reader, `read_rankings`, recognises each line's shape:
  ours                 {"prompt", "responses": [...], "ranks": [...], ...}
  scored lists         {"prompt", "responses": [...], "scores": [...]}       highest score = best
  pairwise             {"prompt", "chosen", "rejected"}                       text or message lists
  Anthropic HH-RLHF    {"chosen", "rejected"} transcripts "\\n\\nHuman: … \\n\\nAssistant: …"
  OpenAssistant trees  {"message_tree_id", "prompt": {message with ranked "replies"}}  many rankings a line
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhfkit.data.io import ReadResult, read_records
from rlhfkit.data.records import Message, Ranking

_TURN = re.compile(r"\n\n(Human|Assistant): ")


def dense_ranks(scores: list[float]) -> list[int]:
    """Highest score gets rank 0; equal scores share a rank (a tie)."""
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) for s in scores]


def _text(value, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        return value[-1].get("content", "")
    raise ValueError(f"field '{name}': expected text or a list of messages ending with the assistant's")


def parse_hh(transcript: str) -> list[Message]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [user: hi, assistant: hello]."""
    parts = _TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH-RLHF transcript: expected it to start with '\\n\\nHuman: '")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [Message(role=roles[parts[i]], content=parts[i + 1]) for i in range(1, len(parts), 2)]


def from_hh(raw: dict) -> Ranking:
    chosen, rejected = parse_hh(raw["chosen"]), parse_hh(raw["rejected"])
    if chosen[-1].role != "assistant" or rejected[-1].role != "assistant":
        raise ValueError("field 'chosen'/'rejected': a transcript must end with an Assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("field 'chosen'/'rejected': the transcripts differ before their last Assistant turn")
    prompt = chosen[:-1]
    if not prompt or prompt[-1].role != "user":
        raise ValueError("field 'chosen': no Human turn before the last Assistant turn")
    return Ranking(prompt=prompt, responses=[chosen[-1].content.strip(), rejected[-1].content.strip()],
                   ranks=[0, 1], meta={"source": "hh-rlhf"})


def from_oasst_tree(raw: dict) -> list[Ranking]:
    """Every prompter message with two or more ranked assistant replies becomes one ranking."""
    rankings: list[Ranking] = []
    tree_id = raw.get("message_tree_id")

    def walk(message: dict, history: list[Message]) -> None:
        role = {"prompter": "user", "assistant": "assistant"}.get(message.get("role"))
        if role is None or not isinstance(message.get("text"), str):
            raise ValueError(f"message {message.get('message_id')}: expected role prompter/assistant and text")
        history = [*history, Message(role=role, content=message["text"])]
        replies = [r for r in message.get("replies") or [] if not r.get("deleted")]
        ranked = [r for r in replies if r.get("rank") is not None]
        if role == "user" and len(ranked) >= 2:
            rankings.append(Ranking(
                prompt=history, responses=[r["text"] for r in ranked], ranks=dense_ranks([-r["rank"] for r in ranked]),
                id=message.get("message_id"), meta={"source": "oasst", "tree": tree_id},
            ))
        for r in replies:
            walk(r, history)

    walk(raw["prompt"], [])
    return rankings


def to_rankings(raw: dict) -> Ranking | list[Ranking]:
    if "message_tree_id" in raw and isinstance(raw.get("prompt"), dict):
        return from_oasst_tree(raw)
    if "chosen" in raw and "rejected" in raw:
        if "prompt" not in raw:
            return from_hh(raw)
        meta = {k: v for k, v in raw.items() if k not in ("prompt", "chosen", "rejected", "id")}
        responses = [_text(raw["chosen"], "chosen"), _text(raw["rejected"], "rejected")]
        return Ranking(prompt=raw["prompt"], responses=responses, ranks=[0, 1],
                       id=None if raw.get("id") is None else str(raw["id"]), meta=meta)
    if "responses" in raw and "scores" in raw:
        scores = raw["scores"]
        if not isinstance(scores, list) or not all(isinstance(s, int | float) for s in scores):
            raise ValueError("field 'scores': expected a list of numbers")
        rest = {k: v for k, v in raw.items() if k != "scores"}
        return Ranking(**rest, ranks=dense_ranks(scores))
    if "responses" in raw:
        return Ranking(**raw)
    raise ValueError(
        "no ranking fields: expected {prompt, responses, ranks}, {prompt, responses, scores}, "
        f"{{prompt, chosen, rejected}}, HH-RLHF {{chosen, rejected}} or an OpenAssistant tree; got keys {sorted(raw)}"
    )


def read_rankings(path: str | Path, skip_invalid: bool = False, require_ranks: bool = True) -> ReadResult[Ranking]:
    """Rankings from any of the shapes above. With require_ranks, unranked records (sampled, not yet
    labelled) are an error naming the line."""

    def convert(raw: dict) -> Ranking | list[Ranking]:
        result = to_rankings(raw)
        for r in result if isinstance(result, list) else [result]:
            if require_ranks and r.ranks is None:
                raise ValueError("field 'ranks': this record is not ranked yet (label it first)")
        return result

    return read_records(path, convert, skip_invalid)
