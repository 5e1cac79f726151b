"""The paper's objectives as small pure tensor functions (Ouyang et al. 2022, InstructGPT).

No I/O, no models: each function takes tensors and returns tensors, so it can be held against the
equations and tested by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Step 1, supervised fine-tuning: next-token negative log-likelihood of the demonstration.

    logits (N, V) at the N positions that predict a response token, targets (N,) those tokens.
    Returns sum(-log p(target)) / normalizer. With `normalizer` = the response tokens of the whole
    optimiser step (all micro-batches, all processes), the parts add up to the token mean of the step
    however the step is split.
    """
    return F.cross_entropy(logits.float(), targets, reduction="sum") / normalizer


def ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Step 2, the reward model: loss(θ) = -1/C(K,2) · E[log σ(r(x, y_w) - r(x, y_l))].

    rewards (B, K) float: r(x, y_k) for the K responses of B rankings.
    ranks   (B, K) long: 0 = best, equal values = a tie (that pair is skipped), -1 = no response there.
    Every strictly ordered pair (w better than l) of a ranking counts; a ranking's loss is the mean over
    its pairs (1/C(K,2) when there are no ties), and the result is the mean over rankings that have at
    least one strict pair. logsigmoid keeps it stable for large reward gaps.
    """
    margin = rewards[:, :, None] - rewards[:, None, :]  # [b, w, l]
    return mean_over_ranked_pairs(-F.logsigmoid(margin), ranks)


def ranked_pairs(ranks: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bool: [b, w, l] is True where ranking b puts response w strictly above response l."""
    present = ranks >= 0
    return (ranks[:, :, None] < ranks[:, None, :]) & present[:, :, None] & present[:, None, :]


def mean_over_ranked_pairs(pair_loss: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """pair_loss (B, K, K) at [b, w, l] -> the mean over each ranking's strictly ordered pairs, then over the
    rankings that have one (the weighting of `ranking_loss` and `dpo_ranking_loss`)."""
    better = ranked_pairs(ranks)
    n_pairs = better.sum(dim=(1, 2))
    has_pairs = n_pairs > 0
    if not has_pairs.any():
        return pair_loss.sum() * 0.0  # keeps the graph: a batch of all-tie rankings contributes nothing
    per_ranking = torch.where(better, pair_loss, torch.zeros_like(pair_loss)).sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    return per_ranking[has_pairs].mean()


# ---- DPO (Rafailov et al. 2023): the policy learns the rankings directly ------------------------------------
# The implicit reward of a response is β·log(π(y|x) / π_ref(y|x)); DPO's loss is the RM's pairwise loss on it.


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> torch.Tensor:
    """Per-pair losses (any matching shapes) from sequence log-probs Σ_t log π(y_t | x, y_<t).

    h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
    sigmoid (DPO; cDPO with ε = label_smoothing, the share of labels taken to be flipped):
        −(1−ε)·log σ(β·h) − ε·log σ(−β·h)
    ipo (Azar et al. 2023): (h − 1/(2β))², which stops pushing once the margin reaches 1/(2β).
    """
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss_type {loss_type!r}: sigmoid or ipo")


def dpo_ranking_loss(logps: torch.Tensor, ref_logps: torch.Tensor, ranks: torch.Tensor, beta: float,
                     label_smoothing: float = 0.0, loss_type: str = "sigmoid") -> torch.Tensor:
    """DPO on K-way rankings: logps, ref_logps (B, K) sequence log-probs of B rankings' responses under the policy
    and the frozen reference; ranks as in `ranking_loss`. Every strictly ordered pair counts, weighted as the
    reward model weights them (a ranking's mean over its pairs, then the mean over rankings)."""
    pair_loss = dpo_loss(logps[:, :, None], logps[:, None, :], ref_logps[:, :, None], ref_logps[:, None, :],
                         beta, label_smoothing, loss_type)
    return mean_over_ranked_pairs(pair_loss, ranks)


# ---- Step 3: PPO-ptx --------------------------------------------------------------------------
# objective(φ) = E_(x,y)~π_RL [ r_θ(x,y) − β·log(π_RL(y|x) / π_SFT(y|x)) ] + γ·E_x~D_pretrain [ log π_RL(x) ]
# All tensors are (B, T) over response tokens, with a 0/1 `mask` marking real tokens.


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last unmasked position (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.zeros_like(positions)).max(dim=1).values


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """KL_t, a per-token estimate of KL(π_RL ‖ π_SFT) from the sampled token, log_ratio = log π_RL − log π_SFT:
      k1 = log_ratio                         (the paper's log(π_RL/π_SFT); unbiased, can be negative)
      k3 = (exp(−log_ratio) − 1) + log_ratio (unbiased and never negative; Schulman 2020)
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1 or k3")


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str = "k3"
            ) -> torch.Tensor:
    """The KL penalty as a loss term instead of a reward (GRPO, Shao et al. 2024): the token mean of KL_t under
    the current policy, added to the policy loss with weight β. Its gradient pulls each sampled token's
    probability back toward π_SFT directly, where the reward's penalty reaches it only through the advantages."""
    return masked_mean(kl_estimate(logprobs, ref_logprobs, estimator), mask)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """Per-token rewards: −β·KL_t on every response token (`kl_estimate`), plus the RM score (B,) at each row's
    last token."""
    rewards = -beta * kl_estimate(logprobs, ref_logprobs, estimator) * mask
    has_tokens = mask.sum(dim=1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, last_positions(mask)[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards


def leave_one_out(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each score minus the mean score of the other responses to the same prompt (the RLOO baseline,
    Ahmadian et al. 2024). scores (B,) float, groups (B,) long: which prompt each response answers; every
    group needs at least two responses.

    A reward model trained on comparisons only fixes score differences between responses to the same
    prompt; its level from one prompt to the next is arbitrary. Centred per prompt, the score says only
    how this response compares with its siblings, which is what the policy can change.
    """
    n_groups = int(groups.max()) + 1
    sums = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add(0, groups, scores)
    counts = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add(
        0, groups, torch.ones_like(scores))
    if (counts[groups] < 2).any():
        raise ValueError("leave_one_out: every prompt needs at least two responses")
    return scores - (sums[groups] - scores) / (counts[groups] - 1)


def group_normalized(scores: torch.Tensor, groups: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's baseline (Shao et al. 2024): each score minus its prompt's mean score, divided by the standard
    deviation of the prompt's scores (all its responses, itself included; the sample std, n − 1, as TRL, verl and
    OpenRLHF compute it). scores (B,) float, groups (B,) long; every group needs at least two responses. A prompt
    whose responses all score alike gives 0."""
    n_groups = int(groups.max()) + 1
    counts = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add(
        0, groups, torch.ones_like(scores))
    if (counts[groups] < 2).any():
        raise ValueError("group_normalized: every prompt needs at least two responses")
    mean = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add(0, groups, scores) / counts
    centred = scores - mean[groups]
    var = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add(0, groups, centred**2) / (
        counts - 1)
    return centred / (var[groups].sqrt() + eps)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's unmasked tokens.

    δ_t = r_t + γ·V_{t+1} − V_t  (V after the last token is 0),  A_t = δ_t + γλ·A_{t+1};
    returns = A + V. Masked positions get 0 advantage and 0 return.
    """
    b, t = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(b, device=rewards.device, dtype=rewards.dtype)
    next_adv = torch.zeros_like(next_value)
    for i in reversed(range(t)):
        m = mask[:, i]
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        adv = delta + gamma * lam * next_adv
        advantages[:, i] = adv * m
        # a masked position passes the future through unchanged, so padding never breaks the chain
        next_value = torch.where(m > 0, values[:, i], next_value)
        next_adv = torch.where(m > 0, adv, next_adv)
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
           stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(x − mean) / std over the unmasked entries; with shift_mean=False the mean is added back.
    `stats` = (mean, var) computed elsewhere, e.g. across all processes' batches."""
    mean, var = stats if stats is not None else masked_mean_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def masked_mean_var(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = masked_mean(x, mask)
    return mean, masked_mean((x - mean) ** 2, mask)


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al. 2017): mean over tokens of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)),
    ρ = π/π_old. Returns (loss, share of tokens where the clip was active)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_eps: float) -> torch.Tensor:
    """Clipped value loss: ½ · mean over tokens of max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def ptx_loss(logits: torch.Tensor, targets: torch.Tensor, normalizer: float) -> torch.Tensor:
    """The pretraining term −γ·E[log π_RL(x)] without γ: next-token NLL of pretraining text (as `sft_loss`)."""
    return sft_loss(logits, targets, normalizer)


class AdaptiveKLController:
    """β by the proportional controller of Ziegler et al. 2019:
    e = clip(KL / target − 1, −0.2, 0.2);  β ← β · (1 + e · n_steps / horizon)."""

    def __init__(self, init_beta: float, target: float | None, horizon: int):
        self.beta, self.target, self.horizon = init_beta, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:  # no target: β stays fixed
            error = max(-0.2, min(0.2, current_kl / self.target - 1))
            self.beta *= 1 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.target, self.horizon = state["beta"], state["target"], state["horizon"]
