"""Log-probabilities from a causal LM: the one path SFT, PPO and the evaluations all take.

Run the decoder over packed rows, then the unembedding only at the states that score a token: prompt
positions never need logits, and on a 49k vocabulary the (rows x columns x vocabulary) tensor they would
cost is most of the memory and much of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rlhfkit.data import IGNORE, PackedGroups


def decoder_states(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (R, L, H) of a causal LM's decoder (no unembedding)."""
    return model.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state


@dataclass
class ResponseLogprobs:
    logprobs: torch.Tensor  # (N,) log π(y_t | x, y_<t) of each response token
    entropy: torch.Tensor  # (N,) entropy of the distribution it was drawn from
    states: torch.Tensor  # (N, H) the hidden states that predicted them (a value head reads these)


def response_logprobs(model: nn.Module, packed: PackedGroups, temperature: float = 1.0,
                      entropy_grad: bool = False) -> ResponseLogprobs:
    """Log-probs and entropies of the response tokens of packed groups (`data.pack_groups`), at `temperature`.
    The entropy carries gradients only with `entropy_grad` (an entropy bonus); else it is for the logs."""
    hidden = decoder_states(model, packed.input_ids, packed.position_ids, packed.attention_mask)
    states = hidden[packed.reads[:, 0], packed.reads[:, 1]]
    logp = F.log_softmax(model.get_output_embeddings()(states).float() / temperature, dim=-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp.exp() * logp).sum(-1)
    return ResponseLogprobs(logp.gather(-1, packed.targets[:, None]).squeeze(-1), entropy, states)


def summed_logprobs(model: nn.Module, packed: PackedGroups, temperature: float = 1.0) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) of each of the M responses of packed groups, (M,) in fp32, in response order
    (`PackedGroups.slots`); gradients flow when enabled (DPO trains through it)."""
    token_logp = response_logprobs(model, packed, temperature).logprobs
    n = packed.ends.shape[0]
    return torch.zeros(n, dtype=token_logp.dtype, device=token_logp.device).index_add(0, packed.slots[:, 0],
                                                                                     token_logp)


def scored_logits(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, V) in fp32, targets (N,)) at the N positions of packed rows that predict a token: `targets`
    (R, L) holds the token each position predicts (`data.shifted_targets`), IGNORE where none is scored.
    `losses.sft_loss` turns them into the NLL."""
    hidden = decoder_states(model, input_ids, position_ids)
    keep = targets != IGNORE
    return model.get_output_embeddings()(hidden[keep]).float(), targets[keep]
