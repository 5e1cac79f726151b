"""One table of stages: every command of the command line comes from it, each takes --config, and each runs the
same from code."""

import json

import yaml
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import EloConfig
from rlhfkit.data import write_jsonl
from rlhfkit.stages import STAGES, Result


def test_every_command_is_a_stage_with_a_config_file():
    runner = CliRunner()
    expected = {"sft", "sample", "rm", "ppo", "dpo", "demo", "generate", "eval truthfulqa", "eval bias",
                "eval hallucination", "eval instructions", "eval toxicity", "eval tax", "eval all", "eval elo",
                "label serve", "label add-labeler", "label deactivate", "label rotate-token", "label add-project",
                "label import", "label export", "label report"}
    assert set(STAGES) == expected
    for name in STAGES:
        out = runner.invoke(app, [*name.split(), "--help"], terminal_width=200)
        assert out.exit_code == 0 and "--config" in out.output, name


def test_label_commands_read_their_options_from_a_config_file(tmp_path):
    cfg = tmp_path / "label.yaml"
    cfg.write_text(yaml.safe_dump({"db": f"sqlite:///{tmp_path / 'f.db'}", "overlap": 2, "kind": "pairwise"}))
    run = CliRunner().invoke
    assert run(app, ["label", "add-project", "duel", "--config", str(cfg)]).exit_code == 0
    shared = tmp_path / "db.yaml"  # the one setting every label command shares
    shared.write_text(yaml.safe_dump({"db": f"sqlite:///{tmp_path / 'f.db'}"}))
    report = json.loads(run(app, ["label", "report", "duel", "--config", str(shared)]).output)
    assert report["progress"]["tasks"] == 0
    from rlhfkit.feedback.store import Store

    project = Store(f"sqlite:///{tmp_path / 'f.db'}").project("duel")
    assert project.kind == "pairwise" and project.overlap == 2


def test_eval_elo_from_a_config_file_and_from_code(tmp_path):
    rankings = tmp_path / "duel.jsonl"
    write_jsonl(rankings, [{"prompt": f"q{i}", "responses": ["a", "b"], "ranks": [0, 1] if i % 4 else [1, 0],
                            "sources": [{"policy": "ppo"}, {"policy": "sft"}]} for i in range(12)])
    cfg = tmp_path / "elo.yaml"
    cfg.write_text(yaml.safe_dump({"rankings": str(rankings), "bootstrap": 50, "output": str(tmp_path / "e.json")}))
    assert CliRunner().invoke(app, ["eval", "elo", "--config", str(cfg)]).exit_code == 0
    table = json.loads((tmp_path / "e.json").read_text())
    assert {row["policy"] for row in table} == {"ppo", "sft"}
    result = STAGES["eval elo"].run(EloConfig(rankings=str(rankings), bootstrap=50))
    assert isinstance(result, Result) and result.output is None
    assert [r["policy"] for r in result.metrics["policies"]] == [r["policy"] for r in table]


def test_a_trainer_refuses_a_hook_it_has_no_use_for(tmp_path):
    import pytest

    from rlhfkit.config import DPOConfig, PPOConfig, RMConfig, SFTConfig
    from rlhfkit.errors import UsageError
    from rlhfkit.train.common import Hooks

    def probe(model, tokenizer):
        return {}

    for name, cfg, hooks in (("ppo", PPOConfig(output_dir=str(tmp_path / "ppo")), Hooks(select=probe)),
                             ("rm", RMConfig(output_dir=str(tmp_path / "rm")), Hooks(evaluate=probe)),
                             ("dpo", DPOConfig(output_dir=str(tmp_path / "dpo")), Hooks(select=probe)),
                             ("sft", SFTConfig(output_dir=str(tmp_path / "sft")), Hooks(evaluate=probe))):
        with pytest.raises(UsageError, match="takes no (evaluate|select) hook"):
            STAGES[name].run(cfg, hooks)
    with pytest.raises(UsageError, match="trains nothing"):  # a stage that trains nothing takes no hooks at all
        STAGES["eval elo"].run(EloConfig(rankings=str(tmp_path / "r.jsonl")), Hooks())
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_every_trainer_is_the_protocol_the_loop_drives():
    """SFT, the RM, DPO and PPO implement `Trainer` (train/common.py): the loop calls nothing else."""
    from rlhfkit.train.common import CausalLMTrainer, Trainer
    from rlhfkit.train.dpo import DPO
    from rlhfkit.train.ppo import PPO
    from rlhfkit.train.reward import RewardTraining
    from rlhfkit.train.sft import SFT

    for trainer in (SFT, RewardTraining, DPO, PPO):
        assert issubclass(trainer, Trainer) and trainer.step is not Trainer.step, trainer
        assert trainer.checkpoint is not Trainer.checkpoint and callable(trainer.build), trainer
    assert issubclass(SFT, CausalLMTrainer) and issubclass(DPO, CausalLMTrainer)
    assert PPO.load_state is not Trainer.load_state  # the KL controller resumes with the optimisers


def test_listing_the_stages_loads_no_model_code():
    import subprocess
    import sys

    code = "import sys, rlhfkit.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
