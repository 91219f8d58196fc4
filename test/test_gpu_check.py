"""GPU readiness on a machine without a GPU: bench/gpu_check.py's arguments, its refusal and its dry
run; the VPR_REQUIRE_GPU switch of test/conftest.py; the VPR_GPU switch of scripts/setup_env.sh.

None of these needs a GPU: they keep the parts that only a GPU machine runs from rotting between the
rare sessions that have one.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conftest import REPO

BENCH = REPO / "bench"


@pytest.fixture
def gpu_check(monkeypatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # bench scripts import their siblings by plain name
    return importlib.import_module("gpu_check")


# ---- bench/gpu_check.py -----------------------------------------------------------------------


def test_arguments(gpu_check):
    args = gpu_check.parse_args([])
    assert args.models == ["lite0-fused", "vit-s14", "vit-b14"] and not args.dry_run and args.out is None
    assert args.budget == 2.0
    args = gpu_check.parse_args(["--dry-run", "--models", "vit-b14", "--out", "table.md", "--budget", "0.5"])
    assert args.dry_run and args.models == ["vit-b14"] and args.out == Path("table.md") and args.budget == 0.5
    for bad in (["--models", "vit-l14"], ["--models", ","], ["--budget", "0"], ["--frobnicate"]):
        with pytest.raises(SystemExit) as exit_:
            gpu_check.parse_args(bad)
        assert exit_.value.code == 2, bad


def test_plan_names_every_model_variant_and_batch(gpu_check):
    lines = gpu_check.plan(gpu_check.parse_args([]))
    assert len(lines) == 3
    for line, preset in zip(lines, ("lite0-fused", "vits14-test", "selavpr++-b")):
        assert f"({preset})" in line
        assert "cuda fp32, cuda fp16, cuda fp16 graphs" in line and "batch 1/8/32" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the refusal cannot occur")
def test_without_cuda_it_exits_2_with_one_line(gpu_check, capsys):
    assert gpu_check.main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "sees no CUDA GPU" in err and "--dry-run" in err


def test_dry_run_exercises_parity_and_timing_on_the_cpu(tmp_path, data_dir):
    out_file = tmp_path / "table.md"
    run = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out_file)],
                         cwd=REPO, env={**os.environ, "VPR_DATA": str(data_dir)}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert re.search(r"^# gpu_check \d{4}-\d\d-\d\d: GPU .*; torch .*, CUDA .*, cuDNN ", out, re.M)
    assert "plan (GPU run): [dry run: not measured]" in out
    for model in ("lite0-fused", "vit-s14", "vit-b14"):
        assert f"- {model} (" in out
    table_header = "| model | input | variant | cos min | bits min | parity | img/s b1 | img/s b2 | net img/s b2 |"
    assert table_header in out
    cells = r" \| ".join([r"lite0-fused", r"320x240", r"cpu fp32 \(dry run\)", *[r"(\S+)"] * 2, "ok", *[r"(\S+)"] * 3])
    row = re.search(rf"^\| {cells} \|$", out, re.M)
    assert row, out
    cosine, bits, *speeds = (float(v) for v in row.groups())
    assert cosine >= 0.9999 and bits == 1.0  # the same model and weights on the same device
    assert all(s > 0 for s in speeds)
    written = out_file.read_text()
    assert written.startswith("# gpu_check ") and table_header in written and "cpu fp32 (dry run)" in written


def test_a_failing_variant_gets_an_error_row_and_the_others_are_measured(gpu_check, data_dir, monkeypatch,
                                                                          torch_threads):
    """fp16 on the CPU stands in for a GPU variant that fails (a capture error, out of memory). One
    thread, as the dry run: a code check, kept off the other jobs' cores."""
    monkeypatch.setattr(gpu_check, "DATA", data_dir)
    variants = (gpu_check.Variant("cpu fp16", "fp16", False), gpu_check.DRY_RUN_VARIANT)
    rows = gpu_check.check_model(gpu_check.MODELS["lite0-fused"], variants, "cpu", gpu_check.load_images(1), 1,
                                 (1,), 0.0, 1)
    assert rows[0]["parity"].startswith("ERROR ValueError: precision 'fp16'") and rows[0]["img/s b1"] == "-"
    assert rows[1]["parity"] == "ok" and float(rows[1]["img/s b1"]) > 0
    assert gpu_check.table(rows, (1,)).count("\n") == 3


# ---- VPR_REQUIRE_GPU: test/conftest.py turns GPU skips into failures --------------------------

TESTS = '''
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="needs a CUDA GPU (torch sees none)")
def test_gpu_by_mark():
    pass

def test_trt_by_call():
    pytest.skip("needs the tensorrt package and a CUDA GPU (tensorrt importable: False)")

def test_opposite_kind():
    pytest.skip("this machine has a CUDA GPU: the error path cannot occur")

def test_other_skip():
    pytest.skip("needs the data sets")

@pytest.mark.xfail(reason="needs a CUDA GPU to pass")
def test_xfail():
    assert False
'''


def run_pytest(folder: Path, require_gpu: str | None) -> subprocess.CompletedProcess:
    """pytest on ``folder``, which holds a copy of this suite's conftest.py and its own pytest.ini."""
    env = {k: v for k, v in os.environ.items() if k not in ("VPR_REQUIRE_GPU", "PYTEST_ADDOPTS")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the installed plugins (ROS, hypothesis) cost seconds a run
    if require_gpu is not None:
        env["VPR_REQUIRE_GPU"] = require_gpu
    return subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(folder)], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=60)


def outcomes(run: subprocess.CompletedProcess) -> dict[str, str]:
    """test name -> PASSED/FAILED/ERROR/SKIPPED/XFAIL, from pytest -v's line per test."""
    return dict(re.findall(r"^\S+::(test_\w+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL)\b", run.stdout, re.M))


@pytest.fixture
def suite(tmp_path) -> Path:
    shutil.copy(REPO / "test" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_kinds.py").write_text(TESTS)
    return tmp_path


def test_without_the_switch_gpu_skips_stay_skips(suite):
    for value in (None, "0"):
        run = run_pytest(suite, value)
        assert run.returncode == 0, run.stdout
        assert outcomes(run) == {"test_runs": "PASSED", "test_gpu_by_mark": "SKIPPED", "test_trt_by_call": "SKIPPED",
                                 "test_opposite_kind": "SKIPPED", "test_other_skip": "SKIPPED", "test_xfail": "XFAIL"}


def test_require_gpu_turns_only_gpu_skips_into_failures(suite):
    run = run_pytest(suite, "1")
    assert run.returncode == 1, run.stdout
    # A skipif mark is evaluated in the test's setup, so that failure is reported as an error.
    assert outcomes(run) == {"test_runs": "PASSED", "test_gpu_by_mark": "ERROR", "test_trt_by_call": "FAILED",
                             "test_opposite_kind": "SKIPPED", "test_other_skip": "SKIPPED", "test_xfail": "XFAIL"}
    assert "VPR_REQUIRE_GPU=1, so this GPU test must run, but it was skipped: needs a CUDA GPU (torch sees none)" \
        in run.stdout


def test_require_gpu_fails_a_module_skipped_for_a_gpu(suite):
    (suite / "test_kinds.py").write_text("def test_runs():\n    pass\n")
    (suite / "test_module.py").write_text('import pytest\n'
                                          'pytest.importorskip("no_such_module_here", reason="needs TensorRT")\n'
                                          'def test_never_collected():\n    pass\n')
    assert run_pytest(suite, None).returncode == 0
    run = run_pytest(suite, "1")
    assert run.returncode != 0 and "VPR_REQUIRE_GPU=1, so this GPU test must run" in run.stdout


def test_the_suites_gpu_skip_reasons_match_the_convention():
    """The skips of the GPU tests are the ones the switch catches; the opposite skips are not."""
    from conftest import GPU_SKIP_REASON

    from vpr_core.search import gpu

    for reason in (f"needs a CUDA GPU (torch {torch.__version__} sees none)",
                   "needs a CUDA GPU and onnxruntime-gpu (providers here: ['CPUExecutionProvider'])",
                   "needs the tensorrt package and a CUDA GPU (tensorrt importable: False, CUDA GPU: False)",
                   f"needs faiss with GPU support and a CUDA GPU: {gpu.unavailable_reason() or 'x'}"):
        assert GPU_SKIP_REASON.search(reason), reason
    for reason in ("TensorRT is installed here: the tensorrt backend is no refusal",
                   "this machine has a CUDA GPU: the error path cannot occur",
                   "this machine's faiss has a GPU: the CPU-only behaviour cannot occur",
                   "tf2_ros is not on PyPI; it comes with a ROS 2 install"):
        assert not GPU_SKIP_REASON.search(reason), reason


# ---- VPR_GPU: scripts/setup_env.sh -------------------------------------------------------------

STUB_PYTHON = '''#!/usr/bin/env bash
# Logs each call (the pip commands are what the tests read) and succeeds without doing anything.
echo "$*" >> "$(dirname "$0")/../calls.log"
[ "${1-}" = - ] && cat > /dev/null
exit 0
'''


@pytest.fixture
def setup_repo(tmp_path) -> tuple[Path, Path]:
    """A copy of setup_env.sh and the requirements files, the ROS steps stubbed, and a venv whose
    python only logs its calls: the switch's pip commands, in seconds and without a network."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup_env.sh", repo / "scripts")
    for step in ("install_ros2_tools.sh", "build_msgs.sh", "build_workspace.sh", "compile_kernels.sh"):
        (repo / "scripts" / step).write_text("#!/bin/sh\nexit 0\n")
        (repo / "scripts" / step).chmod(0o755)
    for requirements in REPO.glob("requirements*.txt"):
        shutil.copy(requirements, repo)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(STUB_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    return repo, venv


def setup_calls(repo: Path, venv: Path, gpu: str | None) -> list[str]:
    """The stub python's calls during one run of the setup script (which must succeed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VPR_GPU", "VPR_TORCH_SPEC")}
    env["VPR_VENV"] = str(venv)
    if gpu is not None:
        env["VPR_GPU"] = gpu
    log = venv / "calls.log"
    log.unlink(missing_ok=True)
    run = subprocess.run(["bash", str(repo / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return log.read_text().splitlines() if log.exists() else []


GPU_DISTS = "onnxruntime faiss-cpu onnxruntime-gpu tensorrt-cu13 tensorrt-cu13-bindings tensorrt-cu13-libs faiss-gpu"


def kinds(calls: list[str]) -> list[str]:
    """What each pip call did: 'cpu' (the pinned packages), 'uninstall', 'gpu' (requirements-gpu.txt)."""
    found = []
    for call in calls:
        if call.startswith("-m pip uninstall"):
            assert call.endswith(GPU_DISTS), call  # both variants of each swapped module, nothing else
            found.append("uninstall")
        elif call.startswith("-m pip install") and "requirements-gpu.txt" in call:
            assert re.search(r"-c \S+/requirements\.txt$", call), call
            found.append("gpu")
        elif call.startswith("-m pip install"):
            found.append("cpu")
    return found


def test_setup_switch(setup_repo):
    repo, venv = setup_repo
    assert kinds(setup_calls(repo, venv, None)) == ["cpu"]  # the default: the CPU packages alone
    assert kinds(setup_calls(repo, venv, None)) == []  # stamps: nothing to do
    assert kinds(setup_calls(repo, venv, "1")) == ["uninstall", "gpu"]
    assert kinds(setup_calls(repo, venv, None)) == [], "unset keeps the GPU packages (make test calls setup)"
    with open(repo / "requirements.txt", "a") as f:
        f.write("# changed\n")
    # The CPU step reinstalls onnxruntime and faiss-cpu over the GPU packages' files: the GPU step follows.
    assert kinds(setup_calls(repo, venv, None)) == ["cpu", "uninstall", "gpu"]
    assert kinds(setup_calls(repo, venv, "0")) == ["uninstall", "cpu"]
    assert kinds(setup_calls(repo, venv, None)) == []


def test_setup_switch_refuses_a_bad_value_before_touching_anything(setup_repo, tmp_path):
    repo, _ = setup_repo
    venv = tmp_path / "no-venv-yet"
    env = {**os.environ, "VPR_VENV": str(venv), "VPR_GPU": "yes"}
    run = subprocess.run(["bash", str(repo / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "VPR_GPU must be 1" in run.stdout and "got 'yes'" in run.stdout
    assert not venv.exists()
