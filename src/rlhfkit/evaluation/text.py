"""Words that carry meaning: what 'mentions', 'holds' and 'comes from' compare, in the demo's rubric and in the
hallucination check."""

from __future__ import annotations

from rlhfkit.evaluation.constraints import words

STOP = set("a an and are as at be by can do for from has have how i in is it its of on or so that the their them "
           "then there these this to was were what when where which who why will with you your about into".split())


def stem(word: str) -> str:
    """Plural to singular, crudely: whales -> whale, volcanoes -> volcano, batteries -> battery."""
    w = word.lower()
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("oes", "ses", "xes", "ches", "shes")) and len(w) > 4:
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def content_words(text: str) -> set[str]:
    """The words that carry meaning, singular: what 'mentions', 'holds' and 'comes from' compare."""
    return {stem(w) for w in words(text) if len(w) > 2 and w.lower() not in STOP}
