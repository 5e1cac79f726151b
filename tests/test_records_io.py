import json

import pytest

from rlhfkit.data import DataError, Demonstration, Ranking, read_demonstrations, read_prompts, write_jsonl


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_every_demonstration_shape(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        {"prompt": "p1", "response": "r1"},
        {"prompt": "p2", "completion": "r2", "category": "qa"},
        {"prompt": [{"role": "user", "content": "p3"}], "completion": [{"role": "assistant", "content": "r3"}]},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "p4"},
                      {"role": "assistant", "content": "r4"}]},
        {"instruction": "p5", "input": "", "output": "r5"},
        {"instruction": "p6", "input": "ctx", "output": "r6", "id": 7},
    ])
    demos = read_demonstrations(path).records
    assert [d.response for d in demos] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert demos[0].prompt == "p1" and demos[1].meta == {"category": "qa"}
    assert demos[2].prompt[0].content == "p3"
    assert [m.role for m in demos[3].prompt] == ["system", "user"]
    assert demos[4].prompt == "p5" and demos[5].prompt == "p6\n\nctx" and demos[5].id == "7"


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", ""]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet:2: field 'response': response is empty"):
        read_demonstrations(tmp_path / "d.parquet")
    assert read_demonstrations(tmp_path / "d.parquet", skip_invalid=True).skipped == 1


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "response": "r"', r"bad\.jsonl:3: not valid JSON"),
    ({"prompt": "p", "response": ""}, r"bad\.jsonl:3: field 'response': response is empty"),
    ({"prompt": "", "response": "r"}, r"bad\.jsonl:3: field 'prompt': prompt is empty"),
    ({"prompt": "p", "answer": "r"}, r"bad\.jsonl:3: no demonstration fields"),
    ({"messages": [{"role": "user", "content": "p"}, {"role": "user", "content": "q"}]},
     r"bad\.jsonl:3: field 'messages': the last message must be the assistant's"),
    ({"messages": [{"role": "robot", "content": "p"}, {"role": "assistant", "content": "r"}]},
     r"bad\.jsonl:3: field 'messages\.0\.role'"),
    ({"prompt": "p", "response": 5}, r"bad\.jsonl:3: field 'response'"),
    ([1, 2], r"bad\.jsonl:3: expected a JSON object"),
])
def test_bad_line_names_file_line_and_field(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, "", line])
    with pytest.raises(DataError, match=message):
        read_demonstrations(path)
    result = read_demonstrations(path, skip_invalid=True)
    assert (len(result.records), result.skipped) == (1, 1) and "bad.jsonl:3" in result.errors[0]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_demonstrations(tmp_path / "nope.jsonl")


def test_prompts(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "a"}, {"instruction": "b", "input": "c"},
        {"messages": [{"role": "user", "content": "d"}, {"role": "assistant", "content": "dropped"}]},
        json.dumps("a bare prompt, as a JSON string"),
    ])
    prompts = read_prompts(path).records
    assert prompts[0].prompt == "a" and prompts[1].prompt == "b\n\nc" and prompts[2].prompt[-1].content == "d"
    assert prompts[3].prompt == "a bare prompt, as a JSON string"
    bare = write_lines(tmp_path / "bare.jsonl", [json.dumps("just text")])
    with pytest.raises(DataError, match=r"bare\.jsonl:1: expected a JSON object"):  # a prompt, not a demonstration
        read_demonstrations(bare)


def test_write_round_trip_is_atomic(tmp_path):
    demos = [Demonstration(prompt="p", response="r", id="1"), Demonstration(prompt="q", response="s")]
    write_jsonl(tmp_path / "out" / "d.jsonl", demos)
    assert read_demonstrations(tmp_path / "out" / "d.jsonl").records == demos
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["d.jsonl"]


def test_ranking_schema():
    r = Ranking(prompt="p", responses=["a", "b", "c", "d"], ranks=[2, 2, 1, 0], likert=[2, 2, 5, 7])
    assert r.ranks == [2, 2, 1, 0]
    with pytest.raises(ValueError, match="ranks has 3 entries for 4 responses"):
        Ranking(prompt="p", responses=["a", "b", "c", "d"], ranks=[0, 1, 2])
    with pytest.raises(ValueError, match="likert"):
        Ranking(prompt="p", responses=["a", "b"], ranks=[0, 1], likert=[0, 8])
    with pytest.raises(ValueError, match="unknown metadata flags"):
        Ranking(prompt="p", responses=["a", "b"], flags=[["hallucination"], ["made_up"]])
