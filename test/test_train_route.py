"""Training on a robot's own route: a real rosbag2 (mcap) written from the Nordland-tiny development
section (a summer pass, then a winter pass over the same places, an odometry topic giving 20 m per
file along the track), trained from with `vpr train`'s route data kind; the trained heads must beat
the frozen backbone with untrained heads on the held-out test section. Plus the refusals: a bag
without positions, radii in the wrong order, too few places."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_core.cli import main, run_module
from vpr_core.data.bag_writer import ImageStream, PoseStream, load_frames, stamps_at, write_bag
from vpr_core.model import build_model, load_checkpoint
from vpr_core.train.config import config_from_dict, load_train_config
from vpr_core.train.places import route_places
from vpr_core.train import report
from vpr_core.train.route import local_metres, read_route
from vpr_core.train.trainer import load_split, train

TORCH_THREADS = 2  # read by the thread fixtures of conftest.py
pytestmark = pytest.mark.usefixtures("module_torch_threads")

PLACES = 100            # the first files of the development section, one place each
METRES_PER_FILE = 20.0
LEAD_FRAMES = 3         # frames recorded before odometry starts: no position, left out
TEST_PLACES = 100       # evenly spaced over the held-out test section (all 716 take minutes here)


def _pose_rows(count: int) -> np.ndarray:
    rows = np.zeros((count, 7))
    rows[:, 0] = METRES_PER_FILE * np.arange(count)
    rows[:, 6] = 1.0
    return rows


def write_route_bag(nordland: Path, path: Path, places: int, *, odometry: bool = True) -> Path:
    """Summer pass, a minute's stop, winter pass over the same ``places`` files, 1 frame/s; the
    odometry gives each frame x = 20 m * file number; LEAD_FRAMES frames come before it starts."""
    summer, winter = (load_frames(nordland / season, places) for season in ("summer", "winter"))
    lead = load_frames(nordland / "summer", LEAD_FRAMES, start=places)
    lead_stamps = stamps_at(1.0, LEAD_FRAMES)
    summer_stamps = stamps_at(1.0, places, start_ns=int(lead_stamps[-1]) + 10 * 10**9)
    winter_stamps = stamps_at(1.0, places, start_ns=int(summer_stamps[-1]) + 60 * 10**9)
    streams = [ImageStream("/camera/image", lead + summer + winter,
                           np.concatenate([lead_stamps, summer_stamps, winter_stamps]))]
    if odometry:
        streams.append(PoseStream("/odom", np.concatenate([_pose_rows(places)] * 2),
                                  np.concatenate([summer_stamps, winter_stamps])))
    return write_bag(path, streams, storage="mcap")


def route_config(bag: Path, cache: Path, **overrides) -> dict:
    """What a user writes for this bag (see config/train/route-example.yaml): +-1 file (25 m) is the
    same place, 2 files and more (40 m) are negatives, as in the Nordland protocol."""
    values = {"preset": "lite0-mix", "seed": 0, "threads": 2, "cache_dir": str(cache),
              "data": {"kind": "route", "source": f"rosbag:{bag}", "positive_radius_m": 25.0,
                       "negative_radius_m": 35.0, "val_fraction": 0.15},
              "feature_augment": {"mirror": 0.5, "dropout": 0.3}, "sampler": "random", "places_per_batch": 16,
              "epochs": 4, "patience": 4, "lr": 1e-3, "lr_step_epochs": 4}
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def nordland(data_dir) -> Path:
    return data_dir / "nordland_tiny"


@pytest.fixture(scope="module")
def route_bag(nordland, tmp_path_factory) -> Path:
    return write_route_bag(nordland, tmp_path_factory.mktemp("route") / "bag", PLACES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def held_out_subset(nordland, tmp_path_factory) -> Path:
    """TEST_PLACES places evenly spaced over the test section, summer and winter, in a folder of their own."""
    names = sorted(p.name for p in (nordland / "summer").iterdir() if "images-28620.png" <= p.name)
    root = tmp_path_factory.mktemp("test_section") / "nordland_tiny"
    for season in ("summer", "winter"):
        (root / season).mkdir(parents=True)
        for index in np.linspace(0, len(names) - 1, TEST_PLACES).round().astype(int):
            shutil.copy(nordland / season / names[index], root / season / names[index])
    return root


def test_route_positions_places_and_left_out_frames(route_bag, cache, caplog):
    with caplog.at_level(logging.INFO, logger="vpr_core.train.route"):
        route = read_route(f"rosbag:{route_bag}", "auto", cache)
    assert route.position == "pose" and route.frames == 2 * PLACES + LEAD_FRAMES
    assert route.left_out == LEAD_FRAMES and f"{LEAD_FRAMES} of {route.frames} frames left out" in caplog.text
    assert np.allclose(route.positions[:PLACES, 0], METRES_PER_FILE * np.arange(PLACES))
    places = route_places(route.positions, route.names, positive_radius=25.0, negative_radius=35.0)
    assert places.num_places == PLACES                          # one place per file, both passes in it
    assert np.array_equal(places.image_place, np.tile(np.arange(PLACES), 2))
    assert read_route(f"rosbag:{route_bag}", "auto", cache).names == route.names   # from the position cache


def test_route_places_keep_every_place_within_the_positive_radius():
    rng = np.random.default_rng(0)
    track = np.stack([np.linspace(0, 500, 400), np.zeros(400)], axis=1)
    positions = np.concatenate([track, track + rng.normal(0, 2.0, track.shape)])   # a second, noisy pass
    places = route_places(positions, [str(i) for i in range(800)], positive_radius=10.0, negative_radius=25.0)
    for rows in places.images_of():
        spread = np.linalg.norm(positions[rows][:, None] - positions[rows][None], axis=-1)
        assert spread.max() <= 10.0
    first_pass = places.image_place[:400]
    assert np.all(np.diff(first_pass) >= 0)                     # numbered as the route first reached them
    assert np.isin(places.image_place[400:], first_pass).mean() > 0.9   # the second pass joins them


def test_gps_fixes_become_local_metres():
    latlon = np.array([[63.4305, 10.3951], [63.4305 + 1e-3, 10.3951], [63.4305, 10.3951 + 1e-3]])
    metres = local_metres(latlon)
    assert np.allclose(metres[0], 0.0)
    assert metres[1] == pytest.approx([0.0, 111.2], abs=0.1)                    # 1e-3 degree of latitude
    assert metres[2] == pytest.approx([111.2 * np.cos(np.radians(63.4305)), 0.0], abs=0.1)


def test_refusals_say_what_to_change(nordland, route_bag, cache, tmp_path, capsys):
    with pytest.raises(ValueError, match="negative_radius_m .* must be larger than data.positive_radius_m"):
        config_from_dict(route_config(route_bag, cache, data={"kind": "route", "source": "x.mcap",
                                                              "positive_radius_m": 30, "negative_radius_m": 20}))
    with pytest.raises(ValueError, match="data.source is empty"):
        config_from_dict({"data": {"kind": "route"}})
    no_poses = write_route_bag(nordland, tmp_path / "no_poses", 4, odometry=False)
    config = tmp_path / "no_poses.yaml"
    config.write_text(yaml.safe_dump(route_config(no_poses, tmp_path / "cache", out_dir=str(tmp_path / "run"))))
    assert main(["train", "--config", str(config)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("vpr train: error: training source rosbag:") and "\n" not in line
    assert "none of its 11 frames has a pose, odometry or GPS position" in line and "?pose_topic=" in line
    short = write_route_bag(nordland, tmp_path / "short", 20)
    with pytest.raises(ValueError, match=r"make 20 places at positive_radius_m 25: 16 for training "
                                         r"\(places_per_batch is 32\).*lower places_per_batch"):
        load_split(build_model("lite0"), config_from_dict(route_config(short, tmp_path / "cache",
                                                                        places_per_batch=32)), "dev")
    assert not list((tmp_path / "cache").glob("route-short-*"))  # refused before the backbone ran


def test_example_config_loads_as_a_route(capsys):
    example = Path(__file__).resolve().parents[1] / "config" / "train" / "route-example.yaml"
    cfg = load_train_config(example)
    assert cfg.data.kind == "route" and cfg.data.radii == (10.0, 25.0) and cfg.data.source.startswith("rosbag:")
    assert run_module(report, "report", ["--config", str(example), "--checkpoint", "heads"]) == 2
    assert "has no held-out test section" in capsys.readouterr().err            # the report is Nordland's


def test_trained_route_heads_beat_the_frozen_ones_on_the_test_section(route_bag, cache, held_out_subset, tmp_path):
    start = time.perf_counter()
    summary = train(config_from_dict(route_config(route_bag, cache, out_dir=str(tmp_path / "run"),
                                                  checkpoint=str(tmp_path / "heads"))))
    train_s = time.perf_counter() - start
    assert summary["best_epoch"] >= 1 and (tmp_path / "heads" / "config.json").is_file()
    test_cfg = config_from_dict({"threads": 2, "cache_dir": str(cache),
                                 "data": {"root": str(held_out_subset), "positive_radius": 0, "negative_radius": 0}})
    trained = report.test_recall(load_checkpoint(tmp_path / "heads"), test_cfg, "test")["float"][1]
    frozen = report.test_recall(build_model("lite0"), test_cfg, "test")["float"][1]
    print(f"route of {PLACES} places x 2 passes, {summary['epochs_run']} epochs (best {summary['best_epoch']}), "
          f"{train_s:.0f} s with caching; test section ({TEST_PLACES} evenly spaced places) R@1: "
          f"trained {trained:.3f}, frozen {frozen:.3f}")
    assert trained > frozen
