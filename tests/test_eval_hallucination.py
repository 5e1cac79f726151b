"""Closed-domain hallucination: what counts as unsupported, by hand; the command on a tiny model."""

import json

import pytest

from rlhfkit.data import DataError, Prompt
from rlhfkit.evaluation.hallucination import judge, read_passage_prompts, unsupported

PASSAGE = "Honey bees tell each other where flowers are by doing a waggle dance. Karl von Frisch decoded it in 1927."


def test_unsupported_words_names_and_numbers():
    faithful = unsupported("Bees dance to tell where the flowers are.", PASSAGE, "Summarize the passage.")
    assert faithful["unsupported_names"] == [] and faithful["unsupported_words"] == []
    invented = unsupported("The dance was found in Brazil in 1850 by scientists.", PASSAGE, "Summarize it.")
    assert invented["unsupported_names"] == ["1850", "brazil"]
    assert set(invented["unsupported_words"]) == {"1850", "brazil", "found", "scientist"}
    # names and numbers from the passage, and a capitalised first word, are not claims of their own
    assert unsupported("Frisch decoded it in 1927. Bees dance.", PASSAGE, "")["unsupported_names"] == []


def test_judge_counts_refusals_apart():
    prompts = [Prompt(prompt="Summarize the passage.", meta={"passage": PASSAGE})] * 3
    out = judge(["Bees dance to show where flowers are.", "It was found in Brazil by Darwin.",
                 "I'm sorry, but I can't help with that."], prompts)
    assert out["hallucination_rate"] == pytest.approx(0.5)
    assert out["refused_or_empty"] == pytest.approx(1 / 3)
    assert len(out["examples"]) == 1 and "Brazil" in out["examples"][0]["response"]
    assert "content words" in out["method"]


def test_passage_prompts_are_required(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Summarize.", "passage": PASSAGE}) + "\n" + json.dumps({"prompt": "Hi"}))
    with pytest.raises(DataError, match=r"p.jsonl: record 2: field 'passage'"):
        read_passage_prompts(path)


def test_hallucination_command_on_a_tiny_model(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Summarize the passage.\n\n{PASSAGE}", "passage": PASSAGE}) + "\n"
                            for _ in range(2)))
    result = CliRunner().invoke(app, ["eval", "hallucination", "--model", str(tiny_llama), "--data", str(path),
                                      "--output", str(tmp_path / "out"), "--max-new-tokens", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "hallucination.json").read_text())
    assert saved["results"][tiny_llama.name]["hallucination"]["prompts"] == 2
