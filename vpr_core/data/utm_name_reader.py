"""Reader for the community VPR benchmark layout: ``database/`` and ``queries/`` whose file names carry
the position, ``@utm_east@utm_north@utm_zone_number@utm_zone_letter@lat@lon@pano_id@tile_num@heading@
pitch@roll@height@timestamp@note@.jpg``. A query's positives are the database images within
``radius_m`` (25 m by convention) in UTM coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from vpr_core.data.dataset import EvalDataset, check_part
from vpr_core.data.frame import DataError
from vpr_core.data.images import ImageFiles, list_images

FOLDERS = {"database": "database", "queries": "queries"}


@dataclass
class Config:
    radius_m: float = 25.0
    part: str = "database"

    def __post_init__(self) -> None:
        if not self.radius_m > 0:
            raise ValueError(f"radius_m must be > 0, got {self.radius_m}")
        check_part(self.part)


@dataclass(frozen=True)
class UtmName:
    """The fields of a benchmark file name that the reader uses; the rest is ignored."""

    east: float
    north: float
    zone: str
    latlon: tuple[float, float] | None


def parse_utm_name(name: str) -> UtmName:
    """Read east/north (required) and zone, lat/lon (when present) from an ``@...@`` file name.

    Data sets fill the optional fields unevenly (empty strings, fewer fields), so only east and
    north must parse; anything after them is best effort.
    """
    fields = Path(name).name.split("@")
    if len(fields) < 4 or fields[0] != "":
        raise DataError(f"file name {name!r} is not of the form @utm_east@utm_north@...@.ext")
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError:
        raise DataError(
            f"file name {name!r}: UTM east/north {fields[1]!r}, {fields[2]!r} are not numbers"
        ) from None
    if not (np.isfinite(east) and np.isfinite(north)):
        raise DataError(f"file name {name!r}: UTM east/north must be finite")
    zone = "".join(fields[3:5]) if len(fields) > 5 else ""
    latlon = None
    if len(fields) > 7:
        try:
            lat, lon = float(fields[5]), float(fields[6])
        except ValueError:
            lat = lon = float("nan")
        if np.isfinite(lat) and np.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180:
            latlon = (lat, lon)
    return UtmName(east=east, north=north, zone=zone, latlon=latlon)


def _open_part(root: Path, part: str) -> ImageFiles:
    folder = root / FOLDERS[part]
    if not folder.is_dir():
        hint = ""
        if (root / "images" / "test" / FOLDERS[part]).is_dir():
            hint = f"; this looks like the downloader layout, pass {root / 'images' / 'test'}"
        raise DataError(f"VPR benchmark {root}: folder {folder} does not exist{hint}")
    files = list_images(folder, recursive=True)
    parsed = []
    for path in files:
        try:
            parsed.append(parse_utm_name(path.name))
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
    utm = np.array([(p.east, p.north) for p in parsed], dtype=np.float64)
    latlon = np.array([p.latlon or (np.nan, np.nan) for p in parsed], dtype=np.float64)
    zones = {p.zone for p in parsed if p.zone}
    if len(zones) > 1:
        raise DataError(
            f"{folder}: images span UTM zones {', '.join(sorted(zones))}; distances across zones "
            "are meaningless, split the data set by zone"
        )
    return ImageFiles(folder, files, camera=part, utm=utm, latlon=latlon)


def open_source(path: Path, config: Config) -> ImageFiles:
    return _open_part(path, config.part)


def open_dataset(path: Path, config: Config) -> EvalDataset:
    database = _open_part(path, "database")
    queries = _open_part(path, "queries")
    positives = radius_neighbours(database.utm, queries.utm, config.radius_m)
    return EvalDataset(
        name=path.name,
        database=database,
        queries=queries,
        positive_lists=positives,
        rule=f"database images within {config.radius_m:g} m (UTM) of the query",
    )


def radius_neighbours(db_xy: np.ndarray, query_xy: np.ndarray, radius: float) -> list[np.ndarray]:
    """Sorted indices of the database points within ``radius`` of each query point (faiss range search).

    UTM northings are ~4e6 m, where float32 (faiss's type) has a step of 0.25-0.5 m; subtracting a
    common origin first keeps the comparison with the radius exact to millimetres.
    """
    origin = db_xy.mean(axis=0)
    index = faiss.IndexFlatL2(2)
    index.add(np.ascontiguousarray(db_xy - origin, dtype=np.float32))
    lims, _, ids = index.range_search(np.ascontiguousarray(query_xy - origin, dtype=np.float32), radius**2)
    return [np.sort(ids[lims[q] : lims[q + 1]]).astype(np.int64) for q in range(len(query_xy))]
