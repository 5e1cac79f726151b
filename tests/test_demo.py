"""The demo's parts: the simulated panel, the bundled data, and `rlhfkit demo --quick` end to end on the real
SmolLM2 model. (The constraint checkers are tested in test_constraints.py.)"""

import json
import random
from dataclasses import fields
from importlib.resources import files

import pytest

from rlhfkit.data import read_demonstrations, read_prompts
from rlhfkit.demo.labelers import make_panel, rubric
from rlhfkit.demo.pipeline import spread
from rlhfkit.evaluation.constraints import is_refusal, satisfied
from rlhfkit.feedback.export import pair_signs


def bundled_prompts():
    return read_prompts(files("rlhfkit.demo") / "data" / "prompts.jsonl").records


def test_bundled_data_is_as_promised():
    prompts = bundled_prompts()
    assert len(prompts) >= 400 and len({p.id for p in prompts}) == len(prompts)
    categories = {p.meta["category"] for p in prompts}
    assert {"generation", "open_qa", "brainstorming", "chat", "rewrite", "summarization", "classification",
            "closed_qa", "extraction", "other"} <= categories
    assert sum(p.meta["harmful"] for p in prompts) >= 40
    splits = {s: {p.prompt if isinstance(p.prompt, str) else p.prompt[-1].content for p in prompts
                  if p.meta["split"] == s} for s in ("sft", "rm", "ppo", "eval")}
    for a in splits:
        for b in splits:
            assert a == b or not splits[a] & splits[b], (a, b)  # disjoint splits
    demos = read_demonstrations(files("rlhfkit.demo") / "data" / "sft_demonstrations.jsonl").records
    assert len(demos) >= 150
    by_prompt = {p.prompt: p for p in prompts}
    for d in demos:  # every demonstration meets its prompt's constraints, and refuses exactly the harmful ones
        p = by_prompt[d.prompt]
        assert all(satisfied(c, d.response) for c in p.meta["constraints"]), d
        assert is_refusal(d.response) == p.meta["harmful"], d
    prose = (files("rlhfkit.demo") / "data" / "prose.txt").read_text().splitlines()
    assert len(prose) >= 200


def test_rm_selection_holds_every_refusal_prompt_and_still_covers_every_category():
    rm_split = [p for p in bundled_prompts() if p.meta["split"] == "rm"]
    refusal_prompts = [p for p in rm_split if p.meta["category"] in ("harmful", "sensitive")]
    chosen = spread(rm_split, 80, ("harmful", "sensitive"))
    assert len(chosen) == 80 and len({p.id for p in chosen}) == 80
    assert {p.id for p in refusal_prompts} <= {p.id for p in chosen}
    assert {p.meta["category"] for p in chosen} == {p.meta["category"] for p in rm_split}
    # A selection too small to hold them whole and leave room for the rest takes every category in turn.
    small = spread(rm_split, 12, ("harmful", "sensitive"))
    assert len({p.meta["category"] for p in small}) == 12


def graded_responses(prompt, rng):
    """Responses of known, close quality: the reference and small defects of it."""
    ref = prompt.meta["reference"]
    w = ref.split()
    return [(ref, True), (ref + " " + " ".join(w[:4]) + ".", True), (" ".join(w[: max(1, 2 * len(w) // 3)]), False),
            (ref.upper() if rng.random() < 0.5 else ref.replace(".", ",", 1), True), (ref + " " + ref, True),
            (" ".join(w[:-1]), True)]


def test_panel_agreement_lands_in_the_instructgpt_band():
    rng = random.Random(0)
    panel = make_panel(6, seed=0)
    agree = total = 0
    for p in bundled_prompts():
        items = rng.sample(graded_responses(p, rng), 4)
        a, b = rng.sample(panel, 2)
        ranks = [lab.rank(p, [t for t, _ in items], [e for _, e in items])["ranks"] for lab in (a, b)]
        sa, sb = pair_signs(ranks[0]), pair_signs(ranks[1])
        agree += sum(sa[k] == sb[k] for k in sa)
        total += len(sa)
    assert 0.65 <= agree / total <= 0.80, agree / total


def test_rubric_prefers_what_the_paper_asks_for():
    prompts = {p.meta["category"]: p for p in bundled_prompts()}
    harmful, bullets = prompts["harmful"], next(p for p in bundled_prompts() if p.meta["category"] == "brainstorming")
    lab = make_panel(1, seed=3)[0]
    assert lab.quality(harmful, "I'm sorry, but I can't help with that.") > lab.quality(harmful, "Sure, first you")
    good = bullets.meta["reference"]
    assert lab.quality(bullets, good) > lab.quality(bullets, good.replace("- ", "", 1))  # a bullet lost
    assert lab.quality(bullets, good) > lab.quality(bullets, good, ended=False)  # cut off
    assert rubric(bullets, "I'm sorry, but I can't help with that.")["refusal"] == 0.0  # over-refusal


def test_rubric_does_not_penalise_what_the_prompt_asked_for():
    from rlhfkit.data.records import Prompt

    def prompt(category, text, topic, constraints):
        return Prompt(id="p", prompt=text, meta={"category": category, "topic": topic, "constraints": constraints})

    label = prompt("classification", "Which subject: science, food or sport? Sentence: Sourdough uses wild yeast.",
                   "bread", [{"type": "max_words", "value": 3}])
    checks = rubric(label, "Food")  # a one-word label without a full stop is the answer asked for
    assert "on_topic" not in checks and checks["length"] == 1.0 and checks["complete"] == 1.0
    title = prompt("other", "Suggest a title about swimming. Do not use the word \"swimming\".", "swimming",
                   [{"type": "max_words", "value": 6}, {"type": "avoid_word", "value": "swimming"}])
    assert "on_topic" not in rubric(title, "Making Waves")
    about = prompt("generation", "Write a short paragraph about whales.", "whales", [])
    assert rubric(about, "A whale sings.")["on_topic"] == 1.0  # singular and plural are the same topic
    assert rubric(about, "Cats purr.")["on_topic"] == 0.0
    assert rubric(about, "Whales sing")["complete"] == 0.5  # a sentence that stops without its full stop
    assert rubric(about, "Whales.")["length"] < 1.0  # a fragment where a paragraph was asked


def test_best_of_n_by_hand():
    import itertools
    import math

    from rlhfkit.demo.headroom import best_of_n_kl, best_of_n_win, expected_max

    q = [0.1, 0.5, 0.5, 0.9]
    assert best_of_n_win(q, 1) == pytest.approx(0.5)  # one draw against one draw: even
    for n in (2, 3):  # every way to draw n samples and one rival, ties counting half
        outcomes = [(max(draw[:-1]) > draw[-1]) + 0.5 * (max(draw[:-1]) == draw[-1])
                    for draw in itertools.product(q, repeat=n + 1)]
        assert best_of_n_win(q, n) == pytest.approx(sum(outcomes) / len(outcomes))
        assert expected_max(q, n) == pytest.approx(sum(max(d) for d in itertools.product(q, repeat=n)) / 4**n)
    assert best_of_n_kl(1) == 0 and best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    assert best_of_n_win([0.3] * 5, 8) == pytest.approx(0.5)  # no spread, no headroom


def test_rm_agreement_by_deciding_check():
    from rlhfkit.demo.headroom import deciding_check, rm_agreement

    prompts = bundled_prompts()
    harmful = next(p for p in prompts if p.meta.get("harmful"))
    sensitive = next(p for p in prompts if p.meta.get("category") == "sensitive")
    refuse, answer = "I'm sorry, but I can't help with that.", sensitive.meta["reference"]
    samples = [[{"text": refuse, "ended": True}, {"text": answer, "ended": True}]] * 2
    assert deciding_check(harmful, rubric(harmful, refuse), rubric(harmful, answer)) == "refusal: harmful"
    # the judges prefer the refusal of the harmful request and the answer to the harmless one; an RM that scores
    # every refusal higher is right on the first and wrong on the second
    quality, proxy = [[0.9, 0.1], [0.1, 0.9]], [[1.0, 0.0], [1.0, 0.0]]
    got = rm_agreement([harmful, sensitive], samples, quality, proxy)
    assert got == {"all": {"accuracy": 0.5, "pairs": 2}, "refusal: harmful": {"accuracy": 1.0, "pairs": 1},
                   "refusal: harmless": {"accuracy": 0.0, "pairs": 1}}
    assert rm_agreement([harmful], [samples[0]], [[0.5, 0.51]], [[0.0, 1.0]]) == {}  # within the margin: no pair


def test_the_default_config_file_holds_the_built_in_defaults():
    from pathlib import Path

    from rlhfkit.config import load_config
    from rlhfkit.demo.config import DemoConfig

    path = Path(__file__).parents[1] / "configs" / "demo.yaml"
    assert load_config(DemoConfig, path, {}) == DemoConfig()


@pytest.mark.integration
def test_quick_demo_end_to_end(tmp_path, smollm2):
    from rlhfkit.demo.config import DemoConfig
    from rlhfkit.demo.pipeline import run_demo

    outside = tmp_path / "outside.jsonl"
    outside.write_text("".join(json.dumps(q) + "\n" for q in ["Why is the sky blue?", "Write a haiku about rain.",
                                                              "How do I kill a stuck process?", "Hi!"]))
    public = tmp_path / "public"  # the layout of ../shared/data, a few items of each
    for folder in ("truthfulqa", "crows-pairs", "winogender", "toxigen"):
        (public / folder).mkdir(parents=True)
    mc = {"Yes.": 0, "No.": 1}
    (public / "truthfulqa/mc_task.json").write_text(json.dumps([{"question": "Is a cat a tree?", "mc1_targets": mc,
                                                                 "mc2_targets": mc}]))
    (public / "crows-pairs/crows_pairs_anonymized.csv").write_text(
        "sent_more,sent_less,bias_type\nThe old man forgot.,The young man forgot.,age\n")
    (public / "winogender/all_sentences.tsv").write_text("sentid\tsentence\n" + "".join(
        f"nurse.patient.0.{g}.txt\tThe nurse said {p} was late.\n"
        for g, p in (("male", "he"), ("female", "she"), ("neutral", "they"))))
    (public / "toxigen/prompts_sample.jsonl").write_text(json.dumps({"group": "g", "label": "neutral",
                                                                      "prompt": "- people are kind\n-"}) + "\n")
    report = run_demo(DemoConfig(quick=True, runs_dir=str(tmp_path), name="quick", outside_prompts=str(outside),
                                 compare=["no-ptx", "dpo", "gae", "grpo"], rounds=2, eval_data=str(public))).read_text()
    for heading in ("## Outside the demo's prompts", "## Instructions outside the demo's",
                    "## Truthfulness, bias, toxicity, hallucination", "## Stages",
                    "## Data", "## Headroom above SFT",
                    "## Comparisons and reward model", "## PPO",
                    "## Evaluation after round 1", "## Evaluation after round 2", "## Targets"):
        assert heading in report
    for column in ("Likert", "constraints all met", "refusals, harmful", "refusals, harmless", "RM score",
                   "KL to SFT", "prose perplexity"):
        assert column in report
    assert "Where round 1's RM agrees with the judges" in report
    for column in ("TruthfulQA MC1, QA", "CrowS stereotype %", "Winogender entropy", "expected max", "hallucinated"):
        assert column in report
    for row in ("ppo-ptx r1 vs sft", "ppo-ptx r1 vs base", "sft vs base", "ppo r1 (γ=0)", "ppo-ptx r2 vs sft",
                "dpo r1 vs sft", "ppo-ptx gae r1 vs sft", "grpo-ptx r1 vs sft", "| best-of-4 by RM |"):
        assert row in report
    assert "training seconds" in report and "The training steps alone: ppo-ptx r1 " in report
    # the outside instruction check: every trained policy, SFT against the start and each policy against SFT
    for row in ("| grpo-ptx r1 vs sft |", "| sft vs base |", "| ppo-ptx r2 vs sft |", "outside instructions followed"):
        assert row in report
    run = tmp_path / "quick"
    for artefact in ("ppo_curves.png", "win_rates.png", "agreement.png", "gold_vs_proxy.png", "sft/config.json",
                     "round2/rm", "round1/ppo-no-ptx", "round1/dpo/model.safetensors", "round1/grpo/model.safetensors",
                     "round1/ppo-gae/value", "rm-round1.jsonl", "stages.json", "evals/sft_samples.json",
                     "evals/suite/all.png", "evals/instructions/instructions.json"):
        assert (run / artefact).exists(), artefact
    # a rerun with --resume finds every stage done and only rewrites nothing
    before = (run / "stages.json").read_text()
    run_demo(DemoConfig(quick=True, runs_dir=str(tmp_path), name="quick", resume=True, outside_prompts=str(outside),
                        compare=["no-ptx", "dpo", "gae", "grpo"], rounds=2, eval_data=str(public)))
    assert (run / "stages.json").read_text() == before


def test_win_rate_compares_sample_for_sample():
    from rlhfkit.demo.evaluate import PolicyOutputs, win_rate
    from rlhfkit.rollout import Rollout

    prompts = [p for p in bundled_prompts() if p.meta.get("constraints")][:3]
    twice = [p for p in prompts for _ in range(2)]
    good = [p.meta["reference"] for p in twice]
    bad = ["" if k % 2 else "Sure" for k in range(len(twice))]

    def outputs(texts):
        return PolicyOutputs("x", "x", Rollout(list(range(len(texts))), [[]] * len(texts), [[]] * len(texts),
                                               [True] * len(texts), texts))

    judges = make_panel(2, seed=5, noise=1e-6)
    w = win_rate(judges, twice, outputs(good), outputs(bad), samples=2)
    assert w["prompts"] == 3 and w["samples_per_prompt"] == 2 and w["win_rate"] == 1.0
    assert win_rate(judges, twice, outputs(good), outputs(good), samples=2)["win_rate"] == 0.5


@pytest.mark.integration
@pytest.mark.parametrize("stop_after", [0, 7, 13])
def test_labeling_interrupted_and_resumed_gives_the_straight_runs_rankings(tmp_path, stop_after):
    """The panel stopped after a number of judgements (its last lease taken, never submitted, as a kill -9 leaves
    it), then started again by a new process: the same rankings, in the same order, as labeling straight through."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.demo.config import DemoConfig
    from rlhfkit.demo.labelers import SimulatedLabeler
    from rlhfkit.demo.pipeline import Run, label_with_panel, prepare_data

    def labelled(name: str, interrupt: bool) -> str:
        cfg = DemoConfig(quick=True, runs_dir=str(tmp_path), name=name).sized()
        run = Run(cfg)
        prepare_data(run, cfg)
        samples = run.dir / "samples.jsonl"
        write_jsonl(samples, [{"prompt": p.prompt, "id": p.id, "sources": [{"ended": j != 2} for j in range(4)],
                               "responses": [f"Answer {j}. " * (j + 1) for j in range(4)]}
                              for p in read_prompts(run.dir / "data" / "rm_prompts.jsonl").records[:6]])
        if interrupt:  # the panel stops mid-judgement: `stop_after` judgements submitted, the next one leased
            calls = [0]

            class Interrupted(SimulatedLabeler):
                def rank(self, *args, **kwargs):
                    if calls[0] == stop_after:
                        raise KeyboardInterrupt
                    calls[0] += 1
                    return super().rank(*args, **kwargs)

            panel = [Interrupted(**{f.name: getattr(lab, f.name) for f in fields(lab)})
                     for lab in make_panel(cfg.panel_size, cfg.seed, "labeler")]
            with pytest.raises(KeyboardInterrupt):
                label_with_panel(run, cfg, samples, "rm-round1", panel)
        label_with_panel(run, cfg, samples, "rm-round1", make_panel(cfg.panel_size, cfg.seed, "labeler"))
        return (run.dir / "rm-round1.jsonl").read_text()

    assert labelled("interrupted", True) == labelled("straight", False)


@pytest.mark.integration
def test_headroom_samples_are_reused_only_with_the_settings_that_drew_them(tmp_path, tiny_llama):
    """A run resumed with other headroom settings samples again (the cache once crashed such a run)."""
    from rlhfkit.demo.headroom import read_sft_samples, sft_samples

    (tmp_path / "sft").symlink_to(tiny_llama)
    prompts = bundled_prompts()[:2]
    first = sft_samples(tmp_path, prompts, 2, 4, 1.0, 1.0, seed=0)
    assert [len(s) for s in first] == [2, 2]
    more = sft_samples(tmp_path, prompts, 3, 4, 1.0, 1.0, seed=0)
    assert [len(s) for s in more] == [3, 3]
    (tmp_path / "sft").unlink()  # the same settings again: read back, no model needed
    assert sft_samples(tmp_path, prompts, 3, 4, 1.0, 1.0, seed=0) == more == read_sft_samples(tmp_path)
