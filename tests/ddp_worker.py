"""Run by tests/test_ddp.py under `accelerate launch`: trains (sft, rm, dpo or ppo), then each rank saves its weights
(except under FSDP, whose ranks hold shards: the published folder is what is compared). With a third argument N,
the run is killed after step N (its checkpoint written), as a crash would stop it."""

import os
import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

from rlhfkit.config import DPOConfig, PPOConfig, RMConfig, SFTConfig
from rlhfkit.train.common import Hooks
from rlhfkit.train.dpo import train_dpo
from rlhfkit.train.reward import train_reward
from rlhfkit.train.sft import train_sft

stage, cfg_file = sys.argv[1], Path(sys.argv[2])
SHARDED = os.environ.get("ACCELERATE_USE_FSDP", "false") == "true"  # (read before a trainer takes the launch)
kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else None


def on_step(step, _):
    if step == kill_after:
        os._exit(3)  # no clean-up, like kill -9


if stage == "sft":
    cfg = SFTConfig.model_validate_json(cfg_file.read_text())
    model = train_sft(cfg, Hooks(on_step=on_step)).model
elif stage == "rm":
    cfg = RMConfig.model_validate_json(cfg_file.read_text())
    model = train_reward(cfg, Hooks(on_step=on_step)).model
elif stage == "dpo":
    cfg = DPOConfig.model_validate_json(cfg_file.read_text())
    model = train_dpo(cfg, Hooks(on_step=on_step)).model
else:
    import json

    from torch.distributed.tensor import DTensor

    from rlhfkit.train.ppo import PPO

    cfg = PPOConfig.model_validate_json(cfg_file.read_text())
    ppo = PPO.build(cfg, hooks=Hooks(on_step=on_step))
    held = {name: {"sharded": all(isinstance(p, DTensor) for p in m.parameters()),  # what each process holds
                   "local": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in m.parameters()),
                   "whole": sum(p.numel() for p in m.parameters())}
            for name, m in (("reference", ppo.models.reference), ("reward", ppo.models.reward))}
    rank = PartialState().process_index
    (Path(cfg.output_dir) / f"frozen-rank{rank}.json").write_text(json.dumps(held))
    model = ppo.train().policy
if not SHARDED:
    rank = PartialState().process_index
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(Path(cfg.output_dir) / f"weights-rank{rank}.safetensors"))
