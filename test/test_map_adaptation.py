"""Map adaptation (vpr_core.adapt): whitening and ITQ fitted on a synthetic map are exact and
deterministic, small maps are guarded, and a map built with them on real Corridor images
round-trips, adapts its queries in the Localizer, and refuses a tampered file or another encoder;
maps written before adaptations existed still load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from itertools import islice

import numpy as np
import pytest

from frame_sources import FirstFrames
from vpr_core.adapt import AdaptationError, AdaptConfig, MapAdaptation, fit_adaptation
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapdb import MapDB, MapError
from vpr_core.mapdb.adaptation_file import ADAPTATION
from vpr_core.mapstore.transfer import push

PLACES = 20
ITQ = AdaptConfig(method="itq")


def synthetic_map(n: int, d: int = 48, seed: int = 1) -> np.ndarray:
    """Unit descriptors with a common offset and unequal variances, like a real map's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(3.0, 0.2, d) + 2.0
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_whitened_covariance_is_identity_and_the_itq_rotation_orthogonal():
    desc = synthetic_map(500)
    adaptation = fit_adaptation(desc, 32, AdaptConfig(method="itq", shrinkage=0.0, power=0.5), "enc")
    assert adaptation.components == desc.shape[1] and adaptation.bits_used == 32
    white = adaptation.project(desc)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(adaptation.components), atol=1e-3)
    rotation = adaptation.rotation.astype(np.float64)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(32), atol=1e-5)
    codes, unit = adaptation.apply(np.zeros((len(desc), 4), np.uint8), desc)
    assert codes.shape == (500, 4) and unit.shape == desc.shape and unit.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    # ITQ's bits on its own training set are balanced far better than chance would leave a bad rotation.
    assert np.abs(np.unpackbits(codes, axis=1).mean(axis=0) - 0.5).max() < 0.2


def test_shrinkage_and_power_temper_the_whitening():
    desc = synthetic_map(500)
    full = np.cov(fit_adaptation(desc, 16, AdaptConfig(method="whiten", shrinkage=0.0, power=0.5), "enc").project(desc).T)
    shrunk = np.cov(fit_adaptation(desc, 16, AdaptConfig(method="whiten", shrinkage=1.0, power=0.5), "enc").project(desc).T)
    half = np.cov(fit_adaptation(desc, 16, AdaptConfig(method="whiten", shrinkage=0.0, power=0.25), "enc")
                  .project(desc).T)
    # Whitening flattens the spectrum; a ridge or a smaller exponent leave the strongest direction ahead.
    assert np.ptp(np.diag(full)) < 0.01 < np.diag(shrunk)[0] / np.diag(shrunk)[-1] - 1
    assert np.diag(half)[0] > 2 * np.diag(half)[-1]


def test_codes_and_fits_are_deterministic_and_whiten_keeps_the_models_codes():
    desc = synthetic_map(300)
    model_codes = np.packbits(desc[:, :16] >= 0, axis=1)
    first = fit_adaptation(desc, 16, AdaptConfig(method="itq"), "enc")
    again = fit_adaptation(desc, 16, AdaptConfig(method="itq"), "enc")
    assert first.digest == again.digest
    np.testing.assert_array_equal(first.apply(model_codes, desc)[0], again.apply(model_codes, desc)[0])
    np.testing.assert_array_equal(first.apply(model_codes, desc)[0], first.apply(model_codes, desc)[0])
    assert fit_adaptation(desc, 16, AdaptConfig(method="itq", seed=5), "enc").digest != first.digest
    whiten = fit_adaptation(desc, 16, AdaptConfig(method="whiten"), "enc")
    assert whiten.bits_used == 16 and whiten.apply(model_codes, desc)[0] is model_codes


def test_a_small_map_gets_n_minus_1_components_and_constant_tail_bits():
    desc = synthetic_map(12, d=48)
    adaptation = fit_adaptation(desc, 32, AdaptConfig(method="itq", shrinkage=0.0, power=0.5), "enc")
    assert adaptation.components == 11 and adaptation.bits_used == 11
    codes, unit = adaptation.apply(np.zeros((12, 4), np.uint8), desc)
    assert not np.unpackbits(codes, axis=1)[:, 11:].any()
    assert unit.shape == (12, 48) and not unit[:, 11:].any()
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_bad_input_and_bad_settings_are_refused_in_words():
    with pytest.raises(AdaptationError, match="at least 2 places"):
        fit_adaptation(synthetic_map(1), 16, ITQ, "enc")
    bad = synthetic_map(10)
    bad[3, 2] = np.nan
    with pytest.raises(AdaptationError, match="NaN"):
        fit_adaptation(bad, 16, ITQ, "enc")
    with pytest.raises(ValueError, match="method must be one of none, whiten, itq"):
        AdaptConfig(method="pca")
    with pytest.raises(ValueError, match="shrinkage"):
        AdaptConfig(shrinkage=-1.0)


def test_the_file_round_trips_and_a_newer_or_damaged_one_is_refused(tmp_path):
    adaptation = fit_adaptation(synthetic_map(100), 16, ITQ, "enc")
    adaptation.save(tmp_path / "a.safetensors")
    loaded = MapAdaptation.load(tmp_path / "a.safetensors")
    assert loaded.digest == adaptation.digest and loaded.summary() == adaptation.summary()
    newer = dataclasses.replace(adaptation, version=adaptation.version + 1).to_bytes()
    with pytest.raises(AdaptationError, match="newer than this code reads"):
        MapAdaptation.from_bytes(newer)
    with pytest.raises(AdaptationError, match="not a readable safetensors file"):
        MapAdaptation.from_bytes(adaptation.to_bytes()[:-40])


@pytest.fixture(scope="module")
def adapted_map(corridor_set, lite0_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapted") / "map"
    build_map(FirstFrames(corridor_set.database, PLACES), path, lite0_encoder,
              BuildConfig(batch_size=8, adapt=AdaptConfig(method="itq"))).close()
    return path


def test_a_built_map_is_adapted_round_trips_and_names_it_in_its_manifest(adapted_map, lite0_encoder, corridor_set):
    mapdb = MapDB.load(adapted_map, expected_fingerprint=lite0_encoder.fingerprint)
    entry = json.loads((adapted_map / "manifest.json").read_text())["adaptation"]
    assert entry["method"] == "itq" and entry["places"] == PLACES and entry["components"] == PLACES - 1
    assert entry["bits_used"] == PLACES - 1 and entry["base_fingerprint"] == lite0_encoder.fingerprint
    assert mapdb.fingerprint == lite0_encoder.fingerprint and mapdb.adaptation.digest == MapAdaptation.load(
        adapted_map / ADAPTATION).digest
    codes, desc = lite0_encoder.encode([f.rgb for f in islice(corridor_set.database, 3)])
    want_codes, want_desc = mapdb.adaptation.apply(codes, desc)
    np.testing.assert_array_equal(mapdb.codes[:3], want_codes)
    np.testing.assert_allclose(np.asarray(mapdb.desc[:3], np.float32), want_desc, atol=2e-3)
    mapdb.close()


def test_the_localizer_adapts_its_queries_and_finds_a_map_image_first(adapted_map, lite0_encoder, corridor_set):
    localizer = Localizer(LocalizerConfig(map_path=str(adapted_map)), lite0_encoder)
    frames = list(islice(corridor_set.database, 0, 12, 3))
    results = localizer.process(frames)
    assert [r.matches[0].place_id for r in results] == [0, 3, 6, 9]
    assert all(r.matches[0].score > 0.99 for r in results)
    assert all(r.matches[1].score < 0.9 for r in results)  # the whitened map no longer looks all alike


def test_a_tampered_adaptation_or_another_encoder_is_refused(adapted_map, tmp_path):
    with pytest.raises(MapError, match="built by the encoder with fingerprint"):
        MapDB.load(adapted_map, expected_fingerprint="another-encoder")
    tampered = tmp_path / "tampered"
    shutil.copytree(adapted_map, tampered)
    damaged = bytearray((tampered / ADAPTATION).read_bytes())
    damaged[-5] ^= 0x40
    (tampered / ADAPTATION).write_bytes(bytes(damaged))
    with pytest.raises(MapError, match="sha256 does not match"):
        MapDB.load(tampered)
    manifest = json.loads((adapted_map / "manifest.json").read_text())
    foreign = fit_adaptation(synthetic_map(30, d=manifest["dim"]), manifest["bits"], ITQ, "other")
    blob = foreign.to_bytes()
    (tampered / ADAPTATION).write_bytes(blob)
    manifest["adaptation"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MapError, match="was fitted for the encoder 'other'"):
        MapDB.load(tampered)
    with pytest.raises(MapError, match="--adapt none"):
        push(adapted_map, f"milvus-lite:{tmp_path / 'm.db'}/places")


def test_a_map_without_adaptation_loads_even_with_a_manifest_from_before(corridor_set, lite0_encoder, tmp_path):
    path = tmp_path / "raw"
    build_map(FirstFrames(corridor_set.database, 4), path, lite0_encoder,
              BuildConfig(batch_size=4, adapt=AdaptConfig(method="none"))).close()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["adaptation"] is None
    del manifest["adaptation"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    mapdb = MapDB.load(path, expected_fingerprint=lite0_encoder.fingerprint)
    codes, desc = lite0_encoder.encode([next(iter(corridor_set.database)).rgb])
    assert mapdb.adaptation is None and mapdb.size == 4
    np.testing.assert_array_equal(mapdb.codes[:1], codes)
    mapdb.close()


def test_milvus_outputs_refuse_an_explicit_adaptation(lite0_encoder, corridor_set, tmp_path):
    with pytest.raises(ValueError, match="cannot store a map adaptation"):
        build_map(FirstFrames(corridor_set.database, 2), f"milvus-lite:{tmp_path / 'm.db'}/places", lite0_encoder,
                  BuildConfig(adapt=AdaptConfig(method="itq")))
