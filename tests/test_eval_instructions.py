"""The outside instruction check: instructions attached the same way every time, never two that cannot hold
together, phrased unlike the demo's constraints; strict and loose verdicts by hand; the command on two models."""

import json

import pytest

from rlhfkit.evaluation.constraints import TYPES, instruction
from rlhfkit.evaluation.instructions import (
    CONFLICTS,
    GROUPS,
    PHRASINGS,
    InstructionPrompt,
    attach,
    followed,
    paired_difference,
    score_answers,
)

REQUESTS = [f"How do I take care of a {plant} in a small flat?" for plant in
            ("cactus", "fern", "basil plant", "lemon tree", "orchid", "bonsai", "ivy", "succulent")] * 25


def test_attached_instructions_are_fixed_compatible_and_phrased_their_own_way():
    drawn = attach(REQUESTS)
    assert [d.instructions for d in drawn] == [d.instructions for d in attach(REQUESTS)]  # the same every time
    assert {len(d.instructions) for d in drawn} == {1, 2, 3}
    for d in drawn:
        kinds = [c["type"] for c in d.instructions]
        assert len(set(kinds)) == len(kinds)
        assert all(sum(k in g for k in kinds) <= 1 for g in GROUPS), kinds
        assert not any(frozenset((a, b)) in CONFLICTS for a in kinds for b in kinds if a != b), kinds
        for c in d.instructions:
            assert c["phrase"] in d.text and c["phrase"] != instruction(c)  # not the demo's sentence
    assert set(PHRASINGS) <= set(TYPES) and all(len(p) >= 2 for p in PHRASINGS.values())
    used = {c["type"] for d in drawn for c in d.instructions}
    assert len(used) >= 20  # the draw reaches nearly every type
    assert len({c["phrase"] for d in drawn for c in d.instructions if c["type"] == "no_commas"}) == 2


@pytest.mark.parametrize(("c", "response", "strict", "loose"), [
    ({"type": "bullets", "value": 3}, "- soil\n- light\n- water", True, True),
    ({"type": "bullets", "value": 3}, "Here you go:\n- soil\n- light\n- water", False, True),  # loose drops line 1
    ({"type": "bullets", "value": 3}, "- soil\n- light", False, False),
    ({"type": "lowercase"}, "water it weekly.", True, True),
    ({"type": "lowercase"}, "Water it weekly.", False, False),
    ({"type": "ends_with", "value": "Hope this helps!"}, "Water weekly. Hope this helps!\n\n*Note*", False, True),
    ({"type": "max_words", "value": 5}, "Water it once a week.", True, True),
    ({"type": "no_commas"}, "Water, light and soil.", False, False),
])
def test_strict_and_loose_verdicts(c, response, strict, loose):
    assert followed(c, response) == (strict, loose)


def test_the_figures_of_one_model():
    items = [InstructionPrompt("Name a fruit.", [{"type": "lowercase", "phrase": "x"}]),
             InstructionPrompt("Name two.", [{"type": "max_words", "value": 3, "phrase": "x"},
                                             {"type": "no_commas", "phrase": "y"}])]
    r = score_answers(items, ["an apple", "I'm sorry but I can't help with that request today."], [True, False])
    assert r["prompts"] == 2 and r["instructions"] == 3
    assert r["prompt_strict"] == 0.5 and r["instruction_strict"] == pytest.approx(2 / 3)
    assert r["cut_off"] == 0.5 and r["refusals"] == 0.5 and r["words"] == pytest.approx((2 + 10) / 2)
    assert r["by_type"]["max_words"] == {"instructions": 1, "strict": 0.0, "loose": 0.0}


def test_paired_difference_over_the_same_prompts():
    base = {"answers": [{"strict": [True, False]}, {"strict": [False]}, {"strict": [True]}] * 20}
    better = {"answers": [{"strict": [True, True]}, {"strict": [False]}, {"strict": [True]}] * 20}
    d = paired_difference(base, better)
    assert d["points"] == pytest.approx(25.0) and d["better"] == 20 and d["worse"] == 0
    assert 0 < d["low"] <= d["points"] <= d["high"]
    assert paired_difference(base, base)["points"] == 0.0


@pytest.mark.integration
def test_instructions_command_on_two_models(tiny_llama, tiny_gpt2, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in REQUESTS[:4]))
    result = CliRunner().invoke(app, ["eval", "instructions", "-m", str(tiny_llama), "-m", str(tiny_gpt2), "--data",
                                      str(prompts), "--output", str(tmp_path / "out"), "--max-new-tokens", "6",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "instructions.json").read_text())
    first = saved["results"][tiny_llama.name]["instructions"]
    assert first["prompts"] == 4 and len(first["answers"]) == 4 and 0 <= first["instruction_loose"] <= 1
    assert list(saved["paired"]) == [f"{tiny_gpt2.name} vs {tiny_llama.name}"]
    assert "points of instructions followed" in (tmp_path / "out" / "instructions.md").read_text()
