"""Outside instruction following: real user prompts with 1-3 verifiable instructions attached, scored by code.

InstructGPT's claim is that RLHF generalises to instructions outside its fine-tuning distribution. This check
measures it on prompts the project never trains on: each prompt of a file gets 1-3 instructions (word, sentence and
paragraph counts, lists, sections, required or forbidden words, letter counts, case, openings and closings,
quotation, titles, postscripts, repeating the request, two answers, highlights, placeholders, JSON), drawn with a
fixed seed so every model sees the same, and phrased in words of their own: several phrasings a type, none of them
the demo's constraint sentences (`constraints.instruction`), so a policy tuned on the demo's phrasing gets no help.
Instructions that cannot hold together (all lowercase and a "P.S.", a bullet list and a closing phrase) are never
drawn together; ones that interact (a word count and paragraphs, a title and a keyword) are.

Scoring (`constraints.satisfied`, the checks the demo's judges use):
  strict  the response as written;
  loose   the response or any of its variants without its first line, its last line or both, each also without
          markdown asterisks (an answer that opens with "Sure, here it is:" still counts).
Each is reported by prompt (every instruction followed) and by instruction, with the mean answer length in words,
the share of answers cut off by the token budget (no end of turn) and the share of refusals beside them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhfkit.data import Prompt, prompt_text, read_prompts
from rlhfkit.evaluation.constraints import is_refusal, satisfied, words
from rlhfkit.evaluation.policy_eval import generate
from rlhfkit.evaluation.text import STOP

ATTACH_SEED = 0  # the draw of instructions: one fixed set for every model and run
Phrase = Callable[[dict], str]

# type -> its phrasings. Written for this check, independently of the demo's own constraint sentences.
PHRASINGS: dict[str, list[Phrase]] = {
    "min_words": [lambda c: f"Your reply should run to no fewer than {c['value']} words.",
                  lambda c: f"Make the response {c['value']} words long or longer.",
                  lambda c: f"I need a detailed answer here: {c['value']} words at the very least."],
    "max_words": [lambda c: f"Keep the whole reply to {c['value']} words or fewer.",
                  lambda c: f"Don't go beyond {c['value']} words.",
                  lambda c: f"Be brief: a maximum of {c['value']} words."],
    "min_sentences": [lambda c: f"Your response should contain {c['value']} sentences or more.",
                      lambda c: f"Use no fewer than {c['value']} full sentences."],
    "max_sentences": [lambda c: "Reply in a single sentence." if c["value"] == 1 else
                      f"Respond using no more than {c['value']} sentences.",
                      lambda c: "One sentence only, please." if c["value"] == 1 else
                      f"Your answer must not exceed {c['value']} sentences."],
    "paragraphs": [lambda c: f"Organise the reply as {c['value']} paragraphs, with the markdown divider *** on a line "
                   "of its own between one paragraph and the next.",
                   lambda c: f"There should be {c['value']} paragraphs. Separate paragraphs with a line containing "
                   "just ***."],
    "bullets": [lambda c: f"Reply only with {c['value']} markdown bullet points (lines that begin with \"- \") and no "
                "other text.",
                lambda c: f"Give me precisely {c['value']} bullets, each line starting with a dash and a space, and "
                "nothing besides them."],
    "numbered_steps": [lambda c: f"Lay the answer out as {c['value']} numbered lines (1., 2., and so on) and write "
                       "nothing else.",
                       lambda c: f"Answer as a numbered list with exactly {c['value']} entries, one per line, and "
                       "no introduction or conclusion."],
    "sections": [lambda c: f"Split your response into {c['value']} parts, starting each with a line \"{c['header']} X\""
                 ", where X counts up from 1.",
                 lambda c: f"Structure the reply in {c['value']} numbered sections headed {c['header']} 1, "
                 f"{c['header']} 2 and so on, each heading at the start of its own line."],
    "include_word": [lambda c: f"Make sure the word \"{c['value']}\" appears in your response.",
                     lambda c: f"Mention \"{c['value']}\" somewhere in your reply."],
    "avoid_word": [lambda c: f"Never use the word \"{c['value']}\" in your reply.",
                   lambda c: f"The word \"{c['value']}\" must not appear anywhere in the response."],
    "word_frequency": [lambda c: f"The word \"{c['value']}\" should appear {c['times']} times or more.",
                       lambda c: f"Use \"{c['value']}\" at least {c['times']} times in what you write."],
    "letter_frequency": [lambda c: f"In your response, the letter \"{c['value']}\" should appear at least "
                         f"{c['times']} times.",
                         lambda c: f"Let the letter {c['value']} occur {c['times']} or more times in your reply."],
    "no_commas": [lambda c: "Refrain from using any commas in your entire response.",
                  lambda c: "Your reply must contain no commas at all."],
    "lowercase": [lambda c: "Don't use a single capital letter anywhere in your reply.",
                  lambda c: "Please write everything in lower case, with no capitals at all."],
    "uppercase": [lambda c: "Reply entirely in CAPITAL LETTERS.",
                  lambda c: "Every letter of your answer should be uppercase."],
    "max_capitalised_words": [lambda c: f"Words written in all capitals (like THIS) may appear at most {c['value']} "
                              "times.",
                              lambda c: f"Use all-caps words no more than {c['value']} times."],
    "starts_with": [lambda c: f"Begin your reply with the word \"{c['value']}\".",
                    lambda c: f"The very first word of your response should be \"{c['value']}\"."],
    "ends_with": [lambda c: f"Finish your response with this exact phrase: \"{c['value']}\". No other words should "
                  "follow it.",
                  lambda c: f"Close with the words \"{c['value']}\" and write nothing after them."],
    "quoted": [lambda c: "Put your entire reply inside double quotes.",
               lambda c: "Enclose the whole response in one pair of double quotation marks."],
    "title": [lambda c: "Start with a title enclosed in double angle brackets, for example <<my title>>.",
              lambda c: "Your answer needs a title, written as <<title>>."],
    "postscript": [lambda c: f"Add a note at the very end that begins with \"{c['value']}\".",
                   lambda c: f"Finish with an afterthought on the last line, starting \"{c['value']}\"."],
    "repeat_request": [lambda c: "Begin by restating my request above word for word, exactly as I wrote it (without "
                       "these instructions), and then answer it.",
                       lambda c: "First copy my question exactly as written above, leaving out these instructions, "
                       "then give your answer."],
    "two_answers": [lambda c: "Write two different responses, separated by a line of six asterisks: ******",
                    lambda c: "Give me two alternative replies, with ****** on its own line between them."],
    "highlights": [lambda c: f"Emphasise at least {c['value']} passages with markdown italics, e.g. *this matters*.",
                   lambda c: f"Mark {c['value']} or more key phrases by wrapping each in single asterisks, like "
                   "*key phrase*."],
    "placeholders": [lambda c: f"Leave at least {c['value']} blanks to fill in later, written in square brackets "
                     "such as [address].",
                     lambda c: f"Include {c['value']} or more placeholders like [date] in square brackets."],
    "json_list": [lambda c: f"Format your whole answer as a JSON array holding exactly {c['value']} strings, with "
                  "nothing before or after it.",
                  lambda c: f"Output only valid JSON: a list of {c['value']} strings."],
}

# At most one type of each group in a prompt's instructions.
GROUPS = [
    {"min_words", "max_words", "min_sentences", "max_sentences"},
    {"lowercase", "uppercase", "max_capitalised_words"},
    {"paragraphs", "bullets", "numbered_steps", "sections", "two_answers", "json_list", "quoted"},
    {"starts_with", "repeat_request", "title"},
    {"ends_with", "postscript"},
]
# Pairs that cannot both be met (beyond the groups): a whole-answer layout leaves no room for an opening or closing
# of its own; case against text given verbatim; short answers against many parts; commas in JSON.
WHOLE = {"bullets", "numbered_steps", "json_list", "quoted"}
CONFLICTS = {frozenset(p) for p in [
    *((a, b) for a in WHOLE for b in ("starts_with", "repeat_request", "title", "ends_with", "postscript")),
    ("lowercase", "postscript"), ("lowercase", "ends_with"), ("lowercase", "sections"), ("lowercase", "repeat_request"),
    ("uppercase", "ends_with"), ("uppercase", "sections"), ("uppercase", "repeat_request"), ("uppercase", "postscript"),
    ("max_capitalised_words", "sections"),
    *((a, b) for a in ("max_words", "max_sentences") for b in ("paragraphs", "sections", "two_answers", "bullets",
                                                               "numbered_steps", "repeat_request", "min_sentences")),
    ("no_commas", "json_list"), ("no_commas", "repeat_request"), ("avoid_word", "repeat_request"),
    ("avoid_word", "word_frequency"), ("avoid_word", "include_word"),
]}
OPENINGS = ["Honestly", "Alright", "Interestingly", "Well", "Absolutely", "Sure"]
CLOSINGS = ["Hope this helps!", "Let me know if you have other questions.", "That is my answer.",
            "Feel free to ask for more."]
KEYWORDS = ["example", "future", "simple", "history", "balance", "reason", "practice", "detail", "together"]
ASKING = set("tell please would could should know want need like make give explain write does some many much more "
             "other also just think help".split())  # words of asking, not of the topic


@dataclass
class InstructionPrompt:
    """A user prompt and the instructions attached to it (constraint dicts, each with its `phrase`)."""

    request: str  # the user's own prompt, as the file had it
    instructions: list[dict]

    @property
    def text(self) -> str:
        """What the model is asked: the request, then the instructions."""
        return self.request.rstrip() + "\n\n" + " ".join(c["phrase"] for c in self.instructions)


def _parameters(kind: str, request: str, rng: random.Random) -> dict | None:
    """A constraint of type `kind` for this request, or None where the request gives the type nothing to use."""
    content = [w for w in words(request) if len(w) > 3 and w.isalpha() and w.lower() not in STOP | ASKING]
    match kind:
        case "min_words":
            return {"value": rng.choice([50, 100, 150, 200, 300])}
        case "max_words":
            return {"value": rng.choice([20, 40, 60, 100, 150])}
        case "min_sentences":
            return {"value": rng.choice([4, 6, 8, 10])}
        case "max_sentences":
            return {"value": rng.choice([1, 2, 3, 5])}
        case "paragraphs":
            return {"value": rng.choice([2, 3, 4])}
        case "bullets" | "numbered_steps":
            return {"value": rng.choice([3, 4, 5, 6])}
        case "sections":
            return {"value": rng.choice([2, 3, 4]), "header": rng.choice(["Section", "Part", "SECTION", "Step"])}
        case "include_word":
            return {"value": rng.choice(KEYWORDS)}
        case "avoid_word":
            return {"value": rng.choice(content).lower()} if content else None
        case "word_frequency":
            return {"value": rng.choice(content).lower(), "times": rng.choice([2, 3, 4])} if content else None
        case "letter_frequency":
            return {"value": rng.choice("etaoinsrlcdu"), "times": rng.choice([5, 10, 15, 20])}
        case "max_capitalised_words":
            return {"value": rng.choice([0, 1, 2, 3])}
        case "starts_with":
            return {"value": rng.choice(OPENINGS)}
        case "ends_with":
            return {"value": rng.choice(CLOSINGS)}
        case "postscript":
            return {"value": rng.choice(["P.S.", "P.P.S.", "Note:"])}
        case "repeat_request":  # a long request makes the copy the whole task
            return {"value": request.strip()} if len(words(request)) <= 40 else None
        case "highlights" | "placeholders":
            return {"value": rng.choice([1, 2, 3])}
        case "json_list":
            return {"value": rng.choice([2, 3, 4, 5])}
        case _:
            return {}


def _compatible(kind: str, chosen: list[str]) -> bool:
    return kind not in chosen and not any(kind in g and other in g for g in GROUPS for other in chosen) and \
        not any(frozenset((kind, other)) in CONFLICTS for other in chosen)


def attach(requests: list[str], seed: int = ATTACH_SEED) -> list[InstructionPrompt]:
    """1-3 compatible instructions for each request (about 45% one, 35% two, 20% three), each in one of its
    phrasings, drawn from `seed` and the request's position: the same file always gets the same instructions."""
    out = []
    for i, request in enumerate(requests):
        rng = random.Random(f"{seed}:{i}")
        n = rng.choices([1, 2, 3], weights=[45, 35, 20])[0]
        chosen: list[dict] = []
        for kind in rng.sample(sorted(PHRASINGS), len(PHRASINGS)):
            if len(chosen) == n:
                break
            if not _compatible(kind, [c["type"] for c in chosen]):
                continue
            params = _parameters(kind, request, rng)
            if params is None:
                continue
            c = {"type": kind, **params}
            c["phrase"] = rng.choice(PHRASINGS[kind])(c)
            chosen.append(c)
        out.append(InstructionPrompt(request, chosen))
    return out


def read_instruction_prompts(path) -> list[InstructionPrompt]:
    """A prompt file (any prompt JSONL; of a conversation, its last user turn), with instructions
    attached (`attach`); a record that carries its own in meta["instructions"] (constraint dicts with a `phrase`)
    keeps them."""
    records = read_prompts(path).records
    drawn = attach([prompt_text(p.prompt) for p in records])
    return [InstructionPrompt(d.request, p.meta["instructions"]) if p.meta.get("instructions") else d
            for p, d in zip(records, drawn, strict=True)]


def loose_variants(response: str) -> list[str]:
    """The response, without its first line, its last line or both; each also without markdown asterisks."""
    lines = response.split("\n")
    cuts = [response, "\n".join(lines[1:]), "\n".join(lines[:-1]), "\n".join(lines[1:-1])]
    return [v for c in cuts for v in (c, c.replace("*", ""))]


def followed(c: dict, response: str) -> tuple[bool, bool]:
    """(strict, loose): whether the response meets instruction `c` as written, and in any loose variant."""
    strict = satisfied(c, response)
    return strict, strict or any(satisfied(c, v) for v in loose_variants(response)[1:])


def score_answers(items: list[InstructionPrompt], texts: list[str], ended: list[bool]) -> dict:
    """Every figure of the check for one model's answers (and each answer with its verdicts)."""
    answers, by_type = [], {}
    for item, text, end in zip(items, texts, ended, strict=True):
        verdicts = [followed(c, text) for c in item.instructions]
        answers.append({"prompt": item.text, "response": text, "ended": bool(end),
                        "types": [c["type"] for c in item.instructions],
                        "strict": [s for s, _ in verdicts], "loose": [lo for _, lo in verdicts]})
        for c, (s, lo) in zip(item.instructions, verdicts, strict=True):
            t = by_type.setdefault(c["type"], {"instructions": 0, "strict": 0, "loose": 0})
            t["instructions"] += 1
            t["strict"] += s
            t["loose"] += lo
    n, total = len(answers), sum(len(a["strict"]) for a in answers)
    return {
        "prompts": n, "instructions": total,
        "prompt_strict": sum(all(a["strict"]) for a in answers) / n,
        "prompt_loose": sum(all(a["loose"]) for a in answers) / n,
        "instruction_strict": sum(sum(a["strict"]) for a in answers) / total,
        "instruction_loose": sum(sum(a["loose"]) for a in answers) / total,
        "words": sum(len(words(a["response"])) for a in answers) / n,
        "cut_off": sum(not a["ended"] for a in answers) / n,
        "refusals": sum(is_refusal(a["response"]) for a in answers) / n,
        "by_type": {k: {"instructions": v["instructions"], "strict": v["strict"] / v["instructions"],
                        "loose": v["loose"] / v["instructions"]} for k, v in sorted(by_type.items())},
        "answers": answers,
    }


def evaluate_instructions(model, tok, items: list[InstructionPrompt], max_new_tokens: int) -> dict:
    """Greedy answers to every prompt with its instructions, scored strictly and loosely."""
    roll = generate(model, tok, [Prompt(prompt=item.text) for item in items], max_new_tokens, 0.0, 1.0, seed=0)
    return {**score_answers(items, roll.texts, roll.ended), "max_new_tokens": max_new_tokens}


def paired_difference(base: dict, other: dict, bootstrap: int = 2000, seed: int = 0) -> dict:
    """`other` against `base` on the same prompts, instruction-level strict: the difference in points with a 95%
    bootstrap interval over prompts, and how many prompts each follows more instructions of."""
    a = [sum(x["strict"]) for x in base["answers"]]
    b = [sum(x["strict"]) for x in other["answers"]]
    counts = [len(x["strict"]) for x in base["answers"]]
    if len(a) != len(b):
        raise ValueError("paired_difference: the two results answer different prompts")
    diff = torch.tensor(b, dtype=torch.float64) - torch.tensor(a, dtype=torch.float64)
    n = torch.tensor(counts, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(a), (bootstrap, len(a)), generator=gen)
    samples = diff[idx].sum(1) / n[idx].sum(1)
    low, high = torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"points": 100 * (diff.sum() / n.sum()).item(), "low": 100 * low, "high": 100 * high,
            "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())}
