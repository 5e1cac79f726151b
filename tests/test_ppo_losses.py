import math

import pytest
import torch

from rlhfkit.losses import (
    AdaptiveKLController,
    gae,
    group_normalized,
    kl_loss,
    kl_penalized_rewards,
    leave_one_out,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)

# two rows with ragged lengths: 3 tokens and 1 token (EOS at the first token)
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


def test_kl_penalized_rewards_k1_score_on_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-1.0, -9.0, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, 0.0, 0.0, 0.0]])
    r = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logp, ref, MASK, beta=0.1)
    expected = torch.tensor([[-0.05, 0.1, 0.0 + 2.0, 0.0], [-0.1 - 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(r, expected)


def test_kl_k3_is_non_negative_and_matches_formula():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, 0.0, 0.0, 0.0]])
    r = kl_penalized_rewards(torch.zeros(2), logp, ref, MASK, beta=1.0, estimator="k3")
    lr = 0.5  # first token of row 0: log π − log π_ref
    assert r[0, 0].item() == pytest.approx(-(math.exp(-lr) - 1 + lr))
    assert (r <= 1e-7).all() and r[0, 2] == 0  # equal log-probs: zero KL
    with pytest.raises(ValueError):
        kl_penalized_rewards(torch.zeros(2), logp, ref, MASK, 1.0, estimator="k2")


def test_kl_loss_is_the_token_mean_of_k3_with_its_gradient():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-1.0, -9.0, -9.0, -9.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, 0.0, 0.0, 0.0]])
    terms = [(0.5, 1), (-1.0, 1), (0.0, 1), (1.0, 1)]  # the 4 real tokens' log-ratios
    k3 = [math.exp(-x) - 1 + x for x, _ in terms]
    loss = kl_loss(logp, ref, MASK)
    assert loss.item() == pytest.approx(sum(k3) / 4)
    loss.backward()  # d k3 / d log π = 1 − exp(−log_ratio), over 4 tokens; padding gets none
    assert logp.grad[0, 0].item() == pytest.approx((1 - math.exp(-0.5)) / 4)
    assert logp.grad[0, 3].item() == 0 and logp.grad[1, 1].item() == 0
    assert kl_loss(logp, ref, MASK, "k1").item() == pytest.approx(0.5 / 4)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0], [1.0, 9.0, 9.0, 9.0]])
    adv, ret = gae(rewards, values, MASK, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.3                       # last token: no bootstrap
    d1 = 0.0 + 0.9 * 0.3 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    a0 = d0 + 0.72 * a1
    torch.testing.assert_close(adv[0], torch.tensor([a0, a1, a2, 0.0]))
    torch.testing.assert_close(adv[1], torch.tensor([2.0 - 1.0, 0.0, 0.0, 0.0]))  # EOS at the first token
    torch.testing.assert_close(ret, (adv + values) * MASK)


def test_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
    w = whiten(x, MASK)
    vals = w[MASK > 0]
    assert vals.mean().item() == pytest.approx(0, abs=1e-6)
    assert (vals ** 2).mean().item() == pytest.approx(1, rel=1e-5)
    assert (w[MASK == 0] == 0).all()
    kept = whiten(x, MASK, shift_mean=False)[MASK > 0]
    assert kept.mean().item() == pytest.approx(2.5)


def test_policy_loss_clipping():
    adv = torch.tensor([[1.0, -1.0, 1.0, 5.0], [1.0, 0.0, 0.0, 0.0]])
    old = torch.zeros(2, 4)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.9, 1.0], [1.1, 1.0, 1.0, 1.0]]))
    loss, clip = ppo_policy_loss(new, old, adv, MASK, clip_eps=0.2)
    # token by token: max(-A·ρ, -A·clip(ρ)): -1.2 (clipped), 1.5 (unclipped is worse), -0.9, -1.1
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.9 - 1.1) / 4)
    assert clip.item() == pytest.approx(1 / 4)


def test_value_loss_clipping():
    values = torch.tensor([[1.0, 0.0, 0.5, 7.0], [2.0, 0.0, 0.0, 0.0]])
    old = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 0.5, 0.0], [2.0, 0.0, 0.0, 0.0]])
    loss = ppo_value_loss(values, old, returns, MASK, clip_eps=0.2)
    # (V−R)² vs clipped: token0: 0 vs (0.7−1)²=0.09; token1: 1 vs 1; token2: 0; row1: 0 vs (0.2−2)²=3.24
    assert loss.item() == pytest.approx(0.5 * (0.09 + 1 + 0 + 3.24) / 4)


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert c.update(12.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10_000))  # error clipped at +0.2
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert c.update(5.4, 100) == pytest.approx(0.1 * (1 - 0.1 * 100 / 10_000))
    fixed = AdaptiveKLController(0.1, target=None, horizon=10_000)
    assert fixed.update(100.0, 100) == 0.1
    c2 = AdaptiveKLController(1.0, 1.0, 1)
    c2.load_state_dict(c.state_dict())
    assert c2.beta == c.beta


def test_leave_one_out_takes_the_mean_of_the_other_responses_to_the_same_prompt():
    # two prompts, interleaved as a length-sorted rollout returns them: prompt 0 has three responses, prompt 1 two
    scores = torch.tensor([1.0, 10.0, 4.0, 20.0, 7.0])
    groups = torch.tensor([0, 1, 0, 1, 0])
    out = leave_one_out(scores, groups)
    assert out.tolist() == pytest.approx([1 - 5.5, 10 - 20, 4 - 4.0, 20 - 10, 7 - 2.5])
    # a constant added to all of one prompt's scores (the RM's arbitrary level for that prompt) changes nothing
    assert leave_one_out(scores + 100 * (groups == 1), groups).tolist() == pytest.approx(out.tolist())
    with pytest.raises(ValueError, match="at least two"):
        leave_one_out(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))


def test_group_normalized_by_hand():
    # prompt 0: scores 1, 3 (mean 2, sample std sqrt(2)); prompt 1: 4, 4, 7 (mean 5, sample std sqrt(3))
    scores = torch.tensor([1.0, 4.0, 3.0, 4.0, 7.0])
    groups = torch.tensor([0, 1, 0, 1, 1])
    out = group_normalized(scores, groups, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([-1 / 2**0.5, -1 / 3**0.5, 1 / 2**0.5, -1 / 3**0.5, 2 / 3**0.5]))
    # as TRL's GRPOTrainer computes it: torch.std (unbiased) per group
    for g in (0, 1):
        torch.testing.assert_close(out[groups == g], (scores[groups == g] - scores[groups == g].mean())
                                   / scores[groups == g].std())
    assert group_normalized(torch.tensor([2.0, 2.0]), torch.tensor([0, 0])).tolist() == [0.0, 0.0]  # no spread
    with pytest.raises(ValueError, match="at least two"):
        group_normalized(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
