"""A robot's own recording as training data: the frames of a bag (or a folder) that carry a position,
with the positions in metres.

Where each frame was taken comes from the recording itself: the pose or odometry topic of a bag
(x, y, z in the pose's frame), UTM positions of a benchmark folder, or a GPS fix (NavSatFix), which
is turned into local metres on an equirectangular plane around the route's first fix: east = R cos(lat0)
dlon, north = R dlat. Over a route of a few kilometres that plane is off by well under 1 % (the
change of cos(lat) across the route), less than a GPS fix's own error at the radii used for training.

Reading the frames decodes every image, so the positions are kept in a small cache of their own,
keyed by the recording's files and the reader options: a second run reads no image at all when the
backbone features are cached too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vpr_core.data.frame import DataError, Frame
from vpr_core.data.registry import open_source, parse_spec
from vpr_core.model import VPRModel
from vpr_core.train.feature_cache import AugmentConfig, FeatureCache, model_key, open_cache, write_cache

log = logging.getLogger(__name__)

POSITIONS = ("auto", "pose", "utm", "gps")
EARTH_RADIUS_M = 6_371_008.8   # mean radius (IUGG)
ROUTE_FILE = "route.json"


@dataclass
class Route:
    """The frames of a recording that have a position, in capture order."""

    spec: str
    position: str                  # where positions came from: pose, utm or gps
    frame_indices: list[int]       # index of each kept frame in the source
    names: list[str]
    positions: np.ndarray          # [frames, dims] metres
    frames: int                    # frames in the source, with or without a position

    @property
    def left_out(self) -> int:
        return self.frames - len(self.names)


def read_route(spec: str, position: str = "auto", cache_root: Path | None = None) -> Route:
    """The positioned frames of the source ``spec`` (as ``vpr build-map --source``); read from the
    position cache under ``cache_root`` when the recording has not changed since it was read."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    key = source_key(spec, position)
    path = None if cache_root is None else Path(cache_root) / f"positions-{_digest(key)}" / ROUTE_FILE
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            route = Route(**{**saved["route"], "spec": spec,   # the same recording, maybe moved since
                             "positions": np.array(saved["route"]["positions"], dtype=np.float64)})
            _log_left_out(route)
            return route
    route = _read(spec, position)
    _log_left_out(route)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "route": {**asdict(route), "positions": route.positions.tolist()}}))
        tmp.replace(path)
    return route


def route_features(model: VPRModel, route: Route, cache_root: Path, *,
                   augment: AugmentConfig = AugmentConfig()) -> FeatureCache:
    """Backbone features of the route's frames (cache rows in ``route.names`` order), built if missing."""
    key = {**model_key(model, augment), "route": source_key(route.spec, route.position),
           "frames": _digest(route.names)}
    name = f"route-{Path(parse_spec(route.spec)[1]).name}"
    cached = open_cache(cache_root, name, key)
    if cached is not None:
        return cached
    keep = set(route.frame_indices)
    images = (frame.rgb for frame in open_source(route.spec) if frame.index in keep)
    return write_cache(model, key, cache_root, name, route.names, images, augment=augment)


def source_key(spec: str, position: str) -> dict:
    """What decides a route's frames and positions: the reader, its options and the recording's files
    (names and sizes), not where the recording lies."""
    reader, path, options = parse_spec(spec)
    path = Path(path)
    if not path.exists():
        raise DataError(f"source {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    listing = [f"{p.relative_to(path).as_posix() if path.is_dir() else p.name}|{p.stat().st_size}" for p in files]
    return {"reader": reader, "options": dict(sorted(options.items())), "position": position,
            "files": _digest(listing)}


def local_metres(latlon: np.ndarray) -> np.ndarray:
    """(east, north) metres of [N, 2] (latitude, longitude) degrees on the equirectangular plane
    around the first fix (see the module docstring for its error)."""
    rad = np.radians(np.asarray(latlon, dtype=np.float64))
    lat0, lon0 = rad[0]
    return np.stack([EARTH_RADIUS_M * np.cos(lat0) * (rad[:, 1] - lon0), EARTH_RADIUS_M * (rad[:, 0] - lat0)],
                    axis=1)


def _read(spec: str, position: str) -> Route:
    source = open_source(spec)
    seen: dict[str, list[tuple[int, str, tuple[float, ...]]]] = {"pose": [], "utm": [], "gps": []}
    frames = 0
    for frame in source:
        frames += 1
        for kind, value in _positions(frame).items():
            seen[kind].append((frame.index, frame.name, value))
    chosen = position if position != "auto" else next((k for k in ("pose", "utm", "gps") if seen[k]), "pose")
    if not seen[chosen]:
        raise DataError(_no_position(spec, position, frames))
    indices, names, values = zip(*seen[chosen])
    positions = np.array(values, dtype=np.float64)
    if chosen == "gps":
        positions = local_metres(positions)
    return Route(spec, chosen, list(indices), list(names), positions, frames)


def _positions(frame: Frame) -> dict[str, tuple[float, ...]]:
    found = {}
    if frame.pose is not None:
        found["pose"] = tuple(float(v) for v in frame.pose[:3])
    if frame.utm is not None:
        found["utm"] = tuple(frame.utm)
    if frame.latlon is not None:
        found["gps"] = tuple(frame.latlon)
    return found


def _no_position(spec: str, position: str, frames: int) -> str:
    what = {"auto": "a pose, odometry or GPS position", "pose": "a pose (pose or odometry topic)",
            "utm": "a UTM position", "gps": "a GPS fix (NavSatFix topic)"}[position]
    return (f"training source {spec}: none of its {frames} frames has {what} within the reader's max_gap_s; "
            f"record a pose/odometry or NavSatFix topic with the images, or name it in the source spec "
            f"(?pose_topic=/odom or ?gps_topic=/fix), or set data.position")


def _log_left_out(route: Route) -> None:
    log.info("route %s: %d frames with a %s position, %d of %d frames left out (no %s position)", route.spec,
             len(route.names), route.position, route.left_out, route.frames, route.position)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
