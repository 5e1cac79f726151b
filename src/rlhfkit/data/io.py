"""Readers and writers for record files.

Readers accept the shapes users already have (JSONL, `.jsonl.gz`, Parquet when pyarrow is there):
  {"prompt", "response"}   {"prompt", "completion"}   {"messages": [...]}
  Alpaca-style {"instruction", "input", "output"}
A bad line raises `DataError` naming the file, line and field, before any training starts; with
`skip_invalid=True` it is skipped and counted instead.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from rlhfkit.data.records import Demonstration, Prompt
from rlhfkit.errors import UsageError

T = TypeVar("T", bound=BaseModel)


class DataError(UsageError):
    """A record that cannot be read: the message names file, line and field."""


@dataclass
class ReadResult(Generic[T]):
    records: list[T]
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few messages of skipped lines


def iter_raw(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON value) for each non-blank line; Parquet rows count from 1."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, data in enumerate(f, start=1):
                try:  # decoded line by line, so one bad byte costs its line, not the file
                    line = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    yield lineno, DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)")
                    continue
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    yield lineno, DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise DataError(f"{path}: cannot be read to the end ({e})") from None


def _describe(e: ValidationError, rename: dict[str, str] | None = None) -> str:
    """The most specific error, its location without pydantic's union-branch names (`str`, `list[...]`)."""
    err = max(e.errors(), key=lambda x: len(x["loc"]))
    parts = [str(p) for p in err["loc"] if not (isinstance(p, str) and (p in ("str", "int") or "[" in p))]
    if parts and rename and parts[0] in rename:
        parts[0] = rename[parts[0]]
    where = ".".join(parts) or "record"
    msg = err["msg"].removeprefix("Value error, ")
    return f"field '{where}': {msg}"


def read_records(
    path: str | Path, to_record: Callable[[dict], T | list[T]], skip_invalid: bool = False, text_lines: bool = False
) -> ReadResult[T]:
    """Read every line of `path` through `to_record` (which raises ValueError/ValidationError, and may
    return several records for one line). With `text_lines`, a line may also be a bare JSON string. Every bad
    line is found before anything is refused: the error names the first 20 (file, line, field) and counts the
    rest; with `skip_invalid` they are skipped and counted instead."""
    result: ReadResult[T] = ReadResult(records=[])
    bad: list[str] = []
    for lineno, raw in iter_raw(path):
        try:
            if isinstance(raw, DataError):
                raise raw
            if not isinstance(raw, dict) and not (text_lines and isinstance(raw, str)):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(raw).__name__}")
            try:
                record = to_record(raw)
                result.records.extend(record if isinstance(record, list) else [record])
            except ValidationError as e:
                raise DataError(f"{path}:{lineno}: {_describe(e)}") from None
            except (ValueError, TypeError, KeyError) as e:
                raise DataError(f"{path}:{lineno}: {e}") from None
        except DataError as e:
            bad.append(str(e))
    if bad and not skip_invalid:
        more = f"\n... and {len(bad) - 20} more bad lines" if len(bad) > 20 else ""
        raise DataError("\n".join(bad[:20]) + more)
    result.skipped, result.errors = len(bad), bad[:20]
    return result


def _content(value: Any, name: str) -> str:
    """A response given as text or as a list with one assistant message (TRL's conversational form)."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or "content" not in value[0]:
            raise ValueError(f"field '{name}': expected text or one assistant message")
        return value[0]["content"]
    return value


def _alpaca_prompt(raw: dict) -> str:
    instruction, extra = raw.get("instruction"), raw.get("input") or ""
    if not isinstance(instruction, str) or not isinstance(extra, str):
        raise ValueError("field 'instruction': expected text (and 'input' text or empty)")
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


_META_KEYS = {"prompt", "response", "completion", "messages", "instruction", "input", "output", "id", "meta"}


def _common(raw: dict) -> dict:
    meta = dict(raw.get("meta") or {})
    meta.update({k: v for k, v in raw.items() if k not in _META_KEYS})
    rid = raw.get("id")
    return {"id": None if rid is None else str(rid), "meta": meta}


def to_demonstration(raw: dict) -> Demonstration:
    if "messages" in raw:
        msgs = raw["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise ValueError("field 'messages': expected a list of at least a user and an assistant turn")
        last = msgs[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise ValueError("field 'messages': the last message must be the assistant's response")
        try:
            return Demonstration(prompt=msgs[:-1], response=last.get("content"), **_common(raw))
        except ValidationError as e:
            raise ValueError(_describe(e, {"prompt": "messages", "response": "messages"})) from None
    if "prompt" in raw and ("response" in raw or "completion" in raw):
        key = "response" if "response" in raw else "completion"
        return Demonstration(prompt=raw["prompt"], response=_content(raw[key], key), **_common(raw))
    if "instruction" in raw and "output" in raw:
        return Demonstration(prompt=_alpaca_prompt(raw), response=raw["output"], **_common(raw))
    raise ValueError(
        "no demonstration fields: expected {prompt, response}, {prompt, completion}, {messages} or "
        f"{{instruction, input, output}}; got keys {sorted(raw)}"
    )


def to_prompt(raw: dict | str) -> Prompt:
    if isinstance(raw, str):  # a file of bare prompts, one JSON string a line
        return Prompt(prompt=raw)
    if "messages" in raw:
        msgs = raw["messages"]
        # A full conversation is accepted as a prompt by dropping its final assistant answer.
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        try:
            return Prompt(prompt=msgs, **_common(raw))
        except ValidationError as e:
            raise ValueError(_describe(e, {"prompt": "messages"})) from None
    if "prompt" in raw:
        return Prompt(prompt=raw["prompt"], **_common(raw))
    if "instruction" in raw:
        return Prompt(prompt=_alpaca_prompt(raw), **_common(raw))
    raise ValueError(f"no prompt field: expected 'prompt', 'messages' or 'instruction'; got keys {sorted(raw)}")


def read_demonstrations(path: str | Path, skip_invalid: bool = False) -> ReadResult[Demonstration]:
    return read_records(path, to_demonstration, skip_invalid)


def read_prompts(path: str | Path, skip_invalid: bool = False) -> ReadResult[Prompt]:
    """Prompt records, or bare prompts (a JSON string a line)."""
    return read_records(path, to_prompt, skip_invalid, text_lines=True)


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict]) -> None:
    """Write records atomically: a temporary file in the same folder, then a rename. The temporary file has a fixed
    name, so one a kill left behind is overwritten (and renamed away) when the same file is written again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                row = r.model_dump(exclude_none=True) if isinstance(r, BaseModel) else r
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | Path, records: Iterable[BaseModel | dict]) -> None:
    """Append whole lines and fsync, so a killed run leaves every earlier line intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            row = r.model_dump(exclude_none=True) if isinstance(r, BaseModel) else r
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
