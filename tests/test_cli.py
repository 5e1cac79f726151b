"""The command line: what a user can fix is one line on stderr and exit 1; anything else is a bug and keeps its
traceback."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # runs the command line in subprocesses


def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
    out = subprocess.run([sys.executable, "-m", "rlhfkit", "ppo", "--advantage", "rloo", "--samples-per-prompt", "2",
                          "--gamma", "0.9"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    said = " ".join(out.stderr.split())  # (the console wraps long lines)
    assert "option 'gamma' (0.9) applies only with advantage: gae, but 'advantage' is 'rloo'" in said

    # a ValueError that no rlhfkit check raised for the user (here: a stand-in for the app that fails like a bug)
    bug = "import rlhfkit.cli as cli; cli.app = lambda: int('not a number'); cli.main()"
    out = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" in out.stderr and "ValueError: invalid literal" in out.stderr
