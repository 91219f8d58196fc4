"""`vpr build-map`: a map database from a frame source (image folder, benchmark half, bag).

Frames are encoded in batches; keyframes are chosen by the same selector as the node's slam mode;
places are appended to the map in chunks, each append committed atomically, so a build that is
stopped resumes where it stopped (frames come in capture order; the last place's source name marks
the spot).

Map adaptation (vpr_core.adapt): frames are stored as the encoder gives them while the build runs;
after the last frame, a map without an adaptation gets one fitted on its own descriptors and is
rewritten adapted as a whole (the old or the new map, never a mix). A resumed adapted map gives its
new places the stored adaptation; it is not refitted. A Milvus collection stores no adaptation.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from vpr_core import poses
from vpr_core.adapt import AdaptConfig, fit_adaptation
from vpr_core.cli import run_module
from vpr_core.cli_options import (add_adapt_arguments, add_encoder_arguments, add_keyframe_arguments, adapt_config,
                                  encoder_config, keyframe_config)
from vpr_core.data import DataError, Frame, FrameSource, open_source
from vpr_core.data.images import ImageFiles
from vpr_core.engine import Encoder, create_encoder
from vpr_core.fsio import atomic_write_json
from vpr_core.keyframes import KeyframeConfig, KeyframeSelector
from vpr_core.mapdb import MapDB, PlaceRecord
from vpr_core.mapstore import PlaceMap, create_map, is_milvus_uri, last_place, open_searcher
from vpr_core.options import COUNT, argument
from vpr_core.search import SearchConfig
from vpr_core.search.config import INDEX_CHOICES

log = logging.getLogger(__name__)
ON_ERROR = ("skip", "stop")
SKIP_REPORT = "skipped.json"  # written into a map directory beside the map's own files


@dataclass
class BuildConfig:
    keyframe: KeyframeConfig = field(default_factory=KeyframeConfig)
    batch_size: int = 16
    commit_every: int = 256       # places per committed append
    frame_id: str = "map"
    # Pose of the camera in the body frame of the source's poses (x y z qx qy qz qw): places store the
    # camera's pose, the node turns it back into the base's. The identity takes the camera as the body.
    base_to_camera: tuple[float, ...] = tuple(poses.IDENTITY)
    resume: bool = True
    search: SearchConfig = field(default_factory=SearchConfig)  # the stage-1 index stored with the map
    # "skip": an unreadable or refused input (damaged file, bad message) is left out, warned about and
    # listed in the skip report; "stop": the build stops at it (DataError naming the input).
    on_error: str = "skip"
    # Fitted on the map after its last frame; None: AdaptConfig()'s for a map directory, none for a
    # Milvus collection (which cannot store one).
    adapt: AdaptConfig | None = None

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")


@dataclass(frozen=True)
class SkippedInput:
    """One input a build left out, and why (the reader's one-line DataError)."""

    input: str
    reason: str


def _record(frame: Frame, base_to_camera: np.ndarray) -> PlaceRecord:
    pose = None if frame.pose is None else poses.compose(poses.as_pose(frame.pose), base_to_camera)
    return PlaceRecord(stamp_ns=frame.stamp_ns or 0, source=frame.name, camera=frame.camera,
                       pose=None if pose is None else tuple(float(v) for v in pose), latlon=frame.latlon)


def _open_or_create(out: str | Path, encoder: Encoder, config: BuildConfig) -> PlaceMap:
    if is_milvus_uri(str(out)):  # a collection is created by its first writer and joined by the others
        place_map = create_map(str(out), fingerprint=encoder.fingerprint, encoder_config=encoder.model_config.to_dict(),
                               bits=encoder.bits, dim=encoder.dim, frame_id=config.frame_id)
        if place_map.writer_count and not config.resume:
            raise FileExistsError(f"{out} already holds {place_map.writer_count} places of this writer; resume the "
                                  "build (drop --no-resume) or give another writer number (?writer=N)")
        return place_map
    out = Path(out)
    if (out / "manifest.json").is_file():
        if not config.resume:
            raise FileExistsError(f"{out} already holds a map; remove it or resume the build (drop --no-resume)")
        return MapDB.load(out, expected_fingerprint=encoder.fingerprint)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a map database; choose an empty or new directory")
    return MapDB.create(out, fingerprint=encoder.fingerprint, encoder_config=encoder.model_config.to_dict(),
                        bits=encoder.bits, dim=encoder.dim, frame_id=config.frame_id)


def _adapt_config(out: str | Path, config: BuildConfig) -> AdaptConfig:
    if not is_milvus_uri(str(out)):
        return config.adapt or AdaptConfig()
    if config.adapt is not None and config.adapt.enabled:
        raise ValueError(f"{out} is a Milvus collection, which cannot store a map adaptation "
                         f"({config.adapt.method}); use --adapt none, or build a map directory")
    if config.adapt is None:
        log.info("map %s: a Milvus collection stores raw encoder outputs (no map adaptation)", out)
    return AdaptConfig(method="none")


def _append(mapdb: PlaceMap, pending: tuple[list, list, list]) -> None:
    """Appends the pending places, adapted like the map's stored rows (if it has an adaptation)."""
    codes, desc = np.stack(pending[0]), np.stack(pending[1])
    if mapdb.adaptation is not None:
        codes, desc = mapdb.adaptation.apply(codes, desc)
    mapdb.append(codes, desc, pending[2])


def _adapt(out: str | Path, mapdb: PlaceMap, config: AdaptConfig, appended: int) -> PlaceMap:
    """The map adapted as ``config`` asks, once: a map adapted before keeps its adaptation."""
    stored = mapdb.adaptation
    if stored is not None:
        if appended:
            log.info("map %s: %d new places adapted with the map's stored %s adaptation (fitted on %d places; "
                     "not refitted)", out, appended, stored.method, stored.places)
        if stored.method != config.method:
            log.warning("map %s keeps its %s adaptation (asked: %s); rebuild the map to change it",
                        out, stored.method, config.method)
        return mapdb
    if not config.enabled or not isinstance(mapdb, MapDB):
        return mapdb
    if mapdb.size < 2:
        log.info("map %s: %d place(s), too few to fit a map adaptation; stored as the encoder gives them",
                 out, mapdb.size)
        return mapdb
    adaptation = fit_adaptation(mapdb.desc, mapdb.bits, config, mapdb.fingerprint)
    mapdb = mapdb.adapt(adaptation)
    log.info("map %s: %s adaptation fitted on %d places (%d components, %d code bits) and applied",
             out, adaptation.method, adaptation.places, adaptation.components, adaptation.bits_used)
    return mapdb


def _time_s(frame: Frame) -> float:
    """Capture time; frames without stamps (image folders) count one second per frame."""
    return frame.stamp_ns * 1e-9 if frame.stamp_ns is not None else float(frame.index)


def _remaining(frames: Iterator[Frame], mapdb: PlaceMap, selector: KeyframeSelector,
               encoder: Encoder) -> Iterator[Frame]:
    """Skips the frames an earlier run already went through, and restores the keyframe selector.

    The last place is found by its frame name and then re-encoded: two folders can share file names,
    and only the image itself tells whether this is the source the map was built from.
    """
    resume_after = last_place(mapdb)
    if resume_after is None:
        yield from frames
        return
    last, stored = resume_after[0], np.asarray(resume_after[1], dtype=np.float32)
    for frame in frames:
        if frame.name == last.source:
            codes, desc = encoder.encode([frame.rgb])
            # The selector saw the encoder's descriptor; the map stores it adapted, if it has an adaptation.
            same = desc if mapdb.adaptation is None else mapdb.adaptation.apply(codes, desc)[1]
            if float(same[0] @ stored) < 0.99:  # float16 storage, not identity
                break
            selector.accept(_time_s(frame), desc[0], frame.pose)
            yield from frames
            return
    raise ValueError(f"cannot resume: the map's last place {last.source!r} is not among the source's frames "
                     "(or is another image of that name); the map was built from another source")


def _readable_frames(source: FrameSource, on_error: str, skipped: list[SkippedInput]) -> Iterator[Frame]:
    """The source's frames; with ``on_error="skip"`` the unreadable ones are recorded and left out.

    An error raised inside a generator ends it, so skipping needs the source's help: an image list
    (``ImageFiles``) is read by index, one file at a time; a source that skips by itself (a bag: its
    messages are read in one pass) exposes ``config.skip_bad`` and its ``skipped`` problems. Any other
    source is iterated as it is and stops at its first error.
    """
    if isinstance(source, ImageFiles):
        for index in range(len(source)):
            try:
                yield source[index]
            except DataError as err:
                if on_error == "stop":
                    raise
                skipped.append(SkippedInput(source.names[index], str(err)))
                log.warning("skipped %s", err)
    elif hasattr(source, "skipped") and hasattr(getattr(source, "config", None), "skip_bad"):
        source.config.skip_bad = on_error == "skip"
        yield from source
        for problem in source.skipped:
            skipped.append(SkippedInput(source.name, problem))
            log.warning("skipped %s", problem)
    else:
        yield from source


def _report_skipped(out: str | Path, source: FrameSource, skipped: list[SkippedInput]) -> None:
    """Print every skipped input and, for a map directory, save the list as ``skipped.json`` in it.

    The report is not part of the map (the manifest does not list it and loading never reads it): it
    tells the user which inputs to repair. A resumed build reads the whole source again, so its report
    replaces the last one; a build that skipped nothing removes a stale one. A Milvus collection has no
    directory, so there the printed report is all.
    """
    path = None if is_milvus_uri(str(out)) else Path(out) / SKIP_REPORT
    if not skipped:
        if path is not None:
            path.unlink(missing_ok=True)
        return
    if path is not None:
        report = {"source": source.name, "skipped": [dataclasses.asdict(s) for s in skipped]}
        atomic_write_json(path, report, indent=1)
    saved = f" (saved in {path})" if path is not None else ""
    lines = "\n".join(f"  {s.input}: {s.reason}" for s in skipped)
    log.warning("map %s: %d input(s) skipped%s:\n%s", out, len(skipped), saved, lines)


def build_map(source: FrameSource, out: str | Path, encoder: Encoder, config: BuildConfig = BuildConfig()) -> PlaceMap:
    """A map directory, or (with a milvus:// or milvus-lite: URI) a writer's places in a collection."""
    adapt = _adapt_config(out, config)
    mapdb = _open_or_create(out, encoder, config)
    selector = KeyframeSelector(config.keyframe)
    skipped: list[SkippedInput] = []
    frames = _remaining(_readable_frames(source, config.on_error, skipped), mapdb, selector, encoder)
    pending: tuple[list, list, list] = ([], [], [])
    extrinsic = poses.as_pose(config.base_to_camera, "base_to_camera")
    done_before = mapdb.size
    with tqdm(total=len(source), desc=f"build-map {str(out).rstrip('/').rsplit('/', 1)[-1]}", unit="img", disable=None) as bar:
        while batch := list(islice(frames, config.batch_size)):
            codes, desc = encoder.encode([f.rgb for f in batch])
            for frame, code, d in zip(batch, codes, desc):
                if selector.accept(_time_s(frame), d, frame.pose):
                    pending[0].append(code)
                    pending[1].append(d)
                    pending[2].append(_record(frame, extrinsic))
            if len(pending[2]) >= config.commit_every:
                _append(mapdb, pending)
                pending = ([], [], [])
            bar.update(len(batch))
            bar.set_postfix(places=mapdb.size + len(pending[2]))
    if pending[2]:
        _append(mapdb, pending)
    mapdb = _adapt(out, mapdb, adapt, mapdb.size - done_before)
    # Training an IVF/HNSW index over a large map takes a minute; doing it here once means the node
    # and replay start on the stored index instead of training it at every start.
    if open_searcher(mapdb, config.search).save_index(mapdb):
        log.info("map %s: stored its %s index", out, mapdb.index_info["kind"])
    log.info("map %s: %d places (%d new)", out, mapdb.size, mapdb.size - done_before)
    _report_skipped(out, source, skipped)
    return mapdb


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help="frames: [READER:]PATH[?options], e.g. seasons:../shared/data/nordland_tiny?split=dev"
                             "&part=database, or a bag: rosbag:run1.mcap?topics=/cam/image_raw")
    parser.add_argument("--out", required=True,
                        help="map directory to write (or resume), or a Milvus collection: milvus://HOST:PORT/"
                             "COLLECTION or milvus-lite:FILE.db/COLLECTION, ?writer=N for one of several writers")
    add_encoder_arguments(parser)
    add_keyframe_arguments(parser)
    parser.add_argument("--batch-size", type=argument(int, COUNT), default=16, help="frames encoded at once (>= 1)")
    parser.add_argument("--frame-id", default="map", help="frame of the places' poses")
    parser.add_argument("--base-to-camera", type=float, nargs=7, default=tuple(poses.IDENTITY),
                        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
                        help="pose of the camera in the body frame of the source's poses (default: identity)")
    parser.add_argument("--index", default="auto", choices=INDEX_CHOICES,
                        help="stage-1 binary index stored with the map (auto: flat up to 50k places, else ivf)")
    parser.add_argument("--no-resume", action="store_true", help="refuse to continue an existing map")
    parser.add_argument("--on-error", default="skip", choices=ON_ERROR,
                        help="an unreadable or refused image (damaged, truncated, too small or too large): skip it "
                             f"with a warning and list it in {SKIP_REPORT} in the map directory (default), or stop "
                             "the build there (exit 2)")
    add_adapt_arguments(parser, None, f"default: {AdaptConfig.method}; a Milvus collection stores none")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A refusal (ValueError, OSError) ends in run_module as one line and exit code 2.
    config = BuildConfig(keyframe=keyframe_config(args),
                         batch_size=args.batch_size, frame_id=args.frame_id, resume=not args.no_resume,
                         base_to_camera=tuple(args.base_to_camera),
                         search=SearchConfig(index=args.index), on_error=args.on_error,
                         adapt=adapt_config(args) if args.adapt else
                         None if is_milvus_uri(args.out) else adapt_config(args, AdaptConfig.method))
    mapdb = build_map(open_source(args.source), args.out, create_encoder(encoder_config(args)), config)
    adapted = "" if mapdb.adaptation is None else f", adapted ({mapdb.adaptation.method})"
    print(f"{args.out}: {mapdb.size} places, {mapdb.bits}-bit codes, {mapdb.dim}-D descriptors{adapted}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr build-map"))
