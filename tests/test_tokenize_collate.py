import torch

from rlhfkit.data import IGNORE, Demonstration, collate_packed, encode_demonstrations, encode_prompt, pack
from rlhfkit.data.collate import shifted_targets
from rlhfkit.data.tokenize import Example
from rlhfkit.models import load_causal_lm


def test_loss_only_on_response_with_eos(tiny_llama):
    _, tok = load_causal_lm(tiny_llama)
    demo = Demonstration(prompt="What colour is the sky?", response="The sky is blue.")
    (ex,), stats = encode_demonstrations(tok, [demo], max_length=128)
    prompt_ids = encode_prompt(tok, demo.prompt)
    n = len(prompt_ids)
    assert ex.input_ids[:n] == prompt_ids and ex.labels[:n] == [IGNORE] * n
    assert ex.labels[n:] == ex.input_ids[n:] and ex.input_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[n:-1]) == "The sky is blue."
    # The prompt ends with the assistant header the model continues from.
    assert tok.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert stats.as_dict() == {"kept": 1, "truncated": 0, "dropped": 0}


def test_truncation_is_explicit_and_counted(tiny_llama):
    _, tok = load_causal_lm(tiny_llama)
    demos = [Demonstration(prompt="Say yes.", response="yes " * 100), Demonstration(prompt="Say no.", response="no")]
    kept, stats = encode_demonstrations(tok, demos, max_length=40, truncation="truncate")
    assert len(kept) == 2 and len(kept[0].input_ids) == 40 and stats.truncated == 1
    kept, stats = encode_demonstrations(tok, demos, max_length=40, truncation="drop")
    assert len(kept) == 1 and stats.dropped == 1


def test_pack_first_fit_decreasing():
    examples = [Example([1] * n, [IGNORE] * n) for n in (7, 5, 4, 3, 3, 2, 1)]
    rows = pack(examples, 10)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert all(sum(len(examples[i].input_ids) for i in r) <= 10 for r in rows)
    assert len(rows) == 3  # 25 tokens in rows of 10: optimal


def test_shifted_targets_never_cross_examples():
    a = Example([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])
    b = Example([9, 10, 11], [IGNORE, 10, 11])
    batch = collate_packed([[a, b], [b]], pad_id=0)
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3]]
    assert (batch.n_tokens, batch.n_padding) == (10, 4)
    t = shifted_targets(batch.labels)
    assert t[0].tolist() == [IGNORE, 7, 8, IGNORE, 10, 11, IGNORE]  # position 3 (a's last) predicts nothing


def test_packed_attention_is_isolated(tiny_llama, tiny_gpt2):
    for folder in (tiny_llama, tiny_gpt2):
        model, tok = load_causal_lm(folder)
        model.eval()
        a = Example(tok("the cat sat on the mat")["input_ids"], [])
        b = Example(tok("a dog ran to the river and back")["input_ids"], [])
        batch = collate_packed([[a, b]], pad_id=tok.pad_token_id)
        with torch.no_grad():
            packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
            alone_b = model(input_ids=torch.tensor([b.input_ids])).logits
            alone_a = model(input_ids=torch.tensor([a.input_ids])).logits
        n = len(a.input_ids)
        torch.testing.assert_close(packed[0, :n], alone_a[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(packed[0, n:], alone_b[0], atol=1e-5, rtol=1e-4)


def test_decode_loop_matches_transformers_generate(tiny_llama, tiny_gpt2):
    from rlhfkit.rollout import sample

    for folder in (tiny_llama, tiny_gpt2):
        model, tok = load_causal_lm(folder)
        prompts = ["tell me about the cat", "a dog", "why is the sky blue and the river green"]
        ours = sample(model, tok, prompts, max_new_tokens=10, temperature=0.0, batch_size=3)
        for i, p in enumerate(prompts):
            ids = torch.tensor([encode_prompt(tok, p)])
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            expected = ref[0, ids.shape[1]:].tolist()
            if tok.eos_token_id in expected:
                expected = expected[: expected.index(tok.eos_token_id) + 1]
            got = ours.response_ids[ours.prompt_index.index(i)]
            assert got == expected


def test_static_decoder_matches_the_dynamic_cache(tiny_llama):
    # The fixed-shape step (the CUDA-graph path on a GPU) against transformers' own forward, on left-padded
    # prompts of different lengths: the same logits step by step, so the same greedy tokens. The two short
    # prompts share a row of the packed prefill; the repeated one is computed once and copied.
    from rlhfkit.data import pack_lengths
    from rlhfkit.rollout import StaticDecoder, decode_dynamic

    model, tok = load_causal_lm(tiny_llama)
    assert StaticDecoder.supports(model)
    long = "why is the sky blue and the river green " * 8
    prompts = [encode_prompt(tok, p) for p in ["a dog", long, "the cat", "a dog"]]
    width = max(map(len, prompts))
    assert len(pack_lengths(list(map(len, prompts[:3])), width)) == 2
    rows = len(prompts)
    ids = torch.full((rows, width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    # eos=-1: no row stops, so every step of every row is compared
    static = StaticDecoder(model, rows, width + 12).run(ids, mask, 12, 0.0, 1.0, -1, tok.pad_token_id, [0, 1, 2, 0])
    dynamic = decode_dynamic(model, ids, mask, 12, 0.0, 1.0, -1, tok.pad_token_id)
    assert static.tolist() == dynamic.tolist()

    # the packed prefill: the same logits and, slot for slot, the same cache as the padded forward
    from transformers import DynamicCache

    decoder = StaticDecoder(model, rows, width + 12)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        logits = decoder._prefill(ids, mask, [0, 1, 2, 0])  # rows 0 and 3 answer the same prompt
        padded = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                       past_key_values=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(logits, padded, atol=1e-5, rtol=1e-4)
    real = mask.bool()
    for i, layer in enumerate(cache.layers):
        for row in range(rows):
            torch.testing.assert_close(decoder.keys[i, row, :, :width][:, real[row]], layer.keys[row][:, real[row]])
            torch.testing.assert_close(decoder.values[i, row, :, :width][:, real[row]], layer.values[row][:, real[row]])
        assert not decoder.keys[i, :, :, :width].transpose(1, 2)[~real].any()  # padding slots hold zeros


def test_top_p_keeps_the_nucleus():
    from rlhfkit.rollout import pick_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    picked = pick_tokens(logits, 1.0, 0.7)
    assert set(picked.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; the tail is cut
    assert set(pick_tokens(logits, 0.0, 1.0).tolist()) == {0}


def test_token_batches_longest_first_within_budget():
    from rlhfkit.data import token_batches

    assert token_batches([3, 9, 4, 2, 12], 10) == [[4], [1], [2, 0, 3]]  # 12 alone (over budget), 9, 4+3+2
    assert token_batches([], 10) == []
