"""Loading and saving causal LMs as Hugging Face folders (safetensors only), device and precision."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from rlhfkit.errors import UsageError
from rlhfkit.models import smollm2

hf_logging.disable_progress_bar()  # our own progress bars say what is happening

# Used when a tokenizer has no chat template of its own (e.g. GPT-2 style test tokenizers).
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ModelLoadError(RuntimeError):
    pass


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A local folder, or the bundled model's converted folder for the name `smollm2-135m`."""
    if str(name_or_path).lower() == smollm2.NAME:
        return smollm2.smollm2_path()
    path = Path(name_or_path)
    if not path.is_dir():
        raise ModelLoadError(
            f"{path}: not a model folder. Give a local Hugging Face folder or '{smollm2.NAME}' "
            "(models are never downloaded at run time)."
        )
    return path


def end_of_turn(tokenizer) -> str | None:
    """The special token the chat template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`,
    `<end_of_turn>`), or None where the template closes turns with plain text."""
    probe = "rlhfkit-end-of-turn-probe"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": probe}], tokenize=False)
    except Exception:  # a template that cannot render this conversation: nothing to learn from it
        return None
    if probe not in text:
        return None
    after = text[text.rindex(probe) + len(probe):].lstrip(" ")
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    found = [t for t in specials if t and after.startswith(t)]
    return max(found, key=len) if found else None


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer, its EOS made the chat template's end-of-turn token where the two differ (Qwen2.5 base:
    `<|endoftext|>` vs `<|im_end|>`; Llama 3: `<|end_of_text|>` vs `<|eot_id|>`): a response ends a turn, so SFT
    labels, the RM's reading position, PPO's stopping and the missing-EOS penalty all use the token the template
    writes after an answer, and a model trained here stops where its chat template says it should."""
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    turn_end = end_of_turn(tokenizer)
    if turn_end is not None and turn_end != tokenizer.eos_token:
        if tokenizer.pad_token_id is None:  # padding keeps the document end, not the turn end
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.eos_token = turn_end
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{path}: the tokenizer has no EOS token; responses need one to end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32, trainable_adapters: bool = False
) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) from a HF folder, a LoRA adapter folder, or the name `smollm2-135m`.

    Weights are read from safetensors only; pickled `.bin` checkpoints are refused.
    """
    path = resolve_model_path(name_or_path)
    adapter_config = path / "adapter_config.json"
    if adapter_config.exists():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        model, tokenizer = load_causal_lm(base, dtype)
        model = PeftModel.from_pretrained(model, path, is_trainable=trainable_adapters)
        return model, load_tokenizer(path) if (path / "tokenizer_config.json").exists() else tokenizer
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path}: no .safetensors weights (rlhfkit never unpickles .bin files)")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, attn_implementation="sdpa"
    )
    tokenizer = load_tokenizer(path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def apply_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float, targets: list[str],
               task_type: str | None = "CAUSAL_LM"):
    """LoRA adapters on `targets` (["all-linear"]: every linear layer). task_type None for a bare decoder
    (the reward model's backbone)."""
    from peft import LoraConfig, get_peft_model

    target = "all-linear" if targets == ["all-linear"] else targets
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, task_type=task_type)
    return get_peft_model(model, config)


def save_model(model, tokenizer, out_dir: str | Path, merge_lora: bool = False, state_dict: dict | None = None
               ) -> None:
    """Save as a HF folder (safetensors). A LoRA model saves its adapters, or merged weights if asked.
    `state_dict`: the weights to write in place of the model's own (gathered from FSDP's shards)."""
    out_dir = Path(out_dir)
    if is_peft(model) and merge_lora:
        model = copy.deepcopy(model).merge_and_unload()
    # generate() and serving engines stop at the generation config's EOS: make it include the end of turn
    gen = getattr(model, "generation_config", None)
    if gen is not None and tokenizer.eos_token_id is not None:
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        if tokenizer.eos_token_id not in eos:
            gen.eos_token_id = [x for x in eos if x is not None] + [tokenizer.eos_token_id]
    if state_dict is not None and getattr(model.config, "tie_word_embeddings", False):
        # a gathered state dict holds tied weights under both names; the folder keeps the input embeddings'
        out = model.get_output_embeddings()
        tied = next((n + ".weight" for n, m in model.named_modules() if m is out and n), None)
        state_dict = {k: v for k, v in state_dict.items() if k != tied}
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


# ---- device and precision ----------------------------------------------------------------------

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def mixed_precision(dtype: str, device: torch.device) -> str:
    """Accelerate's mixed_precision setting for a --dtype choice: 'bf16', 'fp16' or 'no'."""
    if dtype == "auto":
        return "bf16" if bf16_supported(device) else "no"
    if dtype == "fp16" and device.type != "cuda":
        raise UsageError("--dtype fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[dtype]
