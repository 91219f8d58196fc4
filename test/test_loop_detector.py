"""Each gate of the loop detector on constructed descriptor streams, plus input handling.

A "place" is a random unit vector in 256-D (two places have cosine ~0 +- 0.06); a keyframe seen at a
place gets that vector plus a little noise (cosine ~0.99 to it). Codes are the signs of the
descriptor, as the encoder's hash head produces them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_core.loop import GATES, UP_TO_SCALE, Keyframe, LoopConfig, LoopDetector

DIMS = 256

# Every gate open, so that a test closes only the one it is about.
OPEN = dict(
    exclude_recent_frames=0,
    exclude_recent_seconds=0.0,
    exclude_recent_distance_m=0.0,
    min_score=0.5,
    ratio_max=1.0,
    min_departure=0.0,
    neighbourhood=2,
    consistency_k=1,
    consistency_n=1,
    consistency_window=0,
    geometric="none",
    min_interval_s=0.0,
)


def config(**changes) -> LoopConfig:
    return LoopConfig(**{**OPEN, **changes})


class Stream:
    """Builds keyframes: distinct places, noisy re-observations of them, stamps 1 s apart."""

    def __init__(self, seed: int = 0, noise: float = 0.1) -> None:
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.places: list[np.ndarray] = []
        self.next_id = 0

    def new_place(self) -> int:
        v = self.rng.standard_normal(DIMS)
        self.places.append(v / np.linalg.norm(v))
        return len(self.places) - 1

    def keyframe(self, place: int, noise: float | None = None, stamp: float | None = None, **extra) -> Keyframe:
        noise = self.noise if noise is None else noise
        v = self.places[place] + noise * self.rng.standard_normal(DIMS) / np.sqrt(DIMS)
        desc = (v / np.linalg.norm(v)).astype(np.float32)
        kf = Keyframe(
            id=self.next_id,
            stamp=float(self.next_id) if stamp is None else stamp,
            desc=desc,
            code=np.packbits(desc > 0),
            **extra,
        )
        self.next_id += 1
        return kf


def feed_new_places(detector: LoopDetector, stream: Stream, count: int) -> list:
    return [detector.update(stream.keyframe(stream.new_place())) for _ in range(count)]


def test_first_keyframe_has_nothing_to_match_and_every_update_leaves_a_record():
    detector = LoopDetector(config(exclude_recent_frames=3))
    stream = Stream()
    results = feed_new_places(detector, stream, 6)
    assert results == [None] * 6
    assert len(detector.records) == 6 == len(detector)
    assert [r.rejected_by for r in detector.records][:4] == ["recent"] * 4
    assert [r.searchable for r in detector.records] == [0, 0, 0, 0, 1, 2]
    assert all(r.rejected_by in GATES for r in detector.records)
    assert detector.last_record is detector.records[-1]


@pytest.mark.parametrize(
    "gate, stamp_of_revisit",
    [("exclude_recent_frames", None), ("exclude_recent_seconds", 9.5)],
)
def test_the_recent_past_never_closes_a_loop(gate, stamp_of_revisit):
    """The robot idles at place 9 (just seen): no loop; a return to place 2 is one."""
    value = {"exclude_recent_frames": 3, "exclude_recent_seconds": 5.0}[gate]
    for closed in (True, False):
        detector = LoopDetector(config(**({gate: value} if closed else {})))
        stream = Stream()
        feed_new_places(detector, stream, 10)
        idle = detector.update(stream.keyframe(9, stamp=stamp_of_revisit))
        if not closed:  # control: with the gate open the idle keyframe matches place 9
            assert idle is not None and idle.match_id == 9
            continue
        assert idle is None
        assert detector.last_record.best_id != 9
        assert detector.last_record.rejected_by == "score"
        revisit = detector.update(stream.keyframe(2, stamp=20.0))
        assert revisit is not None and revisit.match_id == 2 and revisit.query_id == 11


def test_travelled_distance_excludes_a_stopped_robot_but_not_a_closed_loop():
    """24 keyframes 1 m apart on a circle; the robot stops, then comes back to its start."""
    radius = 1.0 / (2 * np.sin(np.pi / 24))  # 1 m chords

    def pose(step: int) -> np.ndarray:
        angle = 2 * np.pi * step / 24
        return np.array([radius * np.cos(angle), radius * np.sin(angle), 0.0, 0, 0, 0, 1])

    for with_poses in (True, False):
        detector = LoopDetector(config(exclude_recent_distance_m=4.5))
        stream = Stream()
        for step in range(24):
            kf = stream.keyframe(stream.new_place(), pose=pose(step) if with_poses else None)
            assert detector.update(kf) is None
        stopped = detector.update(stream.keyframe(23, pose=pose(23) if with_poses else None))
        if not with_poses:  # without poses the distance gate cannot apply: the stop matches
            assert stopped is not None and stopped.match_id == 23
            continue
        assert stopped is None and detector.last_record.rejected_by == "score"
        assert detector.last_record.searchable == 19  # keyframes 0..18 are >= 4.5 m of path back
        back_home = detector.update(stream.keyframe(0, pose=pose(24)))
        assert back_home is not None and back_home.match_id == 0


def test_a_robot_that_never_left_closes_no_loop_without_poses():
    """It stands at place 9 for longer than the recent-past window (a black frame in between must
    not count as having left), then drives on and returns to place 2."""
    for min_departure in (0.35, 0.0):
        detector = LoopDetector(config(exclude_recent_frames=3, min_departure=min_departure, min_contrast=0.03))
        stream = Stream()
        feed_new_places(detector, stream, 10)
        dark = stream.new_place()
        standing = [detector.update(stream.keyframe(9)) for _ in range(3)]
        standing.append(detector.update(stream.keyframe(dark, contrast=0.01)))
        standing += [detector.update(stream.keyframe(9)) for _ in range(4)]
        place_9 = {9, 10, 11, 12, 14, 15, 16, 17}  # keyframe ids showing place 9
        if min_departure == 0.0:  # control: with the test off the robot's own past is a "loop"
            assert any(c is not None and c.match_id in place_9 for c in standing)
            continue
        assert standing == [None] * 8
        last = detector.last_record
        assert last.best_id in place_9 and last.best_score > 0.9 and last.rejected_by == "departure"
        assert last.departure is not None and last.departure < 0.1
        feed_new_places(detector, stream, 5)
        back = detector.update(stream.keyframe(2))
        assert back is not None and back.match_id == 2
        assert detector.last_record.departure >= 0.35


def test_aliased_place_fails_the_ratio_test():
    detector = LoopDetector(config(ratio_max=0.8, exclude_recent_frames=3))
    stream = Stream()
    for index in range(30):
        if index == 20:  # place 20 looks exactly like place 5 (two identical corridors)
            stream.places.append(stream.places[5])
        elif index == 13:  # the robot passed place 12 slowly: keyframe 13 shows it again
            stream.places.append(stream.places[12])
        else:
            stream.new_place()
        detector.update(stream.keyframe(index))

    aliased = detector.update(stream.keyframe(5))
    record = detector.last_record
    assert aliased is None and record.rejected_by == "ratio"
    assert {record.best_id, record.outside_id} == {5, 20}
    assert record.distance_ratio > 0.8

    unique = detector.update(stream.keyframe(7))
    assert unique is not None and unique.match_id == 7
    assert detector.last_record.distance_ratio < 0.3

    slow = detector.update(stream.keyframe(12))
    assert slow is not None and slow.match_id in (12, 13)
    assert detector.last_record.outside_id not in (12, 13)


def test_consistency_needs_k_of_the_last_n_queries_near_the_same_old_place():
    cfg = config(exclude_recent_frames=5, consistency_k=2, consistency_n=3, consistency_window=2)
    detector = LoopDetector(cfg)
    stream = Stream()
    feed_new_places(detector, stream, 30)
    steps = [
        (10, "consistency", 1),  # first hit of a revisit: not yet trusted
        (11, None, 2),  # the next keyframe matches next door: loop
        (25, "consistency", 1),  # a jump to another old place starts again from one
        (None, "score", None),  # a new place matches nothing
        (3, "consistency", 1),
        (None, "score", None),
        (None, "score", None),
        (4, "consistency", 1),  # the hit at place 3 is 3 queries back, outside the last n = 3
    ]
    for place, rejected_by, count in steps:
        kf = stream.keyframe(stream.new_place() if place is None else place)
        loop = detector.update(kf)
        record = detector.last_record
        assert record.rejected_by == rejected_by, (place, record)
        assert record.consistent_count == count
        assert (loop is not None) == (rejected_by is None)
        if loop is not None:
            assert loop.match_id == place and loop.consistent_count == count

    # k = 1 disables the test: the first hit of a revisit is a loop at once.
    detector = LoopDetector(dataclasses.replace(cfg, consistency_k=1))
    stream = Stream()
    feed_new_places(detector, stream, 30)
    first = detector.update(stream.keyframe(10))
    assert first is not None and first.match_id == 10 and first.consistent_count == 1


def test_nms_keeps_one_loop_per_revisited_place():
    detector = LoopDetector(config(exclude_recent_frames=3, neighbourhood=2, nms_radius=0))
    stream = Stream(noise=0.0)
    feed_new_places(detector, stream, 20)
    # The robot comes back to place 5 and lingers there; the views differ in quality (noise). The
    # third view is a new maximum among the loops emitted just before, so it goes through too.
    views = [(5, 0.2, True), (5, 0.3, False), (5, 0.1, True), (5, 0.3, False), (5, 0.3, False)]
    # Then it drives on along the old path at the old pace: every keyframe closes its own loop.
    views += [(6, 0.3, True), (7, 0.3, True), (8, 0.3, True)]
    for place, noise, emitted in views:
        loop = detector.update(stream.keyframe(place, noise=noise))
        assert (loop is not None) == emitted, (place, noise, detector.last_record)
        if loop is None:
            assert detector.last_record.rejected_by == "nms"
        else:
            assert loop.match_id == place

    # A wider radius treats the neighbouring old keyframes as the same place as well.
    detector = LoopDetector(config(exclude_recent_frames=3, neighbourhood=2, nms_radius=2))
    stream = Stream(noise=0.0)
    feed_new_places(detector, stream, 20)
    loops = [detector.update(stream.keyframe(p, noise=n)) for p, n in [(5, 0.2), (6, 0.3), (7, 0.3)]]
    assert loops[0] is not None and loops[1:] == [None, None]


def test_rate_limit_spaces_loops_in_keyframe_time():
    detector = LoopDetector(config(exclude_recent_frames=3, neighbourhood=0, min_interval_s=10.0))
    stream = Stream()
    feed_new_places(detector, stream, 20)
    emitted = [detector.update(stream.keyframe(place)) is not None for place in range(15)]
    assert emitted == [True] + [False] * 9 + [True] + [False] * 4
    assert [r.rejected_by for r in list(detector.records)[-14:-5]] == ["rate"] * 9


def load_image(data_dir: Path, frame: int) -> np.ndarray:
    path = data_dir / "rtabmap_loop" / "images" / f"{frame:04d}.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the rtabmap_loop data set belongs in VPR_DATA (see its README)")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_geometric_verification_rejects_a_lookalike_with_other_geometry(data_dir):
    """Descriptors claim two revisits; the images (real rtabmap_loop frames) confirm only one."""
    cfg = config(geometric="orb", min_inliers=30, intrinsics=(440.0, 440.0, 256.0, 192.0))
    detector = LoopDetector(cfg)
    stream = Stream()
    old = {}
    for frame in (26, 48, 0):
        old[frame] = stream.new_place()
        assert detector.update(stream.keyframe(old[frame], image=load_image(data_dir, frame))) is None

    true_loop = detector.update(stream.keyframe(old[26], image=load_image(data_dir, 66)))
    assert true_loop is not None and true_loop.match_id == 0
    assert true_loop.verified is True and true_loop.inliers >= 30
    relative = true_loop.relative  # T_match_query, up to scale: no depth in this data
    assert relative.kind == UP_TO_SCALE and relative.inliers == true_loop.inliers
    assert np.allclose(relative.rotation @ relative.rotation.T, np.eye(3), atol=1e-6)
    assert np.linalg.norm(relative.translation) == pytest.approx(1.0)

    false_loop = detector.update(stream.keyframe(old[48], image=load_image(data_dir, 64)))
    assert false_loop is None
    assert detector.last_record.best_id == 1
    assert detector.last_record.rejected_by == "geometry"
    assert detector.last_record.inliers < 30

    without = LoopDetector(dataclasses.replace(cfg, geometric="none"))
    stream = Stream()
    for _ in range(3):
        without.update(stream.keyframe(stream.new_place()))
    unverified = without.update(stream.keyframe(1))
    assert unverified is not None and unverified.verified is None and unverified.relative is None


def test_bad_keyframes_are_refused_and_change_nothing():
    detector = LoopDetector(config(exclude_recent_frames=2))
    stream = Stream()
    feed_new_places(detector, stream, 5)
    good = stream.keyframe(stream.new_place())
    bad = {
        "already added": dataclasses.replace(good, id=3),
        "time order": dataclasses.replace(good, stamp=1.0),
        "NaN": dataclasses.replace(good, desc=np.full(DIMS, np.nan, np.float32)),
        "all zeros": dataclasses.replace(good, desc=np.zeros(DIMS, np.float32)),
        "dims": dataclasses.replace(good, desc=good.desc[:128]),
        "uint8": dataclasses.replace(good, code=good.code.astype(np.int32)),
        "pose": dataclasses.replace(good, pose=np.zeros(3)),
        "not finite": dataclasses.replace(good, stamp=float("inf")),
    }
    for reason, kf in bad.items():
        with pytest.raises(ValueError, match=reason):
            detector.update(kf)
        assert len(detector) == 5 and len(detector.records) == 5
    with pytest.raises(TypeError, match="Keyframe"):
        detector.update(good.desc)

    geometric = LoopDetector(config(geometric="orb"))
    with pytest.raises(ValueError, match="no image"):
        geometric.update(good)
    with pytest.raises(ValueError, match="uint8"):
        geometric.update(dataclasses.replace(good, image=np.zeros((64, 64, 3), np.float32)))
    assert len(geometric) == 0

    # The detector still works after every refusal: the good keyframe and a revisit go through.
    assert detector.update(good) is None
    revisit = detector.update(stream.keyframe(1))
    assert revisit is not None and revisit.match_id == 1


def test_reset_forgets_everything():
    detector = LoopDetector(config(exclude_recent_frames=2))
    stream = Stream()
    feed_new_places(detector, stream, 6)
    assert detector.update(stream.keyframe(0)) is not None
    detector.reset()
    assert len(detector) == 0 and detector.last_record is None
    stream.next_id = 0  # ids may be reused after a reset
    assert detector.update(stream.keyframe(0)) is None
    assert detector.last_record.rejected_by == "recent"


@pytest.mark.parametrize(
    "field, value",
    [
        ("consistency_k", 4),
        ("ratio_max", 0.0),
        ("min_score", 1.5),
        ("geometric", "surf"),
        ("exclude_recent_frames", -1),
        ("min_interval_s", -1.0),
        ("nms_radius", -1),
        ("min_departure", -0.1),
    ],
)
def test_bad_config_is_refused_with_the_field_name(field, value):
    with pytest.raises(ValueError, match=field):
        LoopConfig(**{**OPEN, "consistency_n": 3, field: value})


def test_bad_geometry_settings_are_refused_when_geometry_is_on():
    with pytest.raises(ValueError, match="min_inliers"):
        LoopConfig(geometric="orb", min_inliers=2)
    with pytest.raises(ValueError, match="intrinsics"):
        LoopConfig(geometric="sift", intrinsics=(1.0, -1.0, 0.0, 0.0))


def test_low_contrast_keyframes_neither_query_nor_get_found():
    """A dark frame matches every other dark frame: it must not close a loop, in either role."""
    detector = LoopDetector(config(min_contrast=0.03))
    stream = Stream()
    dark, textured = stream.new_place(), stream.new_place()
    feed_new_places(detector, stream, 3)
    old_dark = stream.next_id
    assert detector.update(stream.keyframe(dark, contrast=0.012)) is None
    old_textured = stream.next_id
    assert detector.update(stream.keyframe(textured, contrast=0.2)) is None
    # A dark query is rejected before any search, although its twin is in the map.
    assert detector.update(stream.keyframe(dark, contrast=0.015)) is None
    assert detector.last_record.rejected_by == "contrast" and detector.last_record.best_id is None
    # A textured query whose best match would be the dark keyframe never gets it (only weak,
    # unrelated places are left, which the score gate rejects).
    assert detector.update(stream.keyframe(dark, contrast=0.2)) is None
    assert detector.last_record.best_id not in (None, old_dark) and detector.last_record.rejected_by == "score"
    # Unknown contrast (None) and textured keyframes still close loops.
    found = detector.update(stream.keyframe(textured))
    assert found is not None and found.match_id == old_textured
    with pytest.raises(ValueError, match="contrast must be in"):
        detector.update(stream.keyframe(textured, contrast=3.0))
    assert "contrast" == GATES[0]
    with pytest.raises(ValueError, match="min_contrast"):
        LoopConfig(min_contrast=-0.1)


def test_image_contrast_separates_tunnel_frames_from_textured_ones(data_dir):
    from vpr_core.data.images import read_rgb
    from vpr_core.loop import image_contrast

    nordland = data_dir / "nordland_tiny" / "winter"
    tunnel = image_contrast(read_rgb(nordland / "images-25020.png"))   # a black tunnel frame (dev section)
    textured = [image_contrast(read_rgb(data_dir / "rtabmap_loop" / "images" / f"{i:04d}.jpg")) for i in (0, 40, 83)]
    assert tunnel < 0.03 < min(textured)
    assert image_contrast(np.full((8, 8, 3), 77, np.uint8)) == 0.0
    with pytest.raises(ValueError, match="RGB uint8"):
        image_contrast(np.zeros((8, 8), np.float32))
