"""Run by tests/test_ddp.py under `accelerate launch`: trains, then each rank saves its weights."""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

from rlhfkit.config import SFTConfig
from rlhfkit.train.sft import train_sft

cfg = SFTConfig.model_validate_json(Path(sys.argv[1]).read_text())
result = train_sft(cfg)
rank = PartialState().process_index
weights = {k: v.detach().clone().contiguous() for k, v in result.model.state_dict().items()}
save_file(weights, str(Path(cfg.output_dir) / f"weights-rank{rank}.safetensors"))
