"""Stage configs: pydantic models, loadable from YAML, overridable from the command line.

Each field's description is its `--help` text: cli.py turns every field into a flag
(`max_length` -> `--max-length`), so a config file and the flags always name the same things.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Dtype = Literal["auto", "bf16", "fp16", "fp32"]


C = TypeVar("C", bound="StageConfig")


class ConfigError(ValueError):
    pass


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


TRACKERS = ("tensorboard", "wandb", "mlflow", "none")


class RolloutEngineConfig(BaseModel):
    """Who samples responses (`sample`, `generate`, `ppo`)."""

    rollout_engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf = rlhfkit's own decoder (KV cache; any device); vllm = vLLM in this process on its "
        "GPU (CUDA only; pip install 'rlhfkit[vllm]'), PPO copying the policy's weights in every iteration.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="With --rollout-engine vllm: the share "
                                               "of the GPU's memory vLLM takes (its weights and KV cache).")


class TrainConfig(StageConfig):
    """What every trainer shares: optimiser, schedule, precision, checkpoints, logs. (Each stage names its own
    output_dir.)"""

    seed: int = Field(0, description="Seed for data order, splits and initialisation.")
    dtype: Dtype = Field("auto", description="Compute precision: auto = bf16 autocast where the hardware "
                         "supports it, else fp32. Master weights stay fp32.")
    lr: float = Field(2e-5, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, description="AdamW beta2.")
    warmup_ratio: float = Field(0.05, description="Share of steps spent warming the learning rate up linearly.")
    min_lr_ratio: float = Field(0.1, description="The cosine schedule decays to lr * min_lr_ratio.")
    max_grad_norm: float = Field(1.0, description="Clip the global gradient norm to this (0 = no clipping).")
    save_every: int = Field(50, ge=0, description="Write a checkpoint every N steps or PPO iterations "
                            "(0 = only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent step checkpoints to keep.")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    resume: bool = Field(False, description="Continue from the latest checkpoint in --output-dir.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 trains all weights.")
    lora_alpha: int = Field(16, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, description="Dropout on the LoRA path.")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names LoRA adapts, e.g. q_proj v_proj; all-linear adapts every linear layer.",
    )
    merge_lora: bool = Field(True, description="Merge LoRA adapters into the weights of the final model.")
    progress: bool = Field(True, description="Show a progress bar.")
    fsdp: bool = Field(False, description="Shard parameters, gradients and optimiser states across the processes "
                       "with FSDP2 (torch's fully_shard, one unit per decoder layer); checkpoints are sharded, the "
                       "published model a normal HF folder. On under `accelerate launch --config_file "
                       "configs/accelerate/fsdp2.yaml`. sft, rm, dpo and ppo (PPO gathers the policy whole for "
                       "sampling).")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description="Trackers for the metrics "
                                 "(logs/metrics.jsonl is always written): tensorboard, wandb, mlflow, or none; "
                                 "repeat for several. wandb and mlflow need their package and its usual "
                                 "environment (WANDB_PROJECT, MLFLOW_TRACKING_URI, ...).")

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}; one of: {', '.join(TRACKERS)}")
        return [v for v in value if v != "none"]


class SupervisedConfig(TrainConfig):
    """Trainers that go over a fixed data set in batches (SFT, the reward model)."""

    batch_size: int = Field(4, ge=1, description="Rows per micro-batch on each process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training data (ignored if --max-steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    eval_every: int = Field(50, ge=0, description="Evaluate every N steps (0 = only at the end).")
    eval_data: str | None = Field(None, description="Held-out data in --data's format (default: split off "
                                  "--eval-fraction of --data).")
    skip_invalid: bool = Field(False, description="Skip bad records (counted) instead of stopping.")


class SFTConfig(SupervisedConfig):
    model: str = Field("smollm2-135m", description="Starting model: a Hugging Face folder or smollm2-135m.")
    output_dir: str = Field("runs/sft", description="Run folder: final model, checkpoints/, logs/, config.yaml.")
    data: str | None = Field(None, description="Demonstrations: JSONL or Parquet with prompt/response, "
                             "prompt/completion, messages, or instruction/input/output records.")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share of --data held out for eval loss "
                                 "when --eval-data is not given.")
    max_length: int = Field(512, ge=8, description="Tokens per packed row; longer examples are "
                            "truncated or dropped.")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="What to do with an example longer than --max-length: cut the response, or drop it."
    )


def load_config(cls: type[C], path: str | Path | None, overrides: dict[str, Any]) -> C:
    """Defaults < YAML file < command-line overrides (only flags actually given). A dotted key (`ppo.lr`, from
    `--set ppo.lr=1e-5`) sets an option of a nested config, leaving its other options as they were."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values")
        values.update(loaded)
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        target = values
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"option '{key}': '{part}' is not a section")
        target[leaf] = value
    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        source = f"{path}: " if path is not None else ""
        raise ConfigError(f"{source}option '{where}': {err['msg']}") from None


class RMConfig(SupervisedConfig):
    model: str = Field("runs/sft", description="Causal LM to start the reward model from (by default the "
                       "SFT output); its unembedding is dropped and a scalar head added.")
    init_from: str | None = Field(None, description="A reward model to fine-tune instead of a new head on --model: "
                                  "preference-model pretraining (PMP, Askell et al. 2021 §4), where that RM was "
                                  "first trained with `rlhfkit rm` on a large set of public comparisons (HH-RLHF, "
                                  "OpenAssistant trees, vote-ranked answers).")
    data: str | None = Field(None, description="Rankings: ours, scored lists, pairwise prompt/chosen/rejected, "
                             "HH-RLHF transcripts or OpenAssistant trees (JSONL or Parquet).")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of --data held out when --eval-data is not given.")
    demos: str | None = Field(None, description="Demonstrations: after training, shift the head's bias so "
                              "they score 0 on average (InstructGPT's normalisation).")
    max_length: int = Field(1024, ge=8, description="Tokens per prompt+response; longer responses are cut.")
    output_dir: str = Field("runs/rm", description="Run folder: final reward model, checkpoints/, logs/, config.yaml.")
    batch_size: int = Field(8, ge=1, description="Prompts with their K responses per micro-batch on each "
                            "process (every labeler's ranking of them goes in together).")
    epochs: float = Field(1.0, gt=0, description="Passes over the rankings (InstructGPT: 1; more overfits).")
    lr: float = Field(1e-5, description="Peak learning rate (AdamW).")
    export_hf: bool = Field(True, description="Also write the RM as a standard AutoModelForSequenceClassification "
                            "folder (num_labels=1) in <output-dir>/hf-sequence-classification, for TRL, vLLM and "
                            "other tools.")


class DPOConfig(SupervisedConfig):
    model: str = Field("runs/sft", description="Policy to train, and the frozen reference π_ref (a HF folder; by "
                       "default the SFT output).")
    reference: str | None = Field(None, description="A different frozen reference policy (default: --model).")
    data: str | None = Field(None, description="Rankings, in any format `rlhfkit rm` reads: every strictly "
                             "ordered pair of a K-way ranking is a (chosen, rejected) pair.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of --data held out (by prompt) when "
                                 "--eval-data is not given.")
    max_length: int = Field(1024, ge=8, description="Tokens per prompt+response; longer responses are cut.")
    output_dir: str = Field("runs/dpo", description="Run folder: final policy, checkpoints/, logs/, config.yaml.")
    batch_size: int = Field(4, ge=1, description="Prompts with their K responses per micro-batch on each process.")
    epochs: float = Field(1.0, gt=0, description="Passes over the rankings.")
    lr: float = Field(1e-6, description="Peak learning rate (AdamW).")
    beta: float = Field(0.1, gt=0, description="β: the implicit reward is β·log(π/π_ref); larger keeps the policy "
                        "closer to the reference.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO's ε: the share of preference labels "
                                   "taken to be flipped (sigmoid loss only).")
    loss_type: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO (with --label-smoothing, "
                                                 "cDPO); ipo: IPO's squared loss (h − 1/(2β))² on the summed "
                                                 "log-ratio margin h.")


class SampleConfig(RolloutEngineConfig, StageConfig):
    model: str = Field("runs/sft", description="Policy to sample from: a HF folder or smollm2-135m.")
    prompts: str | None = Field(None, description="Prompts: JSONL or Parquet with prompt, messages or instruction.")
    output: str = Field("runs/samples.jsonl", description="Ranking-ready JSONL: prompt, K responses, sources.")
    k: int = Field(4, ge=2, le=9, description="Distinct responses per prompt (InstructGPT: 4 to 9).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy, which gives one response).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set of this mass.")
    max_new_tokens: int = Field(128, ge=1, description="Longest response, in tokens.")
    batch_size: int = Field(32, ge=1, description="Sequences decoded together.")
    max_attempts: int = Field(3, ge=1, description="Sampling rounds to find K distinct responses before "
                              "writing fewer (at least 2).")
    seed: int = Field(0, description="Seed for sampling.")
    dtype: Dtype = Field("auto", description="auto = bf16 autocast where supported, else fp32.")
    resume: bool = Field(False, description="Append to --output, skipping prompts already written.")
    skip_invalid: bool = Field(False, description="Skip bad prompt records (counted) instead of stopping.")
    progress: bool = Field(True, description="Show a progress bar.")


class PPOConfig(RolloutEngineConfig, TrainConfig):
    policy: str = Field("runs/sft", description="Policy to optimise, and the frozen reference π_SFT (a HF folder).")
    reference: str | None = Field(None, description="A different frozen reference policy (default: --policy), "
                                  "e.g. the SFT model when --policy continues an earlier PPO run.")
    reward_model: str = Field("runs/rm", description="Frozen reward model folder (from `rlhfkit rm`), "
                              "its normalisation applied.")
    value_model: str | None = Field(None, description="Value model to start from (a reward model folder); "
                                    "default: the reward model, as InstructGPT did.")
    frozen_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Weights of the frozen reference and reward model (no gradients, no optimiser): auto = "
        "the precision the policy computes in (bf16 under bf16 mixed precision, fp16 under fp16, else fp32), half "
        "the memory of fp32 with the same numbers as autocast.")
    offload_frozen: bool = Field(False, description="Keep the frozen reference and reward model in CPU memory, "
                                 "moved to the device only for their forward passes (frees device memory for the "
                                 "trained models, costs a copy each iteration).")
    shared_value_head: bool = Field(False, description="Put the value head on the policy's own backbone "
                                    "instead of a separate value model.")
    prompts: str | None = Field(None, description="Prompts for rollouts (JSONL/Parquet: prompt, messages or "
                                "instruction).")
    ptx_data: str | None = Field(None, description="Pretraining mix: demonstrations JSONL, or plain text (.txt, "
                                 "one passage per line) for the γ·log π(x) term.")
    ptx_coef: float = Field(1.0, ge=0, description="γ_ptx: weight of the pretraining NLL in each update "
                            "(0 = plain PPO; used only with --ptx-data).")
    ptx_batch_size: int = Field(2, ge=1, description="Packed pretraining rows per minibatch.")
    ptx_max_length: int = Field(256, ge=8, description="Tokens per packed pretraining row.")
    output_dir: str = Field("runs/ppo", description="Run folder: final policy, value/, checkpoints/, logs/.")
    iterations: int = Field(50, ge=1, description="Rollout-and-update iterations.")
    rollout_batch: int = Field(16, ge=1, description="Responses sampled per iteration on each process.")
    samples_per_prompt: int = Field(1, ge=1, description="Responses to each prompt in a rollout (rollout_batch / "
                                    "samples_per_prompt prompts an iteration). Above 1, each score is taken "
                                    "relative to the mean score of the prompt's other responses (RLOO's baseline).")
    max_new_tokens: int = Field(64, ge=1, description="Longest response in a rollout.")
    max_prompt_length: int = Field(256, ge=8, description="Prompts are cut to their last N tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the policy (its log-probs use it too).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling in rollouts.")
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout batch.")
    minibatch_size: int = Field(8, ge=1, description="Rollouts per PPO minibatch on each process.")
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clip ε: the 1-ε..1+ε band.")
    value_clip_eps: float = Field(0.2, gt=0, description="Clip on how far a value moves from its rollout value.")
    advantage: Literal["gae", "rloo", "grpo"] = Field(
        "gae", description="gae: a value model (or head) and GAE, as the paper; rloo / grpo: critic-free, no value "
        "model at all: each token's advantage is the rest of its response's KL-penalised reward, the score taken "
        "against the prompt's other responses (rloo: minus their mean; grpo: minus the group mean, over the "
        "group's std). The KL penalty stays in the reward. rloo and grpo need --samples-per-prompt 2 or more.")
    gamma: float = Field(1.0, description="GAE discount γ.")
    lam: float = Field(0.95, description="GAE λ.")
    kl_coef: float = Field(0.02, ge=0, description="β: weight of the per-token KL penalty to π_SFT "
                           "(the initial value, if adaptive).")
    kl_target: float | None = Field(None, gt=0, description="Target KL per sequence: adapt β toward it "
                                    "(Ziegler et al. 2019); unset = fixed β.")
    kl_horizon: int = Field(10000, ge=1, description="Horizon of the adaptive β controller, in samples.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="Per-token KL estimator: k1 = log-ratio, "
                                              "k3 = the non-negative unbiased one.")
    kl_in: Literal["reward", "loss"] = Field("reward", description="Where the KL penalty goes: reward = −β·KL_t in "
                                             "each token's reward, as the paper (and PPO with GAE); loss = β·mean "
                                             "KL_t added to the policy loss, as GRPO does (use with --kl-estimator "
                                             "k3).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    missing_eos_penalty: float | None = Field(1.0, ge=0, description="Subtracted from the RM's score of a "
                                              "response cut off without EOS, as TRL does (unset = none).")
    value_lr: float = Field(1e-5, description="Learning rate of the separate value model.")
    vf_coef: float = Field(0.1, ge=0, description="Value-loss weight when the value head shares the policy backbone.")
    value_warmup_iterations: int = Field(0, ge=0, description="Iterations that train only the value model first.")
    lr: float = Field(3e-6, description="Peak learning rate of the policy (AdamW).")
    samples_every: int = Field(10, ge=1, description="Save a table of sample generations with their scores "
                               "every N iterations.")


class GenerateConfig(RolloutEngineConfig, StageConfig):
    model: str = Field("runs/sft", description="A HF folder (any stage's output) or smollm2-135m.")
    prompt: list[str] = Field(default_factory=list, description="A prompt to answer (repeat the flag for several).")
    prompts: str | None = Field(None, description="A file of prompts (JSONL/Parquet: prompt, messages or instruction).")
    output: str | None = Field(None, description="Also write {index, prompt, response, ended} records to this JSONL, "
                               "batch by batch.")
    resume: bool = Field(False, description="Carry on after the prompts --output already holds.")
    progress: bool = Field(True, description="Show a progress bar.")
    num_samples: int = Field(1, ge=1, description="Responses per prompt.")
    best_of: int = Field(1, ge=1, description="Sample N responses for each one written and keep the one "
                         "--reward-model scores highest (best-of-n as a policy; needs --temperature > 0).")
    reward_model: str | None = Field(None, description="Reward model folder (from `rlhfkit rm`) for --best-of.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(128, ge=1, description="Longest response, in tokens.")
    batch_size: int = Field(16, ge=1, description="Sequences decoded together.")
    seed: int = Field(0, description="Seed for sampling.")
    dtype: Dtype = Field("auto", description="auto = bf16 autocast where supported, else fp32.")
