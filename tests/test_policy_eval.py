"""The evaluation's log-probabilities and perplexity, packed, against each sequence scored alone."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.evaluation.policy_eval import perplexity, sequence_logprobs
from rlhfkit.models import load_causal_lm


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_packed_scores_match_each_sequence_alone(arch, request):
    model, tok = load_causal_lm(request.getfixturevalue(arch))
    model.eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [5, 6], [7, 8, 9], [12] * 30]
    responses = [[20, 21], [22, 23, 24, 25, 26], [27], [28, 29, 30]]
    expected = []
    with torch.no_grad():
        for p, r in zip(prompts, responses, strict=True):
            logp = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1].log_softmax(-1)
            expected.append(logp.gather(-1, torch.tensor(r)[:, None]).sum().item())
    # a short row length forces several rows, and sequences sharing one
    got = sequence_logprobs(model, tok, prompts, responses, row_length=16)
    assert got == pytest.approx(expected, abs=1e-4)

    lines = ["the cat sat on the mat", "a dog", "why is the sky blue " * 6]
    nll, count = 0.0, 0
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([tok(line, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
            nll += F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert perplexity(model, tok, lines, row_length=16) == pytest.approx(math.exp(nll / count), rel=1e-4)
