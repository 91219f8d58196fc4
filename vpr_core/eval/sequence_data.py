"""Route sequences for the sequence filter's evaluation: each query's two-stage search, once.

A query's two-stage search result does not depend on which frames came before it, so the search of
every query is done once (and cached next to the evaluation's output, keyed by the encoder's
fingerprint) and the filter is then replayed over any ordering of the queries: in order, stopped,
reversed, skipping or kidnapped. The filter sees exactly what the node's ``Localizer`` hands it.

Sequences:
- any evaluation data set spec (``seasons:...nordland_tiny?split=test``, ``vpr_bench:...corridor``):
  database = map, queries in their order;
- a loop folder (``images/`` + ``loop_pairs.csv``, rtabmap_loop): the map is the first traversal
  (the frames before the first frame that revisits anything), the queries are the remaining frames
  in order, and a query's positives are its true revisit frames inside that map.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vpr_core.adapt import AdaptConfig, fit_adaptation
from vpr_core.data import get_reader
from vpr_core.engine import Encoder
from vpr_core.eval.encoding import encode_source
from vpr_core.eval.evaluate import open_eval_dataset
from vpr_core.eval.loop_sequence import PAIRS_FILE, read_loop_pairs
from vpr_core.eval.sequence import RouteSearch
from vpr_core.loop import image_contrast
from vpr_core.search import SearchConfig, TwoStageSearcher


def route_search(spec: str, encoder: Encoder, k: int, cache_dir: Path | None = None,
                 search_config: SearchConfig | None = None, adapt: AdaptConfig | None = None) -> RouteSearch:
    """Encodes map and queries of ``spec`` and searches every query alone (the node's pattern);
    an enabled ``adapt`` is fitted on the map's descriptors and applied to map and queries, as a map
    built with it and the node searching it would.

    The result is cached under ``cache_dir`` by spec, k, encoder fingerprint, search and adaptation
    settings, so the tables of several filter settings and sequence variants cost one encoding.
    """
    search_config = search_config or SearchConfig()
    adapt = adapt if adapt is not None and adapt.enabled else None
    key = hashlib.sha1(f"{spec}|{k}|{encoder.fingerprint}|{search_config}|{adapt}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"route_{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        positives = np.split(z["pos_values"], z["pos_splits"])
        return RouteSearch(str(z["name"]), int(z["map_size"]), z["ids"], z["scores"], z["contrast"], positives)
    name, database, queries, positives = open_route(spec)
    db_codes, db_desc, _ = encode_source(database, encoder, "map")
    q_codes, q_desc, _ = encode_source(queries, encoder, "queries")
    contrast = np.asarray([image_contrast(f.rgb) for f in queries], dtype=np.float32)
    if adapt is not None:
        adaptation = fit_adaptation(db_desc, encoder.bits, adapt, encoder.fingerprint)
        db_codes, db_desc = adaptation.apply(db_codes, db_desc)
        q_codes, q_desc = adaptation.apply(q_codes, q_desc)
    searcher = TwoStageSearcher(db_codes, db_desc, search_config)
    k = min(k, len(db_desc))
    ids = np.full((len(q_desc), k), -1, dtype=np.int64)
    scores = np.full((len(q_desc), k), -np.inf, dtype=np.float32)
    for i in tqdm(range(len(q_desc)), desc=f"search {name}", unit="query", leave=False):
        found = searcher.search(q_codes[i: i + 1], q_desc[i: i + 1], k)
        ids[i], scores[i] = found.ids[0], found.scores[0]
    result = RouteSearch(name, len(db_desc), ids, scores, contrast, positives)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lengths = np.asarray([len(p) for p in positives], dtype=np.int64)
        np.savez(cache, name=name, map_size=len(db_desc), ids=ids, scores=scores, contrast=contrast,
                 pos_values=np.concatenate(positives) if positives else np.empty(0, np.int64),
                 pos_splits=np.cumsum(lengths)[:-1])
    return result


def open_route(spec: str):
    path = Path(spec)
    if path.is_dir() and (path / PAIRS_FILE).is_file():
        frames = get_reader("folder").open_source(path / "images")
        truth = read_loop_pairs(path / PAIRS_FILE, len(frames))
        first_revisit = next(i for i, t in enumerate(truth) if t.size)
        database = _Slice(frames, range(0, first_revisit))
        queries = _Slice(frames, range(first_revisit, len(frames)))
        positives = [t[t < first_revisit] for t in truth[first_revisit:]]
        return f"{path.name} (map 0-{first_revisit - 1}, queries {first_revisit}-{len(frames) - 1})", \
            database, queries, positives
    dataset = open_eval_dataset(spec)
    return dataset.name, dataset.database, dataset.queries, list(dataset.positive_lists)


class _Slice:
    """A contiguous part of an indexable frame source, itself a frame source."""

    def __init__(self, source, indices: range) -> None:
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return (self.source[i] for i in self.indices)
