"""PPO's variants are sections of the config: an option exists only where it applies, a contradiction fails when
the config is parsed (naming both options), and configs and flags written as flat options keep working."""

import pytest
import yaml
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import GAE, GRPO, RLOO, ConfigError, PPOConfig, SharedValueHead, ValueModelCritic, load_config
from rlhfkit.demo.config import DemoConfig


def refused(match: str, **options) -> None:
    with pytest.raises(ValueError, match=match):
        PPOConfig(**options)


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_critic_free_advantages_refuse_every_critic_option(advantage):
    for option, value in {"gamma": 0.99, "lam": 0.9, "shared_value_head": True, "value_lr": 1e-5, "vf_coef": 0.2,
                          "value_clip_eps": 0.1, "value_warmup_iterations": 2, "value_model": "runs/rm"}.items():
        refused(f"'{option}'.*advantage: gae.*'advantage' is '{advantage}'", advantage=advantage,
                samples_per_prompt=2, **{option: value})
    with pytest.raises(ValueError, match="samples_per_prompt 2 or more"):
        PPOConfig(advantage=advantage)
    cfg = PPOConfig(advantage=advantage, samples_per_prompt=2)
    assert isinstance(cfg.advantage, RLOO | GRPO) and cfg.critic is None


def test_gae_critics_refuse_each_others_options():
    refused("'vf_coef'.*advantage.critic: shared_head.*'value_model'", vf_coef=0.2)
    refused("'value_lr'.*advantage.critic: value_model.*'shared_head'", shared_value_head=True, value_lr=1e-5)
    refused("'value_model'.*advantage.critic: value_model", shared_value_head=True, value_model="runs/rm")
    shared = PPOConfig(shared_value_head=True, vf_coef=0.3, value_warmup_iterations=1, gamma=0.99)
    assert shared.critic == SharedValueHead(coef=0.3, warmup_iterations=1) and shared.advantage.gamma == 0.99
    own = PPOConfig(value_lr=2e-5, value_model="runs/rm")
    assert own.critic == ValueModelCritic(lr=2e-5, init="runs/rm")


def test_kl_controller_ptx_and_engine_options_need_their_section():
    refused("'kl_horizon'.*'kl.adaptive'", kl_horizon=100)
    assert PPOConfig(kl_target=4.0, kl_horizon=100).kl.adaptive.horizon == 100
    assert PPOConfig(kl_coef=0.1).kl.adaptive is None
    for option in ("ptx_coef", "ptx_batch_size", "ptx_max_length"):
        refused(f"'{option}'.*'ptx'", **{option: 2})
    refused("'ptx_batch_size'.*turns it off", ptx_data="x.txt", ptx_coef=0, ptx_batch_size=2)
    assert PPOConfig(ptx_data="x.txt", ptx_coef=0).ptx is None  # the flat "0 = plain PPO"
    assert PPOConfig(ptx_data="x.txt", ptx_coef=0.5).ptx.coef == 0.5
    refused("'vllm_gpu_memory_utilization'.*engine: vllm.*'hf'", vllm_gpu_memory_utilization=0.5)
    assert PPOConfig(rollout_engine="vllm", vllm_gpu_memory_utilization=0.5).engine.gpu_memory_utilization == 0.5


def test_nested_sections_reject_options_of_another_variant():
    with pytest.raises(ValueError, match="gamma"):
        PPOConfig(advantage={"kind": "rloo", "gamma": 0.9}, samples_per_prompt=2)
    with pytest.raises(ValueError, match="coef"):
        PPOConfig(advantage={"kind": "gae", "critic": {"kind": "value_model", "coef": 0.1}})


def test_flat_yaml_and_nested_yaml_give_the_same_config(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"advantage": "gae", "gamma": 0.99, "shared_value_head": True, "vf_coef": 0.3,
                                    "kl_coef": 0.05, "kl_target": 6.0, "kl_in": "loss", "kl_estimator": "k3",
                                    "ptx_data": "prose.txt", "ptx_coef": 0.5, "lr": 1e-5}))
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({
        "advantage": {"kind": "gae", "gamma": 0.99, "critic": {"kind": "shared_head", "coef": 0.3}},
        "kl": {"coef": 0.05, "where": "loss", "estimator": "k3", "adaptive": {"target": 6.0}},
        "ptx": {"data": "prose.txt", "coef": 0.5}, "lr": 1e-5}))
    a, b = load_config(PPOConfig, flat, {}), load_config(PPOConfig, nested, {})
    assert a == b and isinstance(a.advantage, GAE)
    # a saved config reads back as itself
    a.save(tmp_path / "saved.yaml")
    assert load_config(PPOConfig, tmp_path / "saved.yaml", {}) == a
    # a flag overrides the file's section option; a dotted --set reaches into a section
    c = load_config(PPOConfig, nested, {"gamma": 0.9, "advantage.critic.coef": 0.7})
    assert c.advantage.gamma == 0.9 and c.critic.coef == 0.7
    with pytest.raises(ConfigError, match="nested.yaml: option 'gamma'.*'advantage' is 'grpo'"):
        load_config(PPOConfig, nested, {"advantage": "grpo", "gamma": 0.9, "samples_per_prompt": 2})


def test_updated_switches_variant_without_carrying_the_old_ones_options():
    cfg = PPOConfig(gamma=0.9, value_lr=1e-4)
    grpo = cfg.updated(advantage="grpo", samples_per_prompt=4, kl={"where": "loss", "estimator": "k3"})
    assert isinstance(grpo.advantage, GRPO) and grpo.kl.where == "loss" and grpo.kl.coef == cfg.kl.coef
    back = grpo.updated(advantage="gae")
    assert back.advantage == GAE()  # a fresh GAE: the old gamma and value_lr went with the old variant


def test_cli_flags_fold_into_sections_and_contradictions_fail_before_anything_runs(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(app, ["ppo", "--help"], terminal_width=200).output
    for flag in ("--advantage", "--gamma", "--shared-value-head", "--value-lr", "--kl-target", "--ptx-data",
                 "--rollout-engine", "--set"):
        assert flag in help_text
    result = runner.invoke(app, ["ppo", "--advantage", "rloo", "--samples-per-prompt", "2", "--value-lr", "1e-5",
                                 "--output-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, ConfigError)
    assert "option 'value_lr'" in str(result.exception) and "'advantage' is 'rloo'" in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_demo_sections_merge_flat_and_nested_options_over_its_defaults():
    default = DemoConfig()
    assert default.ppo.advantage.kind == "rloo" and default.ppo.ptx.coef == 0.5 and default.ppo.kl.coef == 0.05
    nested = DemoConfig(ppo={"kl": {"estimator": "k3"}})
    assert nested.ppo.kl.coef == 0.05 and nested.ppo.kl.estimator == "k3"  # the demo's β kept
    flat = DemoConfig(ppo={"advantage": "gae", "shared_value_head": False, "kl_coef": 0.1})
    assert isinstance(flat.ppo.critic, ValueModelCritic) and flat.ppo.kl.coef == 0.1
    assert DemoConfig(ppo={"ptx_coef": 0}).ppo.ptx is None
    with pytest.raises(ValueError, match="'gamma'"):
        DemoConfig(ppo={"gamma": 0.9})  # the demo's default advantage is rloo


# what `rlhfkit ppo` saved as config.yaml before the variants: every option flat, applicable or not
SAVED_FLAT = {"policy": "runs/sft", "reward_model": "runs/rm", "value_model": None, "shared_value_head": False,
              "rollout_engine": "hf", "vllm_gpu_memory_utilization": 0.3, "ptx_data": "prose.txt", "ptx_coef": 0.5,
              "ptx_batch_size": 2, "ptx_max_length": 256, "iterations": 20, "rollout_batch": 64,
              "samples_per_prompt": 8, "advantage": "rloo", "gamma": 1.0, "lam": 0.95, "kl_coef": 0.05,
              "kl_target": None, "kl_horizon": 10000, "kl_estimator": "k1", "kl_in": "reward", "value_lr": 1e-5,
              "vf_coef": 0.1, "value_warmup_iterations": 0, "value_clip_eps": 0.2, "lr": 3e-5}


def test_a_run_saved_before_the_variants_reads_back_as_it_ran(tmp_path):
    with pytest.raises(ValueError, match="applies only"):
        PPOConfig(**SAVED_FLAT)  # as a config a person writes: refused
    cfg = PPOConfig.model_validate(PPOConfig.saved_before_variants(SAVED_FLAT))
    assert isinstance(cfg.advantage, RLOO) and cfg.samples_per_prompt == 8 and cfg.kl.coef == 0.05
    assert cfg.kl.adaptive is None and cfg.ptx.data == "prose.txt" and cfg.ptx.coef == 0.5 and cfg.engine.kind == "hf"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({"name": "old", "ppo": SAVED_FLAT}))
    demo = DemoConfig.of_run(tmp_path)
    assert isinstance(demo.ppo.advantage, RLOO) and demo.ppo.iterations == 20 and len(demo.judges()) == 3
