"""Imports flow one way: data -> models -> losses / rollout -> train -> evaluation -> stages -> demo -> cli, and the
labeling service (feedback/) depends on data only. A module may import its own layer's package and the layers
below; anything that runs back up this order fails here (imports inside functions included)."""

import ast
from pathlib import Path

import rlhfkit

SRC = Path(rlhfkit.__file__).parent
LAYERS = {  # the first dotted prefix that matches names a module's layer
    "rlhfkit": 0, "rlhfkit.config": 0, "rlhfkit.console": 0, "rlhfkit.errors": -1,
    "rlhfkit.data": 1,
    "rlhfkit.feedback": 2,
    "rlhfkit.models": 2,
    "rlhfkit.losses": 3, "rlhfkit.rollout": 3,
    "rlhfkit.sampling": 4,
    "rlhfkit.train": 5,
    "rlhfkit.evaluation": 6,
    "rlhfkit.stages": 6.5,
    "rlhfkit.demo": 7,
    "rlhfkit.cli": 8, "rlhfkit.__main__": 9,
}
SIDE = {"rlhfkit.feedback": {"rlhfkit.config", "rlhfkit.console", "rlhfkit.errors", "rlhfkit.data", "rlhfkit.feedback"}}
# The stage table (below the demo, which runs its stages from it) registers the demo: its config, and its pipeline
# when run. These are the only imports upward.
UPWARD = {"rlhfkit.stages": {"rlhfkit.demo.config", "rlhfkit.demo.pipeline"}}


def package_of(module: str) -> str:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or (prefix != "rlhfkit" and module.startswith(prefix + ".")):
            return prefix
    raise AssertionError(f"{module}: not in any layer; add it to LAYERS")


def module_name(path: Path) -> str:
    parts = ["rlhfkit", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "rlhfkit" or n.startswith("rlhfkit.")}


def violations(path: Path, me: str) -> list[str]:
    mine = package_of(me)
    wrong = []
    for target in imported(path):
        theirs = package_of(target)
        if target in UPWARD.get(me, ()):
            continue
        if theirs != mine and not (theirs in SIDE[mine] if mine in SIDE else LAYERS[theirs] < LAYERS[mine]):
            wrong.append(f"{me} imports {target}")
    return wrong


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts and path.name != "env.py":
            continue
        wrong += violations(path, module_name(path))
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_check_catches_an_import_back_up(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from rlhfkit.data import Prompt\n\n"
                   "def f():\n    from rlhfkit.evaluation.constraints import satisfied\n")
    assert violations(bad, "rlhfkit.train.fake") == ["rlhfkit.train.fake imports rlhfkit.evaluation.constraints"]
    assert violations(bad, "rlhfkit.feedback.fake") == ["rlhfkit.feedback.fake imports rlhfkit.evaluation.constraints"]
    assert violations(bad, "rlhfkit.demo.fake") == []
