import json

import pytest

from rlhfkit.data import DataError
from rlhfkit.data.rankings import dense_ranks, parse_hh, read_rankings


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dense_ranks():
    assert dense_ranks([3, 5, 5, 1]) == [1, 0, 0, 2]


def test_every_shape(tmp_path):
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Fine, thanks.",
          "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Go away."}
    rows = [
        {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 0, 1], "labeler": "ann"},
        {"prompt": "p", "responses": ["a", "b", "c"], "scores": [0.1, 0.9, 0.1]},
        {"prompt": "p", "chosen": "good", "rejected": "bad", "source": "x"},
        {"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        hh,
    ]
    r = read_rankings(write(tmp_path / "r.jsonl", rows)).records
    assert r[0].ranks == [1, 0, 1] and r[0].labeler == "ann"
    assert r[1].ranks == [1, 0, 1]
    assert r[2].responses == ["good", "bad"] and r[2].ranks == [0, 1] and r[2].meta == {"source": "x"}
    assert r[3].responses == ["good", "bad"]
    assert [m.role for m in r[4].prompt] == ["user", "assistant", "user"]
    assert r[4].prompt[-1].content == "how are you?" and r[4].responses == ["Fine, thanks.", "Go away."]


def test_oasst_tree_gives_one_ranking_per_ranked_prompt(tmp_path):
    def msg(mid, role, text, rank=None, replies=()):
        return {"message_id": mid, "role": role, "text": text, "rank": rank, "replies": list(replies)}

    tree = {"message_tree_id": "t1", "prompt": msg("p", "prompter", "Q1", replies=[
        msg("a1", "assistant", "A1", 1, replies=[msg("q2", "prompter", "Q2", replies=[
            msg("b1", "assistant", "B1", 0), msg("b2", "assistant", "B2", 2), msg("b3", "assistant", "B3", 1)])]),
        msg("a2", "assistant", "A2", 0),
        msg("a3", "assistant", "A3", None),  # unranked: not part of the ranking
    ])}
    r = read_rankings(write(tmp_path / "t.jsonl", [tree])).records
    assert len(r) == 2
    assert r[0].responses == ["A1", "A2"] and r[0].ranks == [1, 0]
    assert [m.content for m in r[1].prompt] == ["Q1", "A1", "Q2"]
    assert r[1].responses == ["B1", "B2", "B3"] and r[1].ranks == [0, 2, 1]


def test_real_shared_files_if_present():
    from pathlib import Path

    shared = Path(__file__).parents[2] / "shared" / "data"
    if not (shared / "oasst-en100" / "en_100_tree.jsonl").exists():
        pytest.skip("../shared not present")
    oasst = read_rankings(shared / "oasst-en100" / "en_100_tree.jsonl").records
    assert len(oasst) == 155 + 57 and max(len(r.responses) for r in oasst) <= 9
    hh = read_rankings(shared / "hh-rlhf" / "harmless-base_test.jsonl.gz", skip_invalid=True)
    assert len(hh.records) + hh.skipped == 2312 and hh.skipped < 50


@pytest.mark.parametrize("row, message", [
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: DIFFERENT\n\nAssistant: c"},
     "differ before their last Assistant turn"),
    ({"chosen": "no transcript", "rejected": "x"}, "not an HH-RLHF transcript"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 5]}, "ranks must lie in 0..1"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": ["high", 1]}, "field 'scores'"),
    ({"prompt": "p", "responses": ["a", "b"]}, "not ranked yet"),
    ({"prompt": "p", "answer": "a"}, "no ranking fields"),
])
def test_bad_records(tmp_path, row, message):
    path = write(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: .*{message}"):
        read_rankings(path)
    assert read_rankings(path, skip_invalid=True).skipped == 1


def test_parse_hh_roles():
    turns = parse_hh("\n\nHuman: a\n\nAssistant: b")
    assert [(m.role, m.content) for m in turns] == [("user", "a"), ("assistant", "b")]
