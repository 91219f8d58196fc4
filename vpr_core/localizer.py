"""The localization pipeline shared by the ROS node, `vpr replay` and the demo.

One object turns batches of camera frames into results: encode, two-stage search against the
prebuilt map, accept/reject, and in slam mode keyframe selection, the incremental map and loop
closure. The node only converts messages and publishes; replay only reads bags and writes files;
both call `Localizer.process`, so their results are the same by construction.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_core.acceptance import AcceptanceConfig, margin_of
from vpr_core.data.frame import Frame
from vpr_core.engine import Encoder, EncoderConfig, create_encoder
from vpr_core.engine.local_engines import create_local_encoder
from vpr_core import poses
from vpr_core.choices import MODES
from vpr_core.keyframes import KeyframeConfig, KeyframeSelector
from vpr_core.frame_result import FrameResult, Match
from vpr_core.localization_pose import PoseConfig, estimate_pose
from vpr_core.loop import Keyframe, LoopConfig, LoopDetector, image_contrast
from vpr_core.mapdb import MapDB, MapError, PlaceRecord
from vpr_core.mapdb.manifest import MANIFEST
from vpr_core.mapstore import MapUnavailable, PlaceMap, is_milvus_uri, open_map, open_searcher
from vpr_core.local_features import LocalFeatures
from vpr_core.model.local_branch import LocalEncoder
from vpr_core.options import refusal_line
from vpr_core.search import SearchConfig, TwoStageSearcher
from vpr_core.search.local_rerank import LocalRerankConfig
from vpr_core.sequence_filter import SequenceFilter, SequenceFilterConfig, compile_kernels, place_spacing
from vpr_core.slam_map_paths import aside_name, memory_map_dir


@dataclass
class LocalizerConfig:
    """Settings of the whole pipeline; the accept rule of one frame's matches is ``localization``."""

    mode: str = "localization"
    map_path: str = ""
    slam_map_path: str = ""
    # A slam map found at slam_map_path is continued (a new session appending after its keyframes)
    # unless this asks for an empty one; the old map is then renamed aside, never overwritten.
    slam_fresh_start: bool = False
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    localization: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    # slam keyframes: defaults that suit a camera at 10-30 Hz
    keyframe: KeyframeConfig = field(default_factory=lambda: KeyframeConfig(0.5, 0.0, 0.98))
    loop: LoopConfig = field(default_factory=LoopConfig)
    allow_batch_dependent: bool = False
    # FoL++ third stage: a local branch checkpoint directory ("" = two-stage search only). The map
    # must hold this branch's patches (`vpr add-local`).
    local_branch: str = ""
    local_rerank: LocalRerankConfig = field(default_factory=LocalRerankConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    # Pose of the camera in the robot's base frame (x y z qx qy qz qw): odometry gives the base, the
    # map and the keyframes keep camera poses. The identity takes the camera as the base.
    base_to_camera: tuple[float, ...] = tuple(poses.IDENTITY)
    # Frame of the slam keyframes' poses when the odometry does not name one.
    slam_frame_id: str = "odom"
    # Causal sequence filter over the prebuilt map's places, one per camera (vpr_core.sequence_filter).
    filter: SequenceFilterConfig = field(default_factory=SequenceFilterConfig)

    def __post_init__(self) -> None:
        self.base_to_camera = tuple(poses.as_pose(self.base_to_camera, "base_to_camera"))
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode != "slam" and not self.map_path:
            raise ValueError(f"mode {self.mode!r} needs map_path: a map built with `vpr build-map`")
        if is_milvus_uri(self.map_path) and (self.local_branch or self.filter.enabled):
            raise ValueError(f"map {self.map_path} is a Milvus collection, which keeps neither local features nor "
                             "route-ordered ids; for local_branch or the sequence filter take a local copy "
                             "(`vpr map pull`) and give its directory")
        if self.local_branch and self.mode == "slam":
            raise ValueError("local_branch re-ranks matches in the prebuilt map, which mode 'slam' does not use; "
                             "set mode 'localization' or 'both', or leave local_branch empty")



class Localizer:
    def __init__(self, config: LocalizerConfig, encoder: Encoder | None = None) -> None:
        self.config = config
        if encoder is None:
            encoder = (create_local_encoder(config.encoder, config.local_branch) if config.local_branch
                       else create_encoder(config.encoder))
        elif config.local_branch and not isinstance(encoder, LocalEncoder):
            raise ValueError("local_branch is set but the given encoder has no local branch; pass a "
                             "LocalEncoder (vpr_core.engine.local_engines.create_local_encoder)")
        self.encoder = encoder
        self.local = config.local_branch != ""
        if self.encoder.batch_dependent and not config.allow_batch_dependent:
            raise ValueError(
                f"model {self.encoder.model_config.preset!r} makes each descriptor depend on the other "
                "images of its batch (InteractHead), so a frame's result would depend on which frames "
                "arrive with it; use a per-frame model, or allow it explicitly (allow_batch_dependent)")
        self.map: PlaceMap | None = None
        self.searcher: TwoStageSearcher | None = None
        # Why the prebuilt map could not be searched, while its database is unreachable ("" when it is).
        self.map_unavailable = ""
        if config.mode != "slam":
            self.map = open_map(config.map_path, expected_fingerprint=self.encoder.fingerprint)
            self.searcher = open_searcher(self.map, config.search, config.local_rerank)
            if self.local:
                self._check_local_features()
        self.slam_map: MapDB | None = None
        self.loop_detector: LoopDetector | None = None
        self.keyframes = KeyframeSelector(config.keyframe)
        self.session_id = ""
        # Why the last slam keyframe could not be stored ("" once one is stored again), and how many
        # were lost: the frames keep being localized, the node reports it as an ERROR.
        self.slam_write_error = ""
        self.slam_write_failures = 0
        self._slam_dir: Path | None = None
        self._extrinsics: dict[str, np.ndarray] = {}
        self._keyframe_frames: dict[int, str] = {}  # camera frame of each keyframe id of this session
        self._filters: dict[str, SequenceFilter] = {}  # per camera: each camera sees its own route
        self._filter_positions: dict[str, np.ndarray] = {}  # per camera: odometry position at its last frame
        self._place_spacing_m: float | None = None
        if config.filter.enabled and self.map is not None:
            self._place_spacing_m = place_spacing(self.map)
            compile_kernels()
        if config.mode != "localization":
            self._begin_session(fresh=config.slam_fresh_start)

    @property
    def map_size(self) -> int:
        return self.map.size if self.map is not None else 0

    @property
    def map_frame(self) -> str:
        """Frame of the prebuilt map's poses, or of the slam keyframes' in slam mode."""
        if self.map is not None:
            return self.map.frame_id
        return self.slam_map.frame_id if self.slam_map is not None else self.config.slam_frame_id

    @property
    def keyframe_count(self) -> int:
        return self.slam_map.size if self.slam_map is not None else 0

    def reset(self) -> None:
        """Starts a new slam session on an empty slam map (the node's ~/reset): the map so far is
        renamed to `<path>.<time>`, never overwritten, and the prebuilt map is read-only and stays."""
        self._begin_session(fresh=True)

    def _begin_session(self, fresh: bool) -> None:
        """A new slam session: new session id, keyframe selection and loop detection start over.

        Without ``fresh``, a slam map at the path is continued: its keyframes stay in the map and the
        new ones get the ids after them, so (session id, keyframe id) never names two keyframes. The
        loop detector searches this session's keyframes only (it needs each keyframe's stamp, path
        length and, for geometric verification, image, which the map does not keep). With ``fresh``,
        or when the path holds no map, whatever is there is renamed to `<path>.<time>` and the slam
        map is created at the first keyframe, in the frame of its odometry.
        """
        self.session_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self.loop_detector = LoopDetector(self.config.loop)
        self.keyframes.reset()
        self._keyframe_frames = {}
        self._filters = {}
        self.slam_write_error = ""
        if self.slam_map is not None:
            self.slam_map.close()
        self.slam_map = None
        if self.config.mode == "localization":
            return
        path = self._slam_path()
        if not path.exists():
            return
        if fresh or not (path / MANIFEST).is_file():
            path.rename(aside_name(path))
            return
        try:
            self.slam_map = MapDB.load(path, expected_fingerprint=self.encoder.fingerprint, verify=True)
        except MapError as exc:
            raise MapError(f"the slam map cannot be continued: {refusal_line(exc)}; start a fresh slam map instead "
                           "(slam.fresh_start: true renames this one aside) or choose another map.slam_path") from exc

    def _slam_path(self) -> Path:
        if self._slam_dir is None:
            self._slam_dir = (Path(self.config.slam_map_path).expanduser() if self.config.slam_map_path
                              else memory_map_dir())
        return self._slam_dir

    def _open_slam_map(self, frame: Frame) -> MapDB:
        if self.slam_map is None:
            self.slam_map = MapDB.create(
                self._slam_path(), fingerprint=self.encoder.fingerprint,
                encoder_config=self.encoder.model_config.to_dict(), bits=self.encoder.bits, dim=self.encoder.dim,
                frame_id=frame.pose_frame or self.config.slam_frame_id)
        return self.slam_map

    def save_slam_map(self) -> tuple[Path, int]:
        """Makes the slam map ready to be loaded as a prebuilt map and proves that it loads.

        Every keyframe is already committed when it is added; this stores the stage-1 index (so a
        large map starts without retraining it) and reads the map back with full verification.
        """
        if self.config.mode == "localization":
            raise ValueError("mode is localization: the prebuilt map is read-only and there is no slam map")
        if not self.config.slam_map_path:
            raise ValueError("map.slam_path is empty: the slam keyframes are kept in a temporary directory "
                             "that is removed at exit; set map.slam_path to keep them")
        if self.slam_map is None or self.slam_map.size == 0:
            raise ValueError(f"no keyframe yet in session {self.session_id}: nothing to save")
        TwoStageSearcher.from_map(self.slam_map, self.config.search).save_index(self.slam_map)
        loaded = MapDB.load(self.slam_map.path, expected_fingerprint=self.encoder.fingerprint, verify=True)
        count = loaded.size
        loaded.close()
        return self.slam_map.path, count

    def set_extrinsic(self, camera: str, base_to_camera: np.ndarray) -> None:
        """The base-to-camera pose of one camera (e.g. looked up from tf), instead of the configured one."""
        self._extrinsics[camera] = poses.as_pose(base_to_camera, f"base_to_camera of {camera}")

    def extrinsic(self, camera: str) -> np.ndarray:
        return self._extrinsics.get(camera, np.asarray(self.config.base_to_camera))

    def reset_filters(self) -> None:
        """Every camera's sequence filter starts over from a uniform belief at its next frame."""
        self._filters = {}
        self._filter_positions = {}

    def update_thresholds(self, *, localization: AcceptanceConfig, loop_min_score: float,
                          loop_min_departure: float, loop_min_contrast: float, keyframe: KeyframeConfig,
                          pose: PoseConfig, filter_min_probability: float | None = None) -> None:
        """Thresholds changed at run time take effect on the next frame; each config re-validates
        itself (dataclass checks), so a bad value raises ValueError and changes nothing. The filters
        keep their belief: only the accept threshold on it changes."""
        loop = replace(self.config.loop, min_score=loop_min_score, min_departure=loop_min_departure,
                       min_contrast=loop_min_contrast)
        sequence = self.config.filter if filter_min_probability is None else replace(
            self.config.filter, min_probability=filter_min_probability)
        self.config = replace(self.config, localization=localization, loop=loop, keyframe=keyframe, pose=pose,
                              filter=sequence)
        for f in self._filters.values():
            f.config = sequence
        self.keyframes.config = keyframe
        if self.loop_detector is not None:
            self.loop_detector.config = loop

    def warm_up(self) -> None:
        """Encodes one blank frame, so that the first camera frame does not pay for the backend's
        lazy start-up (memory planning, kernel selection; hundreds of ms with torch) and make the
        node drop the frames that arrive meanwhile."""
        h, w = self.encoder.input_hw
        blank = [np.zeros((h, w, 3), dtype=np.uint8)]
        if self.local:
            self.encoder.encode_local(blank)
        else:
            self.encoder.encode(blank)

    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        """Encodes the frames as one batch and localizes each of them."""
        if not frames:
            return []
        start = time.perf_counter()
        images = [f.rgb for f in frames]
        local = None
        if self.local:
            codes, desc, local = self.encoder.encode_local(images)
        else:
            codes, desc = self.encoder.encode(images)
        encode_ms = (time.perf_counter() - start) * 1e3 / len(frames)
        if not np.isfinite(desc).all():
            raise ValueError("the encoder produced NaN or infinite descriptors; the model or its "
                             "weights are broken")
        results = [FrameResult(frame=f, matches=[], accepted=False, encode_ms=encode_ms,
                               contrast=image_contrast(f.rgb)) for f in frames]
        if self.searcher is not None:
            start = time.perf_counter()
            try:
                self._localize(results, codes, desc, local)
                self.map_unavailable = ""
            except MapUnavailable as exc:  # the frames stay unlocalized; the next frame tries again
                self.map_unavailable = str(exc)
                for r in results:
                    r.matches, r.accepted, r.pose, r.margin = [], False, None, None
            search_ms = (time.perf_counter() - start) * 1e3 / len(frames)
            for r in results:
                r.search_ms = search_ms
        if self.config.mode != "localization":
            for i, r in enumerate(results):
                self._slam_step(r, codes[i], desc[i])
        return results

    def _check_local_features(self) -> None:
        info = self.map.local_info
        branch = self.config.local_branch
        if info is None:
            raise ValueError(f"map {self.map.path} holds no local features for the local branch {branch}; add "
                             f"them with `vpr add-local --map {self.map.path} --source <the map's frames> --local "
                             f"{branch}`, or leave local_branch empty")
        if info["fingerprint"] != self.encoder.local_fingerprint:
            raise ValueError(f"map {self.map.path} holds local features of another local branch "
                             f"({info['fingerprint'][:12]}..., {branch} is {self.encoder.local_fingerprint[:12]}...); "
                             "run `vpr add-local` with this branch again")

    def _localize(self, results: list[FrameResult], codes: np.ndarray, desc: np.ndarray,
                  local: LocalFeatures | None) -> None:
        cfg = self.config.localization
        sequence = self.config.filter
        # Extra results so that the margin test can see the best match at a distinct place.
        wanted = cfg.top_k + 2 * cfg.distinct_places + 1
        k = min(max(wanted, sequence.top_k) if sequence.enabled else wanted, self.searcher.size)
        if k == 0:
            return
        # The prebuilt map's rows are adapted (whitened, ITQ codes): the queries must be too. The slam
        # map and loop closure keep the encoder's own outputs (the caller's arrays are not changed).
        if self.map.adaptation is not None:
            codes, desc = self.map.adaptation.apply(codes, desc)
        found = self.searcher.search(codes, desc, k, query_local=local)
        for row, r in enumerate(results):
            if local is not None:
                r.local_pool = int(found.pool[row])
            valid = found.ids[row] >= 0
            ids, scores, hamming = found.ids[row][valid], found.scores[row][valid], found.hamming[row][valid]
            records = self.map.records(ids[: cfg.top_k])
            r.matches = [Match(int(i), float(s), int(h), rec)
                         for i, s, h, rec in zip(ids, scores, hamming, records)]
            r.margin = margin_of(ids[:wanted], scores[:wanted], cfg) if len(ids) else None
            r.accepted = bool(len(ids) and r.contrast >= cfg.min_contrast and scores[0] >= cfg.min_score
                              and (r.margin is None or r.margin >= cfg.min_margin))
            # The pose's widening comes from the retrieval margin, or with the filter from its belief:
            # a place held with probability p counts as a margin of p * full_margin.
            certainty = r.margin
            if sequence.enabled:
                self._filter_step(r, ids, scores, codes[row], desc[row])
                certainty = self.config.pose.full_margin * r.probability
            if r.accepted and r.matches[0].record.pose is not None:
                r.pose = estimate_pose(np.asarray(r.matches[0].record.pose), certainty,
                                       self.extrinsic(r.frame.camera), self.config.pose)

    def _filter_step(self, r: FrameResult, ids: np.ndarray, scores: np.ndarray, code: np.ndarray,
                     desc: np.ndarray) -> None:
        """Feeds the frame's retrieval to its camera's filter; the filter's best place goes first
        (scored against this frame, also when it is not among the frame's own results) and the
        accept decision becomes the filter's."""
        cfg = self.config.localization
        f = self._filters.get(r.frame.camera)
        if f is None:
            f = self._filters[r.frame.camera] = SequenceFilter(self.config.filter, self.map_size,
                                                               self._place_spacing_m)
        observe = r.contrast >= cfg.min_contrast  # a blank frame carries no evidence: motion only
        travelled = None
        if r.frame.pose is not None:
            position = np.asarray(r.frame.pose[:3], dtype=np.float64)
            last = self._filter_positions.get(r.frame.camera)
            travelled = None if last is None else float(np.linalg.norm(position - last))
            self._filter_positions[r.frame.camera] = position
        estimate = f.update(ids, scores, r.frame.stamp_ns, observe=observe, travelled_m=travelled)
        r.filtered, r.raw_matches, r.probability = True, r.matches, estimate.probability
        if estimate.place_id < 0:
            r.accepted = False
            return
        best = next((m for m in r.matches if m.place_id == estimate.place_id), None)
        if best is None:
            score, hamming = self.searcher.score_places(code, desc, np.array([estimate.place_id]))
            best = Match(estimate.place_id, float(score[0]), int(hamming[0]),
                         self.map.records(np.array([estimate.place_id]))[0])
        r.matches = [best] + [m for m in r.raw_matches if m.place_id != best.place_id][: cfg.top_k - 1]
        r.accepted = bool(observe and estimate.probability >= self.config.filter.min_probability)

    def _slam_step(self, r: FrameResult, code: np.ndarray, desc: np.ndarray) -> None:
        stamp = (r.frame.stamp_ns or 0) * 1e-9
        # Odometry gives the base; keyframes keep the camera's pose, the frame the loop edges relate.
        camera_pose = (poses.compose(poses.as_pose(r.frame.pose), self.extrinsic(r.frame.camera))
                       if r.frame.pose is not None else None)
        if not self.keyframes.accept(stamp, desc, camera_pose):
            return
        record = PlaceRecord(stamp_ns=r.frame.stamp_ns or 0, source=r.frame.source, camera=r.frame.camera,
                             pose=None if camera_pose is None else tuple(float(x) for x in camera_pose))
        try:
            (kf_id,) = self._open_slam_map(r.frame).append(code[None], desc[None], [record])
        except (OSError, MapError, sqlite3.Error) as exc:
            # Disk full, read-only or vanished directory: this keyframe is lost (the map keeps its last
            # commit), the frame's localization stands, and the next keyframe tries again.
            self.slam_write_failures += 1
            self.slam_write_error = f"slam keyframe not stored in {self._slam_path()}: {refusal_line(exc)}"
            return
        self.slam_write_error = ""
        r.keyframe_id = int(kf_id)
        r.session_id = self.session_id
        self._keyframe_frames[r.keyframe_id] = r.frame.frame_id
        geometric = self.config.loop.geometric != "none"
        r.loop = self.loop_detector.update(Keyframe(
            id=int(kf_id), stamp=stamp, desc=desc, code=code, pose=camera_pose,
            image=r.frame.rgb if geometric else None, contrast=r.contrast,
            camera=r.frame.camera_model if geometric else None, depth=r.frame.depth if geometric else None))
        if r.loop is not None:
            r.loop_match_frame = self._keyframe_frames[r.loop.match_id]
