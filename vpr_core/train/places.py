"""Place labels for training: which cached images show the same place, and where each place is.

Four sources: sequence data where a place is a frame index (Nordland: the summer and winter image
of one file index), a robot's recording with positions in metres (frames grouped by distance),
GSV-Cities style tables (one row per image, place = city + place_id), and CosPlace's division of UTM
positions and headings into classes and groups.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_core.data.images import list_images
from vpr_core.data.seasons import FileRange


@dataclass
class PlaceSet:
    """Images grouped by place, with a position per place (metres, or frame index for sequences).

    ``image_place[r]`` is the place of cached image row ``r``; two places count as the same place when
    their positions are within ``positive_radius`` and as different when farther than
    ``negative_radius`` (pairs in between are ignored by the losses, as are images too alike to call
    negatives in a sequence sampled every few metres).
    """

    image_place: np.ndarray            # [images] int64 place index
    positions: np.ndarray              # [places, dims] float64
    names: list[str] = field(default_factory=list)   # one per place
    positive_radius: float = 0.0
    negative_radius: float = 0.0

    def __post_init__(self) -> None:
        self.image_place = np.asarray(self.image_place, dtype=np.int64)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(len(self.positions), -1)
        if self.negative_radius < self.positive_radius:
            raise ValueError(f"negative_radius {self.negative_radius} < positive_radius {self.positive_radius}")
        if len(self.image_place) and (self.image_place.min() < 0 or self.image_place.max() >= len(self.positions)):
            raise ValueError(f"image_place refers to places outside 0..{len(self.positions) - 1}")

    @property
    def num_places(self) -> int:
        return len(self.positions)

    def images_of(self) -> list[np.ndarray]:
        """Row indices of the images of each place."""
        order = np.argsort(self.image_place, kind="stable")
        bounds = np.searchsorted(self.image_place[order], np.arange(self.num_places + 1))
        return [order[bounds[p]:bounds[p + 1]] for p in range(self.num_places)]

    def subset(self, places: np.ndarray) -> tuple[PlaceSet, np.ndarray]:
        """The places ``places`` renumbered 0..len-1, and the image rows they keep."""
        places = np.asarray(places, dtype=np.int64)
        remap = np.full(self.num_places, -1, dtype=np.int64)
        remap[places] = np.arange(len(places))
        rows = np.nonzero(remap[self.image_place] >= 0)[0]
        names = [self.names[p] for p in places] if self.names else []
        return PlaceSet(remap[self.image_place[rows]], self.positions[places], names,
                        self.positive_radius, self.negative_radius), rows


def nordland_places(root: Path, file_range: FileRange, seasons: Sequence[str] = ("summer", "winter"), *,
                    positive_radius: int = 1, negative_radius: int = 1) -> tuple[PlaceSet, list[Path]]:
    """Sequence data: place = file index, position = index along the ride; image rows are all files of
    the first season, then all of the second, ... (the order of the returned file list)."""
    per_season = []
    for season in seasons:
        folder = Path(root) / season
        if not folder.is_dir():
            raise FileNotFoundError(f"season folder {folder} not found (see ../shared/data/README.md)")
        per_season.append([p for p in list_images(folder) if file_range.contains(p.stem)])
    names = [p.name for p in per_season[0]]
    for season, files in zip(seasons, per_season):
        if [p.name for p in files] != names:
            raise ValueError(f"{Path(root) / season} does not hold the same file names as {Path(root) / seasons[0]} "
                             f"between {file_range.first} and {file_range.last}")
    if not names:
        raise ValueError(f"no image in {root} between {file_range.first} and {file_range.last}")
    n = len(names)
    image_place = np.tile(np.arange(n), len(seasons))
    places = PlaceSet(image_place, np.arange(n, dtype=np.float64)[:, None], [Path(x).stem for x in names],
                      float(positive_radius), float(negative_radius))
    return places, [p for files in per_season for p in files]


def route_places(positions: np.ndarray, names: Sequence[str], *, positive_radius: float,
                 negative_radius: float) -> PlaceSet:
    """A recording's frames grouped into places by position (metres), in capture order.

    Leader clustering: a frame joins the nearest place whose first frame lies within
    ``positive_radius / 2`` of it, else it starts a new place there. So any two images of one place are
    within ``positive_radius`` of each other (calling them the same place never contradicts the
    distance rule of the losses), a route driven twice gives places with an image of each pass (the
    pairs the heads learn from), and places are numbered in the order the route first reached them
    (the validation slice, the last places, is the end of the route). Written by hand because the
    library clusterings with a diameter bound (complete linkage) need all pairwise distances, which
    a long recording does not fit in memory; this needs one distance per place and frame.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(len(positions), -1)
    if len(positions) != len(names):
        raise ValueError(f"{len(positions)} positions for {len(names)} frame names")
    leaders = np.empty_like(positions)
    image_place = np.empty(len(positions), dtype=np.int64)
    count = 0
    for i, position in enumerate(positions):
        if count:
            dist = np.linalg.norm(leaders[:count] - position, axis=1)
            nearest = int(np.argmin(dist))
            if dist[nearest] <= positive_radius / 2:
                image_place[i] = nearest
                continue
        leaders[count] = position
        image_place[i] = count
        count += 1
    first = np.unique(image_place, return_index=True)[1]
    return PlaceSet(image_place, leaders[:count], [names[i] for i in first], float(positive_radius),
                    float(negative_radius))


def gsv_cities_places(table: Path, image_root: Path, *, positive_radius: float = 0.0,
                      negative_radius: float = 25.0) -> tuple[PlaceSet, list[Path]]:
    """A GSV-Cities style table (columns place_id, city_id, lat, lon, year, month, panoid, ...): one row
    per image; place = (city_id, place_id); position = mean (lat, lon) converted to local metres."""
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"place_id", "lat", "lon"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{table}: a GSV-Cities table needs the columns {sorted(needed)}; "
                         f"found {sorted(rows[0]) if rows else 'no rows'}")
    city = [r.get("city_id", "") for r in rows]
    keys = [(c, r["place_id"]) for c, r in zip(city, rows)]
    unique = sorted(set(keys))
    index = {k: i for i, k in enumerate(unique)}
    image_place = np.array([index[k] for k in keys], dtype=np.int64)
    lat = np.array([float(r["lat"]) for r in rows])
    lon = np.array([float(r["lon"]) for r in rows])
    # Equirectangular metres around each image: enough to compare places a few hundred metres apart.
    metres = np.stack([lat * 111_320.0, lon * 111_320.0 * np.cos(np.radians(lat))], axis=1)
    positions = np.zeros((len(unique), 2))
    np.add.at(positions, image_place, metres)
    positions /= np.bincount(image_place, minlength=len(unique))[:, None]
    files = [Path(image_root) / (f"{c}/" if c else "") / _gsv_name(r) for c, r in zip(city, rows)]
    return PlaceSet(image_place, positions, [f"{c}:{p}" for c, p in unique], positive_radius, negative_radius), files


def _gsv_name(row: dict) -> str:
    return row["image"] if "image" in row else (
        f"{row.get('city_id', '')}_{int(row['place_id']):07d}_{row.get('year', '')}_{int(row.get('month', 0)):02d}_"
        f"{int(float(row.get('northdeg', 0))):03d}_{row['lat']}_{row['lon']}_{row.get('panoid', '')}.jpg")


def cosplace_groups(utm: np.ndarray, heading_deg: np.ndarray, *, cell_m: float = 10.0, heading_bin_deg: float = 30.0,
                    n: int = 5, l: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """CosPlace's division: class = (east // M, north // M, heading // alpha); group = class indices
    modulo (N, N, L), so two classes of one group are at least N cells (or L heading bins) apart and
    never show the same scene. Returns (class id [images], group id [images]); group ids are 0..N*N*L-1
    and are meant to be trained one after another.
    """
    utm = np.asarray(utm, dtype=np.float64)
    heading = np.mod(np.asarray(heading_deg, dtype=np.float64), 360.0)
    if utm.ndim != 2 or utm.shape[1] != 2 or len(utm) != len(heading):
        raise ValueError(f"utm must be [N, 2] (east, north) with one heading each; got {utm.shape} and {heading.shape}")
    if cell_m <= 0 or heading_bin_deg <= 0 or n < 1 or l < 1:
        raise ValueError("cell_m and heading_bin_deg must be > 0, n and l >= 1")
    cells = np.floor(utm / cell_m).astype(np.int64)
    bins = np.floor(heading / heading_bin_deg).astype(np.int64)
    triple = np.column_stack([cells, bins])
    _, class_id = np.unique(triple, axis=0, return_inverse=True)
    group = (np.mod(cells[:, 0], n) * n + np.mod(cells[:, 1], n)) * l + np.mod(bins, l)
    return class_id.reshape(-1).astype(np.int64), group.astype(np.int64)
