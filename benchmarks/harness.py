"""What the benchmark scripts share: each writes its figures as JSON beside its printout, with when and where
they were measured (the machine's cores and whether it computes bf16 natively), so docs/results/ can cite them.

    from harness import save_result
    save_result("ppo_iteration", results)        # -> runs/bench/ppo_iteration.json (or --json PATH)

A finished demo run is read back with rlhfkit's own loader, `rlhfkit.demo.config.DemoConfig.of_run(run_dir)` (its
config, `.panel()` and `.judges()`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch


def machine() -> dict:
    """Where a figure was measured."""
    from rlhfkit.models import default_device, mixed_precision

    device = default_device()
    return {"cores": os.cpu_count(), "device": str(device), "torch": torch.__version__,
            "bf16": mixed_precision("auto", device) == "bf16", "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def save_result(script: str, result: dict, path: str | Path | None = None) -> Path:
    """`result` with the date and the machine, as JSON at `path` (default runs/bench/<script>.json)."""
    out = Path(path) if path else Path("runs") / "bench" / f"{script}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"script": script, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": machine(), "result": result}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"result -> {out}", flush=True)
    return out
