"""The records that flow between stages: prompts, demonstrations and rankings.

A prompt is either a plain string (one user turn) or a list of chat messages ending on a user turn;
`as_messages` turns both into messages so the model's chat template can render them.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


PromptText = str | list[Message]


def _check_prompt(prompt: PromptText) -> PromptText:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty")
        return prompt
    if not prompt:
        raise ValueError("prompt has no messages")
    if prompt[-1].role != "user":
        raise ValueError(f"the last prompt message must be from the user, not {prompt[-1].role!r}")
    return prompt


def as_messages(prompt: PromptText) -> list[dict[str, str]]:
    """The prompt as chat messages (dicts, as `tokenizer.apply_chat_template` takes them)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [m.model_dump() for m in prompt]


def prompt_key(prompt: PromptText) -> str:
    """What makes two prompts the same prompt: their chat messages, as one string."""
    return json.dumps(as_messages(prompt), ensure_ascii=False)


def prompt_text(prompt: PromptText) -> str:
    """The last user turn: what a person reads as 'the prompt'."""
    return prompt if isinstance(prompt, str) else prompt[-1].content


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: PromptText
    id: str | None = None
    meta: dict = Field(default_factory=dict)

    _check = field_validator("prompt")(_check_prompt)


class Demonstration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: PromptText
    response: str
    id: str | None = None
    meta: dict = Field(default_factory=dict)

    _check = field_validator("prompt")(_check_prompt)

    @field_validator("response")
    @classmethod
    def _response_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("response is empty")
        return v


# InstructGPT's per-output metadata (Ouyang et al. 2022, Table 3), used by rankings and labelers.
METADATA_FLAGS = (
    "fails_to_follow_instruction",
    "hallucination",
    "satisfies_constraint",
    "inappropriate_for_customer_assistant",
    "sexual_content",
    "violent_content",
    "encourages_violence",
    "denigrates_protected_class",
    "harmful_advice",
    "expresses_opinion",
    "expresses_moral_judgment",
)


class Ranking(BaseModel):
    """K responses to one prompt, ranked by one labeler.

    `ranks[i]` is the rank of `responses[i]`: 0 = best, equal values = a tie (D > C > A = B is
    ranks [2, 2, 1, 0] for responses A, B, C, D).
    """

    model_config = ConfigDict(extra="forbid")
    prompt: PromptText
    responses: list[str] = Field(min_length=2, max_length=9)
    ranks: list[int] | None = None  # None: sampled, not yet ranked
    likert: list[int | None] | None = None  # 1-7 overall quality per response
    flags: list[list[str]] | None = None  # METADATA_FLAGS set per response
    labeler: str | None = None
    sources: list[dict] | None = None  # per response: which policy and sampling settings made it
    id: str | None = None
    meta: dict = Field(default_factory=dict)

    _check = field_validator("prompt")(_check_prompt)

    @model_validator(mode="after")
    def _consistent(self) -> Ranking:
        k = len(self.responses)
        for name in ("ranks", "likert", "flags", "sources"):
            value = getattr(self, name)
            if value is not None and len(value) != k:
                raise ValueError(f"{name} has {len(value)} entries for {k} responses")
        if self.ranks is not None and any(r < 0 or r >= k for r in self.ranks):
            raise ValueError(f"ranks must lie in 0..{k - 1}, got {self.ranks}")
        if self.likert is not None and any(v is not None and not 1 <= v <= 7 for v in self.likert):
            raise ValueError(f"likert scores must lie in 1..7, got {self.likert}")
        if self.flags is not None:
            unknown = {f for fs in self.flags for f in fs} - set(METADATA_FLAGS)
            if unknown:
                raise ValueError(f"unknown metadata flags {sorted(unknown)}")
        return self
