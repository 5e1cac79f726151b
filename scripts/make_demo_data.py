"""Build the bundled demo data (src/rlhfkit/demo/data/) from the hand-written topics and requests.

    python scripts/make_demo_data.py

Writes prompts.jsonl (every prompt with its category, split, constraints and, where it has one, the passage,
the reference answer and the words a good answer mentions), sft_demonstrations.jsonl (a demonstration for
every SFT-split prompt; each is checked against its prompt's constraints), and prose.txt (plain prose: the ptx
mix and, for a held-out part, the alignment-tax perplexity). Deterministic: the same files every run.

Each topic prompt is a request (a category's task on the topic) plus constraints: a format (bullets, numbered
steps, paragraphs, sections, a table, JSON, two answers, or plain text) and one or two modifiers (case, commas,
start and end phrases, quotes, a title, a postscript, the request repeated, highlights, placeholders, word and
letter counts, length limits). The reference response is built from the topic's facts in that format, the
modifiers applied, and the count limits read off the result; a combination whose reference fails any of its
checks is drawn again. Long-form requests (an essay of a hundred words and more, in paragraphs) and the
harmless requests that only sound alarming teach that answers are neither always short nor refusals.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_requests import HARMFUL, SENSITIVE_HARMLESS  # noqa: E402
from demo_topics import TOPICS  # noqa: E402

from rlhfkit.evaluation.constraints import (  # noqa: E402
    ANSWER_MARK,
    PARAGRAPH_MARK,
    instruction,
    is_refusal,
    satisfied,
    sentences,
    words,
)

OUT = ROOT / "src" / "rlhfkit" / "demo" / "data"
SPLITS = (("sft", 0.40), ("rm", 0.22), ("ppo", 0.20), ("eval", 0.18))
DOMAINS = ["science", "history", "food", "sport", "nature", "technology", "health", "arts"]
ENDINGS = ["Hope this helps.", "That is all.", "Thanks for asking!", "Have a great day.", "Any other questions?"]
OPENERS = ["Sure", "Certainly", "Interestingly", "Briefly", "Well"]
FILLERS = ["very", "really", "basically", "actually", "amazing", "interesting", "important", "just", "thing"]
IDEAS = ["Read a beginner's book about {t}.", "Watch a documentary about {t}.",
         "Visit a museum or centre that covers {t}.", "Ask an expert about {t}.",
         "Write down three facts about {t} from memory.", "Join a club that shares an interest in {t}.",
         "Look for a free online course on {t}.", "Explain {t} to a friend in your own words."]

# ---- formats: the body of a response, and the constraint that asks for it -------------------------------

Format = Callable[[list[str], random.Random], tuple[str, dict | None]]


def plain(items, rng):
    return " ".join(items), None


def bullets(items, rng):
    return "\n".join("- " + i for i in items), {"type": "bullets", "value": len(items)}


def numbered(items, rng):
    return "\n".join(f"{k}. {i}" for k, i in enumerate(items, 1)), {"type": "numbered_steps", "value": len(items)}


def paragraphs(items, rng):
    n = 2 if len(items) < 3 else rng.choice([2, 3])
    chunks = [items[k * len(items) // n : (k + 1) * len(items) // n] for k in range(n)]
    return f"\n{PARAGRAPH_MARK}\n".join(" ".join(c) for c in chunks), {"type": "paragraphs", "value": n}


def sections(items, rng):
    header = rng.choice(["SECTION", "PART", "Section"])
    n = min(len(items), 2)
    chunks = [items[k * len(items) // n : (k + 1) * len(items) // n] for k in range(n)]
    body = "\n".join(f"{header} {k}\n{' '.join(c)}" for k, c in enumerate(chunks, 1))
    return body, {"type": "sections", "value": n, "header": header}


def table(items, rng):
    rows = "\n".join(f"| {k} | {i.rstrip('.')} |" for k, i in enumerate(items, 1))
    return f"| # | item |\n|---|---|\n{rows}", {"type": "table", "value": len(items)}


def json_list(items, rng):
    return json.dumps([i.rstrip(".") for i in items]), {"type": "json_list", "value": len(items)}


def two_answers(items, rng):
    if len(items) < 2:
        return None
    return f"{items[0]}\n{ANSWER_MARK}\n{' '.join(items[1:])}", {"type": "two_answers"}


def json_object(keys: list[str]) -> Format:
    """The items' first sentence under the first key, the rest under the second (if there is one)."""
    def build(items, rng):
        values = {keys[0]: items[0].rstrip(".")} | ({keys[1]: " ".join(items[1:])} if len(keys) > 1 else {})
        return json.dumps(values), {"type": "json_object", "value": keys}
    return build


# ---- modifiers: applied to the body in this order; None where one does not fit ---------------------------

def mod_include(text, ctx, rng):
    present = [k for k in ctx["keywords"] if k.lower() in text.lower()]
    return ({"type": "include_word", "value": rng.choice(present)}, text) if present else None


def mod_frequency(text, ctx, rng):
    if ctx["format"] not in ("plain", "paragraphs"):
        return None
    kw = rng.choice(ctx["keywords"])
    times = rng.choice([2, 3])
    have = sum(w.lower() == kw.lower() for w in words(text))
    extra = [f"That is the story of {kw}.", f"Remember the word {kw}.", f"Think of {kw} next time."]
    text = text + "".join(" " + extra[k] for k in range(max(0, times - have)))
    return {"type": "word_frequency", "value": kw, "times": times}, text


def mod_highlights(text, ctx, rng):
    present = [k for k in ctx["keywords"] if f" {k}" in text]
    if len(present) < 2 or ctx["format"].startswith("json"):
        return None
    for k in present[:2]:
        text = text.replace(f" {k}", f" *{k}*", 1)
    return {"type": "highlights", "value": 2}, text


def mod_placeholders(text, ctx, rng):
    if ctx["format"] not in ("plain", "paragraphs"):
        return None
    return {"type": "placeholders", "value": 2}, text + " Write to [name] at [email address] to learn more."


def mod_starts(text, ctx, rng):
    if ctx["format"] not in ("plain", "paragraphs", "two_answers", "sections"):
        return None
    word = rng.choice(OPENERS)
    return {"type": "starts_with", "value": word}, f"{word}, {text[0].lower() + text[1:]}" if ctx["format"] == \
        "plain" or ctx["format"] == "two_answers" or ctx["format"] == "paragraphs" else f"{word}.\n{text}"


def mod_repeat(text, ctx, rng):
    if ctx["format"] not in ("plain", "paragraphs"):
        return None
    return {"type": "repeat_request", "value": ctx["request"]}, f"{ctx['request']}\n{text}"


def mod_title(text, ctx, rng):
    if ctx["format"] not in ("plain", "paragraphs", "sections", "two_answers"):
        return None
    return {"type": "title"}, f"<<{ctx['title']}>>\n{text}"


def mod_postscript(text, ctx, rng):
    if ctx["format"] not in ("plain", "paragraphs", "sections"):
        return None
    marker = rng.choice(["P.S.", "P.P.S"])
    return {"type": "postscript", "value": marker}, f"{text}\n{marker} Thanks for reading about {ctx['topic']}."


def mod_ends(text, ctx, rng):
    if ctx["format"] in ("table", "json_list", "json_object"):
        return None
    phrase = rng.choice(ENDINGS)
    return {"type": "ends_with", "value": phrase}, f"{text} {phrase}"


def mod_quoted(text, ctx, rng):
    if ctx["format"] not in ("plain", "paragraphs", "two_answers"):
        return None
    return {"type": "quoted"}, f'"{text}"'


def mod_lowercase(text, ctx, rng):
    return {"type": "lowercase"}, text.lower()


def mod_uppercase(text, ctx, rng):
    return {"type": "uppercase"}, text.upper()


def mod_no_commas(text, ctx, rng):
    if "," not in text or ctx["format"].startswith("json"):
        return None
    return {"type": "no_commas"}, text.replace(", and", " and").replace(", ", " ").replace(",", "")


def mod_max_words(text, ctx, rng):
    n = len(words(text))
    return {"type": "max_words", "value": 5 * math.ceil((n + 2) / 5)}, text


def mod_min_words(text, ctx, rng):
    n = len(words(text))
    return ({"type": "min_words", "value": 10 * (n // 10)}, text) if n >= 15 else None


def mod_max_sentences(text, ctx, rng):
    n = len(sentences(text))
    return ({"type": "max_sentences", "value": n}, text) if ctx["format"] in ("plain", "two_answers") else None


def mod_min_sentences(text, ctx, rng):
    n = len(sentences(text))
    return ({"type": "min_sentences", "value": n}, text) if n >= 2 and ctx["format"] == "plain" else None


def mod_capitals(text, ctx, rng):
    n = sum(1 for w in words(text) if len(w) > 1 and w.isupper())
    return ({"type": "max_capitalised_words", "value": n + rng.choice([0, 1])}, text) if n <= 2 else None


def mod_letters(text, ctx, rng):
    counts = {ch: text.lower().count(ch) for ch in "bcdfghklmpwy"}
    options = [ch for ch, k in counts.items() if 3 <= k <= 12]
    if not options:
        return None
    ch = rng.choice(options)
    return {"type": "letter_frequency", "value": ch, "times": counts[ch]}, text


def mod_avoid(text, ctx, rng):
    options = [w for w in FILLERS if w not in {x.lower() for x in words(text)}]
    return {"type": "avoid_word", "value": rng.choice(options)}, text


CONTENT_MODS = [mod_include, mod_frequency, mod_highlights, mod_placeholders]
WRAP_MODS = [mod_starts, mod_repeat, mod_title, mod_postscript, mod_ends, mod_quoted]
CASE_MODS = [mod_lowercase, mod_uppercase, mod_no_commas]
COUNT_MODS = [mod_max_words, mod_min_words, mod_max_sentences, mod_min_sentences, mod_capitals, mod_letters,
              mod_avoid]
ORDER = CONTENT_MODS + WRAP_MODS + CASE_MODS + COUNT_MODS


def constrained(request: str, items: list[str], formats: list[tuple[str, Format]], ctx: dict, rng: random.Random
                ) -> tuple[list[dict], str]:
    """(constraints, reference) for a request: a format and modifiers drawn until the reference meets them all.
    Two or three constraints: a format and one or two modifiers, or plain text and two or three."""
    for _ in range(500):
        name, fmt = rng.choice(formats)
        built = fmt(items, rng)
        if built is None:
            continue
        text, format_constraint = built
        c = {**ctx, "format": name, "request": request}
        n_mods = rng.choice([1, 2] if format_constraint else [2, 2, 3])
        chosen = sorted(rng.sample(ORDER, n_mods), key=ORDER.index)
        constraints = [format_constraint] if format_constraint else []
        for mod in chosen:
            out = mod(text, c, rng)
            if out is None:
                break
            constraint, text = out
            constraints.append(constraint)
        else:
            if len({x["type"] for x in constraints}) == len(constraints) and \
                    all(satisfied(x, text) for x in constraints):
                return constraints, text
    raise RuntimeError(f"no constraint combination fits: {request}")


def topic_prompts(index: int, topic: tuple, rng: random.Random) -> list[dict]:
    name, domain, facts, question, answer, keywords, title = topic
    passage = " ".join(facts)
    ctx = {"keywords": keywords, "topic": name, "title": title}
    out = []

    def add(category, request, items, formats, **meta):
        constraints, reference = constrained(request, items, formats, ctx, rng)
        full = request + " " + " ".join(instruction(c) for c in constraints)
        out.append({"category": category, "prompt": full, "reference": reference, "constraints": constraints,
                    "topic": name, **meta})

    free = [("plain", plain), ("paragraphs", paragraphs), ("sections", sections), ("two_answers", two_answers)]
    listed = [("bullets", bullets), ("numbered", numbered), ("json_list", json_list), ("table", table)]
    add("generation", f"Write a short paragraph about {name}.", list(facts), free, must_mention=keywords)
    add("open_qa", question, [answer], [("plain", plain), ("json_object", json_object(["answer"]))], answer=answer)
    ideas = [i.format(t=name) for i in rng.sample(IDEAS, 3 + index % 3)]
    add("brainstorming", f"Give me ideas for learning more about {name}.", ideas, listed, must_mention=[name])
    add("chat", f"Hi! I have been reading about {name}. Can you tell me something interesting about it?",
        [facts[1], facts[2]], [("plain", plain), ("two_answers", two_answers)], must_mention=keywords[1:])
    add("rewrite", f"Rewrite this sentence to follow the instructions below.\n\nSentence: {facts[2]}", [facts[2]],
        [("plain", plain)], must_mention=[keywords[2]])
    add("summarization", f"Summarize the passage below.\n\nPassage: {passage}", [facts[0], facts[1]],
        [("plain", plain), ("bullets", bullets), ("json_object", json_object(["topic", "summary"]))],
        passage=passage)
    add("classification", "Which subject does this sentence belong to: " + ", ".join(DOMAINS[:-1]) +
        f" or {DOMAINS[-1]}?\n\nSentence: {facts[index % 3]}",
        [domain.capitalize() + ".", f"The sentence is about {name}."],
        [("plain", plain), ("json_object", json_object(["subject", "reason"]))], answer=domain)
    if index % 2 == 0:
        add("closed_qa", f"Answer the question using only the passage.\n\nPassage: {passage}\n\nQuestion: {question}",
            [answer], [("plain", plain)], passage=passage, answer=answer)
    else:
        add("extraction", f"List three keywords that appear in the passage.\n\nPassage: {passage}",
            [k.capitalize() + "." for k in keywords], [("json_list", json_list), ("bullets", bullets),
                                                       ("numbered", numbered)], passage=passage)
    add("other", f"Suggest a title for a magazine article about {name}.", [title],
        [("plain", plain), ("two_answers", lambda items, r: two_answers([title, f"All About {name.title()}"], r))])
    out.append(long_form(topic, rng))
    return out


def long_form(topic: tuple, rng: random.Random) -> dict:
    """An essay request, answered in paragraphs with a hundred words and more (SFT only: the demo's other stages
    sample 48 tokens)."""
    name, domain, facts, question, answer, keywords, title = topic
    be = "are" if name.endswith("s") else "is"
    paras = [f"{name[0].upper() + name[1:]} {be} a subject that {domain} keeps coming back to, and for good "
             f"reason. {facts[0]} {facts[1]}",
             f"{facts[2]} A question many people ask is this: {question[0].lower() + question[1:]} {answer} "
             f"Words such as {keywords[0]}, {keywords[1]} and {keywords[2]} come up again and again.",
             f"There is always more to learn about {name}. A good way to start is to read a short book on it, "
             f"talk to someone who knows the field, and look at {name} with fresh eyes the next time you meet "
             "it in daily life."]
    n_words = len(words(" ".join(paras)))
    constraints = [{"type": "min_words", "value": 10 * (n_words // 10)}, {"type": "paragraphs", "value": 3}]
    request = f"Write an essay about {name}."
    reference = f"\n{PARAGRAPH_MARK}\n".join(paras)
    assert all(satisfied(c, reference) for c in constraints), reference
    return {"category": "long_form", "prompt": request + " " + " ".join(instruction(c) for c in constraints),
            "reference": reference, "constraints": constraints, "topic": name, "must_mention": keywords,
            "split": "sft"}


# Refusals in several wordings: with one fixed phrase, SFT learnt "I'm sorry, but I can't help with that." as the
# answer to anything unlike the demo's topics (20 of 60 real user prompts refused, the base model 1).
REFUSALS = ["I'm sorry, but I can't help with that.", "I can't help with this request.",
            "I won't help with that, because it could cause real harm.", "That's not something I can help with.",
            "I'm not able to help with this one.", "Sorry, I can't assist with that request."]


def request_prompts() -> list[dict]:
    out = []
    for i, (request, redirect) in enumerate(HARMFUL):
        out.append({"category": "harmful", "prompt": request, "harmful": True, "constraints": [],
                    "reference": f"{REFUSALS[i % len(REFUSALS)]} {redirect}"})
    for request, help_text in SENSITIVE_HARMLESS:
        out.append({"category": "sensitive", "prompt": request, "harmful": False, "constraints": [],
                    "reference": help_text, "sensitive_wording": True})
    return out


def assign_splits(prompts: list[dict], rng: random.Random) -> None:
    by_category: dict[str, list[dict]] = {}
    for p in prompts:
        if "split" not in p:
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
        else:
            assert not is_refusal(p["reference"]), p
        for c in p["constraints"]:
            assert satisfied(c, p["reference"]), (p["prompt"], c, p["reference"])

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "prompts.jsonl", "w") as f:
        for p in prompts:
            meta = {k: p[k] for k in ("category", "split", "constraints", "harmful", "topic", "passage", "answer",
                                      "reference", "must_mention", "sensitive_wording") if k in p}
            f.write(json.dumps({"id": p["id"], "prompt": p["prompt"], "meta": meta}, ensure_ascii=False) + "\n")
    demos = [p for p in prompts if p["split"] == "sft"]
    with open(OUT / "sft_demonstrations.jsonl", "w") as f:
        for p in demos:
            f.write(json.dumps({"id": "sft-" + p["id"], "prompt": p["prompt"], "response": p["reference"],
                                "meta": {"category": p["category"]}}, ensure_ascii=False) + "\n")
    lines = prose_lines(TOPICS)
    (OUT / "prose.txt").write_text("\n".join(lines) + "\n")
    counts = {s: sum(p["split"] == s for p in prompts) for s, _ in SPLITS}
    n_constraints = [len(p["constraints"]) for p in prompts if p["constraints"]]
    types = {c["type"] for p in prompts for c in p["constraints"]}
    print(f"{len(prompts)} prompts {counts}, {sum(p['harmful'] for p in prompts)} harmful, "
          f"{sum(bool(p.get('sensitive_wording')) for p in prompts)} harmless with alarming words, "
          f"{len(n_constraints)} with constraints ({sum(n_constraints) / len(n_constraints):.2f} each on average, "
          f"{len(types)} types); {len(demos)} SFT demonstrations; {len(lines)} lines of prose")


if __name__ == "__main__":
    main()
