"""The `vpr` command of the venv."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_help_lists_every_command_and_each_command_has_help(capsys):
    """The venv's `vpr --help` in a process of its own; each command's help in this process, where the
    stage modules load once (a process per command would load torch ten times)."""
    from vpr_core.cli import COMMANDS, main

    out = subprocess.run([str(VPR), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        captured = capsys.readouterr()
        assert exit_info.value.code == 0 and captured.out.startswith(f"usage: vpr {name}"), \
            f"vpr {name} --help: {captured.err[-1500:]}"


def _vpr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpr_core.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, says", [
    (["build-map", "--source", "folder:x", "--out", "m", "--batch-size", "0"], "argument --batch-size: 0 must be >= 1"),
    (["build-map", "--source", "folder:x", "--out", "m", "--batch-size", "-1"], "argument --batch-size: -1 must be >= 1"),
    (["build-map", "--source", "folder:x", "--out", "m", "--max-similarity", "2"], "argument --max-similarity: 2.0 must be in [-1.0, 1.0]"),
    (["build-map", "--source", "folder:x", "--out", "m", "--threads", "-2"], "argument --threads: -2 must be >= 0"),
    (["replay", "--bag", "b", "--top-k", "0"], "argument --top-k: 0 must be >= 1"),
    (["replay", "--bag", "b", "--min-score", "5"], "argument --min-score: 5.0 must be in [-1.0, 1.0]"),
    (["replay", "--bag", "b", "--min-score", "nan"], "argument --min-score: nan must be in [-1.0, 1.0]"),
    (["replay", "--bag", "b", "--batch-size", "two"], "argument --batch-size: 'two' is not an integer"),
    (["replay", "--bag", "no-such-bag"], "no-such-bag"),
])
def test_a_bad_option_is_refused_in_one_line_with_exit_2(args, says, capsys):
    """The same rules as the node's parameters (vpr_core.options), before anything is loaded; in this
    process (what `vpr` runs is `vpr_core.cli.main`), as a subprocess per case costs seconds."""
    from vpr_core.cli import main

    try:
        code = main(args)
    except SystemExit as exc:  # argparse exits
        code = exc.code
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith(f"vpr {args[0]}: error: "), stderr
    assert says in stderr, stderr


def test_a_missing_backend_is_refused_in_one_line_with_exit_2(data_dir, tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the tensorrt backend is no refusal")
    out = _vpr("build-map", "--source", f"folder:{data_dir / 'corridor' / 'ref'}", "--out", str(tmp_path / "map"),
               "--backend", "tensorrt")
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("vpr build-map: error: the tensorrt backend needs"), out.stderr
    assert "pip install tensorrt" in out.stderr and not (tmp_path / "map").exists()
