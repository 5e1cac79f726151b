"""Memory: what PPO's four models cost per process, by arithmetic for real shapes and measured on this machine.

    python benchmarks/ppo_memory.py                       # the table, then measurements on a 135M shape (CPU)
    python benchmarks/ppo_memory.py --shape 1b --device cuda   # measure a 1B shape on a GPU
    python benchmarks/ppo_memory.py --runs ppo-ddp ppo-fsdp2   # only these measurements

1. Arithmetic, per process, for Llama shapes (0.5B, 1B, 7B/8B): the trained policy and value model hold fp32
   weights, fp32 gradients and AdamW's two fp32 moments (16 bytes a parameter each); the frozen reference and
   reward model hold weights only (4 bytes a parameter in fp32, 2 in bf16: `--frozen-dtype`). DDP keeps all of
   it on every process; FSDP2 divides the trained models' 32 bytes a parameter by the number of processes; the
   frozen ones either stay whole on each (the column for comparison), are sharded too (what rlhfkit does under
   FSDP2: forward-only units, each layer gathered for its forward; the column that shows an 8B shape fitting
   8 x 80 GB), or wait in CPU memory (`--offload-frozen`, without FSDP). Activations, the rollout's KV cache and
   allocator slack come on top; the table says which shapes fit 80 GB with 20% left.
2. Measured, each in a fresh process (peak resident memory, or peak CUDA memory on a GPU), for a random-init
   Llama shape: one PPO iteration with the frozen models in fp32 vs bf16; one SFT step and one PPO iteration
   (all four models: policy, value model, reference, RM) under DDP vs FSDP2 on 2 processes (CPU: gloo). PPO
   under FSDP2 shards all four and, for the rollout and scoring, gathers the policy and the value model whole once
   an iteration (their fp32 weights, 4 bytes a parameter, on top of the shards while sampling; gradients are
   freed by then). Each process loads a model whole before sharding it, so a peak also holds the largest model
   once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab (Llama / Qwen2.5 / SmolLM2 families)
    "135m": (576, 1536, 30, 9, 3, 49152),
    "0.5b": (896, 4864, 24, 14, 2, 151936),
    "1b": (2048, 8192, 16, 32, 8, 128256),
    "7b": (4096, 11008, 32, 32, 32, 32000),
    "8b": (4096, 14336, 32, 32, 8, 128256),
}
GB = 1e9
RUNS = {"ppo-frozen-fp32": 1, "ppo-frozen-bf16": 1, "sft-ddp": 2, "sft-fsdp2": 2, "ppo-ddp": 2,
        "ppo-fsdp2": 2}  # each run and its processes


def parameters(shape: str) -> int:
    h, i, n, heads, kv, v = SHAPES[shape]
    head_dim = h // heads
    attention = h * h * 2 + h * kv * head_dim * 2  # q, o; k, v
    return n * (attention + 3 * h * i + 2 * h) + v * h * (1 if shape in ("135m", "0.5b", "1b") else 2) + h


def arithmetic_table() -> str:
    rows = ["| shape | params | DDP, frozen fp32 | DDP, frozen bf16 | FSDP2 x8, frozen bf16 whole | FSDP2 x8, all four "
            "sharded | FSDP2 x8, frozen offloaded | fits 80 GB (with 20% left) |", "|---|---|---|---|---|---|---|---|"]
    for shape in ("0.5b", "1b", "7b", "8b"):
        p = parameters(shape)
        trained = 2 * 16 * p  # policy and value model: weights, grads, two AdamW moments, fp32
        ddp32, ddp16 = trained + 2 * 4 * p, trained + 2 * 2 * p
        fsdp16, sharded, fsdp_off = trained / 8 + 2 * 2 * p, (trained + 2 * 2 * p) / 8, trained / 8
        fits = [name for name, b in (("DDP", ddp16), ("FSDP2 x8", fsdp16), ("FSDP2 x8, all sharded", sharded),
                                     ("FSDP2 x8 + offload", fsdp_off)) if b <= 0.8 * 80 * GB]
        rows.append(f"| {shape} | {p / 1e9:.2f}B | {ddp32 / GB:.1f} GB | {ddp16 / GB:.1f} GB | {fsdp16 / GB:.1f} GB "
                    f"| {sharded / GB:.1f} GB | {fsdp_off / GB:.1f} GB | {', '.join(fits) or 'none'} |")
    return "\n".join(rows)


def peak_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def build_model(folder: Path, shape: str) -> None:
    """A random-init Llama of `shape` with SmolLM2's tokenizer (converted locally, never downloaded)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    h, i, n, heads, kv, _ = SHAPES[shape]
    config = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=len(tok), tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def worker(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints {"peak": bytes, "baseline": bytes}."""
    import torch  # noqa: F401  (imported before the baseline is read)

    from rlhfkit.config import PPOConfig, SFTConfig
    from rlhfkit.stages import STAGES

    work = Path(args.work)
    baseline = peak_bytes(args.device)
    if args.mode.startswith("ppo"):
        STAGES["ppo"].run(PPOConfig(
            policy=str(work / "model"), reward_model=str(work / "rm"), prompts=str(work / "p.jsonl"),
            output_dir=str(work / f"run-{args.mode}"), iterations=1, rollout_batch=8, minibatch_size=8, ppo_epochs=1,
            max_new_tokens=32, save_every=0, progress=False, dtype="bf16",
            frozen_dtype="fp32" if args.mode == "ppo-frozen-fp32" else "bf16", fsdp=args.mode == "ppo-fsdp2",
            report_to=["none"]))
    else:
        STAGES["sft"].run(SFTConfig(
            model=str(work / "model"), data=str(work / "d.jsonl"), output_dir=str(work / f"run-{args.mode}"),
            max_steps=1, batch_size=1, max_length=256, eval_fraction=0, save_every=0, progress=False, dtype="bf16",
            fsdp=args.mode == "sft-fsdp2", report_to=["none"]))
    rank = int(os.environ.get("RANK", 0))
    print(json.dumps({"rank": rank, "peak": peak_bytes(args.device), "baseline": baseline}), flush=True)


def measure(args: argparse.Namespace, work: Path, mode: str, processes: int) -> list[dict]:
    me = [str(Path(__file__).resolve()), "--worker", mode, "--work", str(work), "--device", args.device]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", "29561", *me]
    else:
        cmd = [sys.executable, *me]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"rank"')]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="135m", choices=list(SHAPES), help="shape measured (random init)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--runs", nargs="+", choices=list(RUNS), help="measure only these (default: all)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="the JSON result (default runs/bench/ppo_memory.json)")
    args = p.parse_args()
    if args.worker:
        args.mode = args.worker
        return worker(args)

    print("## PPO's four models per process, by arithmetic (weights, gradients, AdamW; no activations)\n")
    print(arithmetic_table())
    from rlhfkit.data import write_jsonl
    from rlhfkit.models.reward import reward_model_from_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_model(work / "model", args.shape)
        rm, tok = reward_model_from_causal_lm(work / "model")
        rm.save(work / "rm", tok)
        del rm
        write_jsonl(work / "p.jsonl", [{"prompt": f"Write a sentence about the number {i}."} for i in range(8)])
        write_jsonl(work / "d.jsonl", [{"prompt": f"Count to {i}.", "response": " ".join(map(str, range(i + 20)))}
                                       for i in range(16)])
        print(f"\n## Measured on {args.device}: a random-init {args.shape} shape "
              f"({parameters(args.shape) / 1e6:.0f}M parameters), peak memory per process\n")
        print("| run | processes | peak per process | above the process's start |\n|---|---|---|---|")
        rows = []
        for mode, procs in RUNS.items():
            if args.runs and mode not in args.runs:
                continue
            for r in measure(args, work, mode, procs):
                print(f"| {mode} (rank {r['rank']}) | {procs} | {r['peak'] / GB:.2f} GB | "
                      f"{(r['peak'] - r['baseline']) / GB:.2f} GB |", flush=True)
                rows.append({"run": mode, "processes": procs, **r})
    from harness import save_result  # the script beside this one (imported here: workers do not need it)

    save_result("ppo_memory", {"shape": args.shape, "device": args.device, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
