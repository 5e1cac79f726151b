"""`rlhfkit demo`'s configuration: the run's own options, and one config per stage.

The stage configs are the stages' own (`SFTConfig`, `SampleConfig`, `RMConfig`, `PPOConfig`), started from the
demo's settings below rather than each stage's command-line defaults; a YAML section or `--set ppo.lr=2e-5`
changes only the options it names. Paths (models, data, output folders), the seed and resume are the run's:
the pipeline sets them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    PPOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
    StageConfig,
    describe_error,
    merge_options,
)
from rlhfkit.errors import UsageError

if TYPE_CHECKING:
    from rlhfkit.demo.labelers import SimulatedLabeler

# What the demo changes from each stage's defaults, sized for a 30-minute run on a 2-core CPU. Why each setting:
# docs/results/demo-settings.md (the measurements behind them, with their commands).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    # 4 packed rows (about 3 demonstrations each) a step, 3 epochs: enough steps to learn the refusals
    "sft": {"epochs": 3.0, "lr": 1e-4, "batch_size": 4, "max_length": 384, "warmup_ratio": 0.1,
            "eval_fraction": 0.05, "eval_every": 0, "save_every": 25},
    # K = 8: the best RM accuracy against the judges per minute of sampling and training
    "sample": {"k": 8, "temperature": 1.0, "max_new_tokens": 48},
    # 2 prompts (with their K responses and every ranking of them) a step: about 35 steps an epoch
    "rm": {"epochs": 1.0, "lr": 5e-5, "batch_size": 2, "max_length": 384, "eval_fraction": 0.1, "eval_every": 0,
           "save_every": 50, "export_hf": False},  # the RM's standard-classifier copy: not needed by the demo
    # Each update averages many episodes (8 prompts x 8 responses, one minibatch, lr held constant), since a
    # small batch's gradient is mostly noise; with 8 responses a prompt the leave-one-out mean is the baseline
    # (RLOO). The ptx data path is the run folder's: the pipeline writes the demo's prose there.
    "ppo": {"iterations": 20, "rollout_batch": 64, "samples_per_prompt": 8, "minibatch_size": 64, "ppo_epochs": 2,
            "advantage": {"kind": "rloo"}, "max_new_tokens": 48, "lr": 3e-5, "min_lr_ratio": 1.0,
            "kl": {"coef": 0.05}, "ptx": {"data": "data/ptx.txt", "coef": 0.5}, "save_every": 5, "samples_every": 5},
}
STAGE_DEFAULTS["dpo"] = {"epochs": 2.0, "lr": 2e-6, "beta": 0.1, "batch_size": 2, "max_length": 384,
                         "eval_fraction": 0.1, "eval_every": 0, "save_every": 50}
STAGES = {"sft": SFTConfig, "sample": SampleConfig, "rm": RMConfig, "ppo": PPOConfig, "dpo": DPOConfig}
# What `compare` trains beside the reported PPO-ptx policy in round 1, on the same data, RM and budget.
ALTERNATIVES = {
    "dpo": "DPO on the round's rankings (no RM, no sampling)",
    "gae": "PPO-ptx with a value model and GAE (the paper's advantage)",
    "grpo": "GRPO-style PPO-ptx: no critic, scores normalised by the group's std, KL (k3) in the loss",
    "no-ptx": "PPO with γ = 0 (the alignment tax with and without ptx)",
}

# --quick: a smoke test of every stage in a few minutes
QUICK = {"demonstrations": 32, "rm_prompts": 10, "eval_prompts": 10, "prose_lines": 8, "panel_size": 4,
         "headroom_prompts": 6, "headroom_samples": 4, "gold_samples": 1, "outside_limit": 4, "eval_data_limit": 3,
         "outside_max_new_tokens": 16, "instructions_limit": 4, "instructions_max_new_tokens": 16,
         "held_out_labelers": 2, "sft": {"epochs": 1.0}, "sample": {"max_new_tokens": 16}, "rm": {"epochs": 1.0},
         "ppo": {"iterations": 2, "rollout_batch": 8, "minibatch_size": 8, "ppo_epochs": 1, "max_new_tokens": 16},
         "dpo": {"epochs": 1.0},
         "eval_samples": 1}


class DemoConfig(StageConfig):
    """The whole loop on the bundled data with simulated labelers (`rlhfkit demo`)."""

    name: str = Field("demo", description="Run name: everything goes to <runs-dir>/<name>/.")
    runs_dir: str = Field("runs", description="Folder holding the runs.")
    model: str = Field("smollm2-135m", description="Pretrained model to start from (a HF folder or smollm2-135m).")
    seed: int = Field(0, description="Seed for every stage.")
    resume: bool = Field(False, description="Continue an interrupted run from its last finished stage or checkpoint.")
    rounds: int = Field(1, ge=1, description="Rounds of comparisons + RM + PPO (round 2 samples the current policy; "
                        "configs/demo-large.yaml runs 2: a second round costs the default run more than its 30 "
                        "minutes).")
    quick: bool = Field(False, description="A tiny configuration for a smoke test (minutes on a CPU).")
    demonstrations: int | None = Field(None, description="Use only the first N bundled demonstrations for SFT.")
    rm_prompts: int | None = Field(80, description="RM-split prompts to sample comparisons for, every harmful and "
                                   "harmless-but-alarming one among them (None: all 136).")
    panel_size: int = Field(6, ge=2, description="Simulated labelers who rank training comparisons.")
    held_out_labelers: int = Field(3, ge=1, description="Simulated held-out labelers who judge the evaluation.")
    label_overlap: int = Field(3, ge=1, description="Labelers per comparison task (agreement is measured on these; "
                               "the RM trains on every one's ranking, their responses forwarded once).")
    panel_noise: float = Field(0.02, gt=0, description="Bradley–Terry noise of the simulated labelers (0.02: "
                               "about 70% agreement on the demo's comparisons, InstructGPT's labelers 73%).")
    compare: list[Literal["dpo", "gae", "grpo", "no-ptx"]] = Field(
        default_factory=list, description="Alternatives to train in round 1 beside the reported PPO-ptx, on the same "
        "rankings, RM, prompts and budget, each evaluated and judged against SFT in the report's comparison table "
        "(the default run spends its budget on the policy it reports): "
        + "; ".join(f"{k}: {v}" for k, v in ALTERNATIVES.items()) + " (configs/demo-compare.yaml).")
    eval_prompts: int | None = Field(None, description="Held-out prompts to evaluate on (default all).")
    eval_samples: int = Field(2, ge=1, description="Responses of each policy to each held-out prompt: win rates "
                              "compare them sample for sample, every other measure averages over them.")
    eval_temperature: float = Field(0.7, ge=0, description="Sampling temperature of the evaluated policies.")
    eval_top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of the evaluated policies.")
    prose_lines: int | None = Field(None, description="Held-out prose lines for the perplexity (default all).")
    outside_prompts: str | None = Field(None, description="Real user prompts the demo never trains on (e.g. the "
                                        "OpenAssistant prompt lottery): refusals and response lengths of the base, "
                                        "SFT and final policies on them. Unset: skipped.")
    outside_limit: int = Field(60, ge=1, description="How many of --outside-prompts to answer.")
    outside_max_new_tokens: int = Field(160, ge=8, description="Longest answer to an outside prompt (greedy).")
    instructions_limit: int = Field(100, ge=1, description="How many of --outside-prompts the outside instruction "
                                    "check (`rlhfkit eval instructions`) answers, each with 1-3 verifiable "
                                    "instructions attached, for the base model, SFT and every trained policy.")
    instructions_max_new_tokens: int = Field(320, ge=8, description="Longest answer in the outside instruction "
                                             "check (greedy).")
    eval_data: str | None = Field(None, description="A folder laid out as ../shared/data (truthfulqa/, crows-pairs/, "
                                  "winogender/, toxigen/): the paper's public evaluations (`rlhfkit eval all`) on "
                                  "the base, SFT and PPO policies, beside hallucination on the held-out passage "
                                  "prompts. Unset: hallucination only.")
    eval_data_limit: int = Field(10, ge=1, description="Items of each public data set (the time box: about a "
                                 "minute a policy on 2 CPU cores at 10; TruthfulQA takes 2.4 s an item, ToxiGen's "
                                 "prompts 1.4 s with 2 samples under 3 instructions).")
    headroom_prompts: int | None = Field(50, description="Held-out prompts on which the headroom above SFT is "
                                         "measured (SFT samples judged by the held-out labelers; None: all).")
    headroom_samples: int = Field(16, ge=2, description="SFT samples per prompt for the headroom (the oracle "
                                  "best-of-n curve goes up to this n).")
    gold_every: int = Field(5, ge=1, description="During PPO-ptx, score the policy's samples on the headroom "
                            "prompts by the judges (gold) and the RM (proxy) every N iterations and at the end.")
    gold_samples: int = Field(2, ge=1, description="Policy samples per headroom prompt at each gold/proxy point.")
    sft: SFTConfig = Field(default_factory=lambda: SFTConfig(**STAGE_DEFAULTS["sft"]),
                           description="Step 1's options (see `rlhfkit sft --help`).")
    sample: SampleConfig = Field(default_factory=lambda: SampleConfig(**STAGE_DEFAULTS["sample"]),
                                 description="Sampling the K responses labelers rank (`rlhfkit sample --help`).")
    rm: RMConfig = Field(default_factory=lambda: RMConfig(**STAGE_DEFAULTS["rm"]),
                         description="The reward model's options (`rlhfkit rm --help`).")
    ppo: PPOConfig = Field(default_factory=lambda: PPOConfig(**STAGE_DEFAULTS["ppo"]),
                           description="PPO-ptx's options (`rlhfkit ppo --help`), from the demo's settings, not the "
                           "command's defaults: advantage rloo with 8 responses a prompt (the command: gae with a "
                           "value model), 20 iterations of 64 rollouts, β 0.05, the demo's prose as the pretraining "
                           "mix with γ 0.5, 48 new tokens (STAGE_DEFAULTS in rlhfkit/demo/config.py). The "
                           "evaluation samples responses as long as its max_new_tokens.")
    dpo: DPOConfig = Field(default_factory=lambda: DPOConfig(**STAGE_DEFAULTS["dpo"]),
                           description="DPO's options when compare holds dpo (`rlhfkit dpo --help`).")

    @model_validator(mode="before")
    @classmethod
    def _from_the_demo_defaults(cls, values: Any) -> Any:
        """A stage section given as a mapping changes only what it names, on top of the demo's settings."""
        if isinstance(values, dict):
            values = dict(values)
            for stage, defaults in STAGE_DEFAULTS.items():
                if isinstance(values.get(stage), dict):
                    values[stage] = merge_options(defaults, values[stage])
        return values

    @classmethod
    def of_run(cls, run_dir: str | Path) -> DemoConfig:
        """The config a finished (or interrupted) run was made with: its demo.yaml."""
        path = Path(run_dir) / "demo.yaml"
        if not path.exists():
            raise UsageError(f"{run_dir}: no demo.yaml, not a demo run's folder")
        values = yaml.safe_load(path.read_text()) or {}
        if isinstance(values.get("ppo"), dict):  # a run made before PPO's variants lists every option flat
            values["ppo"] = PPOConfig.saved_before_variants(values["ppo"])
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise ConfigError(describe_error(e, path)) from None

    def panel(self) -> list[SimulatedLabeler]:
        """The simulated labelers who rank the training comparisons."""
        from rlhfkit.demo.labelers import make_panel  # (the command line's --help loads no torch)

        return make_panel(self.panel_size, self.seed, "labeler", noise=self.panel_noise)

    def judges(self) -> list[SimulatedLabeler]:
        """The held-out simulated labelers who judge the evaluation (and the gold score)."""
        from rlhfkit.demo.labelers import make_panel

        return make_panel(self.held_out_labelers, self.seed + 1000, "heldout", noise=self.panel_noise)

    def sized(self) -> DemoConfig:
        """This config, shrunk to the --quick sizes when asked."""
        if not self.quick:
            return self
        update: dict[str, Any] = {k: v for k, v in QUICK.items() if k not in STAGES}
        for stage in STAGES:
            update[stage] = getattr(self, stage).model_copy(update=QUICK.get(stage, {}))
        return self.model_copy(update=update)
