"""Two-stage search on descriptors of real images (Nordland, development section only).

The descriptor is the classic patch-normalised thumbnail of SeqSLAM (the 64x32 image, mean-centred
over the map, L2-normalised) and the code is the sign of a fixed random projection of it, a stand-in
hash head: real image statistics (heavy similarity between consecutive frames, summer/winter change)
without depending on a trained model.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vpr_core.mapdb import MapDB, PlaceRecord
from vpr_core.model import pack_codes
from vpr_core.search import SearchConfig, TwoStageSearcher

N_MAP, QUERY_STEP, BITS = 400, 7, 512


def _thumbnails(folder, stems) -> np.ndarray:
    out = []
    for stem in stems:
        path = folder / f"{stem}.png"
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read {path}")
        out.append(img.astype(np.float32).ravel())
    return np.stack(out)


@pytest.fixture(scope="module")
def nordland(data_dir):
    root = data_dir / "nordland_tiny"
    stems = [f"images-{10 * (i + 1):05d}" for i in range(N_MAP)]  # inside the development section
    summer = _thumbnails(root / "summer", stems)
    winter = _thumbnails(root / "winter", stems[::QUERY_STEP])
    mean = summer.mean(axis=0)

    def describe(x):
        d = x - mean
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    projection = np.random.default_rng(0).standard_normal((summer.shape[1], BITS)).astype(np.float32)
    desc, qdesc = describe(summer), describe(winter)
    return pack_codes(desc @ projection), desc, pack_codes(qdesc @ projection), qdesc, stems


def test_k_equal_n_ranking_is_brute_force_on_real_descriptors(nordland):
    codes, desc, qc, qd, _ = nordland
    r = TwoStageSearcher(codes, desc.astype(np.float16), SearchConfig(index="flat")).search(qc, qd, N_MAP)
    ref = qd.astype(np.float64) @ desc.astype(np.float16).astype(np.float64).T
    for q in range(len(qd)):
        assert sorted(r.ids[q].tolist()) == list(range(N_MAP))
        assert np.all(np.diff(ref[q, r.ids[q]]) <= 1e-6)
        np.testing.assert_allclose(r.scores[q], ref[q, r.ids[q]], atol=1e-5)


def test_two_stage_agrees_with_float_search_through_a_saved_map(tmp_path, nordland):
    codes, desc, qc, qd, stems = nordland
    records = [PlaceRecord(source=f"summer/{s}.png", camera="train") for s in stems]
    MapDB.build(
        tmp_path / "nordland",
        codes,
        desc,
        records,
        fingerprint="thumbnail-512",
        encoder_config={"kind": "thumbnail"},
    )
    mapdb = MapDB.load(tmp_path / "nordland", expected_fingerprint="thumbnail-512")
    searcher = TwoStageSearcher.from_map(mapdb)
    two = searcher.search(qc, qd, 5)
    ref = searcher.float_search(qd, 5)
    top1 = np.mean(two.ids[:, 0] == ref.ids[:, 0])
    # Measured: 1.0 with the default adaptive pool (mean pool 34 of 400 places), against 0.67 for
    # the Hamming ranking alone: winter queries are far from their summer places.
    assert top1 >= 0.95, f"two-stage top-1 equals float top-1 on only {top1:.2%} of real queries"
    hamming_top1 = np.bitwise_count(codes[None] ^ qc[:, None]).sum(-1).argmin(axis=1)
    assert np.mean(hamming_top1 == ref.ids[:, 0]) < top1
    assert mapdb.records(two.ids[0, :1])[0].source.startswith("summer/images-")


def test_ivf_with_float_coarse_quantizer_on_real_descriptors(tmp_path, nordland):
    """6144-D descriptors: the IVF coarse quantizer runs PCA (to 256-D) and k-means on them; stored
    in a map and loaded back it must give the very same results."""
    codes, desc, qc, qd, _ = nordland
    mapdb = MapDB.build(
        tmp_path / "m", codes, desc, [PlaceRecord()] * N_MAP, fingerprint="t", encoder_config={}
    )
    flat = TwoStageSearcher.from_map(mapdb, SearchConfig(index="flat"))
    exact = flat.search(qc, qd, 5)
    # Probing every list is exhaustive: identical to flat, whatever the clustering.
    everything = TwoStageSearcher.from_map(mapdb, SearchConfig(index="ivf", nlist=8, nprobe=8)).search(
        qc, qd, 5
    )
    np.testing.assert_array_equal(everything.ids, exact.ids)
    ivf = TwoStageSearcher.from_map(mapdb, SearchConfig(index="ivf", nlist=8, nprobe=4))
    assert ivf.index_params == {"nlist": 8, "nprobe": 4, "pca_dim": 128}
    got = ivf.search(qc, qd, 5)
    # Measured 0.88 probing half of the lists: winter queries are far from every summer place, the
    # hardest case for a coarse quantizer (the float top-1 itself is right for only 7% of them).
    assert np.mean(got.ids[:, 0] == exact.ids[:, 0]) >= 0.8
    assert ivf.save_index(mapdb)
    reloaded = TwoStageSearcher.from_map(MapDB.load(tmp_path / "m"))
    assert reloaded.index_kind == "ivf"
    np.testing.assert_array_equal(reloaded.search(qc, qd, 5).ids, got.ids)
