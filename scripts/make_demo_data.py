"""Build the bundled demo data (src/rlhfkit/demo/data/) from the hand-written topics and requests.

    python scripts/make_demo_data.py

Writes prompts.jsonl (every prompt with its category, split, constraints and, where it has one, the passage
and the reference answer), sft_demonstrations.jsonl (a demonstration for every SFT-split prompt; each is
checked against its prompt's constraints), and prose.txt (plain prose: the ptx mix and, for a held-out
part, the alignment-tax perplexity). Deterministic: the same files every run.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_requests import HARMFUL, SENSITIVE_HARMLESS  # noqa: E402
from demo_topics import TOPICS  # noqa: E402

from rlhfkit.evaluation.constraints import instruction, is_refusal, satisfied  # noqa: E402

OUT = ROOT / "src" / "rlhfkit" / "demo" / "data"
SPLITS = (("sft", 0.40), ("rm", 0.22), ("ppo", 0.20), ("eval", 0.18))
DOMAINS = ["science", "history", "food", "sport", "nature", "technology", "health", "arts"]
ENDINGS = ["Hope this helps.", "That is all.", "Thanks for asking!", "Have a great day."]
IDEAS = ["Read a beginner's book about {t}.", "Watch a documentary about {t}.",
         "Visit a museum or centre that covers {t}.", "Ask an expert about {t}.",
         "Write down three facts about {t} from memory.", "Join a club that shares an interest in {t}.",
         "Look for a free online course on {t}.", "Explain {t} to a friend in your own words."]


def lower_first(s: str) -> str:
    return s[0].lower() + s[1:] if s and not s[:2].isupper() else s


def topic_prompts(index: int, topic: tuple, rng: random.Random) -> list[dict]:
    name, domain, facts, question, answer, keywords, title = topic
    passage = " ".join(facts)
    comma_fact = next((f for f in facts if "," in f), facts[0])
    out = []

    def add(category, text, response, constraints=(), **meta):
        constraints = list(constraints)
        full = text + ("" if not constraints else " " + " ".join(instruction(c) for c in constraints))
        out.append({"category": category, "prompt": full, "reference": response, "constraints": constraints,
                    "topic": name, **meta})

    # generation: a paragraph from the facts, with one or two constraints
    ending = ENDINGS[index % len(ENDINGS)]
    if index % 2 == 0:
        add("generation", f"Write a short paragraph about {name}.", passage.lower() + " " + ending.lower(),
            [{"type": "lowercase"}, {"type": "ends_with", "value": ending.lower()}])
    else:
        add("generation", f"Write a short paragraph about {name}.", passage,
            [{"type": "max_words", "value": 60}, {"type": "include_word", "value": keywords[1]}])
    # open QA
    add("open_qa", question, answer, [{"type": "max_words", "value": 20}], answer=answer)
    # brainstorming: exactly n bullets
    n = 3 + index % 3
    ideas = rng.sample(IDEAS, n)
    add("brainstorming", f"Give me ideas for learning more about {name}.",
        "\n".join("- " + i.format(t=name) for i in ideas), [{"type": "bullets", "value": n}])
    # chat
    add("chat", f"Hi! I have been reading about {name}. Can you tell me something interesting about it?",
        f"Sure! {facts[1]} {ending}", [{"type": "ends_with", "value": ending}])
    # rewrite
    if index % 2 == 0:
        add("rewrite", f"Rewrite the following sentence without any commas.\n\nSentence: {comma_fact}",
            comma_fact.replace(", and", " and").replace(", ", " ").replace(",", ""), [{"type": "no_commas"}])
    else:
        add("rewrite", f"Rewrite the following sentence so that it starts with \"Interestingly\".\n\nSentence: "
            f"{facts[2]}", "Interestingly " + lower_first(facts[2]),
            [{"type": "starts_with", "value": "Interestingly"}])
    # summarisation of a passage (closed domain)
    add("summarization", f"Summarize the passage below.\n\nPassage: {passage}", facts[0],
        [{"type": "max_sentences", "value": 1}, {"type": "max_words", "value": 25}], passage=passage)
    # classification (one of the domains)
    add("classification", "Which subject does this sentence belong to: " + ", ".join(DOMAINS[:-1]) + f" or "
        f"{DOMAINS[-1]}?\n\nSentence: {facts[index % 3]}", domain.capitalize() + ".",
        [{"type": "max_words", "value": 3}], answer=domain)
    # closed QA or extraction (closed domain)
    if index % 2 == 0:
        add("closed_qa", f"Answer the question using only the passage.\n\nPassage: {passage}\n\nQuestion: {question}",
            answer, [{"type": "max_words", "value": 25}], passage=passage, answer=answer)
    else:
        add("extraction", f"List three keywords that appear in the passage.\n\nPassage: {passage}",
            json.dumps(keywords), [{"type": "json_list", "value": 3}], passage=passage)
    # other: a title
    add("other", f"Suggest a title for a magazine article about {name}.", title,
        [{"type": "max_words", "value": 6}, {"type": "avoid_word", "value": name.split()[-1]}]
        if name.split()[-1].lower() not in title.lower() else [{"type": "max_words", "value": 6}])
    return out


def request_prompts() -> list[dict]:
    out = []
    for request, redirect in HARMFUL:
        out.append({"category": "harmful", "prompt": request, "harmful": True, "constraints": [],
                    "reference": f"I'm sorry, but I can't help with that. {redirect}"})
    for request, help_text in SENSITIVE_HARMLESS:
        out.append({"category": "open_qa", "prompt": request, "harmful": False, "constraints": [],
                    "reference": help_text, "sensitive_wording": True})
    return out


def assign_splits(prompts: list[dict], rng: random.Random) -> None:
    by_category: dict[str, list[dict]] = {}
    for p in prompts:
        by_category.setdefault(p["category"], []).append(p)
    for group in by_category.values():
        rng.shuffle(group)
        edges, acc = [], 0.0
        for name, share in SPLITS:
            acc += share
            edges.append((name, round(acc * len(group))))
        start = 0
        for name, end in edges:
            for p in group[start:end]:
                p["split"] = name
            start = end


def prose_lines(topics: list[tuple]) -> list[str]:
    """Plain prose about each topic: the facts retold in several ways, one paragraph a line."""
    openers = ["Here is something worth knowing about {t}.", "Many people find {t} surprising.",
               "A short note on {t} follows.", "There is more to {t} than most people think."]
    lines = []
    for i, (name, domain, facts, question, answer, keywords, title) in enumerate(topics):
        lines.append(f"{openers[i % len(openers)].format(t=name)} {facts[0]} {facts[1]}")
        lines.append(f"{facts[2]} This is one reason {name} {'are' if name.endswith('s') else 'is'} studied in "
                     f"{domain} classes.")
        lines.append(f"{question} {answer} Questions like this are a good way to start learning about {name}.")
        lines.append(f"{title}: {facts[1]} {facts[2]}")
        lines.append(f"In {domain}, {name} {'are' if name.endswith('s') else 'is'} often linked with "
                     f"{keywords[0]}, {keywords[1]} and {keywords[2]}.")
        lines.append(f"{facts[0]} People who want to know more can read about {keywords[1]} and {keywords[2]}.")
    return lines


def main() -> None:
    rng = random.Random(20220304)  # the InstructGPT paper's arXiv date
    prompts = []
    for i, topic in enumerate(TOPICS):
        prompts.extend(topic_prompts(i, topic, rng))
    prompts.extend(request_prompts())
    assign_splits(prompts, rng)
    for i, p in enumerate(prompts):
        p["id"] = f"p{i:04d}"
        p.setdefault("harmful", False)
        if p["harmful"]:
            assert is_refusal(p["reference"]), p
        for c in p["constraints"]:
            assert satisfied(c, p["reference"]), (p["prompt"], c, p["reference"])

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "prompts.jsonl", "w") as f:
        for p in prompts:
            meta = {k: p[k] for k in ("category", "split", "constraints", "harmful", "topic", "passage", "answer",
                                      "reference", "sensitive_wording") if k in p}
            f.write(json.dumps({"id": p["id"], "prompt": p["prompt"], "meta": meta}, ensure_ascii=False) + "\n")
    demos = [p for p in prompts if p["split"] == "sft"]
    with open(OUT / "sft_demonstrations.jsonl", "w") as f:
        for p in demos:
            f.write(json.dumps({"id": "sft-" + p["id"], "prompt": p["prompt"], "response": p["reference"],
                                "meta": {"category": p["category"]}}, ensure_ascii=False) + "\n")
    lines = prose_lines(TOPICS)
    (OUT / "prose.txt").write_text("\n".join(lines) + "\n")
    counts = {s: sum(p["split"] == s for p in prompts) for s, _ in SPLITS}
    print(f"{len(prompts)} prompts {counts}, {sum(p['harmful'] for p in prompts)} harmful, "
          f"{sum(bool(p['constraints']) for p in prompts)} with constraints; {len(demos)} SFT demonstrations; "
          f"{len(lines)} lines of prose")


if __name__ == "__main__":
    main()
