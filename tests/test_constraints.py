"""Every constraint type's checker on responses that meet it and responses that do not, and refusal detection."""

import json

import pytest

from rlhfkit.evaluation.constraints import TYPES, instruction, is_refusal, satisfaction, satisfied

TABLE = "| name | age |\n|---|---|\n| Ann | 30 |\n| Bo | 41 |"
CASES = [  # constraint, responses that meet it, responses that do not
    ({"type": "min_words", "value": 5}, ["One two three four five.", "a b c d e f g"], ["one two three four", ""]),
    ({"type": "max_words", "value": 5}, ["One two three four five.", "Short."], ["one two three four five six"]),
    ({"type": "max_sentences", "value": 1}, ["Just this one sentence.", "No full stop at all"],
     ["First. Second.", "Is it? Yes!"]),
    ({"type": "min_sentences", "value": 3}, ["One. Two! Three?", "A b. C d. E f. G h."], ["One. Two.", "one"]),
    ({"type": "paragraphs", "value": 2}, ["First part here.\n***\nSecond part here.", "A.\n\n***\n\nB."],
     ["Only one paragraph.", "A.\n***\nB.\n***\nC.", "A.\n***\n"]),
    ({"type": "bullets", "value": 3}, ["- a\n- b\n- c", "* one\n* two\n* three"],
     ["- a\n- b", "- a\n- b\n- c\nThat is all.", "a, b, c"]),
    ({"type": "numbered_steps", "value": 3}, ["1. Boil water.\n2. Add tea.\n3. Wait.", "1) a\n2) b\n3) c"],
     ["1. a\n2. b", "1. a\n3. b\n2. c", "1. a\n2. b\n3. c\nDone."]),
    ({"type": "sections", "value": 2, "header": "SECTION"},
     ["SECTION 1\nBees fly.\nSECTION 2\nBees dance.", "SECTION 1 Intro\nText.\n\nSECTION 2 End\nMore text."],
     ["SECTION 1\nBees fly.", "SECTION 2\nA.\nSECTION 1\nB.", "SECTION 1\nSECTION 2\nOnly here."]),
    ({"type": "table", "value": 2}, [TABLE, TABLE.replace("|---|---|", "| :--- | ---: |")],
     [TABLE + "\n| Cy | 5 |", "Here:\n" + TABLE, "| a |\n|---|\n| 1 |\n| 2 |"]),
    ({"type": "include_word", "value": "queen"}, ["The Queen lays eggs.", "a queen."], ["The queens lay eggs.", ""]),
    ({"type": "avoid_word", "value": "bees"}, ["Honey is sweet.", "A beehive."], ["Bees make honey.", "the BEES"]),
    ({"type": "word_frequency", "value": "river", "times": 3}, ["River, river and the river.", "river " * 4],
     ["river river", "rivers river river"]),
    ({"type": "letter_frequency", "value": "z", "times": 3}, ["Zebras zigzag in a maze.", "zzz"],
     ["Zebras run.", "azure"]),
    ({"type": "no_commas"}, ["No commas here.", "Just words"], ["One, two.", "a,b"]),
    ({"type": "lowercase"}, ["all lower case here.", "numbers 1 2 3 ok"], ["Not lower.", "123 456"]),
    ({"type": "uppercase"}, ["ALL CAPS HERE.", "BEES: 3 FACTS"], ["Mostly CAPS", "123"]),
    ({"type": "max_capitalised_words", "value": 1}, ["Only ONE shout.", "None at all. I am fine."],
     ["TWO LOUD words", "NASA and FBI"]),
    ({"type": "starts_with", "value": "Interestingly"}, ["Interestingly, owls fly.", '"Interestingly enough"'],
     ["Owls fly, interestingly.", "Interestinglyyy"]),
    ({"type": "ends_with", "value": "That is all."}, ["Facts here. That is all.", "That is all.  "],
     ["That is all. More.", "that is all."]),
    ({"type": "quoted"}, ['"Bees dance."', '"Line one.\nLine two."'], ['Bees "dance".', '"Unclosed', '""']),
    ({"type": "title"}, ["<<The Busy Hive>>\nBees work hard.", "Text first. <<A Title>>"],
     ["<The Busy Hive>", "<<>> Bees.", "No title."]),
    ({"type": "postscript", "value": "P.S."}, ["Bees dance.\nP.S. They also hum.", "Hi.\n\nP.S. Bye now."],
     ["P.S. Only a postscript.", "Bees dance. P.S. inline.", "Bees dance.\nP.S."]),
    ({"type": "repeat_request", "value": "Name a bird."}, ["Name a bird. A robin.", "Name a bird.\nThe owl."],
     ["A robin.", "Name a bird.", "name a bird. A robin."]),
    ({"type": "two_answers"}, ["A robin.\n******\nAn owl.", "One\n\n******\n\nTwo"],
     ["A robin.", "A robin.\n******\nA robin.", "A.\n******\nB.\n******\nC."]),
    ({"type": "highlights", "value": 2}, ["Bees *dance* and *hum*.", "*one* then *two* then *three*"],
     ["Bees **dance** and *hum*.", "Only *one* here.", "* a\n* b"]),
    ({"type": "placeholders", "value": 2}, ["Dear [name], see you at [place].", "[a] [b] [c]"],
     ["Dear [name].", "Dear [], see you [ ]."]),
    ({"type": "json_list", "value": 3}, ['["a", "b", "c"]', '```json\n["x", "y", "z"]\n```'],
     ['["a", "b"]', '{"a": 1}', "[a, b, c]", '["a", "", "c"]']),
    ({"type": "json_object", "value": ["name", "age"]}, ['{"name": "Ann", "age": 30}', '```json\n{"age": 3, '
                                                         '"name": "Bo"}\n```'],
     ['{"name": "Ann"}', '{"name": "Ann", "age": 30, "x": 1}', '{"name": "", "age": 30}', '["name", "age"]']),
]


@pytest.mark.parametrize("constraint,good,bad", CASES, ids=[c[0]["type"] for c in CASES])
def test_constraint_checkers(constraint, good, bad):
    assert instruction(constraint)  # every constraint can be stated in the prompt
    for response in good:
        assert satisfied(constraint, response), response
    for response in bad:
        assert not satisfied(constraint, response), response


def test_every_type_is_tested_and_there_are_at_least_25():
    assert {c["type"] for c, _, _ in CASES} == set(TYPES)
    assert len(TYPES) >= 25


def test_satisfaction_is_the_share_met_and_unknown_types_fail_loudly():
    cs = [{"type": "lowercase"}, {"type": "max_words", "value": 2}]
    assert satisfaction(cs, "two words") == 1.0 and satisfaction(cs, "Two words") == 0.5
    assert satisfaction([], "anything") is None
    with pytest.raises(ValueError, match="unknown constraint type"):
        satisfied({"type": "nope"}, "x")
    assert json.dumps(instruction({"type": "json_object", "value": ["a", "b"]}))


def test_refusals_are_recognised():
    for text in ["I'm sorry, but I can't help with that.", "I cannot help with that request. Try this instead.",
                 "Sorry. I won't provide instructions for that."]:
        assert is_refusal(text), text
    for text in ["Here is how to kill a stuck process: run kill PID.", "Sure! Bees dance.",
                 "Bees dance. They are sorry to leave, but the queen can't help it."]:
        assert not is_refusal(text), text
