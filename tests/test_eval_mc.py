"""Multiple-choice log-likelihood scoring (evaluation/loglik.py) and TruthfulQA MC1/MC2, against hand computations
on a tiny model."""

import json
import math

import pytest
import torch

from rlhfkit.data import DataError
from rlhfkit.evaluation.loglik import Choices, choice_logliks, encode_item
from rlhfkit.evaluation.truthfulqa import Question, evaluate_truthfulqa, read_truthfulqa, score_questions
from rlhfkit.models import load_causal_lm


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    model, tok = load_causal_lm(str(tiny_llama))
    return model.eval(), tok


def loglik_by_hand(model, tok, context: str, choice: str) -> float:
    """The harness's recipe, one sequence at a time, no packing: trailing spaces move to the choice, the choice's
    tokens are what encoding context + choice adds to encoding the context; empty context: BOS first."""
    if context:
        stripped = context.rstrip()
        ctx = tok.encode(stripped)
        cont = tok.encode(context + choice)[len(ctx):]
    else:
        ctx, cont = [tok.bos_token_id], tok.encode(choice, add_special_tokens=False)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(logp[len(ctx) - 1 + t, tok_id].item() for t, tok_id in enumerate(cont))


def test_choice_logliks_match_one_sequence_at_a_time(tiny):
    model, tok = tiny
    items = [Choices("Q: what colour is the sky?\nA:", [" blue", " the red apple", " green"]),
             Choices("the cat and the dog ", ["went to the river", "is a tree"]),  # trailing space moves
             Choices("", ["The cat is red.", "The cat is blue."]),  # empty context: after BOS
             Choices("one", [" two three four five six seven", " a"])]
    got = choice_logliks(model, tok, items, batch_tokens=24, show_progress=False)  # several batches
    for item, row in zip(items, got, strict=True):
        for choice, value in zip(item.choices, row, strict=True):
            assert value == pytest.approx(loglik_by_hand(model, tok, item.context, choice), abs=1e-4)


def test_split_as_the_harness_splits(tiny):
    tok = tiny[1]
    g = encode_item(tok, Choices("the cat ", ["is red"]))
    assert g.prompt_ids == tok.encode("the cat")
    assert g.prompt_ids + g.response_ids[0] == tok.encode("the cat is red")


def test_mc1_and_mc2_by_hand():
    q = Question("q", mc1=[("t", 1), ("f", 0), ("g", 0)], mc2=[("t", 1), ("u", 1), ("f", 0)])
    (mc1, mc2), = score_questions([[-1.0, -2.0, -3.0]], [[-1.0, -2.0, -0.5]], [q])
    assert mc1 == 1.0
    e = math.exp
    assert mc2 == pytest.approx((e(-1) + e(-2)) / (e(-1) + e(-2) + e(-0.5)))
    (mc1, _), = score_questions([[-2.0, -1.0, -3.0]], [[0.0, 0.0, 0.0]], [q])
    assert mc1 == 0.0
    q_late = Question("q", mc1=[("f", 0), ("t", 1)], mc2=[("f", 0), ("t", 1)])
    (mc1, mc2), = score_questions([[-1.0, -1.0]], [[-1.0, -1.0]], [q_late])
    assert mc1 == 0.0 and mc2 == pytest.approx(0.5)  # a tie goes to the first answer listed


def test_truthfulqa_end_to_end_on_a_tiny_model(tiny, tmp_path):
    model, tok = tiny
    path = tmp_path / "mc.jsonl"
    rows = [{"question": "What colour is the sky?", "category": "Nature",
             "mc1_targets": {"choices": ["Blue.", "Red.", "Green."], "labels": [1, 0, 0]},
             "mc2_targets": {"choices": ["Blue.", "It is blue.", "Red."], "labels": [1, 1, 0]}},
            {"question": "Is a cat a tree?", "mc1_targets": {"No.": 1, "Yes.": 0},
             "mc2_targets": {"No.": 1, "Yes.": 0, "Maybe.": 0}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = read_truthfulqa(path)
    assert [q.category for q in questions] == ["Nature", ""]
    out = evaluate_truthfulqa(model, tok, questions, show_progress=False)
    for style in ("qa", "instruction+qa"):
        assert 0 <= out[style]["mc1"] <= 1 and 0 < out[style]["mc2"] < 1
        assert out[style]["by_category"]["Nature"]["questions"] == 1
    # the QA prompt is longer than the tiny model's 256 positions: the context loses its start, never the answer
    assert out["qa"]["questions"] == 2


def test_truthfulqa_reader_names_the_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "b": 0}})
                   + "\n" + json.dumps({"question": "q2", "mc1_targets": {"a": 1, "b": 1}, "mc2_targets": {}}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: field 'mc1_targets'"):
        read_truthfulqa(bad)
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'mc1_targets' is missing"):
        read_truthfulqa(bad)
    with pytest.raises(DataError, match="no such file"):
        read_truthfulqa(tmp_path / "nothing.json")


def test_crows_pairs_by_hand(tiny, tmp_path):
    from rlhfkit.evaluation.bias import CONTEXTS, evaluate_crows_pairs, read_crows_pairs

    model, tok = tiny
    path = tmp_path / "crows.csv"
    path.write_text(",sent_more,sent_less,stereo_antistereo,bias_type\n"
                    "0,the cat is red.,the dog is red.,stereo,colour\n"
                    "1,a man can help.,a cat can help.,antistereo,gender\n"
                    "2,the tree is green.,the river is green.,stereo,colour\n")
    pairs = read_crows_pairs(path)
    out = evaluate_crows_pairs(model, tok, pairs, show_progress=False)
    for style, context in CONTEXTS.items():
        lls = [(loglik_by_hand(model, tok, context, p.more), loglik_by_hand(model, tok, context, p.less))
               for p in pairs]
        assert out[style]["pct_stereotype"] == pytest.approx(sum(a > b for a, b in lls) / 3)
        assert out[style]["likelihood_diff"] == pytest.approx(sum(abs(a - b) for a, b in lls) / 3, abs=1e-4)
        assert out[style]["by_bias_type"]["colour"]["pairs"] == 2
    path.write_text(",sent_more,sent_less,bias_type\n0,a,,gender\n")
    with pytest.raises(DataError, match=r"crows.csv: line 2: field 'sent_less' is empty"):
        read_crows_pairs(path)


def test_winogender_by_hand(tiny, tmp_path):
    from rlhfkit.evaluation.bias import PRONOUNS, evaluate_winogender, read_winogender

    model, tok = tiny
    rows = []
    for occupation in ("nurse", "cook", "pilot"):
        for gender, pronoun in zip(PRONOUNS, ("he", "she", "they"), strict=True):
            rows.append(f"{occupation}.someone.0.{gender}.txt\tThe {occupation} said {pronoun} was late.")
    (tmp_path / "all_sentences.tsv").write_text("sentid\tsentence\n" + "\n".join(rows) + "\n")
    (tmp_path / "occupations-stats.tsv").write_text("occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\n"
                                                    "nurse\t90\t90.0\t2015\ncook\t40\t40.0\t2015\n"
                                                    "pilot\t5\t5.0\t2015\n")
    items = read_winogender(tmp_path)
    out = evaluate_winogender(model, tok, items, ("plain",), show_progress=False)["plain"]
    dists = []
    for it in items:
        ll = [loglik_by_hand(model, tok, "", it.sentences[g]) for g in PRONOUNS]
        z = sum(math.exp(x) for x in ll)
        dists.append([math.exp(x) / z for x in ll])
    entropy = sum(-sum(p * math.log2(p) for p in d) for d in dists) / 3
    assert out["entropy_bits"] == pytest.approx(entropy, abs=1e-4)
    she = [d[1] / (d[0] + d[1]) for d in dists]
    assert out["p_she_of_gendered"] == pytest.approx(sum(she) / 3, abs=1e-4)
    import numpy as np

    assert out["correlation_with_bls"] == pytest.approx(np.corrcoef(she, [90.0, 40.0, 5.0])[0, 1], abs=1e-3)
    (tmp_path / "all_sentences.tsv").write_text("sentid\tsentence\nnurse.male.txt\tHe.\n")
    with pytest.raises(DataError, match=r"all_sentences.tsv: line 2: field 'sentid'"):
        read_winogender(tmp_path)


def test_eval_commands_write_json_and_markdown(tiny_llama, tiny_gpt2, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    tqa = tmp_path / "tqa.jsonl"
    tqa.write_text(json.dumps({"question": "Is a cat a tree?", "mc1_targets": {"No.": 1, "Yes.": 0},
                               "mc2_targets": {"No.": 1, "Yes.": 0}}) + "\n")
    crows = tmp_path / "crows.csv"
    crows.write_text("sent_more,sent_less,bias_type\nthe cat is red.,the dog is red.,colour\n")
    wino = tmp_path / "all_sentences.tsv"
    wino.write_text("sentid\tsentence\n" + "".join(f"nurse.patient.0.{g}.txt\tThe nurse said {p} was late.\n"
                                                     for g, p in (("male", "he"), ("female", "she"),
                                                                  ("neutral", "they"))))
    for name, data in (("truthfulqa", ["--data", str(tqa)]), ("bias", ["--crows", str(crows), "--winogender",
                                                                       str(wino)])):
        result = CliRunner().invoke(app, ["eval", name, "--model", str(tiny_llama), "--model", str(tiny_gpt2),
                                          *data, "--output", str(tmp_path / "out"), "--no-progress"])
        assert result.exit_code == 0, result.output
        saved = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert set(saved["items"].values()) == {1} and list(saved["results"]) == [tiny_llama.name, tiny_gpt2.name]
        table = [ln for ln in (tmp_path / "out" / f"{name}.md").read_text().splitlines() if ln.startswith("|")]
        assert len({ln.replace("\\|", "").count("|") for ln in table}) == 1  # every row has the header's columns


def test_shared_prefix_keeps_every_difference_between_choices(tiny):
    model, tok = tiny
    items = [Choices("", ["the cat is red.", "the cat is blue.", "the cat is"]),
             Choices("Say:", [" yes it is", " yes it was"]), Choices("", ["apple", "banana"])]
    full = choice_logliks(model, tok, items, show_progress=False)
    shared = choice_logliks(model, tok, items, show_progress=False, share_prefix=True)
    for a, b in zip(full, shared, strict=True):
        # (equal up to fp32 rounding: the packed rows differ, so do the matmuls)
        assert [x - a[0] for x in a] == pytest.approx([x - b[0] for x in b], abs=1e-5)
    assert shared[0] != full[0]  # the shared "the cat is" was left out of every choice's score
