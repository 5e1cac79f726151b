"""vLLM as the rollout engine (`--rollout-engine vllm`). Without CUDA and vLLM only the clear refusal runs; the
rest runs where a GPU with vLLM is (and `benchmarks/ppo_iteration.py --rollout-engine vllm` gives the speeds)."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.config import GenerateConfig, PPOConfig, SampleConfig
from rlhfkit.errors import UsageError
from rlhfkit.sampling import generate, sample_rankings
from rlhfkit.train.ppo import train_ppo

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast


def has_vllm() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_vllm = pytest.mark.skipif(not has_vllm(), reason="needs a CUDA GPU and vLLM (pip install 'rlhfkit[vllm]')")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_vllm_engine_without_a_gpu_stops_with_a_clear_error(tmp_path, tiny_llama):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "say a"}) + "\n")
    for run in (lambda: generate(GenerateConfig(model=str(tiny_llama), prompt=["hi"], rollout_engine="vllm")),
                lambda: sample_rankings(SampleConfig(model=str(tiny_llama), prompts=str(tmp_path / "p.jsonl"),
                                                     output=str(tmp_path / "s.jsonl"), rollout_engine="vllm")),
                lambda: train_ppo(PPOConfig(policy=str(tiny_llama), reward_model=str(tmp_path / "rm"),
                                            prompts=str(tmp_path / "p.jsonl"), output_dir=str(tmp_path / "ppo"),
                                            rollout_engine="vllm"))):
        with pytest.raises(UsageError, match="needs a CUDA GPU"):
            run()
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "ppo").exists()  # nothing written


@pytest.fixture(scope="module")
def llama64(tmp_path_factory):
    """A tiny Llama whose head size (64) every vLLM attention backend takes."""
    from tiny import build_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    out = tmp_path_factory.mktemp("llama64")
    tok = build_tokenizer(out)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
                         vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


@needs_vllm
def test_vllm_samples_what_the_trainer_model_would_and_follows_its_weights(llama64):
    """Greedy vLLM tokens are the trainer's argmax at every step (bf16 on both sides: within a small margin), and
    after `load_weights` from changed weights vLLM follows the new ones."""
    from rlhfkit.models import load_causal_lm
    from rlhfkit.models.lm import response_logprobs
    from rlhfkit.rollout import SamplingParams
    from rlhfkit.sampling import vllm_engine
    from rlhfkit.train.ppo import build_batch

    model, tok = load_causal_lm(llama64)
    model.cuda()
    engine = vllm_engine(str(llama64), tok, seed=0, gpu_memory_utilization=0.2)
    prompts = ["say a", "the cat", "write a poem about the river", "list three colours"]

    def margins() -> torch.Tensor:
        roll = engine.sample(prompts, 1, SamplingParams(24, temperature=0.0))
        batch = build_batch(roll, prompts, "cuda")
        packed, order = batch.pack(list(range(len(prompts))), tok.pad_token_id)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            out = response_logprobs(model, packed.to("cuda"))
            logits = model.get_output_embeddings()(out.states).float()
        return logits.max(-1).values - logits.gather(-1, packed.targets.to("cuda")[:, None]).squeeze(-1)

    assert margins().max() < 0.1  # each chosen token is (within bf16) the trainer's own argmax
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.load_weights(model)
    assert margins().max() < 0.1  # ...of the new weights, once they are loaded


@needs_vllm
def test_ppo_with_vllm_rollouts(tmp_path, llama64):
    from rlhfkit.models.reward import reward_model_from_causal_lm

    rm, tok = reward_model_from_causal_lm(llama64)
    rm.save(tmp_path / "rm", tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcd"))
    result = train_ppo(PPOConfig(policy=str(llama64), reward_model=str(tmp_path / "rm"),
                                 prompts=str(tmp_path / "p.jsonl"), output_dir=str(tmp_path / "ppo"), iterations=2,
                                 rollout_batch=8, samples_per_prompt=2, advantage="rloo", max_new_tokens=16,
                                 rollout_engine="vllm", vllm_gpu_memory_utilization=0.2, progress=False))
    assert result.iterations == 2
    for m in result.history:
        assert all(torch.isfinite(torch.tensor(m[k])) for k in ("score", "kl", "pg_loss"))
