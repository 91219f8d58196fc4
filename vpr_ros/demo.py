"""The README's demo: a real map, the real node, real frames replayed as ROS messages, and the score.

1. builds a map with the default model (checkpoints/lite0-fused) from the reference frames
   of a data set (resumed when it is already there), 2. writes the query frames into a rosbag2 (mcap) at a camera rate,
3. starts the vpr_localizer node with `ros2 launch vpr_ros localize.launch.py` (the colcon install
that `make setup` builds) and the bag player, as separate processes, 4. listens to the node's
PlaceMatchArray messages, printing one line per frame, and 5. ends with Recall@1, latency and an
example-retrievals PNG.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    # name -> (map source, query source) specs relative to the data folder
    "corridor": ("vpr_bench:{d}/corridor?part=database", "vpr_bench:{d}/corridor"),
    "nordland": ("seasons:{d}/nordland_tiny?split=test&part=database",
                 "seasons:{d}/nordland_tiny?split=test"),
}
MATCHES_TOPIC = "/vpr_localizer/matches"
CAMERA_TOPIC = "/camera/image_raw"


def find_data(path: Path | None) -> Path:
    candidates = [path] if path else [Path(os.environ["VPR_DATA"])] if "VPR_DATA" in os.environ else \
        [REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate is not None and candidate.is_dir():
            return candidate
    raise SystemExit(
        f"vpr demo: no data sets at {candidates[0]}. The demo reads the corridor or Nordland-tiny sets "
        "(see ../shared/data/README.md for their public sources and licences); put them in a folder with "
        "corridor/ and nordland_tiny/ inside and pass --data DIR (or set VPR_DATA). Nothing is downloaded "
        "without being asked.")


def prepare(args: argparse.Namespace, data: Path, out: Path):
    """Map and query bag, reusing both when they are already there."""
    from vpr_core.build_map import BuildConfig, build_map
    from vpr_core.data import open_dataset
    from vpr_core.data.bag_writer import ImageStream, stamps_at, write_bag
    from vpr_core.engine import EncoderConfig, create_encoder

    map_spec, query_spec = (s.format(d=data) for s in DATASETS[args.dataset])
    dataset = open_dataset(query_spec)
    step = max(1, len(dataset.queries) // args.queries) if args.queries else 1
    picked = list(range(0, len(dataset.queries), step))[: args.queries or None]
    encoder = create_encoder(EncoderConfig(preset=args.preset, checkpoint=args.checkpoint, backend=args.backend))
    print(f"[demo] map: {len(dataset.database)} {args.dataset} reference frames, model {model_name(args)}")
    mapdb = build_map(dataset.database, map_dir(args, out), encoder, BuildConfig())
    bag = out / f"queries-{args.dataset}-{len(picked)}"
    if not bag.exists():
        frames = [dataset.queries[i].rgb for i in picked]
        write_bag(bag, [ImageStream(CAMERA_TOPIC, frames, stamps_at(args.rate, len(frames)))], storage="mcap")
    return dataset, picked, mapdb, bag


def model_name(args: argparse.Namespace) -> str:
    return Path(args.checkpoint).name if args.checkpoint else args.preset


def map_dir(args: argparse.Namespace, out: Path) -> Path:
    """One map per model: a map only answers queries encoded by the model that built it."""
    return out / f"map-{model_name(args)}"


def listen(node_proc, start_player, expected: int, on_match, timeout: float) -> None:
    """Subscribes to the node's matches, starts the player once the node publishes to us (so no
    answer is sent before we listen, and the node has loaded its model and map), then collects."""
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from vpr_ros.msg import PlaceMatchArray

    rclpy.init()
    try:
        node = Node("vpr_demo_listener")
        subscription = node.create_subscription(PlaceMatchArray, MATCHES_TOPIC, on_match,
                                                QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        deadline = time.monotonic() + timeout
        while subscription.get_publisher_count() == 0:
            if node_proc.poll() is not None or time.monotonic() > deadline:
                return
            rclpy.spin_once(node, timeout_sec=0.1)
        player_proc = start_player()
        player_done = None
        while time.monotonic() < deadline and node_proc.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.05)
            if on_match.count >= expected:
                break
            if player_proc.poll() is not None:
                player_done = player_done or time.monotonic()
                if time.monotonic() - player_done > 10:  # the last frames had their chance
                    break
        player_proc.wait(timeout=60)
    finally:
        rclpy.try_shutdown()


class MatchPrinter:
    def __init__(self, dataset, picked: list[int], stamps: dict[int, int]) -> None:
        self.dataset, self.picked, self.stamps = dataset, picked, stamps
        self.count, self.correct, self.latency, self.results = 0, 0, [], {}

    def __call__(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        row = self.stamps.get(stamp)
        if row is None or row in self.results:
            return
        query = self.picked[row]
        best = msg.matches[0] if msg.matches else None
        ok = best is not None and best.place_id in self.dataset.positives(query)
        self.count += 1
        self.correct += ok
        self.latency.append(msg.latency_ms)
        self.results[row] = ([m.place_id for m in msg.matches], [m.score for m in msg.matches])
        print(f"  query {self.dataset.queries.names[query]:>20} -> place {best.place_id if best else '-':>5} "
              f"score {best.score if best else float('nan'):.3f} {'accepted' if msg.accepted else 'rejected'} "
              f"{'correct' if ok else 'WRONG'}  {msg.latency_ms:6.1f} ms  (R@1 so far {self.correct / self.count:.2f})",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vpr demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of the data sets (default ../shared/data)")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="corridor")
    parser.add_argument("--queries", type=int, default=0, help="number of query frames (0: all)")
    parser.add_argument("--rate", type=float, default=4.0, help="camera rate of the replayed bag, Hz")
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "lite0-fused"),
                        help="head checkpoint directory ('' for the untrained heads of --preset)")
    parser.add_argument("--preset", default="lite0", help="model preset used when --checkpoint is ''")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    args = parser.parse_args(argv)

    data = find_data(args.data)
    out = args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    dataset, picked, mapdb, bag = prepare(args, data, out)

    from vpr_core.data import open_source
    stamps = {f.stamp_ns: row for row, f in enumerate(open_source(f"rosbag:{bag}"))}
    env = dict(os.environ, ROS_LOG_DIR=str(out / "ros_log"), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    model = [f"checkpoint:={args.checkpoint}"] if args.checkpoint else [f"preset:={args.preset}"]
    # As a user starts it: `ros2 launch` of the colcon install that `make setup` builds.
    node = subprocess.Popen(
        [str(REPO / "scripts" / "ros2_exec.sh"), "ros2", "launch", "vpr_ros", "localize.launch.py",
         f"map:={map_dir(args, out)}", f"image_topics:={CAMERA_TOPIC}", *model, f"backend:={args.backend}",
         "qos:=reliable"], env=env, start_new_session=True)
    printer = MatchPrinter(dataset, picked, stamps)

    def start_player() -> subprocess.Popen:
        print(f"[demo] node ready; replaying {len(picked)} query frames at {args.rate} Hz through the bag player")
        # The bag's stamps are already at --rate Hz, so it is played at its own speed (factor 1).
        return subprocess.Popen([sys.executable, "-m", "vpr_ros.bag_player", str(bag), "--rate", "1",
                                 "--reliable", "--wait-for-subscribers", "120"], env=env)

    try:
        listen(node, start_player, len(picked), printer, timeout=180 + 3 * len(picked) / args.rate)
        if node.poll() is not None:
            return node.returncode or 1
    finally:
        stop_launch(node)
    return summarize(printer, picked, dataset, mapdb, out)


def stop_launch(process: subprocess.Popen) -> None:
    """Ctrl-C to `ros2 launch`, which passes it on to the node and waits for it."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # launch passes it on to the node once
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def summarize(printer: MatchPrinter, picked, dataset, mapdb, out: Path) -> int:
    from vpr_core.eval.recall import evaluate_recall
    from vpr_core.eval.report import save_examples

    if not printer.count:
        print("[demo] the node published no matches; see its log above")
        return 1
    width = max(len(ids) for ids, _ in printer.results.values())
    predictions = np.full((len(dataset.queries), width), -1, dtype=np.int64)
    scores = np.full((len(dataset.queries), width), np.nan, dtype=np.float32)
    for row, (ids, values) in printer.results.items():
        predictions[picked[row], : len(ids)] = ids
        scores[picked[row], : len(values)] = values
    answered = [picked[row] for row in sorted(printer.results)]
    recall = evaluate_recall(predictions[answered], [dataset.positives(q) for q in answered],
                             ns=tuple(n for n in (1, 5) if n <= width))
    png = out / "examples.png"
    save_examples(png, dataset, predictions, scores, answered[:: max(1, len(answered) // 8)][:8],
                  title="vpr demo: node answers (green correct, red wrong)")
    lat = np.asarray(printer.latency)
    print(f"[demo] {printer.count}/{len(picked)} frames answered; Recall@1 {recall.recall[1]:.3f}"
          + (f", Recall@5 {recall.recall[5]:.3f}" if 5 in recall.recall else "")
          + f"; latency receive-to-publish p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms;"
          f" map {mapdb.size} places; example retrievals: {png}")
    if printer.count < len(picked):
        print(f"[demo] {len(picked) - printer.count} frames got no answer: the node keeps only the newest frame "
              "of a camera while it is busy (see 'dropped' in /diagnostics); lower --rate to answer every frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
