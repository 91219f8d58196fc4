"""Fitting a map adaptation on the map's own float descriptors (no labels)."""

from __future__ import annotations

import dataclasses
import logging

import faiss
import numpy as np

from vpr_core.adapt.adaptation import AdaptationError, MapAdaptation
from vpr_core.adapt.config import AdaptConfig

log = logging.getLogger(__name__)
# Directions whose variance is below this fraction of the largest one carry rounding noise only
# (duplicate frames, float16 storage); whitening them would turn that noise into signal.
RANK_TOLERANCE = 1e-5
_READ_ROWS = 65_536


def _fit_rows(desc: np.ndarray, max_rows: int) -> np.ndarray:
    """float32 copy of all rows, or of an evenly spaced sample of ``max_rows`` (read in chunks, so a
    memory-mapped map is never converted whole)."""
    if len(desc) > max_rows:
        rows = np.unique(np.linspace(0, len(desc) - 1, max_rows).round().astype(np.int64))
        return np.ascontiguousarray(np.asarray(desc[rows], np.float32))
    return np.ascontiguousarray(
        np.concatenate([np.asarray(desc[s : s + _READ_ROWS], np.float32) for s in range(0, len(desc), _READ_ROWS)]))


def itq_rotation(v: np.ndarray, iterations: int, seed: int) -> np.ndarray:
    """ITQ (Gong & Lazebnik 2011, alg. of section 2.3): the orthogonal R [b, b] that minimises
    ||B - V R^T||_F with B = sign(V R^T), by alternating the codes and an orthogonal Procrustes step,
    from a random rotation drawn with ``seed``. Written with numpy because faiss.ITQMatrix is much
    slower for the same iterations on map-sized inputs (README, map adaptation).
    """
    v = np.ascontiguousarray(v, np.float32)
    start = np.random.default_rng(seed).standard_normal((v.shape[1], v.shape[1]))
    r = np.linalg.qr(start)[0].astype(np.float32)  # v @ r is the rotated data; rotation = r.T
    for _ in range(iterations):
        codes = np.where(v @ r >= 0, 1.0, -1.0).astype(np.float32)
        u, _, wt = np.linalg.svd(v.T @ codes)
        r = (u @ wt).astype(np.float32)
    return np.ascontiguousarray(r.T)


def fit_adaptation(desc: np.ndarray, bits: int, config: AdaptConfig, base_fingerprint: str) -> MapAdaptation:
    """Fit ``config.method`` on a map's descriptors [N, D] for codes of ``bits`` bits.

    Components k = min(D, N - 1, max_components), fewer when the map's descriptors span fewer
    directions (see RANK_TOLERANCE); ITQ rotates the first b = min(bits, k) whitened coordinates
    (the issue's "ITQ on the whitened PCA space"; the paper rotates the unwhitened PCA projection,
    whose codes then follow another geometry than the whitened float stage). faiss gives the PCA (its
    eigenvalues, sorted basis and mean); the eigenvalue scaling is applied here
    because faiss's own (eigen_power/epsilon) takes an absolute ridge fixed before the eigenvalues it
    is relative to are known.
    """
    if not config.enabled:
        raise AdaptationError("adapt method 'none' fits nothing")
    if not isinstance(desc, np.ndarray) or desc.ndim != 2 or desc.shape[1] < 1:
        raise AdaptationError(f"descriptors must be a 2-D array [N, D], got {getattr(desc, 'shape', type(desc))}")
    if not isinstance(bits, int) or bits <= 0 or bits % 8:
        raise AdaptationError(f"bits must be a positive multiple of 8, got {bits!r}")
    if len(desc) < 2:
        raise AdaptationError(f"an adaptation needs at least 2 places to fit on, the map has {len(desc)}")
    x = _fit_rows(desc, config.max_fit_rows)
    if not np.isfinite(x).all():
        raise AdaptationError("the map's descriptors contain NaN or inf; cannot fit an adaptation")
    n, d = x.shape
    k = min(d, n - 1, config.max_components or d)
    pca = faiss.PCAMatrix(d, k, 0.0, False)
    pca.train(x)
    variance = faiss.vector_to_array(pca.eigenvalues)[:k] / n  # faiss's eigenvalues are sums of squares
    basis = faiss.vector_to_array(pca.PCAMat).reshape(-1, d)[:k]
    mean = faiss.vector_to_array(pca.mean)
    if not variance[0] > 0:
        raise AdaptationError("the map's descriptors are all identical; there is nothing to fit")
    k = int(np.count_nonzero(variance > RANK_TOLERANCE * variance[0]))
    variance, basis = variance[:k], basis[:k]
    scale = (variance + config.shrinkage * variance.mean()) ** -config.power
    projection = (basis * scale[:, None]).astype(np.float32)
    b = min(bits, k) if config.method == "itq" else 0
    rotation = np.zeros((b, b), np.float32)
    if b:  # on the whitened coordinates: the Hamming distance then follows the float stage's cosine
        rotation = itq_rotation((x - mean) @ projection[:b].T, config.itq_iterations, config.seed)
    log.debug("adaptation %s fitted on %d places: %d components, %d code bits", config.method, n, k,
             b if b else bits)
    return MapAdaptation(config.method, base_fingerprint, n, k, bits, b if b else bits, mean.astype(np.float32),
                         projection, rotation, config=dataclasses.asdict(config))
