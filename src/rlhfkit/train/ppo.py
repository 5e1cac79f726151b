"""Step 3: PPO-ptx against the reward model (InstructGPT, eq. 2):

    objective(φ) = E_(x,y)~π_RL [ r_θ(x,y) − β·log(π_RL(y|x) / π_SFT(y|x)) ] + γ·E_x~D_pretrain [ log π_RL(x) ]

One iteration:
  1. rollout   sample `samples_per_prompt` responses to each prompt from π_RL (KV cache, stop at EOS or
               max_new_tokens)
  2. score     log-probs under π_RL (old) and π_SFT (reference), values, and the RM score r_θ(x,y) on the
               last real response token, less `missing_eos_penalty` for a response cut off without EOS;
               with several responses per prompt, less the mean score of the others   -> losses.leave_one_out
  3. rewards   per token −β·KL_t, plus the score at the last token      -> losses.kl_penalized_rewards
  4. GAE       advantages (whitened over the whole batch, all processes) and returns   -> losses.gae
  5. update    `ppo_epochs` passes of minibatches: clipped policy loss − entropy bonus + γ_ptx · NLL of
               pretraining text in the same loss and optimiser step; clipped value loss for the value model
  6. β         the adaptive controller moves β toward `kl_target` (if set)
The math is in rlhfkit/losses.py; this file moves tensors between models.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlhfkit.config import PPOConfig
from rlhfkit.data import (
    IGNORE,
    Example,
    collate_packed,
    encode_demonstrations,
    pack,
    pack_responses,
    pack_shared_prompts,
    read_demonstrations,
    read_prompts,
)
from rlhfkit.data.collate import shifted_targets
from rlhfkit.data.records import prompt_text
from rlhfkit.losses import (
    AdaptiveKLController,
    gae,
    kl_penalized_rewards,
    leave_one_out,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    ptx_loss,
    whiten,
)
from rlhfkit.models import is_peft, load_causal_lm, save_model
from rlhfkit.models.reward import Group, RewardModel, load_reward_model, pack_groups
from rlhfkit.rollout import sample
from rlhfkit.train.common import (
    Checkpoints,
    MetricsLog,
    check_finite,
    console,
    load_trainable_lm,
    make_accelerator,
    make_optimizer,
    make_progress,
    prepare_run_dir,
    publish_model,
    step_items,
    warmup_cosine,
)

RewardFn = Callable[[list[str], list[str]], torch.Tensor]  # (prompts, responses) -> scores


class PolicyModule(nn.Module):
    """The trained policy behind one forward (DDP hooks one forward per backward): log-probs and entropy of
    the response tokens, values when the value head shares the backbone, and the ptx NLL when given.
    Inputs are packed rollouts (see `packed`); outputs are flat, one entry per response token."""

    def __init__(self, model: nn.Module, value_head: nn.Linear | None = None, entropy_grad: bool = False):
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.entropy_grad = entropy_grad  # without an entropy bonus it is only logged: no graph over the vocabulary

    def forward(self, input_ids, position_ids, attention_mask, reads, targets, temperature: float, ptx=None) -> dict:
        hidden = self.model.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                          attention_mask=attention_mask, use_cache=False).last_hidden_state
        h = hidden[reads[:, 0], reads[:, 1]]  # the states that predict each response token
        # the unembedding only where a response token is predicted: (N, V), not (rows, columns, V)
        logp = F.log_softmax(self.model.get_output_embeddings()(h).float() / temperature, dim=-1)
        with torch.set_grad_enabled(self.entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp.exp() * logp).sum(-1)
        result = {"logprobs": logp.gather(-1, targets[:, None]).squeeze(-1), "entropy": entropy}
        if self.value_head is not None:
            result["values"] = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)
        if ptx is not None:
            ids, pos, ptx_targets, normalizer = ptx
            hidden = self.model.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
            keep = ptx_targets != IGNORE
            result["ptx"] = ptx_loss(self.model.get_output_embeddings()(hidden[keep]), ptx_targets[keep], normalizer)
        return result


class ValueModel(nn.Module):
    """V(s_t) for every response token of packed rollouts: a reward model's backbone and head read at the state
    before the token (the same states the policy predicts it from)."""

    def __init__(self, rm: RewardModel):
        super().__init__()
        self.backbone, self.head = rm.backbone, rm.head
        self.rm = [rm]  # for saving in the reward-model format, kept out of the module tree

    def forward(self, input_ids, position_ids, attention_mask, reads, targets=None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
        return self.head(hidden[reads[:, 0], reads[:, 1]].to(self.head.weight.dtype)).squeeze(-1)


@dataclass
class RolloutBatch:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # as sampled: EOS included when the response ended
    mask: torch.Tensor  # (B, T) float: real response tokens, T the longest response; per-token tensors are (B, T)
    prompts: list[str]
    responses: list[str]
    ended: torch.Tensor  # (B,) bool
    groups: torch.Tensor  # (B,) long: which prompt of the iteration each response answers


def packed(fn, batch: RolloutBatch, idx, pad_id: int, *args):
    """`fn(ids, positions, attention_mask, reads, targets, *args)` on rollouts `idx` packed end to end
    (`pack_responses`: a minibatch of short and long rollouts costs its real tokens, not rows x the longest;
    transformers sees the restarting positions, with no attention mask, and keeps each sequence to itself).
    Rollouts that answer the same prompt share one copy of it (`pack_shared_prompts`, with an attention mask):
    a 65-token prompt and four 20-token responses cost 145 tokens, not 340. Per-token outputs come back as
    (len(idx), T) like `batch.mask` (zeros after each response)."""
    idx = idx.tolist() if torch.is_tensor(idx) else list(idx)
    prompts, responses = [batch.prompt_ids[i] for i in idx], [batch.response_ids[i] for i in idx]
    groups = batch.groups[idx].tolist()
    if len(set(groups)) < len(groups):
        pk = pack_shared_prompts(prompts, responses, groups, pad_id)
    else:
        pk = pack_responses(prompts, responses, pad_id)
    pk = pk.to(batch.mask.device)

    def unpack(x):
        if x.dim() != 1 or x.shape[0] != pk.targets.shape[0]:
            return x
        out = x.new_zeros((len(idx), batch.mask.shape[1]))
        return out.index_put((pk.slots[:, 0], pk.slots[:, 1]), x)

    out = fn(pk.input_ids, pk.position_ids, pk.attention_mask, pk.reads, pk.targets, *args)
    return {k: unpack(v) for k, v in out.items()} if isinstance(out, dict) else unpack(out)


def in_chunks(fn, batch: RolloutBatch, size: int, pad_id: int, *args):
    """`packed` over the whole batch in chunks of about `size` rollouts of similar length, a prompt's rollouts
    in the same chunk (scoring: no gradients)."""
    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)]
    chunks: list[list[int]] = [[]]
    for members in sorted(by_prompt(batch), key=lambda m: sum(lengths[i] for i in m)):
        if chunks[-1] and len(chunks[-1]) + len(members) > size:
            chunks.append([])
        chunks[-1] += members
    parts = [(idx, packed(fn, batch, idx, pad_id, *args)) for idx in chunks]
    first = parts[0][1]
    if isinstance(first, dict):
        return {k: _gather([(idx, p[k]) for idx, p in parts], len(lengths)) for k in first}
    return _gather(parts, len(lengths))


def by_prompt(batch: RolloutBatch) -> list[list[int]]:
    """The rollouts' indices grouped by the prompt they answer, in order of first appearance."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(batch.groups.tolist()):
        members.setdefault(g, []).append(i)
    return list(members.values())


def _gather(parts: list, n: int) -> torch.Tensor:
    out = parts[0][1].new_zeros((n, *parts[0][1].shape[1:]))
    for idx, p in parts:
        out[torch.tensor(idx, device=out.device)] = p
    return out


def build_batch(roll, prompts_text: list[str], device) -> RolloutBatch:
    """`prompts_text` in the order the prompts were given; the rollout comes back in its own order (sorted by
    length), so each response is paired with its prompt through `roll.prompt_index`."""
    t = max(1, max(map(len, roll.response_ids)))
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (t - len(r)) for r in roll.response_ids])
    return RolloutBatch([list(p) for p in roll.prompt_ids], [list(r) for r in roll.response_ids], mask.to(device),
                        [prompts_text[i] for i in roll.prompt_index], roll.texts,
                        torch.tensor(roll.ended, device=device), torch.tensor(roll.prompt_index, device=device))


def read_ptx(path: str, tokenizer, row_length: int) -> list[list[Example]]:
    """Pretraining rows: demonstrations (loss on responses) or plain text, one passage a line (loss on all of it)."""
    if path.endswith(".txt"):
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        examples = []
        for ln in lines:
            ids = (tokenizer(ln, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:row_length]
            examples.append(Example(ids, [IGNORE] + ids[1:]))  # the first token is never predicted across examples
    else:
        examples, _ = encode_demonstrations(tokenizer, read_demonstrations(path).records, row_length)
    if not examples:
        raise ValueError(f"{path}: no pretraining text")
    return [[examples[i] for i in row] for row in pack(examples, row_length)]


@dataclass
class PPOResult:
    output_dir: Path
    iterations: int
    history: list[dict]
    policy: nn.Module


def _scores_from_rm(rm: RewardModel, batch: RolloutBatch, pad_id: int) -> torch.Tensor:
    """RM scores (B,), the responses to one prompt packed after one copy of it."""
    members = by_prompt(batch)
    groups = [Group(batch.prompt_ids[m[0]], [batch.response_ids[i] or [pad_id] for i in m]) for m in members]
    packed_groups = pack_groups(groups, pad_id).to(batch.mask.device)
    rewards = rm(packed_groups.input_ids, packed_groups.position_ids, packed_groups.attention_mask,
                 packed_groups.ends).float()
    order = torch.tensor([i for m in members for i in m], device=rewards.device)
    return torch.empty_like(rewards).index_copy_(0, order, rewards)


def train_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None,
              on_iteration: Callable[[int, dict], None] | None = None) -> PPOResult:
    """PPO-ptx as configured. `reward_fn(prompts, responses) -> scores` replaces the reward model where the
    reward is a program (e.g. a verifiable constraint); the value model then starts from the policy."""
    if cfg.prompts is None:
        raise ValueError("no prompts: pass --prompts FILE")
    if cfg.rollout_batch % cfg.samples_per_prompt:
        raise ValueError(f"--rollout-batch {cfg.rollout_batch} is not a multiple of --samples-per-prompt "
                         f"{cfg.samples_per_prompt}")
    acc = make_accelerator(cfg)
    run_dir = prepare_run_dir(cfg, acc)
    checkpoints = Checkpoints(run_dir, acc, cfg.keep_checkpoints)
    resume_from = checkpoints.latest() if cfg.resume else None
    prompts = read_prompts(cfg.prompts).records
    world, rank = acc.num_processes, acc.process_index
    torch.manual_seed(cfg.seed)

    # ---- models: policy (trained), reference (frozen SFT), value (trained), reward (frozen) ----
    policy_src = resume_from / "model" if resume_from else cfg.policy
    policy, tokenizer = load_trainable_lm(policy_src, cfg)
    # With LoRA the reference is the same weights with the adapters switched off: no second copy.
    if is_peft(policy) and cfg.reference:
        raise ValueError("--reference with LoRA: the reference is the policy with its adapters disabled")
    reference = None if is_peft(policy) else load_causal_lm(cfg.reference or cfg.policy)[0].eval().requires_grad_(False)
    rm = None
    if reward_fn is None:
        rm = load_reward_model(cfg.reward_model)[0].eval().requires_grad_(False)

    value_head, value_model = None, None
    if cfg.shared_value_head:
        value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(value_head.weight)
        nn.init.zeros_(value_head.bias)
        if resume_from is not None:
            from safetensors.torch import load_file

            value_head.load_state_dict(load_file(resume_from / "value_head.safetensors"))
    else:
        if resume_from is not None:
            value_rm = load_reward_model(resume_from / "value")[0]
        elif cfg.value_model or reward_fn is None:
            value_rm = load_reward_model(cfg.value_model or cfg.reward_model)[0]
        else:
            from rlhfkit.models.reward import reward_model_from_causal_lm

            value_rm = reward_model_from_causal_lm(cfg.policy)[0]
        value_model = ValueModel(value_rm)

    module = PolicyModule(policy, value_head, entropy_grad=cfg.entropy_coef > 0)
    ptx_rows = read_ptx(cfg.ptx_data, tokenizer, cfg.ptx_max_length) if cfg.ptx_data and cfg.ptx_coef > 0 else None

    n_prompts = cfg.rollout_batch // cfg.samples_per_prompt
    n_minibatches = math.ceil(cfg.rollout_batch / cfg.minibatch_size)
    total_updates = cfg.iterations * cfg.ppo_epochs * n_minibatches
    optimizer = make_optimizer(module.parameters(), cfg)
    scheduler = warmup_cosine(optimizer, total_updates, cfg.warmup_ratio, cfg.min_lr_ratio)
    if value_model is not None:
        value_opt = make_optimizer(value_model.parameters(), cfg, lr=cfg.value_lr)
        module, optimizer, value_model, value_opt = acc.prepare(module, optimizer, value_model, value_opt)
    else:
        value_opt = None
        module, optimizer = acc.prepare(module, optimizer)
    plain_policy: PolicyModule = acc.unwrap_model(module)
    plain_value: ValueModel | None = acc.unwrap_model(value_model) if value_model is not None else None
    for m in (reference, rm):
        if m is not None:
            m.to(acc.device)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    autocast = acc.mixed_precision == "bf16"

    iteration = 0
    if resume_from is not None:
        state, info = checkpoints.load_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if value_opt is not None:
            value_opt.load_state_dict(state["value_optimizer"])
        kl_ctl.load_state_dict(info["kl_controller"])
        iteration = info["iteration"]
        console.print(f"resumed from {resume_from} at iteration {iteration}")
    log = MetricsLog(run_dir, acc, resume_step=iteration)

    def write_models(folder: Path) -> None:
        # `folder` is <checkpoint>/model; the value model goes beside it in <checkpoint>/value.
        save_model(plain_policy.model, tokenizer, folder, merge_lora=False)
        if plain_value is not None:
            plain_value.rm[0].save(folder.parent / "value", tokenizer)
        if plain_policy.value_head is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in plain_policy.value_head.state_dict().items()},
                      folder.parent / "value_head.safetensors")

    def save(name: str = "") -> Path:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if value_opt is not None:
            state["value_optimizer"] = value_opt.state_dict()
        return checkpoints.save(name or f"step-{iteration}", write_models, state,
                                {"iteration": iteration, "kl_controller": kl_ctl.state_dict()},
                                update_latest=not name)

    def global_sum(x: torch.Tensor) -> torch.Tensor:
        return acc.reduce(x.detach().float(), "sum") if world > 1 else x.detach().float()

    history: list[dict] = []
    with make_progress(cfg.progress and acc.is_main_process) as progress:
        task = progress.add_task("ppo", total=cfg.iterations, completed=iteration, metrics="")
        while iteration < cfg.iterations:
            # ---- 1. rollout ----
            t0 = time.perf_counter()
            idx = step_items(len(prompts), n_prompts * world, cfg.seed, iteration)
            mine = [prompts[i] for i in idx[rank * n_prompts : (rank + 1) * n_prompts]]
            roll = sample(plain_policy.model, tokenizer, [p.prompt for p in mine], cfg.samples_per_prompt,
                          cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.rollout_batch, autocast,
                          cfg.max_prompt_length)
            batch = build_batch(roll, [prompt_text(p.prompt) for p in mine], acc.device)
            t_generate = time.perf_counter() - t0

            # ---- 2. score: old log-probs, reference log-probs, values, RM scores ----
            t0 = time.perf_counter()
            chunk, pad = max(8, cfg.minibatch_size), tokenizer.pad_token_id
            with torch.no_grad(), acc.autocast():
                fwd = in_chunks(plain_policy, batch, chunk, pad, cfg.temperature)
                old_logprobs = fwd["logprobs"]
                if reference is not None:
                    ref_logprobs = in_chunks(PolicyModule(reference), batch, chunk, pad, cfg.temperature)["logprobs"]
                else:
                    with plain_policy.model.disable_adapter():
                        ref_logprobs = in_chunks(plain_policy, batch, chunk, pad, cfg.temperature)["logprobs"]
                values = fwd["values"] if value_head is not None else in_chunks(plain_value, batch, chunk, pad)
                if reward_fn is not None:
                    scores = reward_fn(batch.prompts, batch.responses).to(acc.device).float()
                else:
                    scores = _scores_from_rm(rm, batch, tokenizer.pad_token_id)
            raw_scores = scores.clone()
            if cfg.missing_eos_penalty is not None:  # subtracted, not a fixed score: the RM's scale varies, and
                # a fixed score above what the RM gives cut-off responses would reward running out of tokens
                scores = scores - cfg.missing_eos_penalty * (~batch.ended).float()
            penalized = scores
            if cfg.samples_per_prompt > 1:  # what the policy can change is how a response compares with its siblings
                scores = leave_one_out(scores, batch.groups)
            old_logprobs, ref_logprobs, values = old_logprobs.float(), ref_logprobs.float(), values.float()
            mask = batch.mask

            # ---- 3-4. per-token rewards, GAE, advantages whitened over all processes ----
            rewards = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, kl_ctl.beta, cfg.kl_estimator)
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            n_tok = global_sum(mask.sum())
            adv_mean = global_sum((advantages * mask).sum()) / n_tok
            adv_var = global_sum((((advantages - adv_mean) * mask) ** 2).sum()) / n_tok
            advantages = whiten(advantages, mask, stats=(adv_mean, adv_var))
            t_score = time.perf_counter() - t0

            # ---- 5. PPO epochs over minibatches ----
            t0 = time.perf_counter()
            train_policy = iteration >= cfg.value_warmup_iterations
            stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl",
                                                              "entropy", "ptx_loss")}
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + iteration * 31 + rank)
            b = mask.shape[0]
            groups = by_prompt(batch)
            for epoch in range(cfg.ppo_epochs):
                # whole prompts in random order: a minibatch computes each prompt once for all its responses
                perm = torch.tensor([i for g in torch.randperm(len(groups), generator=gen).tolist() for i in groups[g]])
                for mb_i, start in enumerate(range(0, b, cfg.minibatch_size)):
                    mb = perm[start : start + cfg.minibatch_size].to(acc.device)
                    m = mask[mb]
                    # scale local token means so the global update is the mean over all processes' tokens
                    scale = m.sum() / (global_sum(m.sum()) / world).clamp(min=1)
                    ptx = None
                    if ptx_rows is not None and train_policy:
                        u = (iteration * cfg.ppo_epochs + epoch) * n_minibatches + mb_i
                        rows_idx = step_items(len(ptx_rows), cfg.ptx_batch_size * world, cfg.seed, u)
                        mine_idx = rows_idx[rank * cfg.ptx_batch_size : (rank + 1) * cfg.ptx_batch_size]
                        rows = [ptx_rows[r] for r in mine_idx]
                        all_rows = [ptx_rows[r] for r in rows_idx]
                        n_targets = sum(sum(t != IGNORE for t in e.labels) for row in all_rows for e in row)
                        pb = collate_packed(rows, tokenizer.pad_token_id).to(acc.device)
                        ptx = (pb.input_ids, pb.position_ids, shifted_targets(pb.labels), n_targets / world)
                    if train_policy or value_head is not None:  # during value warm-up only the values learn
                        with acc.autocast():
                            out = packed(module, batch, mb, pad, cfg.temperature, ptx)
                        new_logprobs = out["logprobs"].float()
                        pg_loss, clipfrac = ppo_policy_loss(new_logprobs, old_logprobs[mb], advantages[mb], m,
                                                            cfg.clip_eps)
                        entropy = masked_mean(out["entropy"].float(), m)
                        loss = (pg_loss - cfg.entropy_coef * entropy) * scale * float(train_policy)
                        if "values" in out:
                            vf_loss = ppo_value_loss(out["values"].float(), values[mb], returns[mb], m,
                                                     cfg.value_clip_eps)
                            loss = loss + cfg.vf_coef * vf_loss * scale
                        if "ptx" in out:
                            loss = loss + cfg.ptx_coef * out["ptx"]
                            stats["ptx_loss"].append(out["ptx"].item() * world)
                        check_finite(loss.item(), "the PPO loss", iteration + 1, checkpoints.latest())
                        acc.backward(loss)
                        acc.clip_grad_norm_(module.parameters(), cfg.max_grad_norm or float("inf"))
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        with torch.no_grad():
                            log_ratio = new_logprobs - old_logprobs[mb]
                            stats["approx_kl"].append(masked_mean(torch.expm1(log_ratio) - log_ratio, m).item())
                        stats["pg_loss"].append(pg_loss.item())
                        stats["clipfrac"].append(clipfrac.item())
                        stats["entropy"].append(entropy.item())

                    if value_model is not None:
                        with acc.autocast():
                            new_values = packed(value_model, batch, mb, pad).float()
                        vf_loss = ppo_value_loss(new_values, values[mb], returns[mb], m, cfg.value_clip_eps)
                        check_finite(vf_loss.item(), "the value loss", iteration + 1, checkpoints.latest())
                        acc.backward(vf_loss * scale)
                        acc.clip_grad_norm_(value_model.parameters(), cfg.max_grad_norm or float("inf"))
                        value_opt.step()
                        value_opt.zero_grad(set_to_none=True)
                    stats["vf_loss"].append(vf_loss.item())
            t_train = time.perf_counter() - t0

            # ---- 6. β, logs, checkpoints ----
            seq_kl = ((old_logprobs - ref_logprobs) * mask).sum(1)
            totals = global_sum(torch.stack([
                raw_scores.sum(), seq_kl.sum(), mask.sum(), (~batch.ended).float().sum(),
                torch.tensor(float(b), device=acc.device), penalized.sum(),
            ]))
            n = totals[4].item()
            mean_kl = totals[1].item() / n
            beta_used = kl_ctl.beta
            kl_ctl.update(mean_kl, int(n))
            ret_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
            resid_var = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
            iteration += 1
            metrics = {
                "score": totals[0].item() / n, "score_with_penalty": totals[5].item() / n, "kl": mean_kl,
                "beta": beta_used, "response_length": totals[2].item() / n, "no_eos": totals[3].item() / n,
                "explained_variance": (1 - resid_var / ret_var.clamp(min=1e-8)).item(),
                **{k: sum(v) / len(v) for k, v in stats.items() if v},
                "lr": scheduler.get_last_lr()[0], "seconds_generate": t_generate, "seconds_score": t_score,
                "seconds_train": t_train,
            }
            log.log(iteration, metrics)
            history.append(metrics)
            if acc.is_main_process and (iteration % cfg.samples_every == 0 or iteration == cfg.iterations):
                _write_samples(run_dir, iteration, batch, raw_scores, seq_kl)
            if (cfg.save_every and iteration % cfg.save_every == 0) or iteration == cfg.iterations:
                save()
            progress.update(task, completed=iteration, metrics=f"score {metrics['score']:.3f}  kl {mean_kl:.3f}  "
                            f"β {beta_used:.3f}  len {metrics['response_length']:.0f}")
            if on_iteration is not None:
                on_iteration(iteration, metrics)

    def write_export(folder: Path) -> None:
        save_model(plain_policy.model, tokenizer, folder, merge_lora=cfg.merge_lora)
        if plain_value is not None:
            plain_value.rm[0].save(folder.parent / "value", tokenizer)

    final = checkpoints.save("final", write_export, {}, {"iteration": iteration}, update_latest=False)
    if acc.is_main_process:
        publish_model(final / "model", run_dir)
        if (final / "value").exists():
            shutil.rmtree(run_dir / "value", ignore_errors=True)
            try:  # hard links, as publish_model does: no second copy of the weights
                shutil.copytree(final / "value", run_dir / ".value.tmp", copy_function=os.link)
            except OSError:
                shutil.rmtree(run_dir / ".value.tmp", ignore_errors=True)
                shutil.copytree(final / "value", run_dir / ".value.tmp")
            os.replace(run_dir / ".value.tmp", run_dir / "value")
    acc.wait_for_everyone()
    log.close()
    console.print(f"ppo: done, {iteration} iterations; policy in {run_dir}")
    return PPOResult(run_dir, iteration, history, plain_policy.model)


def _write_samples(run_dir: Path, iteration: int, batch: RolloutBatch, scores: torch.Tensor, kl: torch.Tensor) -> None:
    """A table of generations with their scores (JSONL: the text is model output, never rendered here)."""
    folder = run_dir / "samples"
    folder.mkdir(exist_ok=True)
    rows = [{"prompt": p, "response": r, "score": s, "kl": k, "ended": bool(e)} for p, r, s, k, e in zip(
        batch.prompts, batch.responses, scores.tolist(), kl.tolist(), batch.ended.tolist(), strict=True)]
    tmp = folder / f".iter-{iteration:05d}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    os.replace(tmp, folder / f"iter-{iteration:05d}.jsonl")
