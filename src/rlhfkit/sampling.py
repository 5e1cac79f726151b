"""`rlhfkit sample`: K distinct responses per prompt from a policy, written as Ranking-ready records; and
`rlhfkit generate`: answers to prompts, printed and written the same way, batch by batch.

Each record is a `Ranking` with no ranks yet: the prompt, K responses, and per response which policy
and settings made it. The labeling service and the simulated labelers read these records. Records
are appended batch by batch (and fsynced), so a killed run loses at most the batch in flight and
`--resume` carries on after the prompts already written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rlhfkit.config import GenerateConfig, SampleConfig
from rlhfkit.console import console, make_progress
from rlhfkit.data import Prompt, Ranking, append_jsonl, prompt_text, read_prompts
from rlhfkit.errors import UsageError
from rlhfkit.models import default_device, load_causal_lm, load_tokenizer, mixed_precision, resolve_model_path
from rlhfkit.models.reward import load_reward_model, score
from rlhfkit.rollout import (
    DecoderEngine,
    RolloutEngine,
    SamplingParams,
    VLLMEngine,
    launcher_environment,
)


def engine_for(cfg: SampleConfig | GenerateConfig) -> RolloutEngine:
    """The engine of --rollout-engine: the model loaded for rlhfkit's own decoder (cast to bf16 once where that is
    the precision: this stage only decodes), or a vLLM engine on the GPU."""
    if cfg.engine.kind == "vllm":
        return vllm_engine(cfg.model, load_tokenizer(cfg.model), cfg.seed, cfg.engine.gpu_memory_utilization)
    device = default_device()
    model, tokenizer = load_causal_lm(cfg.model)
    model.to(device)
    if mixed_precision(cfg.dtype, device) == "bf16":
        model.to(torch.bfloat16)
    return DecoderEngine(model, tokenizer, cfg.batch_size)


def vllm_engine(model: str, tokenizer, seed: int, gpu_memory_utilization: float, max_model_len: int | None = None,
                rank: int = 0, local_rank: int = 0, world: int = 1) -> VLLMEngine:
    """A vLLM engine in this process. vLLM's external launcher reads the process group from the environment a
    launcher (accelerate launch, torchrun) sets; where this process was started without one, the variables a
    one-process launch would have are filled in first (never overwriting a launcher's)."""
    for key, value in launcher_environment(rank, local_rank, world).items():
        os.environ.setdefault(key, value)
    return VLLMEngine(str(resolve_model_path(model)), tokenizer, seed, gpu_memory_utilization, max_model_len, rank)


def prompt_key(index: int, prompt_id: str | None) -> str:
    return prompt_id if prompt_id is not None else f"#{index}"


def _batches_written(path: Path, keys: list[str], per_batch: int) -> int:
    """How many leading batches of `per_batch` prompts `path` holds whole. Batches are appended in order, so only
    the last one can have been cut short by a kill (a torn line, or fewer records than prompts); the file is
    rewritten (atomically) without such a batch, which is then sampled again from its own seed and so comes out as
    a straight run writes it. A batch short by a prompt skipped for too few distinct answers is sampled again too:
    same seed, same skip."""
    if not path.exists():
        return 0
    batch_of: dict[str, int] = {}
    for i, key in enumerate(keys):
        batch_of.setdefault(key, i // per_batch)  # a repeated id: its records count towards its first batch
    rows, torn = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            key = json.loads(line)["meta"]["prompt_key"]
        except (json.JSONDecodeError, KeyError, TypeError):
            torn = True  # a torn last line: dropped, or the next append would be glued to it
            continue
        if key not in batch_of:
            raise UsageError(f"{path}:{n}: meta.prompt_key {key!r} is not a prompt of --prompts; resume with the "
                             "prompts this file was sampled from, or choose another --output")
        rows.append((batch_of[key], line))
    last = max((b for b, _ in rows), default=-1)
    whole = not rows or sum(b == last for b, _ in rows) >= min(per_batch, len(keys) - last * per_batch)
    if whole and not torn:
        return last + 1
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for b, line in rows if whole or b != last))
    tmp.replace(path)
    return last + 1 if whole else last


def sample_rankings(cfg: SampleConfig) -> dict:
    if cfg.prompts is None:
        raise UsageError("no prompts: pass --prompts FILE")
    out = Path(cfg.output)
    if out.exists() and not cfg.resume:
        raise FileExistsError(f"{out} exists; pass --resume to add to it, or choose another --output")
    read = read_prompts(cfg.prompts, cfg.skip_invalid)
    prompts_per_batch = max(1, cfg.batch_size // cfg.k)
    keys = [prompt_key(i, p.id) for i, p in enumerate(read.records)]
    done = min(_batches_written(out, keys, prompts_per_batch) * prompts_per_batch, len(keys))
    todo = list(enumerate(read.records))[done:]
    engine = engine_for(cfg)
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    source = {"policy": str(cfg.model), "temperature": cfg.temperature, "top_p": cfg.top_p,
              "max_new_tokens": cfg.max_new_tokens}
    written = skipped = duplicates = 0
    with make_progress(cfg.progress) as progress:
        task = progress.add_task("sample", total=len(todo), metrics="")
        for start in range(0, len(todo), prompts_per_batch):
            chunk = todo[start : start + prompts_per_batch]
            # each batch seeded from --seed and its first prompt: a resumed run writes what a straight run would
            torch.manual_seed(cfg.seed + chunk[0][0])
            found: list[dict[str, bool]] = [{} for _ in chunk]  # distinct text -> ended with EOS
            for _ in range(cfg.max_attempts):
                need = [j for j, f in enumerate(found) if len(f) < cfg.k]
                if not need:
                    break
                roll = engine.sample([chunk[j][1].prompt for j in need], cfg.k, params)
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
    summary = {"written": written, "already_done": done, "skipped_fewer_than_2_distinct": skipped,
               "duplicates_dropped": duplicates, "invalid_prompts": read.skipped}
    console.print(f"sample: {summary} -> {out}")
    return summary


def _complete_prompts(path: Path, per_prompt: int) -> set[int]:
    """Prompt indices whose `per_prompt` answers are all in `path`; the file is rewritten (atomically) without
    the answers of a batch a kill cut short, so a resumed run writes each prompt's answers once."""
    if not path.exists():
        return set()
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append((json.loads(line)["index"], line))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line
    counts: dict[int, int] = {}
    for i, _ in rows:
        counts[i] = counts.get(i, 0) + 1
    complete = {i for i, n in counts.items() if n == per_prompt}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for i, line in rows if i in complete))
    tmp.replace(path)
    return complete


def generate(cfg: GenerateConfig) -> list[dict]:
    """Answers to --prompt / --prompts, printed and (with --output) appended batch by batch, so an interruption
    loses at most the batch in flight and --resume carries on. Each batch is seeded from --seed and its first
    prompt, so a resumed run writes what a straight run would have."""
    if cfg.best_of > 1 and (cfg.reward_model is None or cfg.temperature == 0):
        raise UsageError("--best-of N needs --reward-model DIR to choose with and --temperature > 0 to sample "
                         "N different responses")
    prompts = [Prompt(prompt=p) for p in cfg.prompt]
    if cfg.prompts:
        prompts += read_prompts(cfg.prompts).records
    if not prompts:
        raise UsageError("nothing to answer: pass --prompt TEXT or --prompts FILE")
    out = Path(cfg.output) if cfg.output else None
    if out is not None and out.exists() and not cfg.resume:
        raise FileExistsError(f"{out} exists; pass --resume to carry on after the prompts it holds, or choose "
                              "another --output")
    done = _complete_prompts(out, cfg.num_samples) if out is not None else set()
    todo = [i for i in range(len(prompts)) if i not in done]
    engine = engine_for(cfg)
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    rm = rm_tokenizer = None
    if cfg.best_of > 1:
        rm, rm_tokenizer = load_reward_model(cfg.reward_model)  # its own tokenizer: it may not be the policy's
        rm.to(default_device())
    drawn = cfg.num_samples * cfg.best_of  # responses sampled per prompt
    per_batch = max(1, cfg.batch_size // drawn)
    records: list[dict] = []
    with make_progress(cfg.progress) as progress:
        task = progress.add_task("generate", total=len(prompts), completed=len(done), metrics="")
        for start in range(0, len(todo), per_batch):
            chunk = todo[start : start + per_batch]
            torch.manual_seed(cfg.seed + chunk[0])
            roll = engine.sample([prompts[i].prompt for i in chunk], drawn, params)
            answers = sorted(zip(roll.prompt_index, roll.texts, roll.ended, strict=True), key=lambda x: x[0])
            if rm is not None:
                answers = best_of_n(rm, rm_tokenizer, [prompts[chunk[j]].prompt for j, _, _ in answers], answers,
                                    cfg.best_of)
            batch = []
            for j, text, ended, *reward in answers:
                i = chunk[j]
                # the answers to stdout (the bar is on stderr), as plain text: nothing in them is markup
                print(f"### {prompt_text(prompts[i].prompt)}\n{text}{'' if ended else ' [cut at max-new-tokens]'}\n",
                      flush=True)
                batch.append({"index": i, "prompt": prompts[i].model_dump(mode="json")["prompt"], "response": text,
                              "ended": ended, **({"reward": reward[0], "best_of": cfg.best_of} if reward else {})})
            if out is not None:
                append_jsonl(out, batch)
            records += batch
            progress.update(task, advance=len(chunk))
    return records


def best_of_n(rm, tokenizer, prompts: list, answers: list[tuple[int, str, bool]], n: int) -> list[tuple]:
    """Of each run of n consecutive answers to one prompt, the one the reward model scores highest, with its score
    (the RM's raw score: a response cut off at max-new-tokens competes as it is)."""
    rewards = score(rm, tokenizer, prompts, [text for _, text, _ in answers],
                    ended=[ended for _, _, ended in answers]).tolist()
    kept = []
    for start in range(0, len(answers), n):
        best = max(range(start, start + n), key=lambda k: rewards[k])
        kept.append((*answers[best], rewards[best]))
    return kept
