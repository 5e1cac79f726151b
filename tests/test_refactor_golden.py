"""Seeded SFT, RM and PPO runs on the tiny Llama log exactly the numbers recorded before the trainer-core
refactor (tests/golden/trainers.json): restructuring the code changed no result.

To record again after a change that is meant to change results: python tests/test_refactor_golden.py
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from tiny import WORDS, build_model

from rlhfkit.config import PPOConfig, RMConfig, SFTConfig
from rlhfkit.data import write_jsonl

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast

GOLDEN = Path(__file__).parent / "golden" / "trainers.json"
FACTS = [("What colour is the sky?", "The sky is blue."), ("Name a fruit.", "An apple is a fruit."),
         ("What is the capital of France?", "Paris is the capital of France."), ("Say yes.", "Yes."),
         ("Name an animal.", "A cat is an animal."), ("Count to three.", "One two three.")]
KEYS = {"sft": ("loss", "grad_norm", "eval_loss"), "rm": ("loss", "grad_norm", "eval_accuracy", "eval_loss"),
        "ppo": ("score", "kl", "beta", "pg_loss", "vf_loss", "ptx_loss", "approx_kl", "clipfrac", "entropy",
                "response_length", "explained_variance")}


def _log(run_dir: Path, keys) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [{k: round(r[k], 5) for k in keys if k in r} for r in rows]


def run_all(root: Path) -> dict:
    from rlhfkit.train.ppo import train_ppo
    from rlhfkit.train.reward import train_reward
    from rlhfkit.train.sft import train_sft

    torch.set_num_threads(1)  # the same reduction order on every machine
    model = build_model(root / "tiny", "llama")
    demos = root / "demos.jsonl"
    write_jsonl(demos, [{"prompt": p, "response": r} for p, r in FACTS * 3])
    common = dict(dtype="fp32", progress=False, warmup_ratio=0.0, save_every=0, seed=3)
    out = {}

    sft = train_sft(SFTConfig(model=str(model), data=str(demos), output_dir=str(root / "sft"), max_length=64,
                              batch_size=2, grad_accum=2, epochs=2, lr=1e-3, eval_fraction=0.2, eval_every=2,
                              **common))
    out["sft"] = _log(sft.output_dir, KEYS["sft"])

    rankings = []
    for i in range(16):
        words = WORDS[i * 3 : i * 3 + 12]
        responses = [" ".join(words[j : j + 4 + j % 3]) for j in range(4)]
        rankings.append({"prompt": " ".join(words[:3]), "responses": responses, "ranks": [i % 4, (i + 1) % 4,
                        (i + 2) % 4, (i + 3) % 4], "labeler": "a"})
        rankings.append({"prompt": " ".join(words[:3]), "responses": responses, "ranks": [0, 1, 1, 2],
                         "labeler": "b"})
    write_jsonl(root / "rankings.jsonl", rankings)
    rm = train_reward(RMConfig(model=str(sft.output_dir), data=str(root / "rankings.jsonl"), demos=str(demos),
                               output_dir=str(root / "rm"), max_length=64, batch_size=2, grad_accum=2, lr=1e-3,
                               epochs=2, eval_fraction=0.25, eval_every=2, **common))
    out["rm"] = _log(rm.output_dir, KEYS["rm"]) + [{"shift": round(rm.shift, 5),
                                                    "accuracy": round(rm.eval_metrics["accuracy"], 5)}]

    prompts = root / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"tell me about the {w}"} for w in WORDS[:24]])
    # (value_lr only where there is a value model: the shared head trains at the policy's lr)
    for name, kw in {"ppo-value-model": dict(shared_value_head=False, samples_per_prompt=1, value_lr=1e-3),
                     "ppo-shared-head-rloo": dict(shared_value_head=True, samples_per_prompt=2, kl_target=2.0)}.items():
        cfg = PPOConfig(policy=str(sft.output_dir), reward_model=str(rm.output_dir), prompts=str(prompts),
                        ptx_data=str(demos), ptx_coef=0.5, output_dir=str(root / name), iterations=3, rollout_batch=8,
                        minibatch_size=4, ppo_epochs=2, max_new_tokens=10, lr=1e-3, **common, **kw)
        out[name] = _log(train_ppo(cfg).output_dir, KEYS["ppo"])
    return out


def test_trainers_log_the_recorded_numbers(tmp_path):
    recorded = json.loads(GOLDEN.read_text())
    threads = torch.get_num_threads()
    try:
        now = run_all(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert set(now) == set(recorded)
    for stage in recorded:
        assert len(now[stage]) == len(recorded[stage]), stage
        for step, (a, b) in enumerate(zip(now[stage], recorded[stage], strict=True)):
            assert a.keys() == b.keys(), (stage, step)
            for k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-3, abs=2e-4), (stage, step, k, a[k], b[k])


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = run_all(Path(d))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result)[:2000], file=sys.stderr)
