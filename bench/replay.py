"""Replay throughput: `vpr replay` over a 10 Hz camera bag, as a multiple of real time (goal >= 5x).

Writes a rosbag2 (mcap, raw rgb8) of real frames at 10 Hz, builds a map, replays with the shipped
lite0 model as fast as the machine allows, and prints frames/s and the real-time factor, for the bag
alone (reading + decoding) and for the full pipeline.

Usage: .venv/bin/python bench/replay.py [--backend auto] [--batch-size 8] [--storage mcap] [--camera-size 640x480]
"""

from __future__ import annotations

import argparse
import os
import cv2
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vpr_core.build_map import BuildConfig, build_map  # noqa: E402
from vpr_core.cli_options import NORDLAND_CHECKPOINT  # noqa: E402
from vpr_core.data import open_dataset, open_source  # noqa: E402
from vpr_core.data.bag_writer import ImageStream, stamps_at, write_bag  # noqa: E402
from vpr_core.engine import EncoderConfig, create_encoder  # noqa: E402
from vpr_core.localizer import Localizer, LocalizerConfig  # noqa: E402
from vpr_core.replay import replay  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
RATE_HZ = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--camera-size", default="", metavar="WxH",
                        help="resize the frames to this size before writing the bag (a VGA camera: 640x480); "
                             "default: the Corridor frames as they are (160x120)")
    args = parser.parse_args()

    dataset = open_dataset(f"vpr_bench:{DATA / 'corridor'}")
    frames = [f.rgb for f in dataset.queries]
    if args.camera_size:
        width, height = (int(v) for v in args.camera_size.lower().split("x"))
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
    encoder_config = EncoderConfig(checkpoint=str(NORDLAND_CHECKPOINT), backend=args.backend)
    encoder = create_encoder(encoder_config)
    with tempfile.TemporaryDirectory() as tmp:
        bag = write_bag(Path(tmp) / "camera", [ImageStream("/camera/image_raw", frames,
                                                           stamps_at(RATE_HZ, len(frames)))], storage=args.storage)
        map_dir = Path(tmp) / "map"
        build_map(dataset.database, map_dir, encoder, BuildConfig())
        bag_s = (len(frames) - 1) / RATE_HZ

        source = open_source(f"rosbag:{bag}")
        start = time.perf_counter()
        count = sum(1 for _ in source)
        read_s = time.perf_counter() - start

        localizer = Localizer(LocalizerConfig(map_path=str(map_dir), encoder=encoder_config), encoder)
        summary = replay(iter(source), len(source), localizer, batch_size=args.batch_size)
    print(f"bag: {count} frames {frames[0].shape[1]}x{frames[0].shape[0]} at {RATE_HZ:.0f} Hz ({bag_s:.1f} s), "
          f"{args.storage}")
    print(f"read + decode only: {count / read_s:.0f} frames/s = {bag_s / read_s:.0f}x real time")
    print(f"replay ({encoder_config.model_name}, backend {args.backend}, batch {args.batch_size}): "
          f"{summary.frames / summary.wall_s:.1f} "
          f"frames/s = {summary.realtime_factor:.1f}x real time (goal >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
