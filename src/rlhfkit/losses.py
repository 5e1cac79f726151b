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
