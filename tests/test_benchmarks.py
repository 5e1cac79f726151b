"""The benchmark scripts share one harness (benchmarks/harness.py): each writes its figures as JSON beside its
printout, and reads a finished demo run through `harness.DemoRun` rather than the demo's modules."""

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
# The one script that builds part of a demo run itself (data, SFT, headroom) rather than reading a finished one.
BUILDS_A_RUN = {"demo_sft_habits.py"}


def scripts() -> list[Path]:
    return sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "harness.py")


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_every_benchmark_writes_a_json_result():
    assert len(scripts()) >= 15
    for path in scripts():
        calls = {n.func.id for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "save_result" in calls, f"{path.name} prints figures without writing them (harness.save_result)"


def test_benchmarks_read_demo_runs_through_the_harness():
    for path in scripts():
        if path.name in BUILDS_A_RUN:
            continue
        demo = {m for m in imported(path) if m.startswith("rlhfkit.demo") and m != "rlhfkit.demo.config"}
        assert not demo, f"{path.name} imports {sorted(demo)}: read the run with harness.DemoRun"


def test_benchmarks_run_stages_through_the_public_api():
    """A stage by `rlhfkit.stages.STAGES` (or a trainer's own class, where a benchmark gives it a reward function
    or reads its history), never a trainer's helpers."""
    for path in scripts():
        private = {m for m in imported(path) if m in ("rlhfkit.train.sft", "rlhfkit.train.dpo")}
        assert not private, f"{path.name} imports {sorted(private)}: run the stage with STAGES"
