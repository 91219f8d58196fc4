"""`vpr add-local`: store FoL++ local features in an existing map, for the third search stage.

Why a separate step: maps are built (and appended to) by the global encoder alone; the local branch
is optional and may be trained later. This step re-reads the map's source frames, runs the backbone
once per frame for the kept local patches, and commits them as one new map generation. The map must
have been built by the same global model (fingerprint check) and every place must be found in the
source by its recorded name; places are matched by name, so keyframe selection does not matter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vpr_core.cli_options import add_encoder_arguments, encoder_config
from vpr_core.data import open_source
from vpr_core.engine.model_source import load_model
from vpr_core.mapdb import MapDB, MapError
from vpr_core.model.local_branch import LocalEncoder, load_local_branch
from vpr_core.cli import run_module


def add_local_features(mapdb: MapDB, frames, encoder: LocalEncoder, batch_size: int = 16) -> int:
    """Encodes the frames whose names are places of ``mapdb`` and stores their kept patches for every
    place; returns the number of places covered. Refuses when a place's frame is missing."""
    ids = {record.source: i for i, record in enumerate(mapdb.records(np.arange(mapdb.size)))}
    parts: dict[int, tuple[np.ndarray, ...]] = {}
    batch: list = []

    def flush() -> None:
        _, _, local = encoder.encode_local([f.rgb for f in batch])
        for j, frame in enumerate(batch):
            parts[ids[frame.name]] = (local.desc[j], local.rel[j], local.pos[j])
        batch.clear()

    for frame in tqdm(frames, desc=f"add-local {mapdb.path.name}", unit="img", disable=None):
        if frame.name in ids and ids[frame.name] not in parts:
            batch.append(frame)
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()
    missing = [i for i in range(mapdb.size) if i not in parts]
    if missing:
        raise MapError(f"{len(missing)} place(s) of map {mapdb.path} are not in the source (first: "
                       f"{mapdb.records([missing[0]])[0].source!r}); pass the source the map was built from")
    stacked = [np.stack([parts[i][k] for i in range(mapdb.size)]) for k in range(3)]
    mapdb.store_local_features(*stacked, fingerprint=encoder.local_fingerprint)
    return mapdb.size


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--map", required=True, type=Path, help="map directory (built by vpr build-map)")
    parser.add_argument("--source", required=True, help="the frames the map was built from ([READER:]PATH[?options])")
    parser.add_argument("--local", required=True, type=Path, help="local branch checkpoint directory")
    add_encoder_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16)


def run(args: argparse.Namespace) -> int:
    model = load_model(encoder_config(args))  # refusals (MapError, weight errors: ValueErrors) end in run_module
    encoder = LocalEncoder(model, load_local_branch(args.local, model))
    mapdb = MapDB.load(args.map, expected_fingerprint=encoder.fingerprint)
    count = add_local_features(mapdb, open_source(args.source), encoder, args.batch_size)
    info = mapdb.local_info
    print(f"{args.map}: local features for {count} places, {info['patches']} patches x {info['dim']}-D")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr add-local"))
