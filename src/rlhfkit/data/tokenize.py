"""Records to token ids through the model's chat template.

A demonstration becomes  [chat template of the prompt, ending with the assistant header]
                       + [response tokens] + [EOS],
with labels -100 on the prompt part, so the loss covers exactly what the model is asked to write and
generation (which starts after the same header and stops at the same EOS) sees the same boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.data.records import Demonstration, PromptText, as_messages

IGNORE = -100
Truncation = Literal["drop", "truncate"]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens


@dataclass
class Group:
    """A prompt and responses to it, as token ids. Packed as [prompt][response 1]...[response K]: the prompt is
    computed once for all K."""

    prompt_ids: list[int]
    response_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(map(len, self.response_ids))


@dataclass
class TokenizeStats:
    kept: int = 0
    truncated: int = 0  # response cut to fit max_length (loses its EOS)
    dropped: int = 0  # too long and truncation="drop", or the prompt alone does not fit

    def as_dict(self) -> dict[str, int]:
        return {"kept": self.kept, "truncated": self.truncated, "dropped": self.dropped}


def encode_prompt(tokenizer, prompt: PromptText) -> list[int]:
    """Prompt token ids, ending with the assistant header the model continues from."""
    ids = tokenizer.apply_chat_template(
        as_messages(prompt), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def encode_response(tokenizer, response: str, eos: bool = True) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * eos


def encode_demonstration(
    tokenizer, demo: Demonstration, max_length: int, truncation: Truncation, stats: TokenizeStats
) -> Example | None:
    prompt_ids = encode_prompt(tokenizer, demo.prompt)
    response_ids = encode_response(tokenizer, demo.response)
    if len(prompt_ids) + len(response_ids) > max_length:
        room = max_length - len(prompt_ids)
        if truncation == "drop" or room < 1:
            stats.dropped += 1
            return None
        response_ids = response_ids[:room]
        stats.truncated += 1
    stats.kept += 1
    return Example(prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids)


def encode_demonstrations(
    tokenizer, demos: list[Demonstration], max_length: int, truncation: Truncation = "truncate"
) -> tuple[list[Example], TokenizeStats]:
    stats = TokenizeStats()
    examples = [encode_demonstration(tokenizer, d, max_length, truncation, stats) for d in demos]
    return [e for e in examples if e is not None], stats


def encode_group(tokenizer, prompt: PromptText, responses: list[str], max_length: int,
                 ended: list[bool] | None = None) -> tuple[Group, int]:
    """(group, number of responses cut) so that the prompt plus each response fits in max_length tokens.
    `ended` says which responses finished with EOS (default: all); the others get none, as they were sampled.

    The responses are what is judged, so a long prompt gives way first: it keeps its last tokens (the
    latest turns, next to the response), down to half of max_length; then responses are cut at the end."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    ended = ended or [True] * len(responses)
    encoded = [encode_response(tokenizer, r, eos=e) for r, e in zip(responses, ended, strict=True)]
    longest = max(map(len, encoded))
    if len(prompt_ids) + longest > max_length:
        keep = max(max_length - longest, max_length // 2)
        prompt_ids = prompt_ids[-min(keep, len(prompt_ids)):]
    room = max_length - len(prompt_ids)
    return Group(prompt_ids, [ids[:room] for ids in encoded]), sum(len(ids) > room for ids in encoded)
