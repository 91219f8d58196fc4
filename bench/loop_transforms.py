"""Which transform a true loop closure of rtabmap_loop gets: verified pairs, kinds, inliers.

Over the true revisit pairs of loop_pairs.csv, with the pinhole guess fx = fy = 440, cx = 256,
cy = 192 (the data ships no calibration) and no depth (so never METRIC), for ORB and SIFT: how many
pairs pass geometric verification and how many get each kind of relative pose (NONE: not verified,
so no transform; ROTATION_ONLY / UP_TO_SCALE), with the median inliers and time per pair.

Usage: .venv/bin/python bench/loop_transforms.py [--every N] [--methods orb,sift]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vpr_core.loop.geometry import GeometryConfig, extract_features, verify_features  # noqa: E402
from vpr_core.loop.camera_model import CameraModel  # noqa: E402
from vpr_core.loop.relative_pose import KIND_NAMES, NONE, ROTATION_ONLY, UP_TO_SCALE  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data")) / "rtabmap_loop"
CAMERA = CameraModel(440.0, 440.0, 256.0, 192.0)


def read_pairs(every: int) -> list[tuple[int, int]]:
    with open(DATA / "loop_pairs.csv", newline="") as f:
        pairs = [(int(r["query_frame"]), int(r["match_frame"])) for r in csv.DictReader(f)]
    return pairs[::every]


def load(frame: int):
    image = cv2.imread(str(DATA / "images" / f"{frame:04d}.jpg"))
    if image is None:
        raise FileNotFoundError(f"frame {frame} of {DATA} is missing (set VPR_DATA)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def run(method: str, pairs: list[tuple[int, int]]) -> dict[str, object]:
    """Verify every pair; features are extracted once per frame, as the detector keeps them."""
    config = GeometryConfig(method=method)
    frames = sorted({f for pair in pairs for f in pair})
    features = {f: extract_features(load(f), config, camera=CAMERA) for f in frames}
    kinds = {kind: 0 for kind in (NONE, ROTATION_ONLY, UP_TO_SCALE)}
    verified, inliers = 0, []
    start = time.perf_counter()
    for query, match in pairs:
        result = verify_features(features[query], features[match], config)
        inliers.append(result.inliers)
        verified += result.verified
        kinds[result.relative.kind if result.verified else NONE] += 1
    per_pair_ms = 1000 * (time.perf_counter() - start) / max(len(pairs), 1)
    return {"verified": verified, "kinds": kinds, "median_inliers": statistics.median(inliers),
            "per_pair_ms": per_pair_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="use every N-th pair (default: all)")
    parser.add_argument("--methods", default="orb,sift")
    args = parser.parse_args()
    pairs = read_pairs(args.every)
    print(f"rtabmap_loop: {len(pairs)} true loop pairs, camera guess fx=fy=440 cx=256 cy=192, no depth")
    header = ["method", "pairs", "verified", *(KIND_NAMES[k] for k in (NONE, ROTATION_ONLY, UP_TO_SCALE)),
              "median inliers", "ms/pair"]
    print(" | ".join(header))
    for method in args.methods.split(","):
        r = run(method, pairs)
        kinds = [str(r["kinds"][k]) for k in (NONE, ROTATION_ONLY, UP_TO_SCALE)]
        print(" | ".join([method, str(len(pairs)), str(r["verified"]), *kinds,
                          f"{r['median_inliers']:.0f}", f"{r['per_pair_ms']:.1f}"]))


if __name__ == "__main__":
    main()
