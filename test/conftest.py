"""Shared fixtures: repository paths, the real data sets, thread counts, and an isolated ROS 2 environment
per test."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

# One OpenMP thread per process (torch, faiss) unless a test sets more: `make test` runs four workers on
# two cores, each starting nodes and tools of its own, and idle OpenMP threads spin at every operator
# and take the cores from the others. Set before anything imports torch; the children inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
_DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))  # through the data_dir fixture only

# VPR_REQUIRE_GPU=1 (a GPU CI) turns every skip for a missing GPU capability into a failure, so that a
# broken CUDA install, a CPU build of torch or faiss, or a missing TensorRT cannot pass as "skipped".
# Such skips are told apart by their reason, by convention: it starts with "needs" and names the GPU,
# CUDA, TensorRT or onnxruntime-gpu ("needs a CUDA GPU (torch ... sees none)"). Skips of the opposite
# kind ("this machine has a CUDA GPU: the error path cannot occur") and other skips stay skips.
REQUIRE_GPU_ENV = "VPR_REQUIRE_GPU"
GPU_SKIP_REASON = re.compile(r"^needs\b.*\b(GPU|CUDA|TensorRT|onnxruntime-gpu)", re.IGNORECASE | re.DOTALL)

# ROS domain ids 1..100: a disjoint band for each pytest-xdist worker (gw0, gw1, ...), so that tests running
# at the same time never share a domain; a run without workers starts at a pid-dependent offset.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_BAND = 100 // _WORKERS
_domain_ids = itertools.count(0 if _WORKERS > 1 else (os.getpid() * 7) % 90)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not _DATA.is_dir():
        pytest.fail(f"the data sets are missing: expected them at {_DATA} (set VPR_DATA to their folder)")
    return _DATA


@contextmanager
def thread_counts(n: int) -> Iterator[None]:
    """torch's intra-op threads, and faiss's OpenMP threads when faiss is loaded, at `n`, restored after.

    Both are process-wide: set at a module's import or left behind by a test (an encoder with `threads`
    sets torch's), they would change every later test, and the last module imported would decide for
    the whole session. On a small machine shared with other jobs, OpenMP's barriers with two threads
    stall at every operator, so model tests run one thread.
    """
    import torch

    faiss = sys.modules.get("faiss")
    before = torch.get_num_threads(), faiss.omp_get_max_threads() if faiss is not None else 0
    torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        if faiss is not None:
            faiss.omp_set_num_threads(before[1])


def _module_threads(request: pytest.FixtureRequest) -> int:
    return getattr(request.module, "TORCH_THREADS", 1)


@pytest.fixture
def torch_threads(request) -> Iterator[int]:
    """One test at the module's TORCH_THREADS threads (1 where the module sets none), restored after."""
    with thread_counts(_module_threads(request)):
        yield _module_threads(request)


@pytest.fixture(scope="module")
def module_torch_threads(request) -> Iterator[int]:
    """`torch_threads` for a whole module, for the module fixtures that build or run models too."""
    with thread_counts(_module_threads(request)):
        yield _module_threads(request)


@pytest.fixture
def ros_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A ROS domain of its own on loopback, for this test process and the children it starts.

    Children must get the whole environment: the ROS wheels' bootstrapper re-executes Python with
    LD_LIBRARY_PATH set and marks it done in a variable, so a child without LD_LIBRARY_PATH fails.
    """
    values = {
        "ROS_DOMAIN_ID": str(1 + _WORKER * _BAND + next(_domain_ids) % _BAND),
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
def corridor_set(data_dir):
    """The Corridor data set (queries, references and ground truth)."""
    from vpr_core.data import open_dataset

    return open_dataset(f"vpr_bench:{data_dir / 'corridor'}")


@pytest.fixture(scope="module")
def lite0_encoder(module_torch_threads):
    """Frozen lite0 (untrained heads) on torch, one thread: the cheapest real encoder."""
    from vpr_core.engine import EncoderConfig, create_encoder

    return create_encoder(EncoderConfig(preset="lite0", backend="torch", threads=1))


@pytest.fixture(scope="module")
def default_encoder(module_torch_threads):
    """The node's default model (checkpoints/lite0-fused) on torch, one thread: what the localizer
    tests run frames through."""
    from vpr_core.cli_options import DEFAULT_CHECKPOINT
    from vpr_core.engine import EncoderConfig, create_encoder

    return create_encoder(EncoderConfig(checkpoint=str(DEFAULT_CHECKPOINT), backend="torch", threads=1))


# The modules that start ROS nodes, launch files, colcon or other processes, or export, quantize or
# train models: each takes tens of seconds. They carry the `slow` marker (`make test ARGS='-m "not
# slow"'` leaves them out for a quick loop; `make test` runs everything) and, longest first, run before
# the rest, so that the parallel workers do not end waiting on one long module.
SLOW_MODULES = ("test_ros2_launch", "test_localize_node", "test_replay", "test_int8", "test_milvus_node",
                "test_engine", "test_build_map", "test_node_parameters", "test_demo",
                "test_localizer_filter", "test_milvus_fleet", "test_node_qos", "test_milvus_map", "test_model_efficientnet_lite",
                "test_train_route", "test_slam_continuity", "test_damaged_bags", "test_local_engines", "test_train", "test_mapdb_crash",
                "test_cli")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    for item in items:
        if item.module.__name__ in rank:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: a module's own order stays


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
