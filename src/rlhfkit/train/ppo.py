"""Step 3: PPO-ptx against the reward model (InstructGPT, eq. 2):

    objective(φ) = E_(x,y)~π_RL [ r_θ(x,y) − β·log(π_RL(y|x) / π_SFT(y|x)) ] + γ·E_x~D_pretrain [ log π_RL(x) ]

One iteration is `PPO.step`, one step of the trainer core (`TrainLoop`), each part a public method:
  1. rollout     sample `samples_per_prompt` responses to each prompt from π_RL (the engine: rlhfkit's KV-cache
                 decoder, or vLLM on the GPU with its weights copied from π_RL each iteration)
  2. score       log-probs under π_RL (old) and π_SFT (reference), values, and the RM score r_θ(x,y) on the
                 last real response token, less `missing_eos_penalty` for a response cut off without EOS
  3. rewards     per token −β·KL_t, plus the score at the last token      -> losses.kl_penalized_rewards
                 taken against the prompt's other responses (several a prompt) -> losses.leave_one_out
                 (kl.where loss: no KL in the reward; β·KL_t joins the policy loss in step 5 -> losses.kl_loss)
  4. advantages  GAE (whitened over the whole batch, all processes) and returns  -> losses.gae
                 (critic-free, advantage rloo|grpo: no values, each token's advantage the rest of its
                 response's reward; grpo scales each prompt's scores by their std -> losses.group_normalized,
                 and is not whitened again)
  5. update      `ppo_epochs` passes of minibatches: clipped policy loss − entropy bonus + γ_ptx · NLL of
                 pretraining text in the same loss and optimiser step (`policy_loss`); clipped value loss for
                 the value model (`value_loss`)
  6. β           the adaptive controller moves β toward kl.adaptive.target (if set)
The math is in rlhfkit/losses.py; this file moves tensors between models.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhfkit.config import PPOConfig, SharedValueHead
from rlhfkit.console import console
from rlhfkit.data import (
    IGNORE,
    Example,
    Group,
    PackedGroups,
    collate_packed,
    encode_demonstrations,
    pack,
    pack_groups,
    prompt_text,
    read_demonstrations,
    read_prompts,
    shifted_targets,
)
from rlhfkit.errors import UsageError
from rlhfkit.losses import (
    AdaptiveKLController,
    gae,
    group_normalized,
    kl_loss,
    kl_penalized_rewards,
    leave_one_out,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    ptx_loss,
    whiten,
)
from rlhfkit.models import is_peft, load_causal_lm, save_model
from rlhfkit.models.lm import response_logprobs, scored_logits
from rlhfkit.models.reward import RewardModel, load_reward_model, reward_model_from_causal_lm, score_groups
from rlhfkit.rollout import DecoderEngine, Rollout, RolloutEngine, SamplingParams, require_vllm
from rlhfkit.sampling import vllm_engine
from rlhfkit.train.common import Hooks, Launch, Optimised, Trainer, TrainLoop, load_trainable_lm, step_items

RewardFn = Callable[[list[str], list[str]], torch.Tensor]  # (prompts, responses) -> scores


class PolicyModule(nn.Module):
    """The trained policy behind one forward (DDP hooks one forward per backward): log-probs and entropy of
    the response tokens of packed rollouts, values when the value head shares the backbone, and the ptx
    loss when given pretraining rows. Outputs are flat, one entry per response token."""

    def __init__(self, model: nn.Module, value_head: nn.Linear | None = None, entropy_grad: bool = False):
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.entropy_grad = entropy_grad  # without an entropy bonus it is only logged: no graph over the vocabulary

    def forward(self, packed: PackedGroups, temperature: float, ptx: tuple | None = None) -> dict:
        out = response_logprobs(self.model, packed, temperature, self.entropy_grad)
        result = {"logprobs": out.logprobs, "entropy": out.entropy}
        if self.value_head is not None:
            result["values"] = self.value_head(out.states.to(self.value_head.weight.dtype)).squeeze(-1)
        if ptx is not None:
            input_ids, position_ids, targets, normalizer = ptx
            result["ptx"] = ptx_loss(*scored_logits(self.model, input_ids, position_ids, targets), normalizer)
        return result


class ValueModel(nn.Module):
    """V(s_t) for every response token of packed rollouts: a reward model's backbone and head read at the state
    before each token (the state the policy predicts it from). Saved in the reward-model format."""

    def __init__(self, rm: RewardModel):
        super().__init__()
        self.rm = rm

    def forward(self, packed: PackedGroups) -> torch.Tensor:
        hidden = self.rm.backbone(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                  attention_mask=packed.attention_mask, use_cache=False).last_hidden_state
        states = hidden[packed.reads[:, 0], packed.reads[:, 1]]
        return self.rm.head(states.to(self.rm.head.weight.dtype)).squeeze(-1)


@dataclass
class Rollouts:
    """One iteration's samples. Per-token tensors are (B, T), T the longest response, zero past each end."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # as sampled: EOS included when the response ended
    mask: torch.Tensor  # (B, T) float: real response tokens
    prompts: list[str]
    responses: list[str]
    ended: torch.Tensor  # (B,) bool
    prompt_of: torch.Tensor  # (B,) long: which of the iteration's prompts each response answers

    def by_prompt(self, idx: list[int] | None = None) -> list[list[int]]:
        """Indices (all, or `idx`) grouped by the prompt they answer, in order of first appearance."""
        members: dict[int, list[int]] = {}
        prompt_of = self.prompt_of.tolist()
        for i in range(len(self.prompt_ids)) if idx is None else idx:
            members.setdefault(prompt_of[i], []).append(i)
        return list(members.values())

    def pack(self, idx: list[int], pad_id: int) -> tuple[PackedGroups, list[int]]:
        """Rollouts `idx` packed end to end, those answering one prompt after a single copy of it (a 65-token
        prompt and four 20-token responses cost 145 tokens, not 340), and the rollout each packed response is."""
        members = self.by_prompt(idx)
        groups = [Group(self.prompt_ids[m[0]], [self.response_ids[i] for i in m]) for m in members]
        return pack_groups(groups, pad_id), [i for m in members for i in m]

    def per_token(self, flat: torch.Tensor, packed: PackedGroups, order: list[int], rows: list[int]) -> torch.Tensor:
        """Flat per-token values of a packed forward scattered into (len(rows), T), row r for rollout rows[r]."""
        row_of = {i: r for r, i in enumerate(rows)}
        which = torch.tensor([row_of[i] for i in order], device=flat.device)[packed.slots[:, 0]]
        out = flat.new_zeros((len(rows), self.mask.shape[1]))
        return out.index_put((which, packed.slots[:, 1]), flat)

    def chunks(self, size: int) -> list[list[int]]:
        """All rollouts in chunks of about `size`, of similar length, a prompt's rollouts in the same chunk."""
        lengths = [len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids, strict=True)]
        chunks: list[list[int]] = [[]]
        for members in sorted(self.by_prompt(), key=lambda m: sum(lengths[i] for i in m)):
            if chunks[-1] and len(chunks[-1]) + len(members) > size:
                chunks.append([])
            chunks[-1] += members
        return chunks


def forward_rollouts(fn: Callable, batch: Rollouts, idx: list[int], pad_id: int, *args) -> dict | torch.Tensor:
    """`fn(packed, *args)` on rollouts `idx`; per-token outputs come back as (len(idx), T) like `batch.mask`."""
    packed, order = batch.pack(idx, pad_id)
    packed = packed.to(batch.mask.device)
    out = fn(packed, *args)

    def unflatten(x):
        return batch.per_token(x, packed, order, idx) if x.dim() == 1 and len(x) == len(packed.targets) else x

    return {k: unflatten(v) for k, v in out.items()} if isinstance(out, dict) else unflatten(out)


def score_rollouts(fn: Callable, batch: Rollouts, size: int, pad_id: int, *args) -> dict | torch.Tensor:
    """`forward_rollouts` over every rollout, in chunks of about `size` (scoring: no gradients)."""
    parts = [(idx, forward_rollouts(fn, batch, idx, pad_id, *args)) for idx in batch.chunks(size)]

    def scatter(pieces):
        out = pieces[0][1].new_zeros((len(batch.prompt_ids), *pieces[0][1].shape[1:]))
        for idx, p in pieces:
            out[torch.tensor(idx, device=out.device)] = p
        return out

    if isinstance(parts[0][1], dict):
        return {k: scatter([(idx, p[k]) for idx, p in parts]) for k in parts[0][1]}
    return scatter(parts)


def rm_scores(rm: RewardModel, batch: Rollouts, pad_id: int) -> torch.Tensor:
    """RM scores (B,) of the rollouts, the responses to one prompt after one copy of it."""
    members = batch.by_prompt()
    groups = [Group(batch.prompt_ids[m[0]], [batch.response_ids[i] for i in m]) for m in members]
    rewards = score_groups(rm, groups, pad_id).float()
    order = torch.tensor([i for m in members for i in m], device=rewards.device)
    return torch.empty_like(rewards).index_copy_(0, order, rewards)


def build_batch(roll: Rollout, prompts_text: list[str], device) -> Rollouts:
    """`prompts_text` in the order the prompts were given; the rollout comes back in its own order (sorted by
    length), so each response is paired with its prompt through `roll.prompt_index`."""
    t = max(1, max(map(len, roll.response_ids)))
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (t - len(r)) for r in roll.response_ids])
    return Rollouts([list(p) for p in roll.prompt_ids], [list(r) for r in roll.response_ids], mask.to(device),
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
        raise UsageError(f"{path}: no pretraining text")
    return [[examples[i] for i in row] for row in pack(examples, row_length)]


# ---- the models ------------------------------------------------------------------------------------

@dataclass
class PPOModels:
    policy: Optimised  # PolicyModule: the policy, and the value head where it shares the backbone
    value: Optimised | None  # a separate ValueModel, else None
    reference: PolicyModule | None  # frozen π_SFT; None: the policy with its LoRA adapters switched off
    reward: RewardModel | None  # frozen RM; None where a reward function scores
    # (under FSDP both frozen models are sharded: `TrainLoop.frozen`)
    tokenizer: object
    ptx_rows: list[list[Example]] | None  # pretraining rows for the γ term
    plain_policy: PolicyModule  # the trained modules without their data-parallel wrappers
    plain_value: ValueModel | None
    engine: RolloutEngine  # rlhfkit's own decoder on the policy, or vLLM (engine: vllm)


def load_models(cfg: PPOConfig, loop: TrainLoop, use_rm: bool, total_updates: int) -> PPOModels:
    """Policy (trained), reference (frozen SFT), value (trained: a head on the policy or a model of its own),
    reward (frozen), each from the checkpoint being resumed where it has one."""
    resume = loop.resume_from
    policy, tokenizer = load_trainable_lm(resume / "model" if resume else cfg.policy, cfg)
    # With LoRA the reference is the same weights with the adapters switched off: no second copy.
    if is_peft(policy) and cfg.reference:
        raise UsageError("--reference with LoRA: the reference is the policy with its adapters disabled")
    frozen = frozen_dtype(cfg.frozen_dtype, loop.acc.mixed_precision)
    reference = None if is_peft(policy) else loop.frozen(
        PolicyModule(load_causal_lm(cfg.reference or cfg.policy, frozen)[0]), cfg.offload_frozen)
    rm = loop.frozen(load_reward_model(cfg.reward_model, frozen)[0], cfg.offload_frozen) if use_rm else None

    value_head, value_model = make_critic(cfg, policy.config.hidden_size, resume, use_rm)
    module = PolicyModule(policy, value_head, entropy_grad=cfg.entropy_coef > 0)
    ptx_rows = read_ptx(cfg.ptx.data, tokenizer, cfg.ptx.max_length) if cfg.ptx else None
    policy_part = loop.prepare("policy", module, total_steps=total_updates)
    value_part = loop.prepare("value", value_model, lr=cfg.critic.lr) if value_model is not None else None
    unwrap = loop.acc.unwrap_model
    plain_policy = unwrap(policy_part.module)
    if cfg.engine.kind == "vllm":
        engine = vllm_engine(cfg.policy, tokenizer, cfg.seed, cfg.engine.gpu_memory_utilization,
                             cfg.max_prompt_length + cfg.max_new_tokens, loop.rank, loop.acc.local_process_index,
                             loop.world)
    else:
        engine = DecoderEngine(plain_policy.model, tokenizer, cfg.rollout_batch,
                               autocast=loop.acc.mixed_precision == "bf16")
    return PPOModels(policy_part, value_part, reference, rm, tokenizer, ptx_rows, plain_policy,
                     unwrap(value_part.module) if value_part is not None else None, engine)


def frozen_dtype(choice: str, mixed_precision: str) -> torch.dtype:
    """The frozen models' weight dtype for --frozen-dtype, given the policy's mixed precision."""
    if choice == "auto":
        choice = {"bf16": "bf16", "fp16": "fp16"}.get(mixed_precision, "fp32")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]


@contextmanager
def on_device(model: nn.Module | None, device: torch.device, offloaded: bool):
    """`model` on `device` for the block: an offloaded frozen model comes in from CPU memory and goes back."""
    if model is not None and offloaded:
        model.to(device)
    try:
        yield model
    finally:
        if model is not None and offloaded:
            model.to("cpu")


def make_critic(cfg: PPOConfig, hidden_size: int, resume: Path | None, use_rm: bool
                ) -> tuple[nn.Linear | None, ValueModel | None]:
    """(a value head on the policy's backbone, a value model of its own): one of them for GAE, neither for the
    critic-free advantages (no value forward, no value optimiser)."""
    if cfg.critic is None:
        return None, None
    if isinstance(cfg.critic, SharedValueHead):
        head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        if resume is not None:
            from safetensors.torch import load_file

            head.load_state_dict(load_file(resume / "value_head.safetensors"))
        return head, None
    if resume is not None:
        return None, ValueModel(load_reward_model(resume / "value")[0])
    if cfg.critic.init or use_rm:
        return None, ValueModel(load_reward_model(cfg.critic.init or cfg.reward_model)[0])
    return None, ValueModel(reward_model_from_causal_lm(cfg.policy)[0])


def write_models(models: PPOModels, loop: TrainLoop, folder: Path, export: bool, merge_lora: bool) -> None:
    """The policy in model/, a separate value model in value/ (RM format); a checkpoint (not `export`) also keeps a
    shared value head beside them, for resuming. Under FSDP the weights are those `loop` gathered from the shards."""
    policy, value = models.plain_policy, models.plain_value
    save_model(policy.model, models.tokenizer, folder / "model", merge_lora=merge_lora and export,
               state_dict=loop.weights("policy", "model."))
    if value is not None:
        value.rm.save(folder / "value", models.tokenizer, loop.weights("value", "rm."))
    if policy.value_head is not None and not export:
        from safetensors.torch import save_file

        head = loop.weights("policy", "value_head.") or policy.value_head.state_dict()
        save_file({k: v.detach().contiguous() for k, v in head.items()}, folder / "value_head.safetensors")


# ---- one iteration ---------------------------------------------------------------------------------

@dataclass
class Scored:
    """Step 2's output: the rollouts with the policy's (old) and the reference's log-probs, the values, and the
    scores. Per-token tensors are (B, T) like `rollouts.mask`."""

    rollouts: Rollouts
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor  # zeros without a critic
    scores: torch.Tensor  # (B,) the reward model's (or reward function's) score, as given
    penalized_scores: torch.Tensor  # (B,) less the missing-EOS penalty


@dataclass
class Experience(Scored):
    """A scored rollout batch with its advantages, ready for the update (step 5)."""

    advantages: torch.Tensor  # whitened over all processes (gae, rloo)
    returns: torch.Tensor
    beta: float  # the KL coefficient this batch was made with (in its rewards, or for the loss: kl.where)
    seconds_generate: float = 0.0
    seconds_score: float = 0.0


class PPO(Trainer):
    """PPO-ptx on one run's models, a `Trainer` (train/common.py). `step(iteration)` is one iteration, and reads
    top to bottom as the module docstring; each of its parts is a public method that a test or benchmark can call
    on a batch of its own. `PPO.build(cfg)` loads the models (or a resumed run's) into a `TrainLoop`; `train()`
    runs the iterations left."""

    name = "ppo"

    def __init__(self, cfg: PPOConfig, loop: TrainLoop, models: PPOModels, prompts: list,
                 reward_fn: RewardFn | None = None, hooks: Hooks | None = None):
        self.cfg, self.loop, self.models, self.prompts, self.reward_fn = cfg, loop, models, prompts, reward_fn
        self.hooks = hooks or Hooks()
        self.total_steps = cfg.iterations
        adaptive = cfg.kl.adaptive
        self.kl_controller = AdaptiveKLController(cfg.kl.coef, adaptive and adaptive.target,
                                                  adaptive.horizon if adaptive else 1)
        self.last_experience: Experience | None = None  # the latest iteration's (its samples are written out)

    @classmethod
    def build(cls, cfg: PPOConfig, reward_fn: RewardFn | None = None, hooks: Hooks | None = None,
              launch: Launch | None = None) -> PPO:
        """Steps 1-4: the run's folder, models and optimisers, from the checkpoint being resumed where there is one
        (its KL controller too). The data is read first: a bad line stops the run before anything is written.

        `reward_fn(prompts, responses) -> scores` replaces the reward model where the reward is a program (e.g. a
        verifiable constraint); the value model then starts from the policy. `hooks.evaluate(policy, tokenizer) ->
        metrics` runs every `hooks.eval_every` iterations and after the last; its metrics are logged with the
        iteration's (name them eval_*). `hooks.on_step(iteration, metrics)` follows every iteration."""
        hooks = (hooks or Hooks()).only("ppo", "evaluate")
        if cfg.engine.kind == "vllm":
            require_vllm()
        if cfg.prompts is None:
            raise UsageError("no prompts: pass --prompts FILE")
        prompts = read_prompts(cfg.prompts).records
        if cfg.ptx and not cfg.ptx.data.endswith(".txt"):
            read_demonstrations(cfg.ptx.data)  # a bad line stops the run here, before its folder is made
        loop = TrainLoop(cfg, "ppo", launch)
        torch.manual_seed(cfg.seed)
        total_updates = cfg.iterations * cfg.ppo_epochs * math.ceil(cfg.rollout_batch / cfg.minibatch_size)
        ppo = cls(cfg, loop, load_models(cfg, loop, reward_fn is None, total_updates), prompts, reward_fn, hooks)
        loop.start(ppo)
        return ppo

    def checkpoint(self, folder: Path) -> None:
        write_models(self.models, self.loop, folder, False, self.cfg.merge_lora)

    def export(self, folder: Path) -> None:
        write_models(self.models, self.loop, folder, True, self.cfg.merge_lora)

    def state(self) -> dict:
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_state(self, info: dict) -> None:
        self.kl_controller.load_state_dict(info["kl_controller"])

    def prompts_for(self, iteration: int) -> list:
        """This process's prompts of `iteration`: a fresh permutation of the prompt file each epoch."""
        n = self.cfg.rollout_batch // self.cfg.samples_per_prompt
        idx = step_items(len(self.prompts), n * self.loop.world, self.cfg.seed, iteration)
        return [self.prompts[i] for i in idx[self.loop.rank * n : (self.loop.rank + 1) * n]]

    def step(self, iteration: int, prompts: list | None = None) -> dict:
        """One iteration on this process's `prompts` (by default its share of the iteration's, `prompts_for`); its
        metrics, means over all processes. Every --samples-every iterations its samples go to samples/."""
        prompts = self.prompts_for(iteration) if prompts is None else prompts
        exp = self.last_experience = self.experience(prompts)                # 1-4. rollout, score, rewards, advantages
        t0 = time.perf_counter()
        stats = self.update(exp, iteration)                                  # 5. update
        metrics = self.metrics(exp, stats)
        self.kl_controller.update(metrics["kl"], int(metrics.pop("rollouts")))  # 6. the KL controller moves β
        if self.loop.acc.is_main_process and ((iteration + 1) % self.cfg.samples_every == 0
                                              or iteration + 1 == self.cfg.iterations):
            write_samples(self.loop.run_dir, iteration + 1, exp)
        return metrics | {"lr": self.models.policy.scheduler.get_last_lr()[0],
                          "seconds_train": time.perf_counter() - t0}

    def evaluate(self) -> dict | None:
        """The caller's `hooks.evaluate` on the current policy (None without one)."""
        if self.hooks.evaluate is None:
            return None
        loop, models = self.loop, self.models
        policy = models.plain_policy.model
        policy.eval()
        # the hook may sample and seed as it likes: training's random stream goes on as if it had not run
        with torch.no_grad(), torch.random.fork_rng(devices=[loop.device] if loop.device.type == "cuda" else []), \
                loop.gathered(models.plain_policy):
            metrics = self.hooks.evaluate(policy, models.tokenizer)
        policy.train()
        return metrics

    def describe(self, m: dict) -> str:
        return f"score {m['score']:.3f}  kl {m['kl']:.3f}  β {m['beta']:.3f}  len {m['response_length']:.0f}"

    def train(self) -> PPOResult:
        """Steps 5-6: every iteration left, then the published policy."""
        self.models.plain_policy.train()
        self.fit(self.hooks.on_step, eval_every=self.hooks.eval_every)
        console.print(f"ppo: done, {self.loop.step} iterations; policy in {self.loop.run_dir}")
        return PPOResult(self.loop.run_dir, self.loop.step, self.loop.history, self.models.plain_policy.model)

    def experience(self, prompts: list) -> Experience:
        """Steps 1-4 on `prompts` with the current β: the batch the update learns from."""
        beta = self.kl_controller.beta
        with self.loop.gathered(self.models.plain_policy, self.models.plain_value):  # FSDP: whole, once
            t0 = time.perf_counter()
            batch = self.rollout(prompts)                                               # 1. rollout
            t1 = time.perf_counter()
            scored = self.score(batch)                                                  # 2. score
        rewards = self.rewards(scored, beta)                                            # 3. KL-penalised rewards
        advantages, returns = self.advantages(rewards, scored.values, batch.mask)       # 4. advantages
        return Experience(**vars(scored), advantages=advantages, returns=returns, beta=beta,
                          seconds_generate=t1 - t0, seconds_score=time.perf_counter() - t1)

    # ---- steps 1-4 ----

    def rollout(self, prompts: list) -> Rollouts:
        """Step 1: `samples_per_prompt` responses to each prompt from the policy's current weights (copied into
        the engine first where it keeps its own, as vLLM does; the log-probs PPO uses are the trainer's own)."""
        cfg, models = self.cfg, self.models
        models.engine.load_weights(models.plain_policy.model)
        params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.max_prompt_length)
        roll = models.engine.sample([p.prompt for p in prompts], cfg.samples_per_prompt, params)
        return build_batch(roll, [prompt_text(p.prompt) for p in prompts], self.loop.device)

    @torch.no_grad()
    def score(self, batch: Rollouts) -> Scored:
        """Step 2: the policy's (old) and the reference's log-probs, the values, and the scores of the rollouts
        (less the missing-EOS penalty). Sharded frozen models (FSDP) need each process to run as many forwards:
        every process holds as many prompts with as many responses each, so `Rollouts.chunks` cuts each batch
        into as many chunks, and the RM takes one."""
        cfg, loop, models = self.cfg, self.loop, self.models
        policy, pad, chunk = models.plain_policy, models.tokenizer.pad_token_id, max(8, cfg.minibatch_size)
        with loop.acc.autocast():
            fwd = score_rollouts(policy, batch, chunk, pad, cfg.temperature)
            if models.reference is not None:
                with on_device(models.reference, loop.device, cfg.offload_frozen) as reference:
                    ref = score_rollouts(reference, batch, chunk, pad, cfg.temperature)
            else:
                with policy.model.disable_adapter():
                    ref = score_rollouts(policy, batch, chunk, pad, cfg.temperature)
            if models.value is not None:
                values = score_rollouts(models.plain_value, batch, chunk, pad)
            else:  # the shared head's, or none (critic-free)
                values = fwd.get("values", torch.zeros_like(fwd["logprobs"]))
            if self.reward_fn is not None:
                scores = self.reward_fn(batch.prompts, batch.responses).to(loop.device).float()
            else:
                with on_device(models.reward, loop.device, cfg.offload_frozen) as rm:
                    scores = rm_scores(rm, batch, pad)
        penalized = scores
        if cfg.missing_eos_penalty is not None:  # subtracted, not a fixed score: the RM's scale varies, and a fixed
            # score above what the RM gives cut-off responses would reward running out of tokens
            penalized = scores - cfg.missing_eos_penalty * (~batch.ended).float()
        return Scored(batch, fwd["logprobs"].float(), ref["logprobs"].float(), values.float(), scores, penalized)

    def rewards(self, scored: Scored, beta: float) -> torch.Tensor:
        """Step 3: per-token rewards, −β·KL_t plus the score (taken against the prompt's other responses) at the
        last token; with kl.where loss, no KL here (the update adds it to the loss)."""
        cfg, batch = self.cfg, scored.rollouts
        baselined = scored.penalized_scores
        if cfg.advantage.kind == "grpo":
            baselined = group_normalized(baselined, batch.prompt_of)
        elif cfg.samples_per_prompt > 1:  # what the policy can change is how a response compares with its siblings
            baselined = leave_one_out(baselined, batch.prompt_of)
        in_reward = beta if cfg.kl.where == "reward" else 0.0
        return kl_penalized_rewards(baselined, scored.old_logprobs, scored.ref_logprobs, batch.mask, in_reward,
                                    cfg.kl.estimator)

    def advantages(self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: (advantages, returns); see `advantages_and_returns`."""
        return advantages_and_returns(self.cfg, rewards, values, mask, self.loop.all_sum)

    # ---- step 5 ----

    def update(self, exp: Experience, iteration: int) -> dict:
        """Step 5: `ppo_epochs` passes over minibatches of whole prompts' rollouts, an optimiser step each (and
        one of the value model). During the critic's warm-up only the critic learns. Returns the mean of each
        statistic over the minibatches."""
        cfg, loop, models = self.cfg, self.loop, self.models
        batch, pad = exp.rollouts, models.tokenizer.pad_token_id
        train_policy = cfg.critic is None or iteration >= cfg.critic.warmup_iterations
        n_minibatches = math.ceil(cfg.rollout_batch / cfg.minibatch_size)
        stats: dict[str, list[float]] = {}
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + iteration * 31 + loop.rank)
        groups = batch.by_prompt()
        for epoch in range(cfg.ppo_epochs):
            # whole prompts in random order: a minibatch computes each prompt once for all its responses
            perm = [i for g in torch.randperm(len(groups), generator=gen).tolist() for i in groups[g]]
            for mb_i, start in enumerate(range(0, len(perm), cfg.minibatch_size)):
                mb = perm[start : start + cfg.minibatch_size]
                if train_policy or models.value is None:  # (a shared head learns in the policy's step)
                    ptx = None
                    if models.ptx_rows is not None and train_policy:
                        update = (iteration * cfg.ppo_epochs + epoch) * n_minibatches + mb_i
                        ptx = ptx_batch(cfg, loop, models.ptx_rows, pad, update)
                    loss, parts = self.policy_loss(exp, mb, ptx, train_policy)
                    loop.acc.backward(loss)
                    loop.optimizer_step(models.policy, loss.item(), "the PPO loss")
                    _append(stats, parts)
                if models.value is not None:
                    vf_loss = self.value_loss(exp, mb)
                    loop.acc.backward(vf_loss * self.token_share(exp, mb))
                    loop.optimizer_step(models.value, vf_loss.item(), "the value loss")
                    _append(stats, {"vf_loss": vf_loss.item()})
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def token_share(self, exp: Experience, mb: list[int]) -> torch.Tensor:
        """This process's tokens in minibatch `mb` over the mean over processes: local token means scaled by it
        make the update the mean over all processes' tokens."""
        m = exp.rollouts.mask[mb]
        return m.sum() / (self.loop.all_sum(m.sum()) / self.loop.world).clamp(min=1)

    def policy_loss(self, exp: Experience, mb: list[int], ptx: tuple | None = None, train_policy: bool = True
                    ) -> tuple[torch.Tensor, dict]:
        """The loss of one policy step on minibatch `mb` (with its graph, not yet backpropagated): the clipped
        policy loss − the entropy bonus (+ β·KL with kl.where loss), the shared head's value loss, and γ_ptx ·
        the NLL of pretraining rows `ptx`; and its parts as numbers. Without `train_policy` (the critic's warm-up)
        only the shared head's value loss."""
        cfg, m, scale = self.cfg, exp.rollouts.mask[mb], self.token_share(exp, mb)
        with self.loop.acc.autocast():
            out = forward_rollouts(self.models.policy.module, exp.rollouts, mb, self.models.tokenizer.pad_token_id,
                                   cfg.temperature, ptx)
        new_logprobs = out["logprobs"].float()
        pg_loss, clipfrac = ppo_policy_loss(new_logprobs, exp.old_logprobs[mb], exp.advantages[mb], m, cfg.clip_eps)
        entropy = masked_mean(out["entropy"].float(), m)
        objective = pg_loss - cfg.entropy_coef * entropy
        with torch.no_grad():
            log_ratio = new_logprobs - exp.old_logprobs[mb]
        parts = {"pg_loss": pg_loss.item(), "clipfrac": clipfrac.item(), "entropy": entropy.item(),
                 "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, m).item()}
        if cfg.kl.where == "loss":
            kl = kl_loss(new_logprobs, exp.ref_logprobs[mb], m, cfg.kl.estimator)
            objective = objective + exp.beta * kl
            parts["kl_loss"] = kl.item()
        loss = objective * scale if train_policy else torch.zeros((), device=scale.device)
        if "values" in out:
            vf_loss = ppo_value_loss(out["values"].float(), exp.values[mb], exp.returns[mb], m, cfg.critic.clip_eps)
            loss = loss + cfg.critic.coef * vf_loss * scale
            parts["vf_loss"] = vf_loss.item()
        if "ptx" in out:
            loss = loss + cfg.ptx.coef * out["ptx"]
            parts["ptx_loss"] = out["ptx"].item() * self.loop.world
        return loss, parts

    def value_loss(self, exp: Experience, mb: list[int]) -> torch.Tensor:
        """The value model's clipped loss on minibatch `mb` (with its graph; this process's token mean)."""
        with self.loop.acc.autocast():
            values = forward_rollouts(self.models.value.module, exp.rollouts, mb,
                                      self.models.tokenizer.pad_token_id).float()
        return ppo_value_loss(values, exp.values[mb], exp.returns[mb], exp.rollouts.mask[mb], self.cfg.critic.clip_eps)

    # ---- the logs ----

    def metrics(self, exp: Experience, stats: dict) -> dict:
        """Means over all processes' rollouts (and `rollouts`, their number), β as used, the update's statistics."""
        batch, mask = exp.rollouts, exp.rollouts.mask
        sums = self.loop.sum_over_processes({
            "score": exp.scores.sum(), "score_with_penalty": exp.penalized_scores.sum(),
            "kl": ((exp.old_logprobs - exp.ref_logprobs) * mask).sum(), "response_length": mask.sum(),
            "no_eos": (~batch.ended).float().sum(), "rollouts": float(len(batch.prompt_ids)),
        })
        n = sums["rollouts"]
        metrics = {**{k: v / n for k, v in sums.items() if k != "rollouts"}, "rollouts": n, "beta": exp.beta,
                   **stats, "seconds_generate": exp.seconds_generate, "seconds_score": exp.seconds_score}
        if "vf_loss" in stats:  # how much of the returns the value estimate explains (none without a critic)
            returns, values = exp.returns, exp.values
            ret_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
            resid_var = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
            metrics["explained_variance"] = (1 - resid_var / ret_var.clamp(min=1e-8)).item()
        return metrics


def _append(stats: dict[str, list[float]], parts: dict[str, float]) -> None:
    for k, v in parts.items():
        stats.setdefault(k, []).append(v)


def advantages_and_returns(cfg: PPOConfig, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                           all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 4: GAE, or for the critic-free options the rest of the response's reward (values 0, λ = 1); gae and
    rloo advantages whitened over the whole batch (`all_sum` adds over processes). GRPO's are not: its scores are
    already normalised within each prompt's group, and whitening again would shift every response of a prompt
    whose samples all scored alike (advantage 0: nothing to learn) by the batch's token-weighted mean, a push
    that depends only on length, and scale the rest by a std that those zeros shrink (TRL and the GRPO paper do
    not whiten either)."""
    gamma, lam = (cfg.advantage.gamma, cfg.advantage.lam) if cfg.advantage.kind == "gae" else (1.0, 1.0)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if cfg.advantage.kind != "grpo":
        n_tok = all_sum(mask.sum())
        mean = all_sum((advantages * mask).sum()) / n_tok
        var = all_sum((((advantages - mean) * mask) ** 2).sum()) / n_tok
        advantages = whiten(advantages, mask, stats=(mean, var))
    return advantages, returns


def ptx_batch(cfg: PPOConfig, loop: TrainLoop, rows: list[list[Example]], pad_id: int, update: int) -> tuple:
    """This process's pretraining rows for the `update`-th minibatch, and the normaliser that makes the ptx
    term the token mean over all processes' rows."""
    size = cfg.ptx.batch_size
    rows_idx = step_items(len(rows), size * loop.world, cfg.seed, update)
    mine = rows_idx[loop.rank * size : (loop.rank + 1) * size]
    n_targets = sum(sum(t != IGNORE for t in e.labels) for r in rows_idx for e in rows[r])
    pb = collate_packed([rows[r] for r in mine], pad_id).to(loop.device)
    return pb.input_ids, pb.position_ids, shifted_targets(pb.labels), n_targets / loop.world


# ---- the run ---------------------------------------------------------------------------------------

@dataclass
class PPOResult:
    output_dir: Path
    iterations: int
    history: list[dict]
    policy: nn.Module


def train_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None, hooks: Hooks | None = None,
              launch: Launch | None = None) -> PPOResult:
    """PPO-ptx as configured (reward_fn, hooks: `PPO.build`)."""
    return PPO.build(cfg, reward_fn, hooks, launch).train()


def write_samples(run_dir: Path, iteration: int, exp: Experience) -> None:
    """A table of generations with their scores (JSONL: the text is model output, never rendered here)."""
    folder = run_dir / "samples"
    folder.mkdir(exist_ok=True)
    batch = exp.rollouts
    kl = ((exp.old_logprobs - exp.ref_logprobs) * batch.mask).sum(1)
    rows = [{"prompt": p, "response": r, "score": s, "kl": k, "ended": bool(e)} for p, r, s, k, e in zip(
        batch.prompts, batch.responses, exp.scores.tolist(), kl.tolist(), batch.ended.tolist(), strict=True)]
    tmp = folder / f".iter-{iteration:05d}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    os.replace(tmp, folder / f"iter-{iteration:05d}.jsonl")
