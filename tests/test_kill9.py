"""Issue #19, kill -9 anywhere: `rlhfkit sft | rm | ppo | sample | label import` run as a user runs them, killed with
SIGKILL at a seeded random moment (after a random number of logged steps or written lines, plus a random
fraction of a second: often inside a step, sometimes inside a checkpoint write), then run again with --resume. The
final model equals a straight run's (bitwise for SFT and the RM, whose data order and RNG are restored; PPO's
metrics within 1e-4, as its resume test states), records are whole and written once, and nothing half-written
is left behind."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlhfkit.data import write_jsonl

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rlhfkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhfkit", *args]


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except (FileNotFoundError, UnicodeDecodeError):
        return 0


def kill_at_random(cmd: list[str], progress: Path, seed: int, most: int) -> None:
    """Start `cmd` and SIGKILL it once `progress` holds a random 0..most-2 lines and a random moment more has passed,
    at the latest when the next line appears: with `most` lines in a whole run, at least one is still to come, so the
    kill always lands before the end (asserted)."""
    rng = random.Random(seed)
    target, extra = rng.randrange(most - 1), rng.uniform(0.0, 0.5)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: lines(progress), target, extra)


def kill_when(proc: subprocess.Popen, count, target: int, extra: float) -> None:
    """SIGKILL `proc` `extra` seconds after `count()` reaches `target`, or as soon as it passes it."""
    deadline = time.monotonic() + 240
    while proc.poll() is None and count() < target and time.monotonic() < deadline:
        time.sleep(0.02)
    until = time.monotonic() + extra
    while proc.poll() is None and count() <= target and time.monotonic() < until:
        time.sleep(0.01)
    assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before the kill at {target}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def finish(cmd: list[str]) -> None:
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def nothing_half_written(run: Path) -> None:
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    latest = run / "checkpoints" / "latest"
    if latest.exists():
        assert (run / "checkpoints" / latest.read_text().strip() / "trainer_state.json").exists()


def trained_twice(tmp_path: Path, stage: str, config: dict, seed: int, most: int) -> tuple[Path, Path]:
    """A straight run, and a run killed at random then resumed; both folders."""
    runs = []
    for name, kill in (("straight", False), ("killed", True)):
        cfg = {**config, "output_dir": str(tmp_path / name)}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        cmd = rlhfkit(stage, "--config", str(tmp_path / f"{name}.yaml"))
        if kill:
            kill_at_random(cmd, tmp_path / name / "logs" / "metrics.jsonl", seed, most)
            cmd = cmd + ["--resume"]
        finish(cmd)
        runs.append(tmp_path / name)
    nothing_half_written(runs[1])
    return runs[0], runs[1]


def same_weights(a: Path, b: Path, name: str = "model.safetensors") -> None:
    wa, wb = load_file(a / name), load_file(b / name)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


@pytest.mark.parametrize("seed", [0, 1])
def test_sft_killed_anywhere_resumes_to_the_same_model(tmp_path, tiny_llama, demos_file, seed):
    config = dict(model=str(tiny_llama), data=str(demos_file), max_length=64, lr=3e-3, max_steps=6, batch_size=1,
                  warmup_ratio=0.0, eval_every=0, save_every=1, progress=False, dtype="fp32")
    straight, killed = trained_twice(tmp_path, "sft", config, seed, most=6)
    same_weights(straight, killed)


def test_rm_killed_anywhere_resumes_to_the_same_model(tmp_path, tiny_llama):
    from test_reward import planted_rankings

    write_jsonl(tmp_path / "r.jsonl", planted_rankings(30, 3))
    config = dict(model=str(tiny_llama), data=str(tmp_path / "r.jsonl"), max_length=64, lr=2e-3, max_steps=6,
                  batch_size=2, warmup_ratio=0.0, eval_every=0, eval_fraction=0.0, save_every=1, progress=False,
                  dtype="fp32", export_hf=False)
    straight, killed = trained_twice(tmp_path, "rm", config, seed=2, most=6)
    same_weights(straight, killed)
    same_weights(straight, killed, "reward_head.safetensors")


def test_ppo_killed_anywhere_resumes_to_the_same_run(tmp_path, tiny_llama):
    from rlhfkit.models.reward import reward_model_from_causal_lm

    rm, tok = reward_model_from_causal_lm(tiny_llama)
    rm.save(tmp_path / "rm", tok)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"say {w}"} for w in "abcdefgh"])
    config = dict(policy=str(tiny_llama), reward_model=str(tmp_path / "rm"), prompts=str(tmp_path / "p.jsonl"),
                  iterations=4, rollout_batch=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=8, lr=1e-3,
                  warmup_ratio=0.0, save_every=1, progress=False, dtype="fp32", samples_every=100)
    straight, killed = trained_twice(tmp_path, "ppo", config, seed=3, most=4)

    def logged(run):
        return [json.loads(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]

    a, b = logged(straight), logged(killed)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for key in ("score", "kl", "pg_loss"):
        assert [m[key] for m in a] == pytest.approx([m[key] for m in b], rel=1e-4, abs=1e-6)


def test_sample_and_label_import_killed_anywhere_write_each_record_once(tmp_path, tiny_llama):
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": f"tell me about {w}", "id": w} for w in "abcdefghijkl"])
    out = tmp_path / "s.jsonl"
    cmd = rlhfkit("sample", "--model", str(tiny_llama), "--prompts", str(prompts), "--output", str(out), "--k", "2",
                  "--max-new-tokens", "6", "--batch-size", "2", "--no-progress", "--dtype", "fp32")
    kill_at_random(cmd, out, seed=4, most=8)
    finish(cmd + ["--resume"])
    records = [json.loads(x) for x in out.read_text().splitlines()]  # every line whole JSON
    assert sorted(r["id"] for r in records) == sorted("abcdefghijkl")  # each prompt once

    db = f"sqlite:///{tmp_path / 'f.db'}"
    finish(rlhfkit("label", "add-project", "p", "--db", db))
    cmd = rlhfkit("label", "import", "p", str(out), "--db", db)
    rng = random.Random(5)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(1.0, 4.0))  # somewhere in start-up, migration or the import transaction
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finish(cmd)
    from rlhfkit.feedback.store import Store

    assert Store(db).progress("p")["tasks"] == 12  # all of them, none twice (one transaction, idempotent keys)


def test_demo_killed_anywhere_resumes_to_the_same_run(tmp_path, tiny_llama):
    """The whole loop on a tiny model, killed at three random moments (after a random number of finished stages and
    a random part of a second more) and resumed each time: the same data, SFT model, rankings and RM as a straight
    run, bitwise; PPO's metrics within 1e-4 (its resume test's tolerance); every stage once, nothing half-written.
    Later stages evaluate a PPO policy that may differ in the last bits, so their figures are not compared."""
    def demo(name: str) -> list[str]:
        return rlhfkit("demo", "--quick", "--model", str(tiny_llama), "--runs-dir", str(tmp_path), "--name", name,
                       "--resume")

    def stages(name: str) -> dict:
        try:
            return json.loads((tmp_path / name / "stages.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    finish(demo("straight"))
    rng, total = random.Random(6), len(stages("straight"))
    for target in sorted(rng.sample(range(total - 1), 3)):  # three kills, in three different stages, none the last
        extra = rng.uniform(0.0, 2.0)
        proc = subprocess.Popen(demo("killed"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(proc, lambda: len(stages("killed")), target, extra)
    finish(demo("killed"))

    a, b = tmp_path / "straight", tmp_path / "killed"
    assert list(stages("killed")) == list(stages("straight"))
    nothing_half_written(b)
    for data in sorted(p.relative_to(a) for p in (a / "data").iterdir()):
        assert (b / data).read_bytes() == (a / data).read_bytes(), data
    # the rankings name the policy that sampled each response: its folder differs by the run's name only
    assert (b / "rm-round1.jsonl").read_text() == (a / "rm-round1.jsonl").read_text().replace(str(a), str(b))
    same_weights(a / "sft", b / "sft")
    same_weights(a / "round1" / "rm", b / "round1" / "rm")
    same_weights(a / "round1" / "rm", b / "round1" / "rm", "reward_head.safetensors")

    def logged(run):
        return [json.loads(x) for x in (run / "round1" / "ppo" / "logs" / "metrics.jsonl").read_text().splitlines()]

    pa, pb = logged(a), logged(b)
    assert [m["step"] for m in pb] == [m["step"] for m in pa]
    for key in ("score", "kl", "pg_loss"):
        assert [m[key] for m in pa] == pytest.approx([m[key] for m in pb], rel=1e-4, abs=1e-6)
    assert (b / "report.md").exists()
