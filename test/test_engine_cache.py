"""The TensorRT engine cache's keying and invalidation (pure logic; engines are opaque bytes to it).

The payloads stored here are plain byte strings standing for serialized engines: the cache never
looks inside an engine, it only decides whether stored bytes may be reused for a key. Building and
running real engines is tested in test_engine_tensorrt.py where TensorRT and a GPU exist.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from vpr_core.engine.engine_cache import EngineCache, EngineKey, build_lock

PAYLOAD = b"serialized-engine-bytes:" + bytes(range(256))


def make_key(**changes) -> EngineKey:
    key = EngineKey(
        onnx_sha256="a" * 64, tensorrt_version="10.3.0", gpu_name="NVIDIA Jetson AGX Orin",
        compute_capability="8.7", precision="fp16", input_chw=(3, 322, 322), min_batch=1, opt_batch=1,
        max_batch=8, workspace_bytes=4 << 30,
    )
    return dataclasses.replace(key, **changes)


def test_stored_engine_is_reused_for_the_same_key(tmp_path):
    cache = EngineCache(tmp_path)
    assert not cache.lookup("m-fp16", make_key()).hit
    path = cache.store("m-fp16", make_key(), PAYLOAD)
    assert path == tmp_path / "m-fp16.engine" and path.read_bytes() == PAYLOAD
    found = cache.lookup("m-fp16", make_key())
    assert found.hit and found.engine == PAYLOAD
    assert "reusing" in found.reason


@pytest.mark.parametrize("change", [
    {"onnx_sha256": "b" * 64},
    {"tensorrt_version": "10.5.0"},
    {"gpu_name": "NVIDIA H100 80GB HBM3"},
    {"compute_capability": "9.0"},
    {"precision": "fp32"},
    {"input_chw": (3, 224, 224)},
    {"max_batch": 16},
    {"opt_batch": 4},
    {"workspace_bytes": 1 << 30},
])
def test_any_key_change_invalidates_and_names_the_field(tmp_path, change):
    cache = EngineCache(tmp_path)
    cache.store("m", make_key(), PAYLOAD)
    found = cache.lookup("m", make_key(**change))
    assert not found.hit
    field = next(iter(change))
    assert field in found.reason, found.reason


def test_rebuild_replaces_the_slot_and_the_old_key_no_longer_matches(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store("m", make_key(), PAYLOAD)
    new_key = make_key(tensorrt_version="10.5.0")
    cache.store("m", new_key, PAYLOAD[::-1])
    assert cache.lookup("m", new_key).engine == PAYLOAD[::-1]
    assert not cache.lookup("m", make_key()).hit
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["m.engine", "m.json"]


def test_truncated_engine_is_not_reused(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.store("m", make_key(), PAYLOAD)
    path.write_bytes(PAYLOAD[:100])
    found = cache.lookup("m", make_key())
    assert not found.hit and "checksum" in found.reason


@pytest.mark.parametrize("damage", ["delete", "garbage", "no-key"])
def test_missing_or_broken_record_means_rebuild(tmp_path, damage):
    cache = EngineCache(tmp_path)
    cache.store("m", make_key(), PAYLOAD)
    record = cache.record_path("m")
    if damage == "delete":
        record.unlink()
    elif damage == "garbage":
        record.write_text("{not json")
    else:
        record.write_text(json.dumps({"record_version": 1, "engine_sha256": "x"}))
    found = cache.lookup("m", make_key())
    assert not found.hit and str(record) in found.reason


def test_key_digest_is_stable_across_processes_and_distinguishes_keys():
    """The digest names an engine on disk for later runs: another interpreter, with another hash seed,
    must compute the same one."""
    script = ("import sys; sys.path.insert(0, 'test'); from test_engine_cache import make_key; "
              "print(make_key().digest())")
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "12345"},
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == make_key().digest()
    assert make_key().digest() != make_key(max_batch=4).digest()
    assert make_key().differences(make_key().as_dict()) == []


def _hold_lock(directory, name, started, seconds):
    with build_lock(directory, name):
        started.set()
        time.sleep(seconds)


def test_build_lock_serialises_processes(tmp_path):
    started = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(tmp_path, "m", started, 1.0))
    holder.start()
    try:
        assert started.wait(30)
        t0 = time.monotonic()
        with build_lock(tmp_path, "m"):
            waited = time.monotonic() - t0
    finally:
        holder.join(30)
    assert waited > 0.5, f"the lock did not wait for the other process ({waited:.3f} s)"
