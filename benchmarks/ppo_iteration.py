"""PPO iteration speed: seconds per phase, rollout tokens/s against plain `generate`, samples/s against TRL's RLOO.

    python benchmarks/ppo_iteration.py ../shared/data/self-instruct/seed_tasks.jsonl

SmolLM2-135M as policy, reference, value model and reward model (a scalar head on its backbone), bf16,
32 prompts, 64 new tokens, temperature 1. Three measurements in one run:
  1. rollout: `rlhfkit.rollout.sample` (what `rlhfkit ppo` calls, with the fp32 policy and bf16 decoding) vs
     `model.generate` of transformers on a bf16 copy, same prompts, batch, and sampling settings (and, with
     `--rollout-engine vllm` on a GPU, vLLM); tokens/s counts the real response tokens (up to and including EOS).
  2. rlhfkit PPO: seconds per iteration split into generate / score / train, samples/s (sampled by
     `--rollout-engine`); 32 samples per iteration, `--samples-per-prompt` (default 2) to each of 32 / n prompts.
  3. TRL RLOOTrainer: the same policy and reward model weights (as a sequence-classification model),
     the same prompts, 32 samples per generation round (32 / n prompts x n, RLOO needs n >= 2) and
     4 optimiser steps of 8 per round, like PPO's 4 minibatches of 8 with one epoch; samples/s.
Needs `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from harness import StepTimes, save_result, trl_config  # the script beside this one

from rlhfkit.config import PPOConfig
from rlhfkit.data import write_jsonl
from rlhfkit.models import load_causal_lm, resolve_model_path
from rlhfkit.models.reward import reward_model_from_causal_lm
from rlhfkit.rollout import sample
from rlhfkit.train.ppo import PPO


def read_seed_prompts(path: Path, n: int) -> list[str]:
    prompts = []
    for line in path.read_text().splitlines():
        task = json.loads(line)
        extra = task["instances"][0]["input"] if task.get("instances") else ""
        prompts.append(task["instruction"] + (f"\n\n{extra}" if extra else ""))
    return prompts[:n]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_rollouts(prompts: list[str], args) -> dict:
    model, tok = load_causal_lm(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    results = {}

    # transformers' generate on a bf16 copy (left padding, the chat template, sampling).
    plain = copy.deepcopy(model).to(torch.bfloat16).eval()
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    times, tokens = [], []
    for r in range(args.warmup + args.rounds):
        torch.manual_seed(r)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = plain.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens,
                                 pad_token_id=tok.pad_token_id)
        sync()
        if r >= args.warmup:
            times.append(time.perf_counter() - t0)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            tokens.append(sum(row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row) for row in new))
    results["generate"] = sum(tokens) / sum(times)
    del plain

    # rlhfkit's rollout, called as `rlhfkit ppo` calls it: fp32 policy, bf16 decoding.
    times, tokens = [], []
    for r in range(args.warmup + args.rounds):
        torch.manual_seed(r)
        sync()
        t0 = time.perf_counter()
        roll = sample(model, tok, prompts, 1, args.new_tokens, 1.0, 1.0, len(prompts), autocast=True)
        sync()
        if r >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(sum(map(len, roll.response_ids)))
    results["rlhfkit"] = sum(tokens) / sum(times)
    if args.rollout_engine == "vllm":  # vLLM, as `--rollout-engine vllm` samples (its weights from the folder)
        from rlhfkit.rollout import SamplingParams
        from rlhfkit.sampling import vllm_engine

        del model
        engine = vllm_engine(args.model, tok, seed=0, gpu_memory_utilization=0.3)
        times, tokens = [], []
        for r in range(args.warmup + args.rounds):
            torch.manual_seed(r)
            sync()
            t0 = time.perf_counter()
            roll = engine.sample(prompts, 1, SamplingParams(args.new_tokens))
            sync()
            if r >= args.warmup:
                times.append(time.perf_counter() - t0)
                tokens.append(sum(map(len, roll.response_ids)))
        results["vllm"] = sum(tokens) / sum(times)
        del engine
    return results


def run_rlhfkit_ppo(prompts: list[str], rm_dir: Path, work: Path, args) -> dict:
    data = work / "prompts.jsonl"
    write_jsonl(data, [{"prompt": p} for p in prompts])
    policy = str(resolve_model_path(args.model))
    cfg = PPOConfig(policy=policy, reward_model=str(rm_dir), prompts=str(data), output_dir=str(work / "ppo"),
                    iterations=args.warmup + args.rounds, rollout_batch=len(prompts),
                    samples_per_prompt=args.samples_per_prompt, minibatch_size=8, ppo_epochs=1,
                    max_new_tokens=args.new_tokens, dtype="bf16", save_every=0, progress=False,
                    samples_every=1000, rollout_engine=args.rollout_engine)
    history = PPO.build(cfg).train().history[args.warmup:]
    phases = {k: sum(h[f"seconds_{k}"] for h in history) / len(history) for k in ("generate", "score", "train")}
    total = sum(phases.values())
    return {"seconds": phases, "seconds_total": total, "samples_per_s": len(prompts) / total,
            "response_length": sum(h["response_length"] for h in history) / len(history)}


def run_trl_rloo(prompts: list[str], rm_dir: Path, work: Path, args) -> dict:
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    policy = str(resolve_model_path(args.model))
    tok = AutoTokenizer.from_pretrained(policy)
    # The same reward model for TRL: the backbone with our head as a sequence-classification score layer.
    seq = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
    head = load_file(rm_dir / "reward_head.safetensors")
    seq.score.weight.data.copy_(head["weight"])
    seq.config.pad_token_id = tok.pad_token_id
    seq.save_pretrained(work / "trl-rm")
    tok.save_pretrained(work / "trl-rm")

    times = StepTimes(on_end=sync)
    steps_per_round = 4
    cfg = trl_config(RLOOConfig, work / "trl", "bf16", per_device_train_batch_size=8, gradient_accumulation_steps=1,
                     steps_per_generation=steps_per_round, num_generations=args.samples_per_prompt,
                     max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0,
                     max_steps=(args.warmup + args.rounds) * steps_per_round, logging_steps=1000,
                     gradient_checkpointing=False, learning_rate=3e-6)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    trainer = RLOOTrainer(model=policy, reward_funcs=str(work / "trl-rm"), args=cfg, train_dataset=dataset,
                          processing_class=tok, callbacks=[times])
    trainer.train()
    per_round = sum(times.seconds[args.warmup * steps_per_round:]) / args.rounds
    samples = 8 * steps_per_round
    return {"seconds_per_round": per_round, "samples_per_s": samples / per_round}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", type=Path, help="seed_tasks.jsonl (self-instruct)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds / iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--samples-per-prompt", type=int, default=2, help="responses per prompt, both tools")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--rollout-engine", choices=["hf", "vllm"], default="hf",
                   help="vllm (CUDA): also time vLLM's rollouts, and sample PPO's with it")
    p.add_argument("--json", type=Path, default=None, help="the JSON result (default runs/bench/SCRIPT.json)")
    args = p.parse_args()
    prompts = read_seed_prompts(args.prompts, args.num_prompts)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, {len(prompts)} samples per iteration ({args.samples_per_prompt} per prompt), "
          f"{args.new_tokens} new tokens, bf16, {device}", flush=True)

    roll = time_rollouts(prompts, args)
    print(f"rollout tokens/s: transformers generate {roll['generate']:.1f}, rlhfkit {roll['rlhfkit']:.1f} "
          f"-> {roll['rlhfkit'] / roll['generate']:.2f}x", flush=True)
    if "vllm" in roll:
        print(f"rollout tokens/s: vLLM {roll['vllm']:.1f} -> {roll['vllm'] / roll['generate']:.2f}x generate, "
              f"{roll['vllm'] / roll['rlhfkit']:.2f}x rlhfkit's decoder", flush=True)
    results = {"rollout_tokens_per_s": roll}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rm, tok = reward_model_from_causal_lm(args.model)
        torch.manual_seed(0)
        torch.nn.init.normal_(rm.head.weight, std=0.02)  # an untrained but non-constant reward
        rm.save(work / "rm", tok)
        del rm
        ppo = run_rlhfkit_ppo(prompts, work / "rm", work, args)
        results["rlhfkit_ppo"] = ppo
        s = ppo["seconds"]
        print(f"rlhfkit PPO: {ppo['seconds_total']:.2f} s/iteration (generate {s['generate']:.2f}, score "
              f"{s['score']:.2f}, train {s['train']:.2f}), {ppo['samples_per_s']:.2f} samples/s, "
              f"mean response length {ppo['response_length']:.1f}", flush=True)
        if not args.skip_trl:
            trl = run_trl_rloo(prompts, work / "rm", work, args)
            results["trl_rloo"] = trl
            print(f"TRL RLOO: {trl['seconds_per_round']:.2f} s per 32 samples, {trl['samples_per_s']:.2f} samples/s",
                  flush=True)
            results["ratio_samples_per_s"] = ppo["samples_per_s"] / trl["samples_per_s"]
            print(f"rlhfkit PPO / TRL RLOO samples/s: {results['ratio_samples_per_s']:.2f}x", flush=True)
    save_result("ppo_iteration", results, args.json)


if __name__ == "__main__":
    main()
