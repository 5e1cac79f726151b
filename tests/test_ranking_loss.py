import math

import pytest
import torch

from rlhfkit.losses import ranking_loss


def nls(x: float) -> float:  # -log σ(x)
    return math.log1p(math.exp(-x))


def test_k2_single_pair():
    loss = ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 1]]))
    assert loss.item() == pytest.approx(nls(1.0))


def test_ties_skip_the_tied_pair():
    # responses A, B, C, D ranked D > C > A = B
    r = [0.5, -0.5, 1.0, 2.0]
    loss = ranking_loss(torch.tensor([r]), torch.tensor([[2, 2, 1, 0]]))
    a, b, c, d = r
    pairs = [d - c, d - a, d - b, c - a, c - b]  # A = B is skipped
    assert loss.item() == pytest.approx(sum(map(nls, pairs)) / 5)


def test_absent_slots_are_ignored():
    loss = ranking_loss(torch.tensor([[2.0, 1.0, 99.0, -99.0]]), torch.tensor([[0, 1, -1, -1]]))
    assert loss.item() == pytest.approx(nls(1.0))


def test_k9_averages_all_36_pairs_per_ranking():
    ranks = torch.arange(9)[None]
    assert ranking_loss(torch.zeros(1, 9), ranks).item() == pytest.approx(math.log(2))
    rewards = -torch.arange(9.0)[None]  # perfectly ordered: margin j - i for i better than j
    expected = sum(nls(j - i) for i in range(9) for j in range(i + 1, 9)) / math.comb(9, 2)
    assert ranking_loss(rewards, ranks).item() == pytest.approx(expected)


def test_mean_over_rankings_each_weighted_equally():
    # a K=2 and a K=3 ranking: each ranking's loss is its pair mean; the batch loss is the mean of the two
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    ranks = torch.tensor([[0, 1, -1], [2, 1, 0]])
    first = nls(1.0)
    second = (nls(1.0) + nls(3.0) + nls(2.0)) / 3
    assert ranking_loss(rewards, ranks).item() == pytest.approx((first + second) / 2)


def test_all_tie_rankings():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 5.0]], requires_grad=True)
    ranks = torch.tensor([[0, 0, 0], [0, 1, -1]])
    assert ranking_loss(rewards, ranks).item() == pytest.approx(nls(1.0))  # only the second counts
    only_ties = ranking_loss(rewards, torch.zeros(2, 3, dtype=torch.long))
    only_ties.backward()
    assert only_ties.item() == 0.0 and rewards.grad.abs().sum() == 0


def test_stable_and_differentiable():
    rewards = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]], requires_grad=True)
    loss = ranking_loss(rewards, torch.tensor([[0, 1], [0, 1]]))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(1000.0)  # (0 + 2000) / 2
    loss.backward()
    assert torch.isfinite(rewards.grad).all()
    # gradient of -log σ(m): -(1 - σ(m)) on the winner, per ranking averaged over 2 rankings
    assert rewards.grad[1].tolist() == pytest.approx([-0.5, 0.5])
