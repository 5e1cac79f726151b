import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import DPOConfig, PPOConfig, RMConfig, SFTConfig
from rlhfkit.data import write_jsonl

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast

WORKER = Path(__file__).with_name("ddp_worker.py")


FSDP2 = Path(__file__).parents[1] / "configs" / "accelerate" / "fsdp2.yaml"


def run_worker(cfg, tmp_path: Path, processes: int, stage: str = "sft", fsdp: bool = False,
               kill_after: int | None = None) -> None:
    cfg_file = tmp_path / f"cfg-{stage}-{processes}-{Path(cfg.output_dir).name}.json"
    cfg_file.write_text(cfg.model_dump_json())
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if fsdp:  # the shipped config, as a user launches it
        launch[3:3] = ["--config_file", str(FSDP2)]
        launch += ["--main_process_port", "29518"]
    elif processes > 1:
        launch += ["--multi_gpu", "--main_process_port", "29517"]  # accelerate's flag for DDP, gloo on CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(WORKER), stage, str(cfg_file)] + ([str(kill_after)] if kill_after else [])
    out = subprocess.run(launch + args, capture_output=True, text=True, env=env, timeout=300)
    if kill_after:
        assert out.returncode != 0, "the run was to be killed"
    else:
        assert out.returncode == 0, out.stderr[-3000:]


def test_two_process_ddp_matches_one_process(tmp_path, tiny_llama, demos_file):
    base = dict(model=str(tiny_llama), data=str(demos_file), max_length=64, lr=3e-3, max_steps=4, warmup_ratio=0,
                eval_every=2, eval_fraction=0.25, save_every=2, progress=False, dtype="fp32")
    two = SFTConfig(**base, batch_size=1, output_dir=str(tmp_path / "two"))
    one = SFTConfig(**base, batch_size=2, output_dir=str(tmp_path / "one"))  # same rows per step
    run_worker(two, tmp_path, 2)
    run_worker(one, tmp_path, 1)

    rank0 = load_file(tmp_path / "two" / "weights-rank0.safetensors")
    rank1 = load_file(tmp_path / "two" / "weights-rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    assert all((rank0[k] == rank1[k]).all() for k in rank0), "ranks diverged"

    def losses(run):
        return [json.loads(line) for line in (tmp_path / run / "logs" / "metrics.jsonl").read_text().splitlines()]

    two_log, one_log = losses("two"), losses("one")
    assert [m["loss"] for m in two_log] == pytest.approx([m["loss"] for m in one_log], rel=1e-4)
    evals = [(m["step"], m["eval_loss"]) for m in two_log if "eval_loss" in m]
    assert [s for s, _ in evals] == [2, 4]
    assert [e for _, e in evals] == pytest.approx([m["eval_loss"] for m in one_log if "eval_loss" in m], rel=1e-4)


def test_two_process_reward_model_matches_one_process(tmp_path, tiny_llama):
    from test_reward import planted_rankings

    write_jsonl(tmp_path / "r.jsonl", planted_rankings(24, 5))
    base = dict(model=str(tiny_llama), data=str(tmp_path / "r.jsonl"), max_length=64, lr=2e-3, max_steps=3,
                warmup_ratio=0, eval_every=0, eval_fraction=0.25, save_every=0, progress=False, dtype="fp32")
    run_worker(RMConfig(**base, batch_size=2, output_dir=str(tmp_path / "two")), tmp_path, 2, "rm")
    run_worker(RMConfig(**base, batch_size=4, output_dir=str(tmp_path / "one")), tmp_path, 1, "rm")
    rank0 = load_file(tmp_path / "two" / "weights-rank0.safetensors")
    rank1 = load_file(tmp_path / "two" / "weights-rank1.safetensors")
    assert all((rank0[k] == rank1[k]).all() for k in rank0), "ranks diverged"

    def losses(run):
        return [json.loads(x)["loss"] for x in (tmp_path / run / "logs" / "metrics.jsonl").read_text().splitlines()]

    assert losses("two") == pytest.approx(losses("one"), rel=1e-4)
    report_two = json.loads((tmp_path / "two" / "eval_report.json").read_text())
    report_one = json.loads((tmp_path / "one" / "eval_report.json").read_text())
    assert report_two["accuracy"] == pytest.approx(report_one["accuracy"])


def test_two_process_ppo_keeps_ranks_identical(tmp_path, tiny_llama):
    from rlhfkit.models.reward import reward_model_from_causal_lm

    rm, tok = reward_model_from_causal_lm(tiny_llama)
    rm.save(tmp_path / "rm", tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcdefgh"))
    (tmp_path / "ptx.txt").write_text("the cat sat on the mat\nthe dog ran to the river\n")
    cfg = PPOConfig(policy=str(tiny_llama), reward_model=str(tmp_path / "rm"), prompts=str(tmp_path / "p.jsonl"),
                    ptx_data=str(tmp_path / "ptx.txt"), ptx_batch_size=1, output_dir=str(tmp_path / "ppo"),
                    iterations=2, rollout_batch=4, minibatch_size=2, ppo_epochs=2, max_new_tokens=8, lr=1e-3,
                    warmup_ratio=0.0, progress=False, dtype="fp32", save_every=0)
    run_worker(cfg, tmp_path, 2, "ppo")
    rank0 = load_file(tmp_path / "ppo" / "weights-rank0.safetensors")
    rank1 = load_file(tmp_path / "ppo" / "weights-rank1.safetensors")
    assert all((rank0[k] == rank1[k]).all() for k in rank0), "ranks diverged"
    start = load_file(tiny_llama / "model.safetensors")
    assert any(not torch.equal(rank0[k], start[k]) for k in start if k in rank0), "the policy did not move"


def test_fsdp2_matches_ddp_and_resumes_after_a_kill(tmp_path, tiny_llama, demos_file):
    """FSDP2 on 2 CPU processes (gloo), launched with configs/accelerate/fsdp2.yaml: the same losses and final
    weights as DDP and as one process, sharded checkpoints, and a kill -9 + --resume equal to a straight run."""
    from rlhfkit.train.sft import train_sft

    base = dict(model=str(tiny_llama), data=str(demos_file), max_length=64, lr=3e-3, max_steps=4, warmup_ratio=0,
                eval_every=0, eval_fraction=0.25, save_every=2, progress=False, dtype="fp32", grad_accum=2)
    train_sft(SFTConfig(**base, batch_size=2, output_dir=str(tmp_path / "one")))
    run_worker(SFTConfig(**base, batch_size=1, output_dir=str(tmp_path / "ddp")), tmp_path, 2)
    run_worker(SFTConfig(**base, batch_size=1, output_dir=str(tmp_path / "fsdp")), tmp_path, 2, fsdp=True)
    killed = SFTConfig(**base, batch_size=1, output_dir=str(tmp_path / "resumed"))
    run_worker(killed, tmp_path, 2, fsdp=True, kill_after=2)
    assert (tmp_path / "resumed" / "checkpoints" / "step-2" / "optimizer-model").is_dir()  # sharded states
    run_worker(killed.model_copy(update={"resume": True}), tmp_path, 2, fsdp=True)

    def losses(run):
        return [json.loads(x)["loss"] for x in (tmp_path / run / "logs" / "metrics.jsonl").read_text().splitlines()]

    def weights(run):
        return load_file(tmp_path / run / "model.safetensors")

    assert losses("fsdp") == pytest.approx(losses("ddp"), rel=1e-5)
    assert losses("fsdp") == pytest.approx(losses("one"), rel=1e-4)
    assert losses("resumed") == pytest.approx(losses("fsdp"), rel=1e-6)
    ddp, fsdp, resumed, start = weights("ddp"), weights("fsdp"), weights("resumed"), weights("one")
    assert fsdp.keys() == ddp.keys() == start.keys()  # a normal HF folder, gathered from the shards
    for k in ddp:
        assert torch.allclose(fsdp[k], ddp[k], atol=1e-6), k
        assert torch.equal(resumed[k], fsdp[k]), k


def test_fsdp2_reward_model_matches_ddp(tmp_path, tiny_llama):
    from test_reward import planted_rankings

    write_jsonl(tmp_path / "r.jsonl", planted_rankings(22, 5))  # an uneven held-out split: 3 prompts, 2 processes
    base = dict(model=str(tiny_llama), data=str(tmp_path / "r.jsonl"), max_length=64, lr=2e-3, max_steps=3,
                warmup_ratio=0, eval_every=0, eval_fraction=0.15, save_every=0, progress=False, dtype="fp32",
                batch_size=2, export_hf=False)
    run_worker(RMConfig(**base, output_dir=str(tmp_path / "ddp")), tmp_path, 2, "rm")
    run_worker(RMConfig(**base, output_dir=str(tmp_path / "fsdp")), tmp_path, 2, "rm", fsdp=True)

    def losses(run):
        return [json.loads(x)["loss"] for x in (tmp_path / run / "logs" / "metrics.jsonl").read_text().splitlines()]

    assert losses("fsdp") == pytest.approx(losses("ddp"), rel=1e-5)
    ddp, fsdp = (load_file(tmp_path / run / "model.safetensors") for run in ("ddp", "fsdp"))
    assert ddp.keys() == fsdp.keys() and all(torch.allclose(ddp[k], fsdp[k], atol=1e-6) for k in ddp)
    ddp, fsdp = (load_file(tmp_path / run / "reward_head.safetensors") for run in ("ddp", "fsdp"))
    assert torch.allclose(ddp["weight"], fsdp["weight"], atol=1e-6)
    # the bias's gradient is zero in a pairwise loss (r_w - r_l): it is not trained, only shifted afterwards
    assert ddp["bias"].item() == fsdp["bias"].item()
    report = [json.loads((tmp_path / run / "eval_report.json").read_text()) for run in ("ddp", "fsdp")]
    assert report[0]["pairs"] == report[1]["pairs"] > 0 and report[0]["loss"] == pytest.approx(report[1]["loss"])


def test_dpo_on_two_processes_ddp_and_fsdp2_matches_one(tmp_path, tiny_llama):
    from test_reward import planted_rankings

    from rlhfkit.train.dpo import train_dpo

    write_jsonl(tmp_path / "r.jsonl", planted_rankings(22, 5))
    base = dict(model=str(tiny_llama), data=str(tmp_path / "r.jsonl"), max_length=64, lr=1e-3, max_steps=3,
                warmup_ratio=0, eval_every=0, eval_fraction=0.15, save_every=0, progress=False, dtype="fp32")
    train_dpo(DPOConfig(**base, batch_size=4, output_dir=str(tmp_path / "one")))
    run_worker(DPOConfig(**base, batch_size=2, output_dir=str(tmp_path / "ddp")), tmp_path, 2, "dpo")
    run_worker(DPOConfig(**base, batch_size=2, output_dir=str(tmp_path / "fsdp")), tmp_path, 2, "dpo", fsdp=True)

    def logged(run):
        return [json.loads(x) for x in (tmp_path / run / "logs" / "metrics.jsonl").read_text().splitlines()]

    for run in ("ddp", "fsdp"):
        assert [m["loss"] for m in logged(run)] == pytest.approx([m["loss"] for m in logged("one")], rel=1e-4)
        assert logged(run)[-1]["eval_accuracy"] == pytest.approx(logged("one")[-1]["eval_accuracy"])
    one, fsdp = (load_file(tmp_path / run / "model.safetensors") for run in ("one", "fsdp"))
    assert one.keys() == fsdp.keys() and all(torch.allclose(one[k], fsdp[k], atol=1e-5) for k in one)


def test_fsdp2_ppo_matches_ddp_and_resumes_after_a_kill(tmp_path, tiny_llama):
    """PPO-ptx with a value model of its own under FSDP2 on 2 processes: the policy and the value model sharded,
    gathered whole once an iteration for sampling and scoring (the processes' responses end at different steps),
    the frozen reference and RM sharded and gathered a layer at a time for their forwards; the same metrics and
    published weights as DDP, and a kill + --resume equal to a straight run."""
    from rlhfkit.models.reward import reward_model_from_causal_lm

    rm, tok = reward_model_from_causal_lm(tiny_llama)
    rm.save(tmp_path / "rm", tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcdefgh"))
    (tmp_path / "ptx.txt").write_text("the cat sat on the mat\nthe dog ran to the river\n")
    base = dict(policy=str(tiny_llama), reward_model=str(tmp_path / "rm"), prompts=str(tmp_path / "p.jsonl"),
                ptx_data=str(tmp_path / "ptx.txt"), ptx_batch_size=1, iterations=3, rollout_batch=4,
                samples_per_prompt=2, minibatch_size=2, ppo_epochs=2, max_new_tokens=8, lr=1e-3, advantage="gae",
                shared_value_head=False, warmup_ratio=0.0, progress=False, dtype="fp32", save_every=1)
    run_worker(PPOConfig(**base, output_dir=str(tmp_path / "ddp")), tmp_path, 2, "ppo")
    run_worker(PPOConfig(**base, output_dir=str(tmp_path / "fsdp")), tmp_path, 2, "ppo", fsdp=True)
    killed = PPOConfig(**base, output_dir=str(tmp_path / "resumed"))
    run_worker(killed, tmp_path, 2, "ppo", fsdp=True, kill_after=2)
    before_kill = (tmp_path / "resumed" / "logs" / "metrics.jsonl").read_text().splitlines()
    run_worker(killed.model_copy(update={"resume": True}), tmp_path, 2, "ppo", fsdp=True)
    after = (tmp_path / "resumed" / "logs" / "metrics.jsonl").read_text().splitlines()
    assert len(before_kill) == 2 and after[:2] == before_kill  # continued from step 2 (its timings kept), not redone

    def metrics(run):
        rows = [json.loads(x) for x in (tmp_path / run / "logs" / "metrics.jsonl").read_text().splitlines()]
        return [m[k] for m in rows for k in ("score", "kl", "pg_loss", "vf_loss", "ptx_loss")]

    assert len(metrics("fsdp")) == 3 * 5
    shards = {p.name for p in (tmp_path / "fsdp" / "checkpoints").glob("step-3/optimizer-*")}
    assert shards == {"optimizer-policy", "optimizer-value"}  # sharded: each process wrote its part
    for rank in (0, 1):  # the frozen reference and RM: sharded under FSDP, whole under DDP
        fsdp_held, ddp_held = (json.loads((tmp_path / run / f"frozen-rank{rank}.json").read_text())
                               for run in ("fsdp", "ddp"))
        for name in ("reference", "reward"):
            assert fsdp_held[name]["sharded"] and not ddp_held[name]["sharded"], name
            assert fsdp_held[name]["local"] < 0.6 * fsdp_held[name]["whole"], name  # about half each
            assert ddp_held[name]["local"] == ddp_held[name]["whole"], name
    assert metrics("fsdp") == pytest.approx(metrics("ddp"), rel=1e-4, abs=1e-6)
    assert metrics("resumed")[-5:] == pytest.approx(metrics("fsdp")[-5:], rel=1e-4, abs=1e-6)
    for folder in ("model.safetensors", "value/model.safetensors", "value/reward_head.safetensors"):
        ddp, fsdp, resumed = (load_file(tmp_path / run / folder) for run in ("ddp", "fsdp", "resumed"))
        assert ddp.keys() == fsdp.keys() == resumed.keys(), folder  # normal folders, gathered from the shards
        for k in ddp:
            assert torch.allclose(fsdp[k], ddp[k], atol=1e-5), (folder, k)
            assert torch.allclose(resumed[k], fsdp[k], atol=1e-5), (folder, k)


def test_fsdp2_ppo_in_bf16(tmp_path, tiny_llama):
    """Under bf16 the rollout cannot decode a bf16 copy of a gathered FSDP model (FSDP forbids deepcopy): it decodes
    the gathered weights under autocast, and the frozen models are sharded in bf16."""
    from rlhfkit.models.reward import reward_model_from_causal_lm

    rm, tok = reward_model_from_causal_lm(tiny_llama)
    rm.save(tmp_path / "rm", tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcd"))
    cfg = PPOConfig(policy=str(tiny_llama), reward_model=str(tmp_path / "rm"), prompts=str(tmp_path / "p.jsonl"),
                    iterations=2, rollout_batch=4, samples_per_prompt=2, minibatch_size=4, ppo_epochs=1,
                    max_new_tokens=8, advantage="rloo", progress=False, dtype="bf16", save_every=0,
                    output_dir=str(tmp_path / "fsdp"))
    run_worker(cfg, tmp_path, 2, "ppo", fsdp=True)
    rows = [json.loads(x) for x in (tmp_path / "fsdp" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r[k])) for r in rows for k in ("score", "kl", "pg_loss"))
    held = json.loads((tmp_path / "fsdp" / "frozen-rank0.json").read_text())
    assert held["reference"]["sharded"] and held["reward"]["sharded"]
    assert (tmp_path / "fsdp" / "model.safetensors").exists()


def test_a_deepspeed_launch_stops_with_a_clear_message(tmp_path, tiny_llama, demos_file, monkeypatch):
    from rlhfkit.train.sft import train_sft

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with a DeepSpeed config sets
    with pytest.raises(ValueError, match="DeepSpeed is not supported.*fsdp2.yaml"):
        train_sft(SFTConfig(model=str(tiny_llama), data=str(demos_file), output_dir=str(tmp_path / "sft")))
    assert not (tmp_path / "sft").exists()
