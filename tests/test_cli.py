"""The command line as a newcomer meets it: one clear line and exit status 2 for a wrong
argument, and no heavy import before the arguments are known."""

import sys
from pathlib import Path

import pytest

from comfy_host import run_watched

REPO = Path(__file__).resolve().parent.parent


def unhype(*args, cwd=REPO):
    return run_watched([sys.executable, "-m", "unhype", *args], budget=120, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["demo", "--steps", "-5"], "argument --steps: must be at least 0, got -5"),
    (["demo", "--steps", "abc"], "argument --steps: expected a whole number, got 'abc'"),
    (["demo", "--samples", "0"], "argument --samples: must be at least 1"),
    (["demo", "--cores", "0"], "argument --cores: must be at least 1"),
    (["demo", "--concept", "mauve"], "argument --concept: invalid choice: 'mauve'"),
    (["demo", "--objective", "esd"], "argument --objective: invalid choice: 'esd'"),
    (["demo", "--out", "/proc/forbidden"], "--out /proc/forbidden: cannot write there"),
    (["train", "missing.toml"], "missing.toml: no such config file"),
])
def test_wrong_arguments_fail_with_one_line(args, message):
    result = unhype(*args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_fails_without_a_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('model = "x.safetensors"\nconcepts = ["zebra"]\nlearning_rate = 1e6\n')
    result = unhype("train", str(config))
    assert result.returncode == 2, result
    assert "learning_rate: must be between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["demo", "--steps", "x"],
                                  ["train", "missing.toml"]])
def test_help_and_argument_errors_load_no_torch(args):
    """What made every call take ~9 s: torch was imported before the arguments were parsed."""
    probe = ("import runpy, sys\n"
             f"sys.argv = ['unhype', *{args!r}]\n"
             "try:\n    runpy.run_module('unhype', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")
    result = run_watched([sys.executable, "-c", probe], budget=120, cwd=REPO)
    assert result.stderr.strip().endswith("no torch"), result.stderr
