"""One GRPO update from the same batch, in rlhfkit and in TRL: do the two compute the same gradient?

    python benchmarks/grpo_step_parity.py runs/demo

A diagnosis for rl_efficiency.py, where rlhfkit's GRPO moved the policy further from SFT per optimiser step than
TRL's GRPOTrainer with the same settings. From a finished demo run: rlhfkit's PPO (`--advantage grpo --kl-in loss
--kl-estimator k3`, the benchmark's settings) samples 8 prompts x 8 responses from the SFT policy, scores them with
the held-out judges' rubric (x5, as the benchmark; --reward rm: the run's RM), and the gradient of its one update
(`PPO.experience`, then `PPO.policy_loss` on one minibatch of all 64) is taken.
TRL's `GRPOTrainer._compute_loss` then gets the same prompts and response tokens (its advantages computed as
TRL does: group mean, the group's sample std + 1e-4; its reference log-probs from its own fp32 reference under the
same bf16 autocast) on a fresh copy of the SFT weights, and its gradient is taken. Prints the parts each tool
computes (advantages, reference log-probs, policy − reference at step 0) side by side, and the two gradients'
cosine and norm ratio.
With --noise N, N more rlhfkit gradients from independent batches (other prompts and samples, the same SFT
weights) measure how much of one update is signal: the mean pairwise dot product over the mean squared norm
(--skip-trl: only that; --reward length, the response's word count, is a positive control for it).
Needs `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from harness import DemoRun, save_result  # the scripts beside this one
from rl_efficiency import task_reward

from rlhfkit.demo.config import DemoConfig
from rlhfkit.losses import group_normalized
from rlhfkit.train.ppo import PPO

PROMPTS, SAMPLES = 8, 8


def flat_grad(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in module.parameters() if p.grad is not None])


def rlhfkit_step(args, cfg: DemoConfig, reward, overrides: dict, seed: int) -> tuple:
    """One optimiser step of rlhfkit's GRPO from the SFT weights (`seed` picks the prompts and the samples);
    returns (its Experience, its gradient before clipping)."""
    with tempfile.TemporaryDirectory() as tmp:
        ppo_cfg = cfg.ppo.updated(**{
            "policy": str(DemoRun(args.run).sft), "reference": str(DemoRun(args.run).sft),
            "prompts": str(DemoRun(args.run).data("ppo_prompts.jsonl")), "ptx": None,
            "output_dir": tmp, "seed": seed, "progress": False, "save_every": 0, "samples_every": 10**6,
            "iterations": 1, "missing_eos_penalty": None, "rollout_batch": PROMPTS * SAMPLES,
            "samples_per_prompt": SAMPLES, "minibatch_size": PROMPTS * SAMPLES, "ppo_epochs": 1,
            "lr": args.lr, "min_lr_ratio": 1.0, "warmup_ratio": 0.0, "kl_coef": args.kl_coef,
            "advantage": "grpo", "kl_in": "loss", "kl_estimator": "k3"} | overrides)
        ppo = PPO.build(ppo_cfg, reward_fn=reward)
        ppo.models.plain_policy.train()
        exp = ppo.experience(ppo.prompts_for(0))  # iteration 0's prompts and samples, scored
        # the iteration's one update: one minibatch of all its rollouts
        loss, _ = ppo.policy_loss(exp, list(range(len(exp.rollouts.prompt_ids))))
        ppo.loop.acc.backward(loss)
        return exp, flat_grad(ppo.models.policy.module)


def trl_gradient(args, cfg: DemoConfig, exp) -> tuple[torch.Tensor, dict]:
    """TRL's GRPO loss on rlhfkit's rollouts, and its gradient."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    policy = str(DemoRun(args.run).sft)
    tok = AutoTokenizer.from_pretrained(policy)
    batch = exp.rollouts
    with tempfile.TemporaryDirectory() as tmp:
        trl_cfg = GRPOConfig(
            output_dir=tmp, use_cpu=True, seed=cfg.seed, bf16=True, per_device_train_batch_size=PROMPTS * SAMPLES,
            gradient_accumulation_steps=1, num_generations=SAMPLES, num_iterations=1,
            max_completion_length=cfg.ppo.max_new_tokens, temperature=1.0, learning_rate=args.lr,
            beta=args.kl_coef, report_to="none", gradient_checkpointing=False)
        trainer = GRPOTrainer(model=policy, reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=trl_cfg, train_dataset=Dataset.from_list([{"prompt": "x"}] * 8),
                              processing_class=tok)
    # rlhfkit's rollouts in TRL's layout: prompts left-padded, completions right-padded
    pad = tok.pad_token_id
    width = max(map(len, batch.prompt_ids))
    prompt_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch.prompt_ids])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch.prompt_ids])
    length = batch.mask.shape[1]
    completion_ids = torch.tensor([r + [pad] * (length - len(r)) for r in batch.response_ids])
    completion_mask = batch.mask.long().cpu()
    # TRL's advantages (GRPOTrainer._generate_and_score_completions, scale_rewards="group"): rewards minus the
    # group mean over the group's sample std (torch's unbiased std) + 1e-4
    scores, groups = exp.scores.cpu(), batch.prompt_of.cpu()
    n = int(groups.max()) + 1
    mean = torch.stack([scores[groups == g].mean() for g in range(n)])[groups]
    std = torch.stack([scores[groups == g].std() for g in range(n)])[groups]
    advantages = (scores - mean) / (std + 1e-4)
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([prompt_mask, completion_mask], 1)
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, attention, length, 16)
    # micro-batches of 16, as the benchmark runs TRL: each one's loss is its tokens' sum over all 64 rollouts'
    # token count (TRL's "dapo" normaliser), so the accumulated gradient is the token mean over the 64
    for rows in torch.arange(len(ids)).split(16):
        inputs = {"prompt_ids": prompt_ids[rows], "prompt_mask": prompt_mask[rows],
                  "completion_ids": completion_ids[rows], "completion_mask": completion_mask[rows],
                  "advantages": advantages[rows], "ref_per_token_logps": ref[rows],
                  "num_items_in_batch": completion_mask.sum()}
        with torch.autocast("cpu", torch.bfloat16):
            loss = trainer._compute_loss(model, inputs)
        loss.backward()
    return flat_grad(model), {"advantages": advantages, "ref_logprobs": ref.float()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished demo run (runs/<name>): sft/, data/")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--reward", choices=("gold", "rm", "length"), default="gold",
                   help="the judges' rubric (gold) or the run's round-1 RM (rm), as rl_efficiency.py --reward; or "
                        "a positive control for --noise, the response's word count (length), which any policy "
                        "gradient climbs")
    p.add_argument("--reward-scale", type=float, default=5.0, help="--reward gold: the gold score times this")
    p.add_argument("--noise", type=int, default=0, metavar="N",
                   help="also take N more rlhfkit gradients from independent batches and measure the gradient's "
                        "signal share")
    p.add_argument("--skip-trl", action="store_true", help="only rlhfkit's gradients (with --noise: the signal share)")
    p.add_argument("--rlhfkit-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="PPO options for rlhfkit, e.g. frozen_dtype=fp32")
    p.add_argument("--json", type=Path, help="the JSON result (default runs/bench/grpo_step_parity.json)")
    args = p.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.rlhfkit_set)
    result = measure(args, overrides)
    save_result("grpo_step_parity", {"run": str(args.run), "reward": args.reward, "overrides": overrides, **result},
                args.json)


def measure(args, overrides: dict) -> dict:
    """Prints and returns the comparison's figures."""

    run = DemoRun(args.run)
    cfg = run.config
    reward = task_reward(run, args.reward, args.reward_scale)

    exp, g_rlhfkit = rlhfkit_step(args, cfg, reward, overrides, cfg.seed)
    mask, scores, groups = exp.rollouts.mask.cpu(), exp.scores.cpu(), exp.rollouts.prompt_of.cpu()
    within = torch.stack([scores[groups == g].std() for g in groups.unique()]).mean()
    print(f"rollouts: {len(scores)}, response tokens {int(mask.sum())}, ended {exp.rollouts.ended.float().mean():.0%}, "
          f"reward mean {scores.mean():.3f}, std {scores.std():.3f}, within a prompt {within:.3f}")
    out = {"rollouts": len(scores), "response_tokens": int(mask.sum()), "reward_mean": scores.mean().item(),
           "reward_std": scores.std().item(), "reward_std_within_prompt": within.item()}
    if args.skip_trl:
        if args.noise:
            out["noise"] = gradient_noise(args, cfg, reward, overrides, g_rlhfkit.float())
        return out
    g_trl, trl = trl_gradient(args, cfg, exp)
    ours_adv = group_normalized(scores, groups)
    print(f"advantages: rlhfkit |A| mean {ours_adv.abs().mean():.4f}, TRL {trl['advantages'].abs().mean():.4f}, "
          f"ratio {(ours_adv.abs().mean() / trl['advantages'].abs().mean()):.4f}")
    d = (exp.ref_logprobs.cpu() - trl["ref_logprobs"]) * mask
    print(f"reference log-probs, rlhfkit - TRL per token: mean {d.sum() / mask.sum():+.5f}, "
          f"rms {((d**2).sum() / mask.sum()).sqrt():.5f}")
    d = (exp.old_logprobs.cpu() - exp.ref_logprobs.cpu()) * mask
    print(f"rlhfkit's policy - its reference at step 0 (both SFT): mean {d.sum() / mask.sum():+.5f}, "
          f"rms {((d**2).sum() / mask.sum()).sqrt():.5f} per token")
    if g_rlhfkit.shape != g_trl.shape:
        print(f"gradients differ in size: rlhfkit {g_rlhfkit.numel()}, TRL {g_trl.numel()}")
        return out
    g_rlhfkit, g_trl = g_rlhfkit.double(), g_trl.double()  # fp32 sums over 135M entries drift
    cos = (g_rlhfkit @ g_trl / (g_rlhfkit.norm() * g_trl.norm())).item()
    print(f"gradient: cosine {cos:.4f}, norm rlhfkit {g_rlhfkit.norm():.4f}, TRL {g_trl.norm():.4f}, "
          f"ratio {(g_rlhfkit.norm() / g_trl.norm()):.4f}")
    # Adam's first step is about lr·sign(g) per weight: the share of weights whose sign agrees says how alike
    # the first steps are
    big = g_trl.abs() > g_trl.abs().median()
    agree = (torch.sign(g_rlhfkit[big]) == torch.sign(g_trl[big])).float().mean().item()
    print(f"sign agreement on the larger half of TRL's gradient entries: {agree:.1%}")
    out |= {"advantage_ratio": (ours_adv.abs().mean() / trl["advantages"].abs().mean()).item(),
            "gradient_cosine": cos, "gradient_norm_ratio": (g_rlhfkit.norm() / g_trl.norm()).item(),
            "sign_agreement": agree}
    if args.noise:
        out["noise"] = gradient_noise(args, cfg, reward, overrides, g_rlhfkit.float())
    return out


def gradient_noise(args, cfg: DemoConfig, reward, overrides: dict, first: torch.Tensor) -> dict:
    """How much of one update's gradient is signal: gradients g_i from independent batches (other prompts, other
    samples) at the same SFT weights are g_i = s + n_i, so mean_{i≠j} g_i·g_j estimates |s|² and mean |g_i|²
    estimates |s|² + |n|²/1 batch; their ratio is the signal's share of a batch's squared gradient norm."""
    grads = [first] + [rlhfkit_step(args, cfg, reward, overrides, cfg.seed + 1 + i)[1] for i in range(args.noise)]

    def dot(a: torch.Tensor, b: torch.Tensor) -> float:  # in float64, a chunk at a time
        return sum(float(x.double() @ y.double()) for x, y in zip(a.split(1 << 24), b.split(1 << 24), strict=True))

    n = len(grads)
    cross = [dot(grads[i], grads[j]) for i in range(n) for j in range(i + 1, n)]
    norms2 = [dot(g, g) for g in grads]
    cosines = [c / (norms2[i] * norms2[j]) ** 0.5
               for c, (i, j) in zip(cross, [(i, j) for i in range(n) for j in range(i + 1, n)], strict=True)]
    shares = torch.tensor(cross) / (sum(norms2) / n)  # each pair's estimate of |s|² / (|s|² + |n|²)
    share, se = shares.mean().item(), (shares.std() / len(shares) ** 0.5).item()
    batch = PROMPTS * SAMPLES
    print(f"\ngradient noise, {n} independent batches of {batch} episodes at the SFT weights: pairwise cosines "
          + ", ".join(f"{c:+.3f}" for c in cosines))
    # signal and noise equal at B·(1 − share)/share episodes; the upper bound of the share (2 standard errors)
    # gives the smallest such batch the measurement allows
    high = share + 2 * se
    print(f"signal share of one batch's squared gradient norm: {share:+.3f} ± {se:.3f} (standard error); "
          + (f"signal equals noise at a batch of at least {batch * (1 - high) / high:.0f} episodes" if high > 0
             else "no signal measurable"))
    return {"batches": n, "episodes_per_batch": batch, "cosines": cosines, "signal_share": share,
            "standard_error": se}


if __name__ == "__main__":
    main()
