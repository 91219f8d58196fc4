"""Soak: the node in slam mode fed three cameras for a long time; memory, keyframes, loss, drops.

    python bench/soak.py                    # 10 minutes, 3 cameras at 30 Hz, 640x480
    python bench/soak.py --minutes 30       # the README figure

A camera process publishes three topics at --rate Hz (two raw bgr8, one JPEG CompressedImage) with
real corridor frames from ../shared/data (or VPR_DATA), looping over them. The node runs as a
robot would start it (`python -m vpr_ros.localize_node`, product defaults, mode slam, its own slam
map in a temporary folder). Every --sample-s seconds this process records the node's resident
memory (VmRSS), the slam map's size on disk and the node's /diagnostics (received, processed,
dropped, upstream loss estimated from the stamps, processing errors, keyframes). At the end it
prints the samples, the memory slope after --warm-up-min minutes (MB per hour, beside what the
map's growth over the same time would explain), per-camera figures and whether the node ever died,
and draws out/soak/memory.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "out" / "soak"
KINDS = ("raw", "jpeg", "raw")  # per camera


def camera(spec: dict) -> int:
    """Publishes spec["cameras"] topics at spec["rate"] Hz until killed."""
    import cv2
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    width, height = spec["size"]
    frames = []
    for path in sorted((DATA / "corridor" / "query").iterdir())[:60]:
        bgr = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (width, height))
        frames.append((bgr.tobytes(), cv2.imencode(".jpg", bgr)[1].tobytes()))
    rclpy.init()
    node = rclpy.create_node("soak_cameras")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pubs = []
    for c, kind in enumerate(KINDS[: spec["cameras"]]):
        topic = f"/cam{c}/image_raw" + ("/compressed" if kind == "jpeg" else "")
        pubs.append((kind, node.create_publisher(CompressedImage if kind == "jpeg" else Image, topic, qos)))
    period, start, n = 1.0 / spec["rate"], time.monotonic(), 0
    while True:
        raw, jpeg = frames[n % len(frames)]
        stamp = divmod(time.time_ns(), 10**9)
        for c, (kind, pub) in enumerate(pubs):
            if kind == "jpeg":
                msg = CompressedImage(format="jpeg", data=jpeg)
            else:
                msg = Image(height=height, width=width, encoding="bgr8", step=width * 3, data=raw)
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
            msg.header.frame_id = f"cam{c}"
            pub.publish(msg)
        n += 1
        time.sleep(max(0.0, start + n * period - time.monotonic()))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def soak(args: argparse.Namespace) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    env = dict(os.environ, ROS_DOMAIN_ID=str(1 + os.getpid() % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION=os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"), PYTHONUNBUFFERED="1")
    os.environ.update(env)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    topics = [f"/cam{c}/image_raw" + ("/compressed" if k == "jpeg" else "") for c, k in enumerate(KINDS[: args.cameras])]
    node = subprocess.Popen(
        [sys.executable, "-m", "vpr_ros.localize_node", "--ros-args", "-p", "mode:=slam",
         "-p", f"map.slam_path:={work / 'slam'}", "-p", f"image_topics:={json.dumps(topics)}",
         "-p", "diagnostics_period_s:=2.0"], cwd=REPO, env=env, stdout=open(work / "node.log", "w"),
        stderr=subprocess.STDOUT)
    spec = {"cameras": args.cameras, "rate": args.rate, "size": args.size}
    cams = subprocess.Popen([sys.executable, __file__, "--camera", json.dumps(spec)], cwd=REPO, env=env)
    rclpy.init()
    listener = rclpy.create_node("soak_monitor")
    latest: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith("pipeline"):
                latest.update({kv.key: kv.value for kv in status.values})
                latest["message"] = status.message

    listener.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    samples, start, died = [], time.monotonic(), None
    end = start + 60 * args.minutes
    next_sample = start
    try:
        while time.monotonic() < end:
            rclpy.spin_once(listener, timeout_sec=0.1)
            if node.poll() is not None:
                died = node.returncode
                break
            if time.monotonic() >= next_sample:
                next_sample += args.sample_s
                samples.append({"t_min": (time.monotonic() - start) / 60, "rss_mb": _rss_mb(node.pid),
                                "map_mb": _dir_mb(work / "slam"), **latest})
                print(f"{samples[-1]['t_min']:6.1f} min  RSS {samples[-1]['rss_mb']:7.1f} MB  map "
                      f"{samples[-1]['map_mb']:7.1f} MB  keyframes {latest.get('keyframes', '-')}", flush=True)
    finally:
        cams.kill()
        if node.poll() is None:
            node.send_signal(2)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
        listener.destroy_node()
        rclpy.shutdown()
    report(samples, topics, args, died, work)
    return 0 if died is None else 1


def report(samples: list[dict], topics: list[str], args: argparse.Namespace, died: int | None, work: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "samples.json").write_text(json.dumps(samples, indent=1))
    t = np.array([s["t_min"] for s in samples])
    rss = np.array([s["rss_mb"] for s in samples])
    disk = np.array([s["map_mb"] for s in samples])
    after = t >= args.warm_up_min
    slope = float(np.polyfit(t[after], rss[after], 1)[0] * 60) if after.sum() >= 3 else float("nan")
    map_slope = float(np.polyfit(t[after], disk[after], 1)[0] * 60) if after.sum() >= 3 else float("nan")
    last = samples[-1] if samples else {}
    print(f"\ndate {time.strftime('%Y-%m-%d')}; {args.minutes} min, {args.cameras} cameras at {args.rate:g} Hz, "
          f"{args.size[0]}x{args.size[1]} ({', '.join(KINDS[: args.cameras])}), mode slam, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"node: {'never died' if died is None else f'DIED with exit code {died}'}; processing errors "
          f"{last.get('processing errors', '-')}; status '{last.get('message', '-')}'")
    print(f"resident memory: {rss[0]:.0f} MB at start, {rss.max():.0f} MB peak, {rss[-1]:.0f} MB at the end; slope "
          f"after {args.warm_up_min:g} min {slope:+.1f} MB/h; slam map on disk {disk[-1]:.1f} MB, growing "
          f"{map_slope:+.1f} MB/h; keyframes {last.get('keyframes', '-')}")
    print("| camera | received | processed | dropped by the node | lost upstream (estimated) | malformed |")
    print("|---|---:|---:|---:|---:|---:|")
    for topic in topics:
        print(f"| {topic} | {last.get(f'{topic} received', '-')} | {last.get(f'{topic} processed', '-')} | "
              f"{last.get(f'{topic} dropped', '-')} | {last.get(f'{topic} lost upstream', '-')} | "
              f"{last.get(f'{topic} malformed', '-')} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, rss, label="node resident memory (MB)")
    ax.plot(t, disk, label="slam map on disk (MB)")
    ax.axvline(args.warm_up_min, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "memory.png", dpi=100)
    print(f"samples: {OUT / 'samples.json'}; picture: {OUT / 'memory.png'}; node log: {work / 'node.log'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--cameras", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second per camera")
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(640, 480),
                        help="WIDTHxHEIGHT")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warm-up-min", type=float, default=2.0)
    parser.add_argument("--camera", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.camera:
        return camera(json.loads(args.camera))
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
