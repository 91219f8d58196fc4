"""Two-stage retrieval over a map: faiss binary index for candidates, float re-rank for order.

Codes are packed sign bits, `np.packbits(x >= 0, axis=1)` (numpy's big-endian bit order within a
byte; `vpr_core.model.pack_codes` makes them); faiss compares them byte-wise, so map and queries only
need to be packed the same way.
"""

from vpr_core.search.calibrate import calibrate_hamming_margin, hamming_gaps
from vpr_core.search.config import SearchConfig, SearchResult
from vpr_core.search.searcher import TwoStageSearcher, hamming_distances

__all__ = [
    "SearchConfig",
    "SearchResult",
    "TwoStageSearcher",
    "calibrate_hamming_margin",
    "hamming_distances",
    "hamming_gaps",
]
