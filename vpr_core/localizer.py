"""The localization pipeline shared by the ROS node, `vpr replay` and the demo.

One object turns batches of camera frames into results: encode, two-stage search against the
prebuilt map, accept/reject, and in slam mode keyframe selection, the incremental map and loop
closure. The node only converts messages and publishes; replay only reads bags and writes files;
both call `Localizer.process`, so their results are the same by construction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_core.data.frame import Frame
from vpr_core.engine import Encoder, EncoderConfig, create_encoder
from vpr_core.engine.local_engines import create_local_encoder
from vpr_core.keyframes import KeyframeConfig, KeyframeSelector
from vpr_core.loop import Keyframe, LoopCandidate, LoopConfig, LoopDetector, image_contrast
from vpr_core.mapdb import MapDB, PlaceRecord
from vpr_core.mapdb.local_features import LocalFeatures
from vpr_core.model.local_branch import LocalEncoder
from vpr_core.search import SearchConfig, TwoStageSearcher
from vpr_core.search.local_rerank import LocalRerankConfig

MODES = ("localization", "slam", "both")


@dataclass
class LocalizationConfig:
    top_k: int = 5
    min_score: float = 0.5
    # The best match must beat the best match at a *distinct* place (id further than
    # `distinct_places` from it) by this much: two places that look alike are not a localization.
    min_margin: float = 0.02
    distinct_places: int = 5
    # A frame showing next to nothing (RMS contrast below this, vpr_core.loop.contrast) is never an
    # accepted localization: it matches every other dark or blank frame with a high score.
    min_contrast: float = 0.03


@dataclass
class LocalizerConfig:
    mode: str = "localization"
    map_path: str = ""
    slam_map_path: str = ""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    localization: LocalizationConfig = field(default_factory=LocalizationConfig)
    # slam keyframes: defaults that suit a camera at 10-30 Hz
    keyframe: KeyframeConfig = field(default_factory=lambda: KeyframeConfig(0.5, 0.0, 0.98))
    loop: LoopConfig = field(default_factory=LoopConfig)
    allow_batch_dependent: bool = False
    # FoL++ third stage: a local branch checkpoint directory ("" = two-stage search only). The map
    # must hold this branch's patches (`vpr add-local`).
    local_branch: str = ""
    local_rerank: LocalRerankConfig = field(default_factory=LocalRerankConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode != "slam" and not self.map_path:
            raise ValueError(f"mode {self.mode!r} needs map_path: a map built with `vpr build-map`")
        if self.local_branch and self.mode == "slam":
            raise ValueError("local_branch re-ranks matches in the prebuilt map, which mode 'slam' does not use; "
                             "set mode 'localization' or 'both', or leave local_branch empty")


@dataclass
class Match:
    place_id: int
    score: float
    hamming: int
    record: PlaceRecord


@dataclass
class FrameResult:
    """What the pipeline concluded about one frame."""

    frame: Frame
    matches: list[Match]
    accepted: bool
    keyframe_id: int | None = None
    loop: LoopCandidate | None = None
    encode_ms: float = 0.0
    search_ms: float = 0.0
    local_pool: int = 0  # candidates the local stage re-ranked (0: stage off or skipped)
    contrast: float | None = None  # RMS contrast of the frame (vpr_core.loop.contrast)


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
        self.map: MapDB | None = None
        self.searcher: TwoStageSearcher | None = None
        if config.mode != "slam":
            self.map = MapDB.load(config.map_path, expected_fingerprint=self.encoder.fingerprint)
            self.searcher = TwoStageSearcher.from_map(self.map, config.search, config.local_rerank)
            if self.local:
                self._check_local_features()
        self.slam_map: MapDB | None = None
        self.loop_detector: LoopDetector | None = None
        self.keyframes = KeyframeSelector(config.keyframe)
        if config.mode != "localization":
            self.reset()

    @property
    def map_size(self) -> int:
        return self.map.size if self.map is not None else 0

    @property
    def map_frame(self) -> str:
        return self.map.frame_id if self.map is not None else self.slam_map.frame_id

    @property
    def keyframe_count(self) -> int:
        return self.slam_map.size if self.slam_map is not None else 0

    def reset(self) -> None:
        """Starts the slam keyframes afresh (the prebuilt map is read-only and stays).

        A slam map already on disk is never overwritten: it is renamed to `<path>.<time>` first.
        """
        self.loop_detector = LoopDetector(self.config.loop)
        self.keyframes.reset()
        if self.config.mode == "localization":
            return
        path = Path(self.config.slam_map_path) if self.config.slam_map_path else _memory_map_dir()
        if path.exists():
            path.rename(path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"))
        self.slam_map = MapDB.create(
            path, fingerprint=self.encoder.fingerprint, encoder_config=self.encoder.model_config.to_dict(),
            bits=self.encoder.bits, dim=self.encoder.dim, frame_id="odom")

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
            self._localize(results, codes, desc, local)
            search_ms = (time.perf_counter() - start) * 1e3 / len(frames)
            for r in results:
                r.search_ms = search_ms
        if self.slam_map is not None:
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
        # Extra results so that the margin test can see the best match at a distinct place.
        k = min(cfg.top_k + 2 * cfg.distinct_places + 1, self.map_size)
        if k == 0:
            return
        found = self.searcher.search(codes, desc, k, query_local=local)
        for row, r in enumerate(results):
            if local is not None:
                r.local_pool = int(found.pool[row])
            valid = found.ids[row] >= 0
            ids, scores, hamming = found.ids[row][valid], found.scores[row][valid], found.hamming[row][valid]
            records = self.map.records(ids[: cfg.top_k])
            r.matches = [Match(int(i), float(s), int(h), rec)
                         for i, s, h, rec in zip(ids, scores, hamming, records)]
            r.accepted = bool(len(ids)) and r.contrast >= cfg.min_contrast and _accepted(ids, scores, cfg)

    def _slam_step(self, r: FrameResult, code: np.ndarray, desc: np.ndarray) -> None:
        stamp = (r.frame.stamp_ns or 0) * 1e-9
        if not self.keyframes.accept(stamp, desc, r.frame.pose):
            return
        pose = tuple(float(x) for x in r.frame.pose) if r.frame.pose is not None else None
        record = PlaceRecord(stamp_ns=r.frame.stamp_ns or 0, source=r.frame.source, camera=r.frame.camera,
                             pose=pose)
        (kf_id,) = self.slam_map.append(code[None], desc[None], [record])
        r.keyframe_id = int(kf_id)
        r.loop = self.loop_detector.update(Keyframe(
            id=int(kf_id), stamp=stamp, desc=desc, code=code, pose=r.frame.pose,
            image=r.frame.rgb if self.config.loop.geometric != "none" else None, contrast=r.contrast))


def _accepted(ids: np.ndarray, scores: np.ndarray, cfg: LocalizationConfig) -> bool:
    if scores[0] < cfg.min_score:
        return False
    distinct = np.abs(ids - ids[0]) > cfg.distinct_places
    if not distinct.any():
        return True
    return float(scores[0] - scores[distinct][0]) >= cfg.min_margin


def _memory_map_dir() -> Path:
    """Without map.slam_path the keyframes still go through MapDB (one code path), in a temporary
    directory that is removed at exit."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vpr_slam_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path / "map"
