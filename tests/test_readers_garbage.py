"""Issue #19, readers under garbage: whatever bytes a file holds, every reader answers with records or a DataError
that names the file and line, never a traceback; all bad lines are reported at once."""

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfkit.data import DataError, read_demonstrations, read_prompts
from rlhfkit.data.rankings import read_rankings
from rlhfkit.evaluation.tax import read_multiple_choice
from rlhfkit.evaluation.toxicity import read_toxicity_prompts

READERS = [read_demonstrations, read_prompts, read_rankings, read_toxicity_prompts, read_multiple_choice]
GOOD = {"prompt": "Name a fruit.", "response": "An apple.", "responses": ["a", "b"], "ranks": [0, 1],
        "question": "Q?", "choices": ["a", "b"], "answer": 0}

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                                                     max_size=5), max_leaves=12)
records = st.dictionaries(st.sampled_from(sorted(GOOD) + ["messages", "completion", "meta", "id", "chosen"]),
                          json_values, max_size=6) | json_values


def answered(reader, path) -> None:
    try:
        reader(path)
    except DataError as e:
        assert str(path) in str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(records, min_size=1, max_size=6))
def test_generated_records_never_raise_anything_but_a_data_error(tmp_path, lines):
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for reader in READERS:
        answered(reader, path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_a_data_error(tmp_path, data):
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + data)
    for reader in READERS:
        answered(reader, path)


def test_every_bad_line_at_once_mis_encoded_truncated_and_huge(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [json.dumps({"prompt": "p", "response": "r"})] + ['{"prompt": "p"'] * 25 + ["\xff"]
    path.write_bytes(("\n".join(rows[:-1]) + "\n").encode() + b'{"prompt": "\xff\xfe", "response": "r"}\n')
    with pytest.raises(DataError) as e:
        read_demonstrations(path)
    text = str(e.value)
    assert "bad.jsonl:2: not valid JSON" in text and "bad.jsonl:21:" in text and "and 6 more bad lines" in text
    assert "bad.jsonl:22" not in text  # (only the first 20 are listed)
    skipped = read_demonstrations(path, skip_invalid=True)
    assert len(skipped.records) == 1 and skipped.skipped == 26
    (tmp_path / "enc.jsonl").write_bytes(b'{"prompt": "\xff", "response": "r"}\n')
    with pytest.raises(DataError, match=r"enc\.jsonl:1: not UTF-8 text \(byte 13 of the line\)"):
        read_demonstrations(tmp_path / "enc.jsonl")
    (tmp_path / "col.jsonl").write_text('{"prompt": "p", "response": r}\n')
    with pytest.raises(DataError, match=r"col\.jsonl:1: not valid JSON \(Expecting value at column 29\)"):
        read_demonstrations(tmp_path / "col.jsonl")
    whole = gzip.compress(("\n".join([json.dumps({"prompt": "p", "response": "r"})] * 200) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot be read to the end"):
        read_demonstrations(tmp_path / "cut.jsonl.gz")
    (tmp_path / "huge.jsonl").write_text(json.dumps({"prompt": "p" * 5_000_000, "response": "r"}) + "\n")
    assert len(read_demonstrations(tmp_path / "huge.jsonl").records[0].prompt) == 5_000_000
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "response": "r"}).encode())
    assert read_demonstrations(tmp_path / "bom.jsonl").records[0].prompt == "p"


def test_garbage_parquet_is_a_data_error(tmp_path):
    pytest.importorskip("pyarrow")
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"x\.parquet: not a readable Parquet file"):
        read_demonstrations(tmp_path / "x.parquet")


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo-prompts", "ppo-ptx"])
def test_bad_data_stops_a_stage_before_its_run_folder_exists(tmp_path, tiny_llama, stage):
    from rlhfkit.config import DPOConfig, PPOConfig, RMConfig, SFTConfig
    from rlhfkit.train.dpo import train_dpo
    from rlhfkit.train.ppo import train_ppo
    from rlhfkit.train.reward import train_reward
    from rlhfkit.train.sft import train_sft

    bad, good = tmp_path / "bad.jsonl", tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine", "response": "fine"}\n{"prompt": 5}\n')
    good.write_text('{"prompt": "say hi"}\n')
    out = tmp_path / "run"
    model = str(tiny_llama)
    train, cfg = {
        "sft": (train_sft, SFTConfig(model=model, data=str(bad), output_dir=str(out))),
        "rm": (train_reward, RMConfig(model=model, data=str(bad), output_dir=str(out))),
        "dpo": (train_dpo, DPOConfig(model=model, data=str(bad), output_dir=str(out))),
        "ppo-prompts": (train_ppo, PPOConfig(policy=model, reward_model=model, prompts=str(bad), output_dir=str(out))),
        "ppo-ptx": (train_ppo, PPOConfig(policy=model, reward_model=model, prompts=str(good), ptx_data=str(bad),
                                         output_dir=str(out))),
    }[stage]
    with pytest.raises(DataError, match="bad.jsonl"):
        train(cfg)
    assert not out.exists()
