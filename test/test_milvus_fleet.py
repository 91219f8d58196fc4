"""Several processes on one Milvus map (a Milvus Lite file served by `vpr map serve`): two writers
appending at the same time leave every place exactly once, a reader sees places a writer appends
while it runs, and a second process cannot open the served file directly (Milvus Lite's limit)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest

from conftest import REPO
from vpr_core.data import open_dataset
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.mapdb import PlaceRecord
from vpr_core.mapstore import MapUnavailable, create_map, open_map
from vpr_core.mapstore.uri import place_id

PLACES = 60
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "test/milvus_peer.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _last_line(process: subprocess.Popen, prefix: str) -> str:
    out, _ = process.communicate(timeout=TIMEOUT_S)
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    assert process.returncode == 0 and lines, out[-3000:]
    return lines[-1][len(prefix):].strip()


@pytest.fixture(scope="module")
def places(data_dir, tmp_path_factory, module_torch_threads):
    """Codes and descriptors of real Corridor images, for the peers to write."""
    encoder = create_encoder(EncoderConfig(preset="lite0", backend="torch", threads=1))
    frames = list(islice(open_dataset(f"vpr_bench:{data_dir / 'corridor'}").database, PLACES))
    codes, desc = encoder.encode([f.rgb for f in frames])
    path = tmp_path_factory.mktemp("fleet") / "places.npz"
    np.savez(path, codes=codes, desc=desc.astype(np.float16), names=np.array([f.name for f in frames]),
             fingerprint=np.array(encoder.fingerprint))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vpr map serve` on a free port; yields (milvus:// address, served file)."""
    db = tmp_path_factory.mktemp("served") / "fleet.db"
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "vpr_core.mapstore.command", "serve", str(db), "--port",
                                str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    assert line.startswith("serving"), line + process.stdout.read()
    yield f"milvus://127.0.0.1:{port}", db
    process.terminate()
    process.wait(timeout=30)


def test_two_writers_appending_at_once_leave_every_place_exactly_once(places, server):
    uri = f"{server[0]}/two_writers"
    half = PLACES // 2
    writers = [_peer("write", f"{uri}?writer=1", str(places), "0", str(half), "3"),
               _peer("write", f"{uri}?writer=2", str(places), str(half), str(PLACES), "3")]
    written = [json.loads(_last_line(w, "WROTE")) for w in writers]
    assert written == [[place_id(1, i) for i in range(half)], [place_id(2, i) for i in range(PLACES - half)]]
    collection = open_map(uri)
    ids = collection.all_ids()
    assert collection.size == PLACES
    np.testing.assert_array_equal(ids, sorted(written[0] + written[1]))
    data = np.load(places)
    np.testing.assert_array_equal(collection.vectors(ids, "code"), data["codes"])
    assert [r.source for r in collection.records(ids)] == data["names"].tolist()


def test_a_reader_sees_places_a_writer_appends_while_it_runs(places, server):
    uri = f"{server[0]}/live"
    data = np.load(places)
    first = 10
    seed = create_map(uri, fingerprint=str(data["fingerprint"]), encoder_config={}, bits=data["codes"].shape[1] * 8,
                      dim=data["desc"].shape[1])
    seed.append(data["codes"][:first], data["desc"][:first], [PlaceRecord(source=str(n)) for n in data["names"][:first]])
    target = PLACES - 1
    reader = _peer("read", uri, str(places), str(target), str(TIMEOUT_S))
    assert reader.stdout.readline().strip() == "READY"
    writer = _peer("write", f"{uri}?writer=5", str(places), str(first), str(PLACES), "5")
    _last_line(writer, "WROTE")
    assert int(_last_line(reader, "FOUND")) == place_id(5, target - first)


def test_a_served_lite_file_cannot_be_opened_by_a_second_process(server):
    with pytest.raises(MapUnavailable, match="vpr map serve"):
        open_map(f"milvus-lite:{server[1]}/two_writers")
