"""The `dynvm` command as a user runs it (the installed console script where there is one,
else `python -m dynvm.cli`): every subcommand, its help, and bad arguments (exit status 2 and a
message naming the problem)."""
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(sys.executable).with_name("dynvm")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "dynvm.cli"]


def dynvm(*args, cwd):
    return subprocess.run([*COMMAND, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_demo_prints_program_bytecode_and_results_matching_numpy(tmp_path):
    proc = dynvm("demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "== program (text format) ==" in proc.stdout and "def @main" in proc.stdout
    assert "== bytecode (saved and reloaded:" in proc.stdout
    assert proc.stdout.count("[matches numpy]") == 3 and "MISMATCH" not in proc.stdout
    assert os.listdir(tmp_path) == []           # the saved executable was a temporary file


def test_ops_lists_every_registered_op_with_its_kernel_kind(tmp_path):
    from dynvm.compiler.op import OPS
    proc = dynvm("ops", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:]
              if line.strip() and not line[0].isdigit()}
    assert listed == {name: d.kernel for name, d in OPS.items()}
    compiled = sum(1 for d in OPS.values() if d.kernel == "compiled")
    assert f"{compiled} compiled," in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["demo", "--help"]])
def test_help_describes_the_commands_in_plain_words(args, tmp_path):
    proc = dynvm(*args, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: dynvm"), proc.stderr
    if args == ["--help"]:
        assert all(command in proc.stdout for command in ("demo", "ops", "bench"))
    for word in ("issue", ".py", "../"):
        assert word not in proc.stdout, word


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["demo", "--fast"], "unrecognized arguments: --fast"),
])
def test_bad_arguments_exit_2_with_a_message(args, message, tmp_path):
    proc = dynvm(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr and proc.stderr.startswith("usage: dynvm"), proc.stderr
