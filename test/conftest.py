"""Shared fixtures: repository paths, the real data sets, and an isolated ROS 2 environment per test."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))

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
