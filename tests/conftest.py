import json
from pathlib import Path

import pytest
from tiny import build_model

FACTS = [
    ("What colour is the sky?", "The sky is blue."),
    ("Name a fruit.", "An apple is a fruit."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Say yes.", "Yes."),
    ("Name an animal.", "A cat is an animal."),
    ("What grows in a forest?", "A tree grows in a forest."),
    ("Where does water go?", "Water goes down the river."),
    ("Count to three.", "One two three."),
]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture
def demos_file(tmp_path) -> Path:
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in FACTS))
    return path


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The real bundled model (`make setup` installs its package); skips, saying why, where it is missing."""
    from rlhfkit.models import ModelNotAvailable
    from rlhfkit.models.smollm2 import find_gguf

    try:
        find_gguf()
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    return "smollm2-135m"
