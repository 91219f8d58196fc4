"""Test peer: a writer or a reader of a served Milvus map, in its own process.

    milvus_peer.py write URI NPZ FIRST END BATCH   appends rows [FIRST, END) of NPZ (codes, desc, names)
                                                   in batches of BATCH; prints "WROTE <ids as JSON>"
    milvus_peer.py read URI NPZ ROW TIMEOUT_S      prints "READY", then searches row ROW's code and
                                                   descriptor until a place with the same code and
                                                   descriptor is the best match; prints "FOUND <id>"
"""

import json
import sys
import time

import numpy as np

from vpr_core.mapdb import PlaceRecord
from vpr_core.mapstore import create_map, open_map, open_searcher


def write(uri: str, data, first: int, end: int, batch: int) -> int:
    target = create_map(uri, fingerprint=str(data["fingerprint"]), encoder_config={}, bits=data["codes"].shape[1] * 8,
                        dim=data["desc"].shape[1])
    ids = []
    for start in range(first, end, batch):
        stop = min(start + batch, end)
        records = [PlaceRecord(source=str(n)) for n in data["names"][start:stop]]
        ids += target.append(data["codes"][start:stop], data["desc"][start:stop], records).tolist()
    print("WROTE " + json.dumps(ids), flush=True)
    return 0


def read(uri: str, data, row: int, timeout_s: float) -> int:
    searcher = open_searcher(open_map(uri, expected_fingerprint=str(data["fingerprint"])))
    code, desc = data["codes"][row : row + 1], data["desc"][row : row + 1].astype(np.float32)
    print("READY", flush=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = searcher.search(code, desc, 1)
        if found.ids[0, 0] >= 0 and found.hamming[0, 0] == 0 and found.scores[0, 0] > 0.999:
            print(f"FOUND {int(found.ids[0, 0])}", flush=True)
            return 0
        time.sleep(0.1)
    print("TIMEOUT", flush=True)
    return 1


if __name__ == "__main__":
    mode, uri, npz = sys.argv[1:4]
    data = np.load(npz)
    if mode == "write":
        sys.exit(write(uri, data, *map(int, sys.argv[4:7])))
    sys.exit(read(uri, data, int(sys.argv[4]), float(sys.argv[5])))
