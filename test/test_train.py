"""Training pieces: losses against hand-computed values, the samplers on hand-made graphs, CosPlace
groups on synthetic positions, and a tiny real run (real Lite0 backbone, real Nordland images)."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vpr_core.model import build_model, load_checkpoint
from vpr_core.train import (cosplace_groups, greedy_clique_batches, multi_similarity_loss, quantization_loss,
                            random_batches)
from vpr_core.train.config import config_from_dict, load_train_config
from vpr_core.train.losses import MSLossConfig
from vpr_core.train.places import PlaceSet
from vpr_core.train.sampling import SageConfig, affinity_graph

TORCH_THREADS = 2  # read by the thread fixtures of conftest.py
pytestmark = pytest.mark.usefixtures("module_torch_threads")


def test_ms_loss_matches_hand_computed_value():
    sim = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.75], [0.3, 0.75, 1.0]])
    labels = torch.tensor([0, 0, 1])
    same = labels[:, None] == labels[None]
    cfg = MSLossConfig(alpha=2.0, beta=10.0, base=0.5, epsilon=0.1)
    # Anchor 0: negative 0.3 + 0.1 < positive 0.8 and positive 0.8 - 0.1 > 0.3: nothing mined, 0.
    # Anchor 1: negative 0.75 + 0.1 > 0.8 and positive 0.8 - 0.1 < 0.75: both kept.
    # Anchor 2: no positive, so no negative is harder than one: 0.
    anchor1 = math.log(1 + math.exp(-2.0 * (0.8 - 0.5))) / 2.0 + math.log(1 + math.exp(10.0 * (0.75 - 0.5))) / 10.0
    loss = multi_similarity_loss(sim, same, ~same, cfg)
    assert loss.item() == pytest.approx(anchor1 / 3, rel=1e-6)


def test_ms_loss_pulls_positives_and_pushes_negatives():
    sim = torch.tensor([[1.0, 0.5, 0.6], [0.5, 1.0, 0.4], [0.6, 0.4, 1.0]], requires_grad=True)
    positive = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    multi_similarity_loss(sim, positive, ~positive & ~torch.eye(3, dtype=torch.bool)).backward()
    assert sim.grad[0, 1] < 0 < sim.grad[0, 2]      # descent raises the positive, lowers the negative


def test_quantization_loss_gradient_moves_real_similarity_towards_code_similarity():
    torch.manual_seed(0)
    d = 16
    for sign in (1.0, -1.0):
        f = torch.nn.functional.normalize(torch.randn(2, d), dim=1)
        codes = torch.sign(torch.randn(2, d))
        codes[1] = sign * codes[0]                       # code similarity +1 or -1
        real = f.clone().requires_grad_(True)
        loss = quantization_loss(real, codes)
        loss.backward()
        gap = (f[0] @ f[1] - codes[0] @ codes[1] / d).item()
        assert loss.item() == pytest.approx(gap ** 2, rel=1e-5)
        assert torch.allclose(real.grad[0], 2 * gap * f[1], atol=1e-6)
        stepped = real.detach() - 0.05 * real.grad
        new_gap = (stepped[0] @ stepped[1] - codes[0] @ codes[1] / d).item()
        assert abs(new_gap) < abs(gap)


def test_quantization_loss_samples_a_fraction_of_pairs():
    real = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    codes = torch.sign(torch.randn(10, 8))
    full = quantization_loss(real, codes).item()
    g = torch.Generator().manual_seed(1)
    part = quantization_loss(real, codes, pair_fraction=0.2, generator=g).item()
    assert part != pytest.approx(full)
    with pytest.raises(ValueError, match="pair_fraction"):
        quantization_loss(real, codes, pair_fraction=0.0)


def _two_triangles():
    nbr = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [4, 5, 2], [3, 5, 0], [3, 4, 0]])
    aff = np.array([[.9, .9, 0], [.9, .9, 0], [.9, .9, .1], [.8, .8, .1], [.8, .8, 0], [.8, .8, 0]])
    return nbr, aff


def test_greedy_clique_batches_on_hand_made_graph():
    nbr, aff = _two_triangles()
    # Seed 2 has the highest mean affinity; 0 and 1 tie at 0.9 (lower index first), then 1 has 1.8.
    batches = greedy_clique_batches(nbr, aff, 3)
    assert [b.tolist() for b in batches] == [[2, 0, 1], [3, 4, 5]]
    # Batch of 4: the triangle, then the weakly linked 3; the rest (2 places) is a partial batch, dropped.
    assert [b.tolist() for b in greedy_clique_batches(nbr, aff, 4)] == [[2, 0, 1, 3]]


def test_greedy_clique_restarts_from_next_seed_when_clique_has_no_unused_neighbour():
    nbr = np.array([[1], [0], [3], [2]])
    aff = np.array([[.9], [.9], [.5], [.5]])
    assert [b.tolist() for b in greedy_clique_batches(nbr, aff, 4)] == [[0, 1, 2, 3]]


def test_affinity_graph_fuses_geography_and_descriptors():
    positions = np.arange(6, dtype=float)[:, None]
    desc = np.eye(6, dtype=np.float32)
    desc[5] = desc[0]                                   # 5 looks exactly like 0 but is far away
    nbr, aff = affinity_graph(positions, desc, SageConfig(top_k=2, geo_weight=0.5, geo_scale=1.0))
    assert set(nbr[0].tolist()) == {1, 5}               # its geographic neighbour and its look-alike
    assert np.all(nbr != np.arange(6)[:, None])         # never itself
    assert np.all(np.diff(aff, axis=1) <= 0)            # strongest first


def test_random_batches_cover_distinct_places():
    batches = random_batches(10, 3, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert len(batches) == 3 and len(set(flat.tolist())) == 9


def test_cosplace_groups_on_synthetic_utm_and_headings():
    rng = np.random.default_rng(0)
    utm = rng.uniform(0, 200, size=(3000, 2)) + [500_000.0, 4_000_000.0]
    heading = rng.uniform(0, 360, size=3000)
    m, alpha, n, l = 10.0, 30.0, 5, 2
    class_id, group = cosplace_groups(utm, heading, cell_m=m, heading_bin_deg=alpha, n=n, l=l)
    cell = np.floor(utm / m).astype(int)
    hbin = np.floor(heading / alpha).astype(int)
    key = cell[:, 0] * 10_000_000 + cell[:, 1] * 100 + hbin
    for c in np.unique(class_id)[:200]:                 # one class = one cell and heading bin
        assert len(np.unique(key[class_id == c])) == 1
    assert len(np.unique(class_id)) == len(np.unique(key))
    assert set(np.unique(group).tolist()) == set(range(n * n * l))
    first = {}
    for i in range(len(utm)):
        first.setdefault(class_id[i], i)
    reps = np.array(sorted(first.values()))
    for g in range(n * n * l):
        members = reps[group[reps] == g]
        d_cell = cell[members][:, None] - cell[members][None]
        d_bin = hbin[members][:, None] - hbin[members][None]
        assert np.all(d_cell % n == 0) and np.all(d_bin % l == 0)
        apart = (np.abs(d_cell).max(axis=-1) >= n) | (np.abs(d_bin) >= l)
        assert np.all(apart | np.eye(len(members), dtype=bool))   # distinct classes of a group are far apart
    with pytest.raises(ValueError, match="utm must be"):
        cosplace_groups(utm[:, :1], heading)


def test_feature_augmentation_mirrors_whole_places_as_new_places_and_drops_elements():
    from vpr_core.train.feature_augment import FeatureAugmentConfig, augment_features, mirror_offset

    places = PlaceSet(image_place=np.array([0, 1, 2, 3, 0, 1, 2, 3]), positions=np.arange(4.0)[:, None],
                      positive_radius=1, negative_radius=1)
    features = torch.rand(8, 3, 2, 4)
    row_place = places.image_place
    positions = torch.from_numpy(places.positions[row_place])
    offset = mirror_offset(places.positions, places.negative_radius)
    out, moved = augment_features(features, positions, row_place, FeatureAugmentConfig(mirror=0.5),
                                  np.random.default_rng(3), offset)
    mirrored = moved[:, 0] != positions[:, 0]
    assert 0 < mirrored.sum() < 8
    for place in range(4):                                   # both images of a place, or neither
        assert len(set(mirrored[row_place == place].tolist())) == 1
    assert torch.equal(out[mirrored], features[mirrored].flip(-1))
    assert torch.equal(out[~mirrored], features[~mirrored])
    dist = torch.cdist(moved, moved)
    assert (dist[mirrored][:, ~mirrored] > places.negative_radius).all()     # new places, never positives
    assert torch.equal(dist[mirrored][:, mirrored], torch.cdist(positions, positions)[mirrored][:, mirrored])

    dropped, same = augment_features(torch.ones(8, 16, 8, 10), positions, row_place,
                                     FeatureAugmentConfig(dropout=0.25), np.random.default_rng(0), offset,
                                     torch.Generator().manual_seed(0))
    assert torch.equal(same, positions)
    assert abs((dropped == 0).float().mean().item() - 0.25) < 0.01
    assert torch.allclose(dropped[dropped != 0], torch.tensor(1 / 0.75))
    with pytest.raises(ValueError, match="CNN feature maps"):
        augment_features(torch.ones(8, 5, 16), positions, row_place, FeatureAugmentConfig(dropout=0.1),
                         np.random.default_rng(0), offset)
    with pytest.raises(ValueError, match="feature_augment.mirror must be in"):
        config_from_dict({"feature_augment": {"mirror": 1.5}})


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="sampler"):
        config_from_dict({"sampler": "hard"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {kind: nordland, val_fraction: 0.9}\n")
    with pytest.raises(ValueError, match="val_fraction"):
        load_train_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_train_config(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def nordland(data_dir) -> Path:
    return data_dir / "nordland_tiny"


@pytest.fixture(scope="module")
def tiny_nordland(nordland, tmp_path_factory):
    """12 real development-section places of Nordland-tiny (summer and winter) in a folder of their own."""
    root = tmp_path_factory.mktemp("nordland") / "nordland_tiny"
    for season in ("summer", "winter"):
        (root / season).mkdir(parents=True)
        for index in range(1000, 1120, 10):
            name = f"images-{index:05d}.png"
            shutil.copy(nordland / season / name, root / season / name)
    return root


@pytest.fixture(scope="module")
def tiny_config(tiny_nordland, tmp_path_factory):
    """Config values for the tiny set; the feature cache directory is shared by the tests below."""
    cache = tmp_path_factory.mktemp("cache")
    return {"preset": "lite0-mix", "data": {"root": str(tiny_nordland), "val_fraction": 0.2}, "cache_dir": str(cache),
            "places_per_batch": 4, "epochs": 1, "patience": 5, "sampler": "sage", "sage": {"top_k": 3},
            "feature_augment": {"mirror": 0.5, "dropout": 0.2}}


def test_tiny_training_run_writes_log_curves_checkpoint_and_resumes(tiny_config, tmp_path):
    from vpr_core.train.feature_cache import FEATURES_FILE
    from vpr_core.train.trainer import train

    values = dict(tiny_config, out_dir=str(tmp_path / "run"), checkpoint=str(tmp_path / "heads"))
    summary = train(config_from_dict(values))
    assert summary["epochs_run"] == 1 and summary["history"][0]["batches"] == 2   # 9 training places / 4
    cache_file = next(Path(tiny_config["cache_dir"]).glob(f"*/{FEATURES_FILE}"))
    assert np.load(cache_file, mmap_mode="r").shape == (1, 24, 1280, 8, 10)
    built = cache_file.stat().st_mtime_ns
    with open(tmp_path / "run" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_r1"]) <= 1.0 and float(rows[0]["loss"]) > 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    trained = load_checkpoint(tmp_path / "heads")
    assert (tmp_path / "heads" / "config.json").read_text() == (tmp_path / "run" / "best" / "config.json").read_text()
    assert trained.fingerprint() != build_model("lite0").fingerprint()           # the heads changed

    values.update(epochs=2, sampler="random")
    resumed = train(config_from_dict(values), resume=True)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert resumed["history"][1]["sampler"] == "random"
    assert cache_file.stat().st_mtime_ns == built                                # cache reused, not rebuilt


def test_train_step_lowers_the_loss_on_cached_features(tiny_config, tmp_path):
    from vpr_core.train.feature_cache import AugmentConfig, build_feature_cache
    from vpr_core.train.trainer import load_split, train_step, trainable

    cfg = config_from_dict(tiny_config)
    model = build_model("lite0")
    data = load_split(model, cfg, "dev")
    files = [Path(tiny_config["data"]["root"]) / name for name in data.cache.names[:2]]
    plain = build_feature_cache(model, files, Path(tiny_config["data"]["root"]), tmp_path, "t")
    views = build_feature_cache(model, files, Path(tiny_config["data"]["root"]), tmp_path, "t",
                                augment=AugmentConfig(views=2))
    assert views.path != plain.path and views.views == 2                      # a new key, a new cache
    assert np.array_equal(views.features[0], plain.features[0])                # view 0 is the plain image
    assert not np.array_equal(views.features[1], plain.features[0])
    assert np.array_equal(plain.features[0], data.cache.features[0, :2])
    rows = np.array([0, 1, 2, 3, 12, 13, 14, 15])                            # 4 places, summer and winter
    positions = torch.from_numpy(data.places.positions[data.places.image_place[rows]])
    model.train()
    optimizer = torch.optim.Adam(trainable(model), lr=4e-4)
    feats = data.cache.batch(rows)
    losses = [train_step(model, feats, positions, data.places, cfg, optimizer)["loss"] for _ in range(4)]
    assert losses[-1] < losses[0]


def test_committed_checkpoint_encodes_like_its_cached_features(nordland, tmp_path):
    """The trained heads the node and demo load: they load through the engine, and what training saw
    (float16 cached features through the heads) is what inference computes from the image."""
    from vpr_core.engine import EncoderConfig, create_encoder
    from vpr_core.data.images import read_rgb
    from vpr_core.train.feature_cache import build_feature_cache

    checkpoint = Path(__file__).resolve().parents[1] / "checkpoints" / "lite0-nordland"
    encoder = create_encoder(EncoderConfig(checkpoint=str(checkpoint), backend="torch", threads=2))
    files = [nordland / "winter" / "images-01000.png", nordland / "summer" / "images-01000.png"]
    codes, desc = encoder.encode([read_rgb(f) for f in files])
    assert codes.shape == (2, 64) and desc.shape == (2, 1280)
    model = encoder.model
    cache = build_feature_cache(model, files, nordland, tmp_path, "check")
    with torch.no_grad():
        _, cached_desc = model.heads(cache.batch(np.arange(2)))
    cosine = np.sum(desc * cached_desc.numpy(), axis=1)
    assert np.all(cosine > 0.999)
    assert model.fingerprint() != build_model("lite0").fingerprint()            # trained, not the preset
