"""Responses end with the chat template's end-of-turn token where it differs from the tokenizer's EOS (Qwen2.5 base,
Llama 3): SFT labels, sampling's stop and the saved generation config all use it."""

import json

import pytest
import torch
from tiny import build_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig

from rlhfkit.data import Demonstration
from rlhfkit.data.tokenize import TokenizeStats, encode_demonstration
from rlhfkit.models import load_causal_lm, load_tokenizer, save_model
from rlhfkit.models.loading import end_of_turn
from rlhfkit.rollout import sample

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def qwen_base(folder):
    """ChatML turns, but EOS is <|endoftext|>, as in Qwen2.5's base models."""
    tok = build_tokenizer(folder)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(folder)
    return "<|endoftext|>", "<|im_end|>"


def llama3(folder):
    tok = build_tokenizer(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<|begin_of_text|>", "<|end_of_text|>",
                                                          "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|end_of_text|>", None
    tok.chat_template = LLAMA3
    tok.save_pretrained(folder)
    return "<|end_of_text|>", "<|eot_id|>"


@pytest.mark.parametrize("make", [qwen_base, llama3])
def test_responses_end_with_the_end_of_turn_token(make, tmp_path):
    eos, turn_end = make(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert end_of_turn(tok) == turn_end and tok.eos_token == turn_end
    assert tok.pad_token_id is not None and tok.pad_token != turn_end  # padding is not read as an end of turn
    # SFT: the labels end with the end of turn, as the chat template writes a finished answer
    demo = Demonstration(prompt="the cat", response="is red")
    example = encode_demonstration(tok, demo, 128, "truncate", TokenizeStats())
    assert example.labels[-1] == tok.convert_tokens_to_ids(turn_end)
    rendered = tok.apply_chat_template([{"role": "user", "content": "the cat"},
                                        {"role": "assistant", "content": "is red"}], tokenize=False)
    assert rendered.rstrip().endswith(turn_end) and tok.decode(example.input_ids).endswith(turn_end)

    # sampling stops at it (a model made to say it first), and a saved model's generation config stops there too
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.convert_tokens_to_ids(eos),
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    says_turn_end = torch.zeros(len(tok))
    says_turn_end[tok.eos_token_id] = 100.0
    hook = model.lm_head.register_forward_hook(lambda module, args, logits: logits + says_turn_end)
    roll = sample(model, tok, ["the cat"], 1, max_new_tokens=8, temperature=0.0)
    assert roll.response_ids[0] == [tok.eos_token_id] and roll.ended[0]
    hook.remove()
    save_model(model, tok, tmp_path / "saved")
    _, reloaded = load_causal_lm(tmp_path / "saved")
    assert reloaded.eos_token == turn_end
    gen = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids(eos), tok.convert_tokens_to_ids(turn_end)]


def test_eos_stays_where_it_already_ends_turns_or_the_template_has_no_turn_token(tiny_gpt2):
    from rlhfkit.models.loading import DEFAULT_CHAT_TEMPLATE

    tok = load_tokenizer(tiny_gpt2)
    assert end_of_turn(tok) == "<|im_end|>" == tok.eos_token  # ChatML, EOS already the turn end
    tok.chat_template = DEFAULT_CHAT_TEMPLATE  # turns closed by a plain newline
    assert end_of_turn(tok) is None
