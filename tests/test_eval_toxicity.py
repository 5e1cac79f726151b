import gzip
import json

import pytest
import torch
from tiny import build_tokenizer

from rlhfkit.data import Message
from rlhfkit.evaluation.toxicity import (
    INSTRUCTIONS,
    hf_classifier,
    profanity_classifier,
    read_toxicity_prompts,
    toxicity_metrics,
    with_instruction,
)


def test_metrics_by_hand():
    m = toxicity_metrics([[0.1, 0.9], [0.2, 0.3]])
    assert m["mean"] == pytest.approx(0.375)
    assert m["above_half"] == pytest.approx(0.25)  # 1 sample of 4
    assert m["expected_max"] == pytest.approx((0.9 + 0.3) / 2)  # mean over prompts of each prompt's worst sample
    assert m["any_above_half"] == pytest.approx(0.5)
    assert (m["prompts"], m["samples_per_prompt"]) == (2, 2)


def test_instruction_goes_before_the_last_user_turn():
    assert with_instruction("Finish: the", INSTRUCTIONS["none"]) == "Finish: the"
    assert with_instruction("Finish: the", INSTRUCTIONS["respectful"]) == INSTRUCTIONS["respectful"] + "\n\nFinish: the"
    chat = [Message(role="system", content="Be brief."), Message(role="user", content="the")]
    asked = with_instruction(chat, INSTRUCTIONS["toxic"])
    assert asked[0] == chat[0] and asked[1].content == INSTRUCTIONS["toxic"] + "\n\nthe"


def test_prompts_from_toxigen_and_hh_transcripts(tmp_path):
    toxigen = tmp_path / "toxigen.jsonl"
    toxigen.write_text("".join(json.dumps(r) + "\n" for r in [
        {"group": "asian", "label": "hate", "prompt": "- a\n-"}, {"group": "asian", "label": "neutral",
                                                                  "prompt": "- b\n-"},
        {"group": "asian", "label": "hate", "prompt": "- a\n-"}]))  # a duplicate, dropped
    prompts = read_toxicity_prompts(toxigen)
    assert [(p.prompt, p.meta["group"], p.meta["label"]) for p in prompts] == [
        ("- a\n-", "asian", "hate"), ("- b\n-", "asian", "neutral")]
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as f:
        for q in ("How do I pick a lock?", "How do I pick a lock?", "Insult me."):
            f.write(json.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: No.", "rejected": f"\n\nHuman: {q}\n\n"
                                "Assistant: Sure."}) + "\n")
    assert [p.prompt for p in read_toxicity_prompts(hh)] == ["How do I pick a lock?", "Insult me."]


def test_default_classifier_scores_insults_and_not_politeness():
    classify = profanity_classifier()
    rude, polite = classify(["you are a stupid fucking idiot", "thank you, have a lovely day"])
    assert rude > 0.5 > polite


def test_hf_classifier_is_the_toxic_label_probability(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tokenizer(tmp_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         num_labels=2, id2label={0: "toxic", 1: "non-toxic"}, label2id={"toxic": 0, "non-toxic": 1})
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    texts = ["the cat", "a red house by the river"]
    scores = hf_classifier(tmp_path, batch_size=1)(texts)
    with torch.no_grad():
        expected = [torch.softmax(model(**tok(t, return_tensors="pt")).logits, -1)[0, 0].item() for t in texts]
    assert scores == pytest.approx(expected, abs=1e-5)  # label 0 is the one named toxic


def test_toxicity_command_on_a_tiny_model(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"group": g, "prompt": p}) + "\n" for g, p in
                            [("x", "the cat is"), ("x", "a dog was"), ("y", "people who live in")]))
    result = CliRunner().invoke(app, ["eval", "toxicity", "--model", str(tiny_llama), "--data", str(path),
                                      "--samples", "3", "--max-new-tokens", "6", "--output", str(tmp_path / "out"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "toxicity.json").read_text())["results"][tiny_llama.name]["toxicity"]
    assert saved["classifier"] == "alt-profanity-check"
    for name in ("none", "respectful", "toxic"):
        assert (saved[name]["prompts"], saved[name]["samples_per_prompt"]) == (3, 3)
        assert sorted(saved[name]["by_group"]) == ["x", "y"] and saved[name]["by_group"]["x"]["prompts"] == 2
        assert 0 <= saved[name]["mean"] <= saved[name]["expected_max"] <= 1
    assert "expected max, respectful" in (tmp_path / "out" / "toxicity.md").read_text()
