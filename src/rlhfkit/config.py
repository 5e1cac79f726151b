"""Stage configs: pydantic models, loadable from YAML, overridable from the command line.

Each field's description is its `--help` text: cli.py turns every field into a flag
(`max_length` -> `--max-length`), so a config file and the flags always name the same things.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined

from rlhfkit.errors import UsageError

Dtype = Literal["auto", "bf16", "fp16", "fp32"]


C = TypeVar("C", bound="StageConfig")


class ConfigError(UsageError):
    pass


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def updated(self: C, **options: Any) -> C:
        """A copy with `options` set (flat flags or sections, as in a YAML file), validated like a new config."""
        return type(self).model_validate(merge_options(self.model_dump(), options))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


TRACKERS = ("tensorboard", "wandb", "mlflow", "none")


@dataclass(frozen=True)
class Flag:
    """A command-line flag, and a flat YAML key as configs were written before the variants, that sets one option
    inside a section: `path` is where the option lives (`("advantage", "critic", "lr")`); `needs` the kind each
    union section on the way must have ("advantage": "gae"), or None where that section must merely be there
    (an optional one, like `ptx`)."""

    path: tuple[str, ...]
    needs: dict[str, str | None] = dataclasses.field(default_factory=dict)
    convert: Callable[[Any], Any] | None = None  # the flag's value as the option takes it
    type: Any = None  # the flag's own type and help, where it is not the option's (with `convert`)
    help: str = ""


def _kind(values: dict, section: str, default_kinds: dict[str, str]) -> str | None:
    """The kind of the (dotted) section in `values`: its `kind`, its default's where unset, None where absent."""
    node: Any = values
    for part in section.split("."):
        if not isinstance(node, dict) or part not in node:
            return default_kinds.get(section) if node is not None else None
        node = node[part]
    if node is None:
        return None
    return node.get("kind", default_kinds.get(section, "present")) if isinstance(node, dict) else "present"


def fold_flat_options(values: dict, flags: dict[str, Flag], default_kinds: dict[str, str] | None = None) -> dict:
    """Flat keys (`gamma: 0.99`, `--gamma 0.99`) moved into the sections they set (`advantage: {gamma: 0.99}`),
    a flat key winning over the same option inside a section. A section given as a string is its kind
    (`advantage: grpo`). An option of a variant other than the one chosen is refused, naming both."""
    default_kinds = default_kinds or {}
    values = dict(values)
    given = {k: values.pop(k) for k in list(values) if k in flags and flags[k].path != (k, "kind")}
    for name, flag in flags.items():  # sections named by a string: `advantage: grpo`
        if flag.path == (name, "kind") and isinstance(values.get(name), str):
            values[name] = {"kind": values[name]}
    # kinds before the options inside them, since choosing a kind starts its section afresh; an option of an
    # optional section (`kl.adaptive`, `ptx`) after checking that the section is there
    optional = {n for n in given if None in flags[n].needs.values()}
    for name in sorted(given, key=lambda n: (n in optional, flags[n].path[-1] != "kind")):
        if name in optional:
            _check_needs(values, name, given[name], flags[name], default_kinds)
        path, value = flags[name].path, given[name]
        if flags[name].convert is not None:
            value = flags[name].convert(value)
        node = values
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            section = ".".join(path[: depth + 1])
            if section in default_kinds and path[depth + 1] != "kind":
                child.setdefault("kind", default_kinds[section])
            node = child
        if path[-1] == "kind" and node.get("kind", value) != value:
            node.clear()  # another variant: the old one's options do not carry over
        node[path[-1]] = value
    for name in set(given) - optional:
        _check_needs(values, name, given[name], flags[name], default_kinds)
    for section, kind in default_kinds.items():  # a section given without its kind (`--set advantage.lam=0.9`)
        *parents, leaf = section.split(".")
        node = values
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {"kind": kind, **node[leaf]}
    return values


def section_classes(annotation) -> list[type[BaseModel]]:
    """The section classes an annotation allows (one, a union of variants, optional or not)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for a in typing.get_args(annotation) for c in section_classes(a)]


def flag_fields(cls: type[BaseModel], flags: dict[str, Flag]) -> dict[str, tuple[Any, str, Any]]:
    """(type, help, default) of each flag, from the option it sets: the command line's view of nested sections."""
    out = {}
    for name, flag in flags.items():
        field = _field_at(cls, flag.path[:-1] if flag.path[-1] == "kind" else flag.path)
        default = field.default_factory() if field.default_factory else field.default
        if flag.path[-1] == "kind":  # the section itself: its variants by name
            kinds = [typing.get_args(v.model_fields["kind"].annotation)[0] for v in section_classes(field.annotation)]
            kind = "shared_head" if flag.type is bool else default.kind  # (shared_value_head: a yes/no flag)
            out[name] = (flag.type or str, flag.help or f"{field.description} One of: {', '.join(kinds)}.",
                         default.kind == kind if flag.type is bool else default.kind)
            continue
        needs = ", ".join(f"{k}: {v}" if v else k for k, v in flag.needs.items())
        where = f" (with {needs})" if needs else ""
        default = None if default is PydanticUndefined else default
        out[name] = (flag.type or field.annotation, (flag.help or field.description or "") + where, default)
    return out


def _field_at(cls: type[BaseModel], path: tuple[str, ...]):
    """The field at a dotted path through sections (the first variant that has it)."""
    owners, field = [cls], None
    for part in path:
        field = next(c for c in owners if part in c.model_fields).model_fields[part]
        owners = section_classes(field.annotation)
    return field


def _check_needs(values: dict, name: str, value: Any, flag: Flag, default_kinds: dict[str, str]) -> None:
    for section, kind in flag.needs.items():
        have = _kind(values, section, default_kinds)
        if kind is None and have is None:
            raise ValueError(f"option '{name}' ({value!r}) applies only when '{section}' is set: drop '{name}', or "
                             f"set '{section}'")
        if kind is not None and have != kind:
            raise ValueError(f"option '{name}' ({value!r}) applies only with {section}: {kind}, but '{section}' is "
                             f"{have!r}: drop '{name}', or set {section}: {kind}")


def merge_options(base: dict, update: dict) -> dict:
    """`update`'s options on top of `base`'s, section by section; a section whose kind changes is replaced whole
    (the old variant's options do not apply to the new one)."""
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("kind", old.get("kind")) == old.get("kind"):
            out[key] = merge_options(old, value)
        else:
            out[key] = value
    return out


class Section(BaseModel):
    """A group of options inside a stage's config (a YAML mapping; on the command line, the flags that fold into
    it)."""

    model_config = ConfigDict(extra="forbid")


class OwnDecoder(Section):
    kind: Literal["hf"] = "hf"


class VLLMRollouts(Section):
    kind: Literal["vllm"] = "vllm"
    gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="The share of the GPU's memory vLLM takes "
                                          "(its weights and KV cache).")


RolloutEngine = Annotated[OwnDecoder | VLLMRollouts, Field(discriminator="kind")]


ENGINE_FLAGS = {
    "rollout_engine": Flag(("engine", "kind")),
    "vllm_gpu_memory_utilization": Flag(("engine", "gpu_memory_utilization"), {"engine": "vllm"}),
}


class RolloutEngineConfig(BaseModel):
    """Who samples responses (`sample`, `generate`, `ppo`): `engine: {kind: hf}` or `{kind: vllm,
    gpu_memory_utilization: 0.3}`; flags --rollout-engine and --vllm-gpu-memory-utilization."""

    FLAGS: ClassVar[dict[str, Flag]] = ENGINE_FLAGS  # flags (and flat keys) that set options inside sections
    KINDS: ClassVar[dict[str, str]] = {"engine": "hf"}  # each union section's default variant

    engine: RolloutEngine = Field(
        default_factory=OwnDecoder, description="hf = rlhfkit's own decoder (KV cache; any device); vllm = vLLM in "
        "this process on its GPU (CUDA only; pip install 'rlhfkit[vllm]'), PPO copying the policy's weights in every "
        "iteration.")

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_flags(cls, values: Any) -> Any:
        return fold_flat_options(values, cls.FLAGS, cls.KINDS) if isinstance(values, dict) else values


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
        raise ConfigError(describe_error(e, path)) from None


def describe_error(e: ValidationError, path: str | Path | None = None) -> str:
    """A config's first validation error as one line: the file, the option, what is wrong."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    msg = err["msg"].removeprefix("Value error, ")
    source = f"{path}: " if path is not None else ""
    return f"{source}option '{where}': {msg}" if where else f"{source}{msg}"


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


class DecodingConfig(RolloutEngineConfig, StageConfig):
    """What the stages that only decode share (`sample`, `generate`)."""

    model: str = Field("runs/sft", description="A HF folder (any stage's output) or smollm2-135m.")
    prompts: str | None = Field(None, description="Prompts: JSONL or Parquet with prompt, messages or instruction.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set of this mass.")
    max_new_tokens: int = Field(128, ge=1, description="Longest response, in tokens.")
    batch_size: int = Field(16, ge=1, description="Sequences decoded together.")
    seed: int = Field(0, description="Seed for sampling.")
    dtype: Dtype = Field("auto", description="auto = bf16 autocast where supported, else fp32.")
    resume: bool = Field(False, description="Carry on after the prompts the output already holds.")
    progress: bool = Field(True, description="Show a progress bar.")


class SampleConfig(DecodingConfig):
    output: str = Field("runs/samples.jsonl", description="Ranking-ready JSONL: prompt, K responses, sources.")
    k: int = Field(4, ge=2, le=9, description="Distinct responses per prompt (InstructGPT: 4 to 9).")
    batch_size: int = Field(32, ge=1, description="Sequences decoded together.")
    max_attempts: int = Field(3, ge=1, description="Sampling rounds to find K distinct responses before "
                              "writing fewer (at least 2).")
    skip_invalid: bool = Field(False, description="Skip bad prompt records (counted) instead of stopping.")


# ---- PPO's variants: each a section whose options exist only where they apply ------------------------------

class ValueModelCritic(Section):
    """A value model of its own (InstructGPT's), trained beside the policy with its own optimiser."""

    kind: Literal["value_model"] = "value_model"
    init: str | None = Field(None, description="Value model to start from (a reward model folder); default: the "
                             "reward model, as InstructGPT did (the policy, where a reward function scores).")
    lr: float = Field(1e-5, description="Learning rate of the value model.")
    clip_eps: float = Field(0.2, gt=0, description="Clip on how far a value moves from its rollout value.")
    warmup_iterations: int = Field(0, ge=0, description="Iterations that train only the value model first.")


class SharedValueHead(Section):
    """A value head on the policy's own backbone, trained in the policy's loss and optimiser step."""

    kind: Literal["shared_head"] = "shared_head"
    coef: float = Field(0.1, ge=0, description="Weight of the value loss in the policy's loss.")
    clip_eps: float = Field(0.2, gt=0, description="Clip on how far a value moves from its rollout value.")
    warmup_iterations: int = Field(0, ge=0, description="Iterations that train only the value head first.")


Critic = Annotated[ValueModelCritic | SharedValueHead, Field(discriminator="kind")]


class GAE(Section):
    """The paper's advantage: a critic's values and generalised advantage estimation, whitened over the batch."""

    kind: Literal["gae"] = "gae"
    gamma: float = Field(1.0, description="GAE discount γ.")
    lam: float = Field(0.95, description="GAE λ.")
    critic: Critic = Field(default_factory=ValueModelCritic, description="value_model or shared_head.")


class RLOO(Section):
    """Critic-free: each response's score minus the mean of the prompt's other responses' (leave-one-out)."""

    kind: Literal["rloo"] = "rloo"


class GRPO(Section):
    """Critic-free: each response's score minus its group's mean, over the group's std; not whitened again."""

    kind: Literal["grpo"] = "grpo"


Advantage = Annotated[GAE | RLOO | GRPO, Field(discriminator="kind")]


class AdaptiveKL(Section):
    """Ziegler et al. (2019)'s controller: β moves toward a target KL per sequence."""

    target: float = Field(gt=0, description="Target KL per sequence, in nats.")
    horizon: int = Field(10000, ge=1, description="Horizon of the controller, in samples.")


class KLPenalty(Section):
    """β·KL(π_RL || π_SFT), per token."""

    coef: float = Field(0.02, ge=0, description="β (the initial value, if adaptive).")
    where: Literal["reward", "loss"] = Field("reward", description="reward = −β·KL_t in each token's reward, as the "
                                             "paper; loss = β·mean KL_t added to the policy loss, as GRPO does (use "
                                             "with estimator k3).")
    estimator: Literal["k1", "k3"] = Field("k1", description="k1 = log-ratio, k3 = the non-negative unbiased one.")
    adaptive: AdaptiveKL | None = Field(None, description="Adapt β toward a target KL; unset = fixed β.")


class PretrainingMix(Section):
    """The γ·log π(x) term of PPO-ptx: pretraining text in every update."""

    data: str = Field(description="Demonstrations JSONL, or plain text (.txt, one passage per line).")
    coef: float = Field(1.0, gt=0, description="γ_ptx: weight of the pretraining NLL in each update.")
    batch_size: int = Field(2, ge=1, description="Packed pretraining rows per minibatch.")
    max_length: int = Field(256, ge=8, description="Tokens per packed pretraining row.")


_GAE, _VALUE_MODEL, _SHARED = {"advantage": "gae"}, {"advantage": "gae", "advantage.critic": "value_model"}, \
    {"advantage": "gae", "advantage.critic": "shared_head"}
# The flags of `rlhfkit ppo`, and the flat keys of PPO configs written before the variants, each folded into the
# section it sets.
PPO_FLAGS = {
    "advantage": Flag(("advantage", "kind")),
    "gamma": Flag(("advantage", "gamma"), _GAE),
    "lam": Flag(("advantage", "lam"), _GAE),
    "shared_value_head": Flag(("advantage", "critic", "kind"), _GAE,
                              lambda shared: "shared_head" if shared else "value_model", bool,
                              "The critic: a value head on the policy's own backbone (shared_head) instead of a "
                              "value model of its own (value_model)."),
    "value_model": Flag(("advantage", "critic", "init"), _VALUE_MODEL),
    "value_lr": Flag(("advantage", "critic", "lr"), _VALUE_MODEL),
    "vf_coef": Flag(("advantage", "critic", "coef"), _SHARED),
    "value_clip_eps": Flag(("advantage", "critic", "clip_eps"), _GAE),
    "value_warmup_iterations": Flag(("advantage", "critic", "warmup_iterations"), _GAE),
    "kl_coef": Flag(("kl", "coef")),
    "kl_in": Flag(("kl", "where")),
    "kl_estimator": Flag(("kl", "estimator")),
    "kl_target": Flag(("kl", "adaptive", "target"), help="Target KL per sequence: adapt β toward it (Ziegler et al. "
                      "2019); unset = fixed β."),
    "kl_horizon": Flag(("kl", "adaptive", "horizon"), {"kl.adaptive": None}),
    "ptx_data": Flag(("ptx", "data"), help="Pretraining mix (PPO-ptx): demonstrations JSONL, or plain text (.txt, "
                     "one passage per line) for the γ·log π(x) term; unset = plain PPO."),
    "ptx_coef": Flag(("ptx", "coef"), {"ptx": None}, help="γ_ptx: weight of the pretraining NLL in each update "
                     "(0 = plain PPO)."),
    "ptx_batch_size": Flag(("ptx", "batch_size"), {"ptx": None}),
    "ptx_max_length": Flag(("ptx", "max_length"), {"ptx": None}),
    **ENGINE_FLAGS,
}
PPO_KINDS = {"advantage": "gae", "advantage.critic": "value_model", "engine": "hf"}


class PPOConfig(RolloutEngineConfig, TrainConfig):
    FLAGS: ClassVar[dict[str, Flag]] = PPO_FLAGS
    KINDS: ClassVar[dict[str, str]] = PPO_KINDS

    policy: str = Field("runs/sft", description="Policy to optimise, and the frozen reference π_SFT (a HF folder).")
    reference: str | None = Field(None, description="A different frozen reference policy (default: --policy), "
                                  "e.g. the SFT model when --policy continues an earlier PPO run.")
    reward_model: str = Field("runs/rm", description="Frozen reward model folder (from `rlhfkit rm`), "
                              "its normalisation applied.")
    frozen_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Weights of the frozen reference and reward model (no gradients, no optimiser): auto = "
        "the precision the policy computes in (bf16 under bf16 mixed precision, fp16 under fp16, else fp32), half "
        "the memory of fp32 with the same numbers as autocast.")
    offload_frozen: bool = Field(False, description="Keep the frozen reference and reward model in CPU memory, "
                                 "moved to the device only for their forward passes (frees device memory for the "
                                 "trained models, costs a copy each iteration).")
    prompts: str | None = Field(None, description="Prompts for rollouts (JSONL/Parquet: prompt, messages or "
                                "instruction).")
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
    advantage: Advantage = Field(
        default_factory=GAE, description="gae: a critic (value model or shared head) and GAE, as the paper; rloo / "
        "grpo: critic-free, no value model at all: each token's advantage is the rest of its response's KL-penalised "
        "reward, the score taken against the prompt's other responses (rloo: minus their mean; grpo: minus the group "
        "mean, over the group's std). rloo and grpo need --samples-per-prompt 2 or more.")
    kl: KLPenalty = Field(default_factory=KLPenalty, description="The KL penalty to π_SFT.")
    ptx: PretrainingMix | None = Field(None, description="The pretraining mix (PPO-ptx); unset = plain PPO.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    missing_eos_penalty: float | None = Field(1.0, ge=0, description="Subtracted from the RM's score of a "
                                              "response cut off without EOS, as TRL does (unset = none).")
    lr: float = Field(3e-6, description="Peak learning rate of the policy (AdamW).")
    samples_every: int = Field(10, ge=1, description="Save a table of sample generations with their scores "
                               "every N iterations.")

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_flags(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        # the flat flags' ways of saying "none": ptx_coef 0 (plain PPO), ptx_data or kl_target unset
        if values.get("ptx_coef", 1) == 0 or ("ptx_data" in values and values["ptx_data"] is None):
            values.pop("ptx_coef", None), values.pop("ptx_data", None)
            for name in ("ptx_batch_size", "ptx_max_length"):
                if name in values:
                    raise ValueError(f"option '{name}' applies only with a pretraining mix, and ptx_coef 0 (or "
                                     f"no ptx_data) turns it off: drop '{name}'")
            values["ptx"] = None
        if "kl_target" in values and values["kl_target"] is None:
            values.pop("kl_target")
            values["kl"] = {**(values.get("kl") or {}), "adaptive": None}
        return fold_flat_options(values, cls.FLAGS, cls.KINDS)

    @model_validator(mode="after")
    def _consistent(self) -> PPOConfig:
        if self.rollout_batch % self.samples_per_prompt:
            raise ValueError(f"rollout_batch {self.rollout_batch} is not a multiple of samples_per_prompt "
                             f"{self.samples_per_prompt}")
        if self.advantage.kind != "gae" and self.samples_per_prompt < 2:
            raise ValueError(f"advantage {self.advantage.kind} takes its baseline from other responses to the same "
                             "prompt: set samples_per_prompt 2 or more")
        if self.lora_r and self.reference:
            raise ValueError("reference with lora_r: the reference is the policy with its adapters disabled")
        return self

    @classmethod
    def saved_before_variants(cls, values: dict) -> dict:
        """A config saved before the variants, every option flat (a run folder's config.yaml), as it can be read
        now: the flat options of the variants it did not choose dropped, since they never applied."""
        plain = {k: v for k, v in values.items() if k not in cls.FLAGS}
        kept: dict = {}
        flat = sorted((k for k in values if k in cls.FLAGS),  # the outer kinds first, then what lies inside
                      key=lambda n: (cls.FLAGS[n].path[-1] != "kind", len(cls.FLAGS[n].path)))
        for name in flat:
            try:
                cls.model_validate({**plain, **kept, name: values[name]})
            except ValidationError as e:
                if any(f"option '{name}'" in err["msg"] for err in e.errors()):
                    continue
            kept[name] = values[name]
        return {**plain, **kept}

    @property
    def critic(self) -> ValueModelCritic | SharedValueHead | None:
        """The critic of GAE; None for the critic-free advantages."""
        return self.advantage.critic if isinstance(self.advantage, GAE) else None


class GenerateConfig(DecodingConfig):
    prompt: list[str] = Field(default_factory=list, description="A prompt to answer (repeat the flag for several).")
    output: str | None = Field(None, description="Also write {index, prompt, response, ended} records to this JSONL, "
                               "batch by batch.")
    num_samples: int = Field(1, ge=1, description="Responses per prompt.")
    best_of: int = Field(1, ge=1, description="Sample N responses for each one written and keep the one "
                         "--reward-model scores highest (best-of-n as a policy; needs --temperature > 0).")
    reward_model: str | None = Field(None, description="Reward model folder (from `rlhfkit rm`) for --best-of.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy).")


# ---- evaluations (`rlhfkit eval ...`) ---------------------------------------------------------------------

TRUTHFULQA_HELP = ("TruthfulQA: mc_task.json, or its folder (TruthfulQA.csv beside it gives the categories), or "
                   "JSONL of {question, mc1_targets, mc2_targets}.")
MC_HELP = "Multiple-choice JSONL: {question, choices, answer (index or text), category?}."
PROSE_HELP = "Held-out prose: a .txt file (a passage a line) or JSONL with a 'text' field."
CROWS_HELP = "CrowS-Pairs: crows_pairs_anonymized.csv or its folder."
WINOGENDER_HELP = ("Winogender: all_sentences.tsv or its folder (occupations-stats.tsv beside it gives the "
                   "occupations' share of women).")


INSTRUCTIONS_HELP = ("Real user prompts (any prompt JSONL), never trained on: 1-3 verifiable instructions are attached "
                     "to each (rlhfkit.evaluation.instructions) and the answers checked strictly and loosely.")
BATCH_TOKENS = Field(8192, ge=16, description="Log-likelihood scoring: tokens packed into one forward pass.")


class EvalConfig(StageConfig):
    """What every `rlhfkit eval` command shares: the models, where the results go, how many items."""

    EVAL: ClassVar[str] = ""  # the evaluation's name (rlhfkit.evaluation.suite.EVALUATIONS)
    model: list[str] = Field(description="HF model folder (or smollm2-135m); repeat to compare several side by side.",
                             json_schema_extra={"short": "-m"})
    output: str = Field("evals", description="Folder for <evaluation>.json and <evaluation>.md.",
                        json_schema_extra={"short": "-o"})
    limit: int | None = Field(None, ge=1, description="Only the first N items of each data set.")
    progress: bool = Field(True, description="Show a progress bar.")

    def datasets(self) -> dict[str, str | None]:
        """Each data set of the evaluation (by its part's name in the suite) and the path given for it."""
        return {part: getattr(self, part) for part in type(self).model_fields if part in PART_FIELDS}


PART_FIELDS = ("truthfulqa", "crows", "winogender", "toxicity", "hallucination", "instructions", "prose", "mc")


class SingleDataEval(EvalConfig):
    """An evaluation of one data set, given as --data."""

    data: str = Field(description="The data set.")

    def datasets(self) -> dict[str, str | None]:
        return {self.EVAL: self.data}


class TruthfulQAEvalConfig(SingleDataEval):
    EVAL: ClassVar[str] = "truthfulqa"
    data: str = Field(description=TRUTHFULQA_HELP)
    batch_tokens: int = BATCH_TOKENS


class BiasEvalConfig(EvalConfig):
    EVAL: ClassVar[str] = "bias"
    crows: str | None = Field(None, description=CROWS_HELP)
    winogender: str | None = Field(None, description=WINOGENDER_HELP)
    batch_tokens: int = BATCH_TOKENS


class HallucinationEvalConfig(SingleDataEval):
    EVAL: ClassVar[str] = "hallucination"
    data: str = Field(description="Prompts with a passage (JSONL: prompt and passage; the demo's "
                       "closed-domain prompts carry one in meta).")
    max_new_tokens: int = Field(128, ge=1, description="Longest answer (greedy).")


class InstructionsEvalConfig(SingleDataEval):
    EVAL: ClassVar[str] = "instructions"
    data: str = Field(description=INSTRUCTIONS_HELP)
    max_new_tokens: int = Field(512, ge=1, description="Longest answer (greedy).")


class ToxicityEvalConfig(SingleDataEval):
    EVAL: ClassVar[str] = "toxicity"
    data: str = Field(description="Prompts: any prompt JSONL (a 'group' field, and 'label', group the "
                       "figures, as in ToxiGen's prompts) or HH-RLHF transcripts (their first Human turn).")
    classifier: str | None = Field(None, description="A local HF sequence-classification folder scoring toxicity; "
                                   "default: alt-profanity-check (offline; profanity and insults).")
    samples: int = Field(4, ge=1, description="Samples a prompt (expected maximum toxicity is over them).")
    max_new_tokens: int = Field(32, ge=1, description="Longest sample (nucleus sampling, p=0.9).")


class TaxEvalConfig(EvalConfig):
    EVAL: ClassVar[str] = "tax"
    prose: str | None = Field(None, description=PROSE_HELP)
    truthfulqa: str | None = Field(None, description=TRUTHFULQA_HELP)
    mc: str | None = Field(None, description=MC_HELP)
    shots: int = Field(0, ge=0, description="Multiple choice: the first N items become worked examples before every "
                       "question (and are not scored).")
    batch_tokens: int = BATCH_TOKENS


class AllEvalConfig(EvalConfig):
    EVAL: ClassVar[str] = "all"
    truthfulqa: str | None = Field(None, description=TRUTHFULQA_HELP)
    crows: str | None = Field(None, description=CROWS_HELP)
    winogender: str | None = Field(None, description=WINOGENDER_HELP)
    toxicity: str | None = Field(None, description="Toxicity prompts (JSONL, or HH-RLHF transcripts).")
    hallucination: str | None = Field(None, description="Closed-domain prompts with a 'passage'.")
    instructions: str | None = Field(None, description=INSTRUCTIONS_HELP)
    prose: str | None = Field(None, description=PROSE_HELP)
    mc: str | None = Field(None, description=MC_HELP)
    shots: int = Field(0, ge=0, description="Multiple choice: the first N items become worked examples.")
    classifier: str | None = Field(None, description="Toxicity classifier: a HF sequence-classification folder "
                                   "(default alt-profanity-check).")
    samples: int = Field(4, ge=1, description="Toxicity samples a prompt.")
    batch_tokens: int = BATCH_TOKENS


class EloConfig(StageConfig):
    rankings: str = Field(description="Rankings whose responses carry sources[i].policy (JSONL).",
                          json_schema_extra={"argument": True})
    output: str | None = Field(None, description="Write the table as JSON here.", json_schema_extra={"short": "-o"})
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of whole rankings for the 95% intervals.")
    seed: int = Field(0, description="Seed for the bootstrap.")
