"""Records, readers/writers, tokenization and batching."""

from rlhfkit.data.collate import (
    PackedBatch,
    PackedGroups,
    collate_packed,
    pack,
    pack_groups,
    pack_lengths,
    shifted_targets,
    token_batches,
)
from rlhfkit.data.io import (
    DataError,
    ReadResult,
    append_jsonl,
    read_demonstrations,
    read_prompts,
    read_records,
    write_jsonl,
)
from rlhfkit.data.records import (
    METADATA_FLAGS,
    Demonstration,
    Message,
    Prompt,
    PromptText,
    Ranking,
    as_messages,
    prompt_key,
    prompt_text,
)
from rlhfkit.data.tokenize import (
    IGNORE,
    Example,
    Group,
    TokenizeStats,
    encode_demonstrations,
    encode_group,
    encode_prompt,
)

__all__ = [
    "DataError", "Demonstration", "Example", "Group", "IGNORE", "METADATA_FLAGS", "Message", "PackedBatch",
    "PackedGroups", "Prompt", "PromptText", "Ranking", "ReadResult", "TokenizeStats", "append_jsonl", "as_messages",
    "collate_packed", "encode_demonstrations", "encode_group", "encode_prompt", "pack", "pack_groups", "pack_lengths",
    "prompt_key", "prompt_text", "read_demonstrations", "read_prompts", "read_records", "shifted_targets",
    "token_batches", "write_jsonl",
]
