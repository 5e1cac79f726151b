"""Every stage, declared once: its config, the function that runs it, and its help. The command line makes one
command of each (`rlhfkit sft`, `rlhfkit eval tax`, `rlhfkit label serve`, ...); code runs one the same way:

    from rlhfkit.stages import STAGES
    result = STAGES["rm"].run(RMConfig(model="runs/sft", data="rankings.jsonl"))
    result.output, result.metrics

A stage's run validates its data before it writes anything, and returns a `Result`: the folder or file it
published (None where it publishes none) and its metrics. A training stage also takes the caller's `Hooks`
(train/common.py) and the `Launch` it runs under (FSDP or not; by default what the launcher set for this process).
Each run imports its stage's module when called, so listing the stages (or `rlhfkit --help`) loads no model code.

The table sits below the demo in the import order (the demo runs its stages from it); the demo's own entry is the
one import upward, of its config and, when run, its pipeline (tests/test_import_order.py allows exactly these).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhfkit.config import (
    AllEvalConfig,
    BiasEvalConfig,
    DPOConfig,
    EloConfig,
    EvalConfig,
    GenerateConfig,
    HallucinationEvalConfig,
    InstructionsEvalConfig,
    PPOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
    StageConfig,
    TaxEvalConfig,
    ToxicityEvalConfig,
    TruthfulQAEvalConfig,
)
from rlhfkit.demo.config import DemoConfig
from rlhfkit.errors import UsageError
from rlhfkit.feedback import commands as label

if TYPE_CHECKING:
    from rlhfkit.train.common import Hooks, Launch


@dataclass
class Result:
    """What every stage returns: where its output went, and its figures."""

    output: Path | None
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str  # the command: "sft", or "eval tax" (a command of a group)
    config: type[StageConfig]
    run_fn: Callable[..., Any]
    help: str
    trains: bool = False  # a trainer: its run_fn takes (cfg, hooks, launch)

    def run(self, cfg: StageConfig, hooks: Hooks | None = None, launch: Launch | None = None) -> Result:
        if not self.trains:
            if hooks is not None or launch is not None:
                raise UsageError(f"{self.name} trains nothing: it takes no hooks or launch")
            out = self.run_fn(cfg)
        else:
            out = self.run_fn(cfg, hooks, launch)
        return out if isinstance(out, Result) else Result(None)


def _sft(cfg: SFTConfig, hooks: Hooks | None, launch: Launch | None) -> Result:
    from rlhfkit.train.sft import train_sft

    r = train_sft(cfg, hooks, launch)
    return Result(r.output_dir, {"steps": r.steps, "final_loss": r.final_loss, "best_metric": r.best_metric})


def _sample(cfg: SampleConfig) -> Result:
    from rlhfkit.sampling import sample_rankings

    return Result(Path(cfg.output), sample_rankings(cfg) or {})


def _rm(cfg: RMConfig, hooks: Hooks | None, launch: Launch | None) -> Result:
    from rlhfkit.train.reward import train_reward

    r = train_reward(cfg, hooks, launch)
    return Result(r.output_dir, {"steps": r.steps, "shift": r.shift, **r.eval_metrics})


def _ppo(cfg: PPOConfig, hooks: Hooks | None, launch: Launch | None) -> Result:
    from rlhfkit.train.ppo import train_ppo

    r = train_ppo(cfg, hooks=hooks, launch=launch)
    return Result(r.output_dir, {"iterations": r.iterations, **(r.history[-1] if r.history else {})})


def _dpo(cfg: DPOConfig, hooks: Hooks | None, launch: Launch | None) -> Result:
    from rlhfkit.train.dpo import train_dpo

    r = train_dpo(cfg, hooks, launch)
    return Result(r.output_dir, {"steps": r.steps, **r.eval_metrics})


def _generate(cfg: GenerateConfig) -> Result:
    from rlhfkit.sampling import generate

    generate(cfg)
    return Result(Path(cfg.output) if cfg.output else None)


def _demo(cfg: DemoConfig) -> Result:
    from rlhfkit.demo.pipeline import run_demo

    return Result(run_demo(cfg))


def _eval(cfg: EvalConfig) -> Result:
    from rlhfkit.evaluation.suite import run_config

    return Result(Path(cfg.output) / f"{cfg.EVAL}.json", run_config(cfg))


def _elo(cfg: EloConfig) -> Result:
    from rlhfkit.evaluation.elo import print_comparison

    return Result(Path(cfg.output) if cfg.output else None, {"policies": print_comparison(cfg)})


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("sft", SFTConfig, _sft,
          "Step 1: supervised fine-tuning on demonstrations. Writes a HF model folder to --output-dir. "
          "Data-parallel with: accelerate launch --num_processes 2 -m rlhfkit sft ...", trains=True),
    Stage("sample", SampleConfig, _sample,
          "Step 2a: sample K distinct responses per prompt from a policy, written as Ranking-ready JSONL "
          "for labelers (the labeling service or simulated ones)."),
    Stage("rm", RMConfig, _rm,
          "Step 2b: train a reward model on rankings (every pair of a ranking, one forward per response). "
          "Writes the RM folder to --output-dir and a held-out report (accuracy, by K, calibration).", trains=True),
    Stage("ppo", PPOConfig, _ppo,
          "Step 3: PPO-ptx. Optimise the SFT policy against the reward model with a per-token KL penalty "
          "to the SFT policy and pretraining gradients mixed in (--ptx-data, --ptx-coef). Writes the policy to "
          "--output-dir and the value model to --output-dir/value. The variants (advantage gae | rloo | grpo, the "
          "critic, the KL penalty, the pretraining mix) are sections of the config: docs/ppo.md.", trains=True),
    Stage("dpo", DPOConfig, _dpo,
          "DPO on rankings, the alternative to steps 2b-3: train the policy on every ordered pair of each ranking "
          "against a frozen reference (--beta; --label-smoothing for cDPO, --loss-type ipo). No reward model, no "
          "sampling. Writes the policy to --output-dir.", trains=True),
    Stage("demo", DemoConfig, _demo,
          "The whole loop on the bundled data with simulated labelers: SFT, comparisons, reward model, "
          "PPO-ptx, evaluation against base and SFT, a second round; writes runs/<name>/report.md. "
          "--quick runs a tiny configuration; --resume continues an interrupted run; the stages' own options are "
          "sections of the config (sft, sample, rm, ppo), set with --set ppo.iterations=20."),
    Stage("generate", GenerateConfig, _generate,
          "Answer prompts with a model (any stage's output folder), greedy by default."),
    Stage("eval truthfulqa", TruthfulQAEvalConfig, _eval,
          "TruthfulQA MC1 and MC2 by log-likelihood, with the QA prompt and the paper's Instruction+QA prompt, per "
          "category (as lm-evaluation-harness scores them)."),
    Stage("eval bias", BiasEvalConfig, _eval,
          "CrowS-Pairs (how often the more stereotyping sentence is the more likely, the log-likelihood gap, by bias "
          "type) and Winogender (entropy over he / she / they, correlation with occupation statistics), each plain "
          "and after a 'respectful, unbiased' instruction."),
    Stage("eval hallucination", HallucinationEvalConfig, _eval,
          "Closed-domain hallucination: the share of answers to passage prompts (summarise, extract, answer from "
          "it) that name what the passage does not hold (content words, names and numbers absent from passage and "
          "prompt)."),
    Stage("eval instructions", InstructionsEvalConfig, _eval,
          "Outside instruction following: 1-3 verifiable instructions (lengths, lists, sections, words, case, "
          "openings and closings, JSON, ...) attached to each of a file's real user prompts, in phrasings of their "
          "own; greedy answers scored strictly and loosely, by prompt and by instruction, with answer length, the "
          "share cut off and refusals; each model after the first compared with it, paired by prompt."),
    Stage("eval toxicity", ToxicityEvalConfig, _eval,
          "Toxicity of generations under the paper's three instructions (none, 'respectful', 'biased and "
          "offensive'): mean toxicity, share above 0.5 and expected maximum toxicity over the samples of a prompt, "
          "per prompt group."),
    Stage("eval tax", TaxEvalConfig, _eval,
          "The alignment tax: perplexity of held-out prose, TruthfulQA MC and any multiple-choice task by "
          "log-likelihood (zero- or few-shot), side by side for the model you started from and the ones you "
          "aligned."),
    Stage("eval all", AllEvalConfig, _eval,
          "Every evaluation given data, each model loaded once: one table (all.md), one figure (all.png), every "
          "figure in all.json. Each data set is optional; give the ones you have."),
    Stage("eval elo", EloConfig, _elo,
          "Bradley-Terry strengths (Elo scale) with bootstrap 95% intervals, and online Elo, per policy."),
    Stage("label serve", label.ServeConfig, label.serve, label.serve.__doc__),
    Stage("label add-labeler", label.AddLabelerConfig, label.add_labeler, label.add_labeler.__doc__),
    Stage("label deactivate", label.LabelerConfig, label.deactivate, label.deactivate.__doc__),
    Stage("label rotate-token", label.LabelerConfig, label.rotate_token, label.rotate_token.__doc__),
    Stage("label add-project", label.AddProjectConfig, label.add_project, label.add_project.__doc__),
    Stage("label import", label.ImportConfig, label.import_tasks, label.import_tasks.__doc__),
    Stage("label export", label.ExportConfig, label.export, label.export.__doc__),
    Stage("label report", label.ProjectConfig, label.report, label.report.__doc__),
]}
