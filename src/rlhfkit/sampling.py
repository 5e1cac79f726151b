"""`rlhfkit sample`: K distinct responses per prompt from a policy, written as Ranking-ready records.

Each record is a `Ranking` with no ranks yet: the prompt, K responses, and per response which policy
and settings made it. The labeling service and the simulated labelers read these records. Records
are appended batch by batch (and fsynced), so a killed run loses at most the batch in flight and
`--resume` carries on after the prompts already written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.config import SampleConfig
from rlhfkit.console import console, make_progress
from rlhfkit.data import Ranking, append_jsonl, read_prompts
from rlhfkit.models import default_device, load_causal_lm, mixed_precision
from rlhfkit.rollout import sample


def prompt_key(index: int, prompt_id: str | None) -> str:
    return prompt_id if prompt_id is not None else f"#{index}"


def done_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                keys.add(json.loads(line)["meta"]["prompt_key"])
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line from a killed run: that prompt is sampled again
    return keys


def sample_rankings(cfg: SampleConfig) -> dict:
    if cfg.prompts is None:
        raise ValueError("no prompts: pass --prompts FILE")
    out = Path(cfg.output)
    if out.exists() and not cfg.resume:
        raise FileExistsError(f"{out} exists; pass --resume to add to it, or choose another --output")
    read = read_prompts(cfg.prompts, cfg.skip_invalid)
    done = done_keys(out)
    todo = [(i, p) for i, p in enumerate(read.records) if prompt_key(i, p.id) not in done]
    device = default_device()
    model, tokenizer = load_causal_lm(cfg.model)
    model.to(device)
    if mixed_precision(cfg.dtype, device) == "bf16":
        model.to(torch.bfloat16)  # this stage only decodes: cast once here, not a bf16 copy per batch in sample()
    source = {"policy": str(cfg.model), "temperature": cfg.temperature, "top_p": cfg.top_p,
              "max_new_tokens": cfg.max_new_tokens}
    torch.manual_seed(cfg.seed + len(done))
    written = skipped = duplicates = 0
    prompts_per_batch = max(1, cfg.batch_size // cfg.k)
    with make_progress(cfg.progress) as progress:
        task = progress.add_task("sample", total=len(todo), metrics="")
        for start in range(0, len(todo), prompts_per_batch):
            chunk = todo[start : start + prompts_per_batch]
            found: list[dict[str, bool]] = [{} for _ in chunk]  # distinct text -> ended with EOS
            for _ in range(cfg.max_attempts):
                need = [j for j, f in enumerate(found) if len(f) < cfg.k]
                if not need:
                    break
                roll = sample(model, tokenizer, [chunk[j][1].prompt for j in need], cfg.k, cfg.max_new_tokens,
                              cfg.temperature, cfg.top_p, cfg.batch_size)
                for idx, text, ended in zip(roll.prompt_index, roll.texts, roll.ended, strict=True):
                    f = found[need[idx]]
                    if text in f:
                        duplicates += 1
                    elif len(f) < cfg.k:
                        f[text] = ended
            records = []
            for (i, p), f in zip(chunk, found, strict=True):
                if len(f) < 2:
                    skipped += 1
                    continue
                records.append(Ranking(
                    prompt=p.prompt, responses=list(f), id=p.id,
                    sources=[{**source, "ended": ended} for ended in f.values()],
                    meta={**p.meta, "prompt_key": prompt_key(i, p.id)},
                ))
            append_jsonl(out, records)
            written += len(records)
            progress.update(task, advance=len(chunk), metrics=f"{written} written")
    summary = {"written": written, "already_done": len(done), "skipped_fewer_than_2_distinct": skipped,
               "duplicates_dropped": duplicates, "invalid_prompts": read.skipped}
    console.print(f"sample: {summary} -> {out}")
    return summary
