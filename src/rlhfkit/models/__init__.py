"""Model loading (HF folders and the bundled SmolLM2-135M), LoRA, device and precision."""

from rlhfkit.models.loading import (
    ModelLoadError,
    apply_lora,
    bf16_supported,
    default_device,
    is_peft,
    load_causal_lm,
    load_tokenizer,
    mixed_precision,
    resolve_model_path,
    save_model,
)
from rlhfkit.models.smollm2 import ModelNotAvailable

__all__ = [
    "ModelLoadError", "ModelNotAvailable", "apply_lora", "bf16_supported", "default_device", "is_peft",
    "load_causal_lm", "load_tokenizer", "mixed_precision", "resolve_model_path", "save_model",
]
