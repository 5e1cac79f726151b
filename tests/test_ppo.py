import json

import pytest
import torch
from tiny import WORDS

from rlhfkit.config import PPOConfig, ValueModelCritic
from rlhfkit.data import IGNORE, collate_packed, shifted_targets
from rlhfkit.models import load_causal_lm
from rlhfkit.models.reward import reward_model_from_causal_lm
from rlhfkit.train.common import Hooks
from rlhfkit.train.ppo import PPO, Experience, ValueModel, read_ptx, train_ppo

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast


def share_of_e(prompts, responses):
    """A reward that is a simple function of the text: the share of its characters that are 'e' (x10)."""
    return torch.tensor([10 * r.count("e") / max(1, len(r)) for r in responses])


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"tell me about the {w}"}) + "\n" for w in WORDS[:40]))
    return path


@pytest.fixture
def tiny_rm(tmp_path, tiny_llama):
    rm, tok = reward_model_from_causal_lm(tiny_llama)
    rm.save(tmp_path / "rm", tok)
    return tmp_path / "rm"


def ppo_cfg(tmp_path, policy, prompts, **kw):
    base = dict(policy=str(policy), prompts=str(prompts), output_dir=str(tmp_path / "ppo"), iterations=2,
                rollout_batch=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=12, lr=1e-3,
                warmup_ratio=0.0, progress=False, dtype="fp32", save_every=0, samples_every=1)
    cfg = PPOConfig(**{**base, **kw})
    if isinstance(cfg.critic, ValueModelCritic) and "value_lr" not in kw:  # a value model learns as fast
        cfg = cfg.updated(value_lr=1e-3)
    return cfg


def test_score_rises_while_kl_tracks_its_target(tmp_path, tiny_llama, prompts_file):
    cfg = ppo_cfg(tmp_path, tiny_llama, prompts_file, iterations=30, rollout_batch=16, minibatch_size=8,
                  ppo_epochs=4, max_new_tokens=16, lr=2e-3, kl_coef=0.3, kl_target=4.0, kl_horizon=48,
                  missing_eos_penalty=None)
    result = train_ppo(cfg, reward_fn=share_of_e)
    scores = [m["score"] for m in result.history]
    kls = [m["kl"] for m in result.history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.3, scores
    assert all(k < 3 * 4.0 for k in kls[-10:]) and 1.0 < sum(kls[-10:]) / 10 < 8.0, kls
    betas = [m["beta"] for m in result.history]
    assert betas[-1] != betas[0]  # the controller moved β
    logged = [json.loads(x) for x in (result.output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    for key in ("score", "kl", "beta", "entropy", "clipfrac", "approx_kl", "explained_variance", "response_length",
                "no_eos", "seconds_generate", "seconds_score", "seconds_train"):
        assert key in logged[-1]
    assert (result.output_dir / "samples" / "iter-00030.jsonl").exists()
    load_causal_lm(result.output_dir)


def test_a_cut_off_response_loses_the_penalty_from_its_score(tmp_path, tiny_llama, prompts_file):
    # A reward far below -1 everywhere: a penalty that replaced the score with a constant would reward cut-offs.
    cfg = ppo_cfg(tmp_path, tiny_llama, prompts_file, max_new_tokens=3, missing_eos_penalty=0.5)
    result = train_ppo(cfg, reward_fn=lambda prompts, responses: torch.full((len(responses),), -5.0))
    assert any(m["no_eos"] > 0 for m in result.history)
    for m in result.history:
        assert m["score_with_penalty"] == pytest.approx(m["score"] - 0.5 * m["no_eos"], abs=1e-5)


def test_several_responses_per_prompt_are_scored_against_each_other(tmp_path, tiny_llama, prompts_file):
    seen = []

    def reward(prompts, responses):
        seen.append(list(prompts))
        return torch.tensor([3.0 + len(r) % 2 for r in responses])

    cfg = ppo_cfg(tmp_path, tiny_llama, prompts_file, rollout_batch=8, samples_per_prompt=4, missing_eos_penalty=None)
    result = train_ppo(cfg, reward_fn=reward)
    assert len(seen) == 2
    for prompts in seen:  # two prompts an iteration, each answered four times
        assert sorted(prompts.count(p) for p in set(prompts)) == [4, 4]
    for m in result.history:  # the log keeps the reward's own scale; only the advantages are centred
        assert 3.0 <= m["score"] <= 4.0
        assert m["score_with_penalty"] == pytest.approx(m["score"])
    with pytest.raises(ValueError, match="not a multiple of samples_per_prompt 3"):
        ppo_cfg(tmp_path / "x", tiny_llama, prompts_file, rollout_batch=8, samples_per_prompt=3)


def test_each_response_is_paired_with_its_own_prompt():
    # `sample` returns rollouts sorted by prompt length, not in the order the prompts were drawn; the prompts
    # a reward function and the samples table see must follow the rollout's order.
    from rlhfkit.rollout import Rollout
    from rlhfkit.train.ppo import build_batch

    roll = Rollout([2, 0, 1], [[1], [1, 2], [1, 2, 3]], [[4], [5], [6]], [True] * 3, ["to c", "to a", "to b"])
    batch = build_batch(roll, ["a", "b", "c"], torch.device("cpu"))
    assert batch.prompts == ["c", "a", "b"]
    assert batch.responses == ["to c", "to a", "to b"]


def ptx_nll(model, tok, path) -> float:
    rows = read_ptx(str(path), tok, 64)
    batch = collate_packed(rows, tok.pad_token_id)
    targets = shifted_targets(batch.labels)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    keep = targets != IGNORE
    return torch.nn.functional.cross_entropy(logits[keep], targets[keep]).item()


def test_ptx_keeps_pretraining_nll_lower(tmp_path, tiny_llama, prompts_file):
    text = tmp_path / "prose.txt"
    text.write_text("\n".join(" ".join(WORDS[i : i + 12]) for i in range(0, 120, 6)))
    plain = train_ppo(ppo_cfg(tmp_path / "a", tiny_llama, prompts_file, iterations=6), reward_fn=share_of_e)
    mixed = train_ppo(ppo_cfg(tmp_path / "b", tiny_llama, prompts_file, iterations=6, ptx_data=str(text), ptx_coef=1.0,
                              ptx_batch_size=2, ptx_max_length=64), reward_fn=share_of_e)
    assert "ptx_loss" in mixed.history[-1] and "ptx_loss" not in plain.history[-1]
    _, tok = load_causal_lm(tiny_llama)
    assert ptx_nll(mixed.policy, tok, text) < ptx_nll(plain.policy, tok, text) - 0.1


def test_resume_continues_a_killed_run(tmp_path, tiny_llama, prompts_file, tiny_rm):
    straight = train_ppo(ppo_cfg(tmp_path / "a", tiny_llama, prompts_file, iterations=4, reward_model=str(tiny_rm)))

    def kill(iteration, _):
        if iteration == 2:
            raise KeyboardInterrupt

    cfg = ppo_cfg(tmp_path / "b", tiny_llama, prompts_file, iterations=4, reward_model=str(tiny_rm), save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, hooks=Hooks(on_step=kill))
    resumed = train_ppo(cfg.model_copy(update={"resume": True}))
    logged = [json.loads(x) for x in (resumed.output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    for key in ("score", "kl", "pg_loss", "vf_loss", "beta"):
        assert [m[key] for m in straight.history] == pytest.approx([m[key] for m in logged], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("options", [
    {},  # separate value model initialised from the RM, scores from the RM
    {"shared_value_head": True},
    {"lora_r": 4},  # reference = the same weights with adapters off
    {"lora_r": 4, "shared_value_head": True, "kl_estimator": "k3", "value_warmup_iterations": 1},
    {"advantage": "rloo", "samples_per_prompt": 2},
    {"advantage": "grpo", "samples_per_prompt": 4, "lora_r": 4, "kl_in": "loss", "kl_estimator": "k3"},
    {"frozen_dtype": "bf16", "offload_frozen": True},  # reference and RM in bf16, in CPU memory between uses
])
def test_every_option_runs(tmp_path, tiny_llama, prompts_file, tiny_rm, options):
    result = train_ppo(ppo_cfg(tmp_path, tiny_llama, prompts_file, reward_model=str(tiny_rm), **options))
    assert all(all(v == v for v in m.values()) for m in result.history)  # no NaN
    model, _ = load_causal_lm(result.output_dir)
    assert not hasattr(model, "peft_config")  # LoRA adapters merged into the published policy
    assert ("kl_loss" in result.history[-1]) == (options.get("kl_in") == "loss")
    critic_free = options.get("advantage", "gae") != "gae"
    assert (result.output_dir / "value").exists() != (bool(options.get("shared_value_head")) or critic_free)


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_critic_free_advantages_allocate_no_value_model(tmp_path, tiny_llama, prompts_file, tiny_rm, advantage):
    cfg = ppo_cfg(tmp_path, tiny_llama, prompts_file, reward_model=str(tiny_rm), advantage=advantage,
                  samples_per_prompt=2)
    ppo = PPO.build(cfg)
    models = ppo.models
    assert models.value is None and models.plain_value is None and models.plain_policy.value_head is None
    assert not any(isinstance(m, ValueModel) for m in models.plain_policy.modules())
    assert list(models.policy.optimizer.param_groups[0]["params"]) == [
        p for p in models.plain_policy.model.parameters() if p.requires_grad]  # the policy's weights and no others
    metrics = ppo.step(0)
    assert "vf_loss" not in metrics and "explained_variance" not in metrics
    with pytest.raises(ValueError, match="samples_per_prompt 2 or more"):
        ppo_cfg(tmp_path / "x", tiny_llama, prompts_file, reward_model=str(tiny_rm), advantage=advantage)


def test_one_iteration_step_by_step_is_the_iteration(tmp_path, tiny_llama, prompts_file, tiny_rm):
    """`PPO.step` is its public parts in order: the same seed through rollout, score, rewards, advantages and
    update by hand gives the same numbers."""
    cfg = ppo_cfg(tmp_path / "a", tiny_llama, prompts_file, reward_model=str(tiny_rm), samples_per_prompt=2,
                  kl_coef=0.1)
    whole = PPO.build(cfg)
    metrics = whole.step(0)
    parts = PPO.build(cfg.updated(output_dir=str(tmp_path / "b")))
    beta = parts.kl_controller.beta
    scored = parts.score(parts.rollout(parts.prompts_for(0)))
    rewards = parts.rewards(scored, beta)
    advantages, returns = parts.advantages(rewards, scored.values, scored.rollouts.mask)
    stats = parts.update(Experience(**vars(scored), advantages=advantages, returns=returns, beta=beta), 0)
    assert stats["pg_loss"] == pytest.approx(metrics["pg_loss"]) and stats["vf_loss"] == pytest.approx(
        metrics["vf_loss"])
    kl = ((scored.old_logprobs - scored.ref_logprobs) * scored.rollouts.mask).sum(1).mean().item()
    assert kl == pytest.approx(metrics["kl"])
    # the reward of the last token of each response holds its score, less β·KL_t
    last = scored.rollouts.mask.sum(1).long() - 1
    penalty = -beta * (scored.old_logprobs - scored.ref_logprobs)
    baselined = rewards[torch.arange(len(last)), last] - penalty[torch.arange(len(last)), last]
    assert baselined.sum().abs() < 1e-4  # leave-one-out: a prompt's baselined scores sum to 0


def test_grpo_advantages_are_the_group_normalised_scores_not_whitened_again():
    """GRPO's advantage is each response's score against its group (mean, std): a prompt whose responses all scored
    alike teaches nothing and keeps advantage 0; rloo and gae are whitened over the batch's tokens."""
    from rlhfkit.losses import group_normalized, kl_penalized_rewards
    from rlhfkit.train.ppo import advantages_and_returns

    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 5.0])  # prompt 0: all alike; prompt 1: different
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).float()
    zeros = torch.zeros_like(mask)
    cfg = PPOConfig(policy="p", reward_model="r", prompts="x", advantage="grpo", samples_per_prompt=2)
    rewards = kl_penalized_rewards(group_normalized(scores, groups), zeros, zeros, mask, 0.0)
    adv, _ = advantages_and_returns(cfg, rewards, zeros, mask)
    expected = group_normalized(scores, groups)[:, None] * mask
    torch.testing.assert_close(adv, expected)
    assert (adv[:3] == 0).all()
    for advantage in ("rloo", "gae"):
        adv, _ = advantages_and_returns(cfg.updated(advantage=advantage), rewards, zeros, mask)
        on = adv[mask.bool()]
        assert on.mean().abs() < 1e-5 and (on.var(unbiased=False) - 1).abs() < 1e-3
        assert (adv[:3][mask[:3].bool()] != 0).all()  # shifted by the batch mean: what GRPO avoids


def run_alone(model, head, prompts, responses, width):
    """Log-probs, entropies and values of each response's tokens with its prompt run alone (no packing)."""
    alone = {k: torch.zeros(len(prompts), width) for k in ("logprobs", "entropy", "values")}
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            out = model(input_ids=torch.tensor([p + r]), output_hidden_states=True)
            logp = out.logits[0, len(p) - 1 : -1].log_softmax(-1)
            alone["logprobs"][i, : len(r)] = logp.gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
            alone["entropy"][i, : len(r)] = -(logp.exp() * logp).sum(-1)
            alone["values"][i, : len(r)] = head(out.hidden_states[-1][0, len(p) - 1 : -1]).squeeze(-1)
    return alone


@pytest.mark.parametrize("shared", [False, True])
def test_packed_rollouts_match_each_sequence_alone(tiny_llama, shared):
    # Rollouts are packed end to end (no padding) for the policy and value forwards; responses to the same prompt
    # share one copy of it. Each response token's log-prob, entropy and value must equal those of its prompt +
    # response run alone.
    from rlhfkit.rollout import Rollout
    from rlhfkit.train.ppo import PolicyModule, build_batch, forward_rollouts, score_rollouts

    model, tok = load_causal_lm(tiny_llama)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    if shared:  # two prompts, two responses each; the rollout lists them interleaved
        index, texts = [0, 1, 0, 1], ["a", "b"]
        prompts = [[5, 6, 7, 8, 9, 10, 11], [7, 8, 9], [5, 6, 7, 8, 9, 10, 11], [7, 8, 9]]
    else:
        index, texts = [0, 1, 2, 3], ["a", "b", "c", "d"]
        prompts = [[5, 6, 7, 8, 9, 10, 11], [5, 6], [7, 8, 9], [12]]
    responses = [[20, 21], [22, 23, 24, 25, 26], [27], [28, 29, 30]]
    roll = Rollout(index, prompts, responses, [True] * 4, ["w", "x", "y", "z"])
    batch = build_batch(roll, texts, torch.device("cpu"))
    module = PolicyModule(model.eval(), head)
    alone = run_alone(model, head, prompts, responses, 5)
    with torch.no_grad():
        for idx in ([1, 2], [3, 0], [2], [0, 1, 2, 3], [2, 0, 3, 1]):
            part = forward_rollouts(module, batch, idx, tok.pad_token_id, 1.0)
            for key in ("logprobs", "values", "entropy"):
                assert part[key].shape == (len(idx), 5)
                torch.testing.assert_close(part[key], alone[key][idx], atol=1e-5, rtol=1e-4)
        chunked = score_rollouts(module, batch, 3, tok.pad_token_id, 1.0)
        torch.testing.assert_close(chunked["logprobs"], alone["logprobs"], atol=1e-5, rtol=1e-4)


def test_responses_to_one_prompt_share_its_forward(tiny_llama):
    # With several responses per prompt the prompt is laid out once, and the RM scores each response as if alone.
    from rlhfkit.data import Group, pack_groups
    from rlhfkit.rollout import Rollout
    from rlhfkit.train.ppo import build_batch, rm_scores

    prompt = list(range(5, 25))
    responses = [[30, 31, 2], [32, 2], [33, 34, 35, 36]]
    pk = pack_groups([Group(prompt, responses)], pad_id=0)
    assert pk.input_ids.shape == (1, 20 + 3 + 2 + 4)
    # each response's first token is read from the prompt's last state, the rest from the response's own
    assert pk.reads[:, 1].tolist() == [19, 20, 21, 19, 23, 19, 25, 26, 27]
    assert pk.slots.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [2, 2], [2, 3]]
    assert pk.targets.tolist() == [t for r in responses for t in r]
    assert pk.ends.tolist() == [[0, 22], [0, 24], [0, 28]]
    rm, tok = reward_model_from_causal_lm(tiny_llama)
    rm.eval()
    batch = build_batch(Rollout([0, 1, 0], [prompt, [5, 6], prompt], responses, [True, True, False], list("abc")),
                        ["p", "q"], torch.device("cpu"))
    with torch.no_grad():
        shared = rm_scores(rm, batch, tok.pad_token_id)
        alone = [rm(torch.tensor([p + r]), torch.arange(len(p + r))[None], None, torch.tensor([[0, len(p + r) - 1]]))
                 for p, r in zip(batch.prompt_ids, responses, strict=True)]
    torch.testing.assert_close(shared, torch.cat(alone), atol=1e-5, rtol=1e-4)


def test_an_evaluation_hook_leaves_training_as_it_was(tmp_path, tiny_llama, prompts_file):
    # the hook seeds and samples (as the demo's gold/proxy check does); the run must not notice
    def hook(policy, tok):
        torch.manual_seed(123)
        torch.rand(1000)
        return {"eval_probe": 1.0}

    plain = train_ppo(ppo_cfg(tmp_path / "a", tiny_llama, prompts_file, iterations=3), reward_fn=share_of_e)
    hooked = train_ppo(ppo_cfg(tmp_path / "b", tiny_llama, prompts_file, iterations=3), reward_fn=share_of_e,
                       hooks=Hooks(evaluate=hook, eval_every=1))
    assert [m["eval_probe"] for m in hooked.history] == [1.0, 1.0, 1.0]
    for key in ("score", "kl", "pg_loss"):
        assert [m[key] for m in hooked.history] == [m[key] for m in plain.history]


def test_frozen_models_load_in_the_policy_precision(tmp_path, tiny_llama, prompts_file, tiny_rm):
    from rlhfkit.train.ppo import frozen_dtype

    assert frozen_dtype("auto", "bf16") == torch.bfloat16 and frozen_dtype("auto", "no") == torch.float32
    assert frozen_dtype("auto", "fp16") == torch.float16 and frozen_dtype("fp32", "bf16") == torch.float32
    ppo = PPO.build(ppo_cfg(tmp_path, tiny_llama, prompts_file, reward_model=str(tiny_rm), frozen_dtype="bf16",
                            iterations=1))
    assert next(ppo.models.reward.backbone.parameters()).dtype == torch.bfloat16
    assert next(ppo.models.reference.parameters()).dtype == torch.bfloat16
    assert next(ppo.models.plain_policy.parameters()).dtype == torch.float32  # the trained policy keeps fp32
    scored = ppo.score(ppo.rollout(ppo.prompts_for(0)))
    assert scored.scores.dtype == torch.float32 and torch.isfinite(scored.scores).all()
