"""Shared fixtures: repository paths, the real data sets, and an isolated ROS 2 environment per test."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))

# VPR_REQUIRE_GPU=1 (a GPU CI) turns every skip for a missing GPU capability into a failure, so that a
# broken CUDA install, a CPU build of torch or faiss, or a missing TensorRT cannot pass as "skipped".
# Such skips are told apart by their reason, by convention: it starts with "needs" and names the GPU,
# CUDA, TensorRT or onnxruntime-gpu ("needs a CUDA GPU (torch ... sees none)"). Skips of the opposite
# kind ("this machine has a CUDA GPU: the error path cannot occur") and other skips stay skips.
REQUIRE_GPU_ENV = "VPR_REQUIRE_GPU"
GPU_SKIP_REASON = re.compile(r"^needs\b.*\b(GPU|CUDA|TensorRT|onnxruntime-gpu)", re.IGNORECASE | re.DOTALL)

_domain_ids = itertools.count((os.getpid() * 7) % 90)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the data sets are missing: expected them at {DATA} (set VPR_DATA to their folder)")
    return DATA


@pytest.fixture
def ros_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A ROS domain of its own on loopback, for this test process and the children it starts.

    Children must get the whole environment: the ROS wheels' bootstrapper re-executes Python with
    LD_LIBRARY_PATH set and marks it done in a variable, so a child without LD_LIBRARY_PATH fails.
    """
    values = {
        "ROS_DOMAIN_ID": str(1 + next(_domain_ids) % 100),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def python_process(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """Starts `python <args>` with this interpreter, from the repository root, output captured."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope="module")
def shipped_encoder():
    """The node's default model (the shipped heads) on torch, one thread: what the localizer tests
    run frames through. A fixture of the module, so torch's thread count is restored after it."""
    import torch

    from vpr_core.engine import EncoderConfig, create_encoder

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield create_encoder(EncoderConfig(checkpoint=str(REPO / "checkpoints" / "lite0-nordland"), backend="torch",
                                       threads=1))
    torch.set_num_threads(before)


def _gpu_skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason of a skip for a missing GPU capability, or "" (not skipped, an xfail, another skip)."""
    if not report.skipped or hasattr(report, "wasxfail") or not isinstance(report.longrepr, tuple):
        return ""
    reason = report.longrepr[2].removeprefix("Skipped: ")
    return reason if GPU_SKIP_REASON.search(reason) else ""


def _fail_gpu_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _gpu_skip_reason(report)
    if reason and os.environ.get(REQUIRE_GPU_ENV) == "1":
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_GPU_ENV}=1, so this GPU test must run, but it was skipped: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_gpu_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped for a missing GPU (``pytest.importorskip("tensorrt", reason="needs ...")``)."""
    report = yield
    _fail_gpu_skip(report)
    return report
