import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, RMConfig, SFTConfig
from rlhfkit.data import write_jsonl

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_worker(cfg, tmp_path: Path, processes: int, stage: str = "sft") -> None:
    cfg_file = tmp_path / f"cfg-{stage}-{processes}.json"
    cfg_file.write_text(cfg.model_dump_json())
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes > 1:
        launch += ["--multi_gpu", "--main_process_port", "29517"]  # accelerate's flag for DDP, gloo on CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(launch + [str(WORKER), stage, str(cfg_file)], capture_output=True, text=True, env=env,
                         timeout=300)
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
