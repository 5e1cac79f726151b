"""Stage configs: pydantic models, loadable from YAML, overridable from the command line.

Each field's description is its `--help` text: cli.py turns every field into a flag
(`max_length` -> `--max-length`), so a config file and the flags always name the same things.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Dtype = Literal["auto", "bf16", "fp16", "fp32"]


C = TypeVar("C", bound="StageConfig")


class ConfigError(ValueError):
    pass


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


class TrainConfig(StageConfig):
    """What every trainer shares: optimiser, schedule, precision, checkpoints, logs."""

    output_dir: str = Field("runs/sft", description="Run folder: final model, checkpoints/, logs/, config.yaml.")
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


class SupervisedConfig(TrainConfig):
    """Trainers that go over a fixed data set in batches (SFT, the reward model)."""

    batch_size: int = Field(4, ge=1, description="Rows per micro-batch on each process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training data (ignored if --max-steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    eval_every: int = Field(50, ge=0, description="Evaluate every N steps (0 = only at the end).")


class SFTConfig(SupervisedConfig):
    model: str = Field("smollm2-135m", description="Starting model: a Hugging Face folder or smollm2-135m.")
    data: str | None = Field(None, description="Demonstrations: JSONL or Parquet with prompt/response, "
                             "prompt/completion, messages, or instruction/input/output records.")
    eval_data: str | None = Field(None, description="Held-out demonstrations (default: split off --eval-fraction).")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share of --data held out for eval loss "
                                 "when --eval-data is not given.")
    skip_invalid: bool = Field(False, description="Skip bad records (counted) instead of stopping.")
    max_length: int = Field(512, ge=8, description="Tokens per packed row; longer examples are "
                            "truncated or dropped.")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="What to do with an example longer than --max-length: cut the response, or drop it."
    )


def load_config(cls: type[C], path: str | Path | None, overrides: dict[str, Any]) -> C:
    """Defaults < YAML file < command-line overrides (only flags actually given)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
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
    data: str | None = Field(None, description="Rankings: ours, scored lists, pairwise prompt/chosen/rejected, "
                             "HH-RLHF transcripts or OpenAssistant trees (JSONL or Parquet).")
    eval_data: str | None = Field(None, description="Held-out rankings (default: split off --eval-fraction).")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of --data held out when --eval-data is not given.")
    demos: str | None = Field(None, description="Demonstrations: after training, shift the head's bias so "
                              "they score 0 on average (InstructGPT's normalisation).")
    skip_invalid: bool = Field(False, description="Skip bad records (counted) instead of stopping.")
    max_length: int = Field(1024, ge=8, description="Tokens per prompt+response; longer responses are cut.")
    output_dir: str = Field("runs/rm", description="Run folder: final reward model, checkpoints/, logs/, config.yaml.")
    batch_size: int = Field(8, ge=1, description="Prompts with their K responses per micro-batch on each "
                            "process (every labeler's ranking of them goes in together).")
    epochs: float = Field(1.0, gt=0, description="Passes over the rankings (InstructGPT: 1; more overfits).")
    lr: float = Field(1e-5, description="Peak learning rate (AdamW).")


class SampleConfig(StageConfig):
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


class PPOConfig(TrainConfig):
    policy: str = Field("runs/sft", description="Policy to optimise, and the frozen reference π_SFT (a HF folder).")
    reference: str | None = Field(None, description="A different frozen reference policy (default: --policy), "
                                  "e.g. the SFT model when --policy continues an earlier PPO run.")
    reward_model: str = Field("runs/rm", description="Frozen reward model folder (from `rlhfkit rm`), "
                              "its normalisation applied.")
    value_model: str | None = Field(None, description="Value model to start from (a reward model folder); "
                                    "default: the reward model, as InstructGPT did.")
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
    gamma: float = Field(1.0, description="GAE discount γ.")
    lam: float = Field(0.95, description="GAE λ.")
    kl_coef: float = Field(0.02, ge=0, description="β: weight of the per-token KL penalty to π_SFT "
                           "(the initial value, if adaptive).")
    kl_target: float | None = Field(None, gt=0, description="Target KL per sequence: adapt β toward it "
                                    "(Ziegler et al. 2019); unset = fixed β.")
    kl_horizon: int = Field(10000, ge=1, description="Horizon of the adaptive β controller, in samples.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="Per-token KL estimator: k1 = log-ratio, "
                                              "k3 = the non-negative unbiased one.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    missing_eos_penalty: float | None = Field(1.0, ge=0, description="Subtracted from the RM's score of a "
                                              "response cut off without EOS, as TRL does (unset = none).")
    value_lr: float = Field(1e-5, description="Learning rate of the separate value model.")
    vf_coef: float = Field(0.1, ge=0, description="Value-loss weight when the value head shares the policy backbone.")
    value_warmup_iterations: int = Field(0, ge=0, description="Iterations that train only the value model first.")
    lr: float = Field(3e-6, description="Peak learning rate of the policy (AdamW).")
    samples_every: int = Field(10, ge=1, description="Save a table of sample generations with their scores "
                               "every N iterations.")


class GenerateConfig(StageConfig):
    model: str = Field("runs/sft", description="A HF folder (any stage's output) or smollm2-135m.")
    prompt: list[str] = Field(default_factory=list, description="A prompt to answer (repeat the flag for several).")
    prompts: str | None = Field(None, description="A file of prompts (JSONL/Parquet: prompt, messages or instruction).")
    output: str | None = Field(None, description="Also write {prompt, response, ended} records to this JSONL.")
    num_samples: int = Field(1, ge=1, description="Responses per prompt.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(128, ge=1, description="Longest response, in tokens.")
    batch_size: int = Field(16, ge=1, description="Sequences decoded together.")
    seed: int = Field(0, description="Seed for sampling.")
    dtype: Dtype = Field("auto", description="auto = bf16 autocast where supported, else fp32.")


class DemoConfig(StageConfig):
    """The whole loop on the bundled data with simulated labelers (`rlhfkit demo`)."""

    name: str = Field("demo", description="Run name: everything goes to <runs-dir>/<name>/.")
    runs_dir: str = Field("runs", description="Folder holding the runs.")
    model: str = Field("smollm2-135m", description="Pretrained model to start from (a HF folder or smollm2-135m).")
    seed: int = Field(0, description="Seed for every stage.")
    resume: bool = Field(False, description="Continue an interrupted run from its last finished stage or checkpoint.")
    rounds: int = Field(2, ge=1, description="Rounds of comparisons + RM + PPO (round 2 samples the current policy).")
    quick: bool = Field(False, description="A tiny configuration for a smoke test (minutes on a CPU).")
    # 1. SFT
    sft_epochs: float = Field(2.0, gt=0, description="SFT passes over the demonstrations.")
    sft_lr: float = Field(1e-4, description="SFT learning rate.")
    sft_batch_size: int = Field(4, ge=1, description="Packed rows (384 tokens, about 4 demonstrations each) per SFT "
                                "step: 4 gives 26 steps over 2 epochs of the bundled demonstrations; 8 gave 14, too "
                                "few for the model to learn the refusals.")
    sft_demos: int | None = Field(None, description="Use only the first N demonstrations.")
    # 2. comparisons and the reward model
    rm_prompts: int | None = Field(80, description="RM-split prompts to sample comparisons for (None: all 121).")
    k: int = Field(4, ge=2, le=9, description="Responses sampled per prompt for the labelers to rank.")
    sample_temperature: float = Field(1.0, gt=0, description="Temperature when sampling comparisons.")
    max_new_tokens: int = Field(48, ge=8, description="Longest response in sampling, PPO and evaluation.")
    panel_size: int = Field(6, ge=2, description="Simulated labelers who rank training comparisons.")
    held_out_labelers: int = Field(3, ge=1, description="Simulated held-out labelers who judge the evaluation.")
    label_overlap: int = Field(3, ge=1, description="Labelers per comparison task (agreement is measured on these; "
                               "the RM trains on every one's ranking, their responses forwarded once).")
    panel_noise: float = Field(0.02, gt=0, description="Bradley–Terry noise of the simulated labelers (0.02: "
                               "about 70% agreement on the demo's comparisons, InstructGPT's labelers 73%).")
    rm_epochs: float = Field(1.0, gt=0, description="RM passes over the rankings.")
    rm_lr: float = Field(5e-5, description="RM learning rate.")
    rm_batch_size: int = Field(2, ge=1, description="Prompts (with their K responses and every ranking of them) "
                               "per RM step: 2 gives about 35 steps an epoch on the demo's comparisons.")
    # 3. PPO-ptx
    ppo_iterations: int = Field(10, ge=1, description="PPO iterations per round.")
    ppo_rollout_batch: int = Field(16, ge=1, description="Responses per PPO iteration.")
    ppo_samples_per_prompt: int = Field(1, ge=1, description="PPO responses to each prompt, each scored against "
                                        "the mean of the others (RLOO's baseline): the RM's level for a prompt, "
                                        "arbitrary, drops out.")
    ppo_epochs: int = Field(1, ge=1, description="PPO passes over each rollout batch.")
    ppo_lr: float = Field(1e-5, description="Policy learning rate.")
    ppo_temperature: float = Field(1.0, gt=0, description="Temperature of PPO's rollouts and of the log-probs "
                                   "it optimises (and penalises with the KL).")
    shared_value_head: bool = Field(True, description="PPO's value head on the policy's own backbone (as TRL's "
                                    "first PPO trainer did) instead of a separate value model started from the RM "
                                    "(the paper's): a third less compute per PPO iteration.")
    kl_coef: float = Field(0.05, ge=0, description="β, the per-token KL penalty to π_SFT.")
    ptx_coef: float = Field(0.5, ge=0, description="γ, the weight of the pretraining (prose) NLL.")
    compare_without_ptx: bool = Field(True, description="Also train round 1's PPO with γ = 0 to measure "
                                      "the alignment tax with and without ptx.")
    # 4. evaluation
    eval_prompts: int | None = Field(None, description="Held-out prompts to evaluate on (default all).")
    eval_temperature: float = Field(0.7, ge=0, description="Sampling temperature of the evaluated policies.")
    prose_lines: int | None = Field(None, description="Held-out prose lines for the perplexity (default all).")

    def sized(self) -> DemoConfig:
        """This config, shrunk to the --quick sizes when asked."""
        if not self.quick:
            return self
        return self.model_copy(update={
            "sft_epochs": 1.0, "sft_demos": 32, "rm_prompts": 10, "max_new_tokens": 16, "rm_epochs": 1.0,
            "ppo_iterations": 2, "ppo_rollout_batch": 8, "ppo_epochs": 1, "eval_prompts": 10, "prose_lines": 8,
            "panel_size": 4, "held_out_labelers": 2})
