"""Stage 1: candidate places by Hamming distance, from indexes chosen by name in a small registry.

faiss reads a binary vector as bytes and counts differing bits with popcount, so the bit order inside
a byte does not matter as long as map and queries are packed alike; we always pack with
`np.packbits(x >= 0, axis=1)` (big-endian bit order within each byte, numpy's default).

- flat: exact Hamming scan, no training. ~0.7 ms per query at 100 k x 512 bits on one core here,
  ~8 ms at 1 M, so maps above `SearchConfig.flat_max` use
- ivf:  inverted lists of codes (a faiss `IndexBinaryIVF`, scanned by Hamming distance) whose coarse
  quantizer works on the float descriptors (PCA to 128-D, then k-means). Why not faiss's own binary
  k-means: its centroids are majority-voted bits, a crude summary of a cluster; on the 1 M synthetic
  map of bench/search.py the float top-1's list was among the query's 32 nearest binarized centroids
  for only 83% of queries, and among the 32 nearest float centroids for 99.5-100%. The query's float
  descriptor is at hand anyway (stage 2 needs it), and ranking 4096 centroids in 128-D costs about a
  tenth of a millisecond.
- hnsw: faiss `IndexBinaryHNSW`, a graph over the codes; no training, but a slow build (~16 s per
  100 k places on two cores) and, on a 200 k-place synthetic map, the float top-1 among its 200
  nearest codes for only 94% of queries (efSearch 200); kept for users whose data suit it.
"""

from __future__ import annotations

import math
import struct
from typing import Iterable, Protocol

import faiss
import numpy as np
import torch

KINDS = ("flat", "ivf", "hnsw")
_TRAIN_POINTS_PER_LIST = 64  # k-means sample; more costs minutes at 1 M on two cores
_MIN_TRAIN_POINTS_PER_LIST = 39  # faiss warns below this
_PCA_SAMPLE = 8192  # rows to estimate the covariance from
_ASSIGN_ROWS = 32768
_IVF_MAGIC = b"VPRIVF1\0"  # ivf blobs: magic, uint64 length of the quantizer, quantizer, lists


class DescriptorRows(Protocol):
    """Read access to the float descriptors while building (the searcher's storage)."""

    def take(self, ids: np.ndarray) -> np.ndarray: ...

    def blocks(self, rows: int) -> Iterable[tuple[int, np.ndarray]]: ...


def choose_kind(requested: str, n: int, flat_max: int) -> str:
    if requested == "auto":
        return "flat" if n <= flat_max else "ivf"
    if requested not in KINDS:
        raise ValueError(f"index must be one of {('auto',) + KINDS}, got {requested!r}")
    return requested


def ivf_params(n: int, nlist: int = 0, nprobe: int = 0, pca_dim: int = 128) -> dict:
    """Lists ~ 4 sqrt(n) (a power of two), probing 1/128 of them (at least 16), on 128 PCA axes.

    Why these: a single query's cost at 1 M places is the PCA projection (a mat-vec that reads the
    whole D x pca_dim matrix from memory), the centroid ranking and the scan of the probed lists.
    Finer lists let fewer codes be scanned for the same agreement with exhaustive float search, and
    128 axes still place a query among the right lists where 64 did not (the settings tried on the
    1 M synthetic map of bench/search.py: README, "Search")."""
    if nlist <= 0:
        nlist = max(16, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))
        nlist = max(1, min(nlist, n // _MIN_TRAIN_POINTS_PER_LIST))
    if nprobe <= 0:
        nprobe = max(16, nlist // 128)
    return {"nlist": int(nlist), "nprobe": int(min(nprobe, nlist)), "pca_dim": int(pca_dim)}


def hnsw_params(m: int = 32, ef_search: int = 0, ef_construction: int = 80) -> dict:
    return {"m": int(m), "ef_search": int(ef_search), "ef_construction": int(ef_construction)}


def _float32(rows: np.ndarray) -> np.ndarray:
    """torch's vectorised half->float is ~10x faster than numpy's astype here."""
    return torch.from_numpy(np.ascontiguousarray(rows)).to(torch.float32).numpy()


def _fit_pca(x: np.ndarray, dim: int) -> faiss.LinearTransform:
    """PCA as a faiss linear map (so it serialises with the quantizer), fitted with torch's eigh:
    faiss's PCAMatrix.train took 37 s here for 8 k x 2048, this 3-12 s on the same busy machine.
    With fewer rows than dimensions the eigenproblem is solved on the smaller Gram matrix."""
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    mean = xt.mean(0)
    centred = xt - mean
    dim = min(dim, len(x) - 1)
    if len(x) >= x.shape[1]:
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        axes = vectors[:, -dim:].flip(1).T
    else:
        _, vectors = torch.linalg.eigh(centred @ centred.T)
        axes = torch.nn.functional.normalize((centred.T @ vectors[:, -dim:].flip(1)).T, dim=1)
    axes = axes.contiguous()  # [dim, D], largest variance first
    transform = faiss.LinearTransform(x.shape[1], dim, True)
    faiss.copy_array_to_vector(axes.numpy().ravel(), transform.A)
    faiss.copy_array_to_vector((-(axes @ mean)).numpy(), transform.b)
    transform.is_trained = True
    return transform


def _gather(desc: DescriptorRows, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (sorted) as float32, read in one sequential pass: random reads through a memory
    map would leave up to 64 KB of the file mapped per row (the kernel maps pages around a fault)."""
    out = []
    for start, block in desc.blocks(_ASSIGN_ROWS):
        lo, hi = np.searchsorted(ids, [start, start + len(block)])
        if hi > lo:
            out.append(_float32(block[ids[lo:hi] - start]))
    return np.concatenate(out)


class FlatIndex:
    kind = "flat"

    def __init__(self, index: faiss.IndexBinaryFlat) -> None:
        self.index = index
        self.params: dict = {}

    @classmethod
    def build(cls, codes: np.ndarray, desc: DescriptorRows, params: dict, seed: int) -> "FlatIndex":
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        return cls(index)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, codes: np.ndarray) -> None:
        self.index.add(codes)

    def search(self, qc: np.ndarray, qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(qc, k)

    def serialize(self) -> np.ndarray:
        return faiss.serialize_index_binary(self.index)

    @classmethod
    def deserialize(cls, data: np.ndarray, params: dict) -> "FlatIndex":
        return cls(_read_binary(data, faiss.IndexBinaryFlat))


class IVFIndex:
    """Binary inverted lists addressed by a float coarse quantizer (see the module docstring)."""

    kind = "ivf"

    def __init__(self, quantizer: faiss.Index, lists: faiss.IndexBinaryIVF, params: dict) -> None:
        self.quantizer = quantizer  # owns the parts below
        self.lists = lists
        self.params = params
        self.lists.nprobe = params["nprobe"]
        # Calling the PCA and the centroid search directly saves ~60 us per single query over
        # IndexPreTransform.search, a tenth of the per-query budget.
        if isinstance(quantizer, faiss.IndexPreTransform):
            self._pca = faiss.downcast_VectorTransform(quantizer.chain.at(0))
            self._centroids = faiss.downcast_index(quantizer.index)
        else:
            self._pca, self._centroids = None, quantizer

    @classmethod
    def build(cls, codes: np.ndarray, desc: DescriptorRows, params: dict, seed: int) -> "IVFIndex":
        n, nlist = len(codes), params["nlist"]
        if n < nlist:
            raise ValueError(
                f"an IVF index with {nlist} lists needs at least {nlist} places, the map has {n}"
            )
        rng = np.random.default_rng(seed)
        sample_ids = np.sort(rng.choice(n, min(n, _TRAIN_POINTS_PER_LIST * nlist), replace=False))
        sample = _gather(desc, sample_ids)
        dim = sample.shape[1]
        pca_dim = params["pca_dim"]
        if 0 < pca_dim < dim:
            pca = _fit_pca(sample[:: max(1, len(sample) // _PCA_SAMPLE)], pca_dim)  # spread over the map
            reduced = pca.apply(sample)
        else:
            pca, reduced = None, sample
        kmeans = faiss.Kmeans(reduced.shape[1], nlist, niter=10, seed=seed)
        kmeans.train(reduced)
        centroids = faiss.IndexFlatL2(reduced.shape[1])
        centroids.add(kmeans.centroids)
        quantizer = centroids if pca is None else faiss.IndexPreTransform(pca, centroids)
        lists = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(codes.shape[1] * 8), codes.shape[1] * 8, nlist)
        lists.is_trained = True  # its own binary quantizer is never used: assignments come from ours
        index = cls(quantizer, lists, dict(params, pca_dim=pca.d_out if pca is not None else 0))
        for start, block in desc.blocks(_ASSIGN_ROWS):
            index._add_assigned(codes[start : start + len(block)], block)
        return index

    @property
    def ntotal(self) -> int:
        return self.lists.ntotal

    def _add_assigned(self, codes: np.ndarray, desc: np.ndarray) -> None:
        _, assign = self.quantizer.search(_float32(desc), 1)
        codes = np.ascontiguousarray(codes)
        assign = np.ascontiguousarray(assign[:, 0])
        self.lists.add_core(len(codes), faiss.swig_ptr(codes), None, faiss.swig_ptr(assign))

    def search(self, qc: np.ndarray, qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nprobe = self.params["nprobe"]
        self.lists.nprobe = nprobe
        _, probe = self._centroids.search(qd if self._pca is None else self._pca.apply(qd), nprobe)
        return self.lists.search_preassigned(qc, k, probe, None)

    def serialize(self) -> np.ndarray:
        q = faiss.serialize_index(self.quantizer)
        lists = faiss.serialize_index_binary(self.lists)
        head = np.frombuffer(_IVF_MAGIC + struct.pack("<Q", len(q)), np.uint8)
        return np.concatenate([head, q, lists])

    @classmethod
    def deserialize(cls, data: np.ndarray, params: dict) -> "IVFIndex":
        data = np.ascontiguousarray(data, np.uint8)
        head = len(_IVF_MAGIC) + 8
        if len(data) < head or data[: len(_IVF_MAGIC)].tobytes() != _IVF_MAGIC:
            raise ValueError("stored ivf index does not start with the expected header")
        (qlen,) = struct.unpack("<Q", data[len(_IVF_MAGIC) : head].tobytes())
        quantizer = faiss.deserialize_index(data[head : head + qlen])
        lists = _read_binary(data[head + qlen :], faiss.IndexBinaryIVF)
        if quantizer.ntotal != lists.nlist:
            raise ValueError(
                f"stored ivf index: quantizer has {quantizer.ntotal} centroids for {lists.nlist} lists"
            )
        return cls(quantizer, lists, params)


class HNSWIndex:
    kind = "hnsw"

    def __init__(self, index: faiss.IndexBinaryHNSW, params: dict) -> None:
        self.index = index
        self.params = params

    @classmethod
    def build(cls, codes: np.ndarray, desc: DescriptorRows, params: dict, seed: int) -> "HNSWIndex":
        index = faiss.IndexBinaryHNSW(codes.shape[1] * 8, params["m"])
        index.hnsw.efConstruction = params["ef_construction"]
        index.add(codes)
        return cls(index, params)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, qc: np.ndarray, qd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.index.hnsw.efSearch = max(self.params["ef_search"], k)
        return self.index.search(qc, k)

    def serialize(self) -> np.ndarray:
        return faiss.serialize_index_binary(self.index)

    @classmethod
    def deserialize(cls, data: np.ndarray, params: dict) -> "HNSWIndex":
        return cls(_read_binary(data, faiss.IndexBinaryHNSW), params)


def _read_binary(data: np.ndarray, expected: type) -> faiss.IndexBinary:
    index = faiss.deserialize_index_binary(np.ascontiguousarray(data, np.uint8))
    if not isinstance(index, expected):
        raise ValueError(f"stored index is a {type(index).__name__}, expected {expected.__name__}")
    return index


REGISTRY: dict[str, type[FlatIndex] | type[IVFIndex] | type[HNSWIndex]] = {
    "flat": FlatIndex,
    "ivf": IVFIndex,
    "hnsw": HNSWIndex,
}


def build(kind: str, codes: np.ndarray, desc: DescriptorRows, params: dict, seed: int = 0):
    return REGISTRY[kind].build(np.ascontiguousarray(codes), desc, params, seed)


def deserialize(data: np.ndarray, kind: str, params: dict, bits: int):
    index = REGISTRY[kind].deserialize(data, params)
    d = index.lists.d if kind == "ivf" else index.index.d
    if d != bits:
        raise ValueError(f"stored {kind} index is over {d}-bit codes, the map has {bits}")
    return index
