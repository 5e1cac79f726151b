"""The alignment tax (evaluation/tax.py) by hand on a tiny model, and `rlhfkit eval tax | all` end to end."""

import json

import pytest
from test_eval_mc import loglik_by_hand

from rlhfkit.data import DataError
from rlhfkit.evaluation.policy_eval import perplexity
from rlhfkit.evaluation.tax import MultipleChoice, evaluate_multiple_choice, read_multiple_choice, read_prose
from rlhfkit.models import load_causal_lm

ITEMS = [
    MultipleChoice("What colour is the sky?", ["blue", "green", "a red house"], 0),
    MultipleChoice("Name a fruit.", ["apple", "cat"], 0, "food"),
    MultipleChoice("Where does water go?", ["down the river", "the city", "up"], 2, "food"),
    MultipleChoice("What is the capital of France?", ["paris", "a tree"], 1),
]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    model, tok = load_causal_lm(str(tiny_llama))
    return model.eval(), tok


def test_multiple_choice_by_hand(tiny):
    model, tok = tiny
    shots = 1
    prefix = f"Question: {ITEMS[0].question}\nAnswer: {ITEMS[0].choices[0]}\n\n"
    right = right_norm = 0
    for item in ITEMS[shots:]:
        ll = [loglik_by_hand(model, tok, f"{prefix}Question: {item.question}\nAnswer: ", c) for c in item.choices]
        right += max(range(len(ll)), key=ll.__getitem__) == item.answer
        norm = [v / len(c) for v, c in zip(ll, item.choices, strict=True)]
        right_norm += max(range(len(norm)), key=norm.__getitem__) == item.answer
    got = evaluate_multiple_choice(model, tok, ITEMS, shots=shots, show_progress=False)
    assert got["items"] == 3 and got["shots"] == 1
    assert got["acc"] == pytest.approx(right / 3) and got["acc_norm"] == pytest.approx(right_norm / 3)
    assert got["chance"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert set(got["by_category"]) == {"all", "food"}
    with pytest.raises(ValueError, match="4 shots leave none"):
        evaluate_multiple_choice(model, tok, ITEMS, shots=4, show_progress=False)


def test_readers_name_the_line_and_field(tmp_path):
    good = {"question": "Q?", "choices": ["a", "b"], "answer": "b"}
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(good) + "\n")
    assert read_multiple_choice(path)[0].answer == 1  # an answer given as its text
    for bad, field in (({**good, "answer": 2}, "answer"), ({**good, "answer": True}, "answer"),
                       ({**good, "choices": ["a"]}, "choices"), ({"choices": ["a", "b"], "answer": 0}, "question")):
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=rf"mc.jsonl:2: field '{field}'"):
            read_multiple_choice(path)
    prose = tmp_path / "p.jsonl"
    prose.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"txt": "two"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'text'"):
        read_prose(prose)
    (tmp_path / "p.txt").write_text("one line\n\nanother line\n")
    assert read_prose(tmp_path / "p.txt") == ["one line", "another line"]


def test_tax_and_all_commands(tiny_llama, tiny_gpt2, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": x.question, "choices": x.choices, "answer": x.answer}) + "\n"
                          for x in ITEMS))
    prose = tmp_path / "prose.txt"
    prose.write_text("the cat is red.\nwater goes down the river.\n")
    tqa = tmp_path / "tqa.jsonl"
    tqa.write_text(json.dumps({"question": "Is a cat a tree?", "mc1_targets": {"No.": 1, "Yes.": 0},
                               "mc2_targets": {"No.": 1, "Yes.": 0}}) + "\n")
    passages = tmp_path / "passages.jsonl"
    passages.write_text(json.dumps({"prompt": "Summarise: the cat is red.", "passage": "the cat is red."}) + "\n")
    toxic = tmp_path / "toxic.jsonl"
    toxic.write_text(json.dumps({"prompt": "the dog", "group": "g"}) + "\n")
    models = ["--model", str(tiny_llama), "--model", str(tiny_gpt2)]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "tax", *models, "--prose", str(prose), "--mc", str(mc), "--shots", "1",
                                      "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "tax.json").read_text())
    assert saved["items"] == {"prose": 2, "mc": 4}
    model, tok = load_causal_lm(str(tiny_llama))
    assert saved["results"][tiny_llama.name]["prose"]["perplexity"] == pytest.approx(
        perplexity(model, tok, prose.read_text().splitlines()), rel=1e-5)
    assert saved["results"][tiny_gpt2.name]["mc"]["items"] == 3
    assert (out / "tax.png").stat().st_size > 1000

    result = CliRunner().invoke(app, ["eval", "all", *models, "--prose", str(prose), "--mc", str(mc), "--truthfulqa",
                                      str(tqa), "--hallucination", str(passages), "--toxicity", str(toxic),
                                      "--samples", "2", "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "all.json").read_text())
    assert set(saved["results"][tiny_llama.name]) == {"model", "truthfulqa", "toxicity", "hallucination", "prose",
                                                      "mc"}
    table = (out / "all.md").read_text()
    assert "TruthfulQA MC1, QA" in table and "expected max" in table and "prose perplexity" in table
    assert "![all](all.png)" in table and (out / "all.png").exists()

    result = CliRunner().invoke(app, ["eval", "tax", *models, "--output", str(out)])
    assert result.exit_code != 0 and "--prose, --truthfulqa, --mc" in str(result.exception)
