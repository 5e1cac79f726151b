import json
import math
from contextlib import nullcontext

import pytest
import torch
from test_reward import planted_rankings
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import DPOConfig
from rlhfkit.data import Group, encode_prompt, write_jsonl
from rlhfkit.data.tokenize import encode_response
from rlhfkit.evaluation.policy_eval import sequence_logprobs
from rlhfkit.losses import dpo_loss, dpo_ranking_loss, ranking_loss
from rlhfkit.models import load_causal_lm
from rlhfkit.train.common import Hooks, RunExists
from rlhfkit.train.dpo import reference_logps, train_dpo
from rlhfkit.train.reward import EncodedRanking

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_by_hand():
    # h = (-1 - -2) - (-3 - -2) = 2
    args = [torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])]
    assert dpo_loss(*args, beta=0.1).item() == pytest.approx(-log_sigmoid(0.2))
    assert dpo_loss(*args, beta=0.1, label_smoothing=0.1).item() == pytest.approx(
        -0.9 * log_sigmoid(0.2) - 0.1 * log_sigmoid(-0.2))
    assert dpo_loss(*args, beta=0.1, loss_type="ipo").item() == pytest.approx((2 - 5) ** 2)
    assert dpo_loss(*args, beta=0.5, loss_type="ipo").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*args, beta=0.1, loss_type="hinge")


def test_dpo_ranking_loss_takes_every_ordered_pair_as_the_rm_does():
    logps = torch.tensor([[-4.0, -6.0, -5.0, 0.0], [-1.0, -2.0, -2.5, -3.0]])
    ref = torch.tensor([[-5.0, -5.0, -5.0, 0.0], [-2.0, -2.0, -2.0, -2.0]])
    ranks = torch.tensor([[0, 1, 1, -1], [2, 0, 1, 0]])  # a tie in each; row 0 has 3 responses
    beta = 0.3
    d = logps - ref

    def pair(b, w, lose):
        return -log_sigmoid(beta * (d[b, w] - d[b, lose]).item())

    row0 = (pair(0, 0, 1) + pair(0, 0, 2)) / 2  # the tied pair (1, 2) is skipped
    row1 = (pair(1, 1, 2) + pair(1, 1, 0) + pair(1, 3, 2) + pair(1, 3, 0) + pair(1, 2, 0)) / 5
    got = dpo_ranking_loss(logps, ref, ranks, beta).item()
    assert got == pytest.approx((row0 + row1) / 2)
    # DPO is the reward model's ranking loss on the implicit reward β·log(π/π_ref)
    assert got == pytest.approx(ranking_loss(beta * d, ranks).item())


def test_reference_logps_match_one_sequence_at_a_time(tiny_llama):
    model, tok = load_causal_lm(tiny_llama)
    prompts = ["the cat", "a dog and a tree"]
    responses = [["is red", "was blue and green"], ["river", "mountain city", "yes"]]
    items = [EncodedRanking(Group(encode_prompt(tok, p), [encode_response(tok, r) for r in rs]), [[0] * len(rs)])
             for p, rs in zip(prompts, responses, strict=True)]
    got = reference_logps(model, items, tok.pad_token_id, nullcontext, tokens=20)  # several batches
    want = sequence_logprobs(model, tok, [it.group.prompt_ids for it in items for _ in it.group.response_ids],
                             [r for it in items for r in it.group.response_ids])
    assert [x for row in got for x in row] == pytest.approx(want, abs=1e-4)


def dpo_cfg(tmp_path, model, **kw):
    base = dict(model=str(model), output_dir=str(tmp_path / "dpo"), max_length=64, batch_size=8, lr=1e-3,
                beta=0.5, warmup_ratio=0.0, eval_every=0, save_every=0, progress=False, dtype="fp32")
    return DPOConfig(**{**base, **kw})


def banana_margin(model_dir, tok_dir, rankings) -> float:
    """Mean log π(liked) - log π(disliked) over the rankings' responses."""
    model, tok = load_causal_lm(model_dir)
    prompts, responses, liked = [], [], []
    for r in rankings:
        for resp, rank in zip(r.responses, r.ranks, strict=True):
            prompts.append(encode_prompt(tok, r.prompt))
            responses.append(encode_response(tok, resp))
            liked.append(rank == 0)
    lp = sequence_logprobs(model, tok, prompts, responses)
    good = [x for x, y in zip(lp, liked, strict=True) if y]
    bad = [x for x, y in zip(lp, liked, strict=True) if not y]
    return sum(good) / len(good) - sum(bad) / len(bad)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_learns_planted_preference(tmp_path, tiny_llama, loss_type):
    write_jsonl(tmp_path / "train.jsonl", planted_rankings(160, 0))
    held_out = planted_rankings(40, 1)
    write_jsonl(tmp_path / "eval.jsonl", held_out)
    before = banana_margin(tiny_llama, tiny_llama, held_out)
    result = train_dpo(dpo_cfg(tmp_path, tiny_llama, data=str(tmp_path / "train.jsonl"), epochs=3,
                               eval_data=str(tmp_path / "eval.jsonl"), loss_type=loss_type,
                               beta=0.5 if loss_type == "sigmoid" else 0.05))
    assert result.eval_metrics["eval_accuracy"] > 0.9, result.eval_metrics
    assert banana_margin(result.output_dir, tiny_llama, held_out) > before + 2.0  # the policy itself moved
    logged = [json.loads(x) for x in (result.output_dir / "logs/metrics.jsonl").read_text().splitlines()]
    assert logged[0]["reward_accuracy"] < logged[-1]["reward_accuracy"]
    assert json.loads((result.output_dir / "reference_logps.json").read_text())["reference"] == str(tiny_llama)


def test_dpo_resume_continues_exactly_and_reuses_the_reference(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "train.jsonl", planted_rankings(40, 0))
    common = dict(data=str(tmp_path / "train.jsonl"), max_steps=4, batch_size=2, min_lr_ratio=1.0, eval_fraction=0.0)
    straight = train_dpo(dpo_cfg(tmp_path / "a", tiny_llama, **common))

    def stop_after_2(step, _):
        if step == 2:
            raise KeyboardInterrupt

    cut = dpo_cfg(tmp_path / "b", tiny_llama, save_every=2, **common)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(cut, Hooks(on_step=stop_after_2))
    with pytest.raises(RunExists):
        train_dpo(cut)
    cache = tmp_path / "b/dpo/reference_logps.json"
    cached = json.loads(cache.read_text())
    cached["reference"] = "read from the cache"
    cache.write_text(json.dumps(cached))
    resumed = train_dpo(cut.model_copy(update={"resume": True}))
    assert json.loads(cache.read_text())["reference"] == "read from the cache"  # not computed again

    def logged(run):
        return [json.loads(x) for x in (run.output_dir / "logs/metrics.jsonl").read_text().splitlines()]

    a, b = logged(straight), logged(resumed)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert [m["loss"] for m in a] == pytest.approx([m["loss"] for m in b], rel=1e-5, abs=1e-6)
    wa, _ = load_causal_lm(straight.output_dir)
    wb, _ = load_causal_lm(resumed.output_dir)
    for (name, x), (_, y) in zip(wa.state_dict().items(), wb.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_dpo_command_with_lora(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "train.jsonl", planted_rankings(24, 0))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["dpo", "--model", str(tiny_llama), "--data", str(tmp_path / "train.jsonl"),
                                      "--output-dir", str(out), "--max-steps", "2", "--lora-r", "4", "--no-progress",
                                      "--max-length", "64", "--beta", "0.2", "--label-smoothing", "0.1"])
    assert result.exit_code == 0, result.output
    model, _ = load_causal_lm(out)  # LoRA merged: a plain HF folder
    assert not hasattr(model, "peft_config")
    bad = CliRunner().invoke(app, ["dpo", "--model", str(tiny_llama), "--data", str(tmp_path / "train.jsonl"),
                                   "--output-dir", str(tmp_path / "x"), "--loss-type", "ipo", "--label-smoothing",
                                   "0.1", "--no-progress"])
    assert bad.exit_code != 0 and "label-smoothing" in str(bad.exception or bad.output)
