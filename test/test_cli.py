"""The `vpr` command of the venv."""

import subprocess
import sys
from pathlib import Path

import vpr_core

VPR = Path(sys.executable).parent / "vpr"


def test_version_from_the_venv():
    out = subprocess.run([str(VPR), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"vpr {vpr_core.__version__}"


def test_unknown_sub_command_is_refused_with_the_list():
    out = subprocess.run([str(VPR), "no-such-command"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "invalid choice: 'no-such-command'" in out.stderr


def test_help_lists_every_command_and_each_command_has_help():
    from vpr_core.cli import COMMANDS

    out = subprocess.run([str(VPR), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in COMMANDS)
    for name in COMMANDS:
        sub = subprocess.run([str(VPR), name, "--help"], capture_output=True, text=True, timeout=120)
        assert sub.returncode == 0 and "usage: vpr" in sub.stdout, f"vpr {name} --help: {sub.stderr[-1500:]}"
