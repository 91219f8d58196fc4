"""The real sets of the default-model selection: opened once, encoded once per model, scored per
adaptation from the arrays.

- ``corridor``: a VPR-Bench layout (query/ vs ref/), R@1/R@5 float-only and two-stage;
- ``rtabmap-retrieval``: a loop folder as retrieval, exactly as the sequence-filter evaluation takes
  it (``sequence_data.open_route``: map = first traversal, queries = the revisiting frames,
  positives = their true revisits);
- ``rtabmap-loops``: the same folder as loop closures, the node's ``LoopConfig`` defaults, recall at
  100 % precision and best F1 (``loops.evaluate_encoded``). Its frames are the route's map followed by
  its queries, so the retrieval encodings serve it too;
- ``nordland-val``: the validation slice ``vpr train`` early-stops on (the last ``val_fraction`` of
  the development places), as a seasons spec derived from the training config.

Encoding is the cost (a CPU evaluation encodes ~1200 images per model), so every candidate that
differs from another only in its map adaptation reuses that model's encodings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vpr_core.adapt import AdaptConfig, fit_adaptation
from vpr_core.data import EvalDataset
from vpr_core.data.seasons import SPLITS
from vpr_core.engine import Encoder
from vpr_core.eval.encoding import encode_source
from vpr_core.eval.evaluate import open_eval_dataset
from vpr_core.eval.loop_sequence import LoopSequence, open_loop_sequence, sequence_contrast
from vpr_core.eval.loops import describe_encoder, evaluate_encoded
from vpr_core.eval.recall import evaluate_recall
from vpr_core.eval.sequence_data import open_route
from vpr_core.loop import LoopConfig
from vpr_core.search import SearchConfig, TwoStageSearcher
from vpr_core.train.config import DataConfig
from vpr_core.train.places import nordland_places

SET_LABELS = {"corridor": "Corridor", "rtabmap-retrieval": "rtabmap_loop retrieval",
              "rtabmap-loops": "rtabmap_loop loops", "nordland-val": "Nordland-tiny val"}
SETS = tuple(SET_LABELS)
RETRIEVAL_SETS = ("corridor", "rtabmap-retrieval", "nordland-val")
RECALL_NS = (1, 5)
HEADLINE = {"retrieval": "two-stage R@1", "loops": "recall @100% P"}


@dataclass(frozen=True)
class SetSources:
    """Where the sets are (paths relative to the directory the command runs in) and which to score."""

    corridor: str = "vpr_bench:../shared/data/corridor"
    loop_folder: str = "../shared/data/rtabmap_loop"
    nordland: DataConfig = field(default_factory=DataConfig)
    sets: tuple[str, ...] = SETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "sets", tuple(self.sets))
        unknown = [s for s in self.sets if s not in SETS]
        if unknown or not self.sets or len(set(self.sets)) != len(self.sets):
            raise ValueError(f"sets must be distinct names out of {', '.join(SETS)}; got {list(self.sets)}")
        if "nordland-val" in self.sets and self.nordland.kind != "nordland":
            raise ValueError(f"the Nordland validation slice needs a training config with data.kind nordland, "
                             f"got {self.nordland.kind!r}: pass another --train-config or leave nordland-val "
                             "out of --sets")


def nordland_validation_spec(data: DataConfig) -> str:
    """The seasons spec of the places ``vpr train`` validates on: the last ``val_fraction`` of the
    ``data.split`` places (count as in ``trainer.train_val_split``), first season queried by the last."""
    places, _ = nordland_places(data.root, SPLITS[data.split], data.seasons, positive_radius=data.positive_radius,
                                negative_radius=data.negative_radius)
    n_val = max(2, round(places.num_places * data.val_fraction))
    first, last = places.names[-n_val], places.names[-1]
    return (f"seasons:{data.root}?database={data.seasons[0]}&queries={data.seasons[-1]}"
            f"&first={first}&last={last}&tolerance={data.positive_radius}")


@dataclass
class OpenedSets:
    """The sets' frames and ground truth, read before any model is built (a missing folder is
    refused before minutes of encoding), plus the loop frames' contrast, which no model changes."""

    retrieval: dict[str, EvalDataset]
    loop: LoopSequence | None = None
    loop_contrast: np.ndarray | None = None


def open_sets(sources: SetSources) -> OpenedSets:
    opened = OpenedSets({})
    if "corridor" in sources.sets:
        opened.retrieval["corridor"] = open_eval_dataset(sources.corridor)
    if {"rtabmap-retrieval", "rtabmap-loops"} & set(sources.sets):
        name, database, queries, positives = open_route(sources.loop_folder)
        opened.retrieval["rtabmap-retrieval"] = EvalDataset(name, database, queries, positives,
                                                            rule="true revisits in the first traversal")
    if "rtabmap-loops" in sources.sets:
        opened.loop = open_loop_sequence(sources.loop_folder)
        opened.loop_contrast = sequence_contrast(opened.loop)
        route = opened.retrieval["rtabmap-retrieval"]
        if len(route.database) + len(route.queries) != len(opened.loop):
            raise ValueError(f"{sources.loop_folder}: the route's map and queries hold "
                             f"{len(route.database) + len(route.queries)} frames, the loop sequence {len(opened.loop)}")
    if "nordland-val" in sources.sets:
        val = open_eval_dataset(nordland_validation_spec(sources.nordland))
        files = val.database.files
        opened.retrieval["nordland-val"] = replace(val, name=f"{val.name}, validation slice "
                                                            f"{files[0].stem}..{files[-1].stem}")
    return opened


@dataclass
class Encoded:
    """One retrieval set encoded by one model: map and query codes and descriptors."""

    db_codes: np.ndarray
    db_desc: np.ndarray
    q_codes: np.ndarray
    q_desc: np.ndarray
    positives: list[np.ndarray]


@dataclass
class ModelEncodings:
    encoder: dict[str, Any]
    bits: int
    fingerprint: str
    sets: dict[str, Encoded]
    ms_per_image: dict[str, float]


def encode_sets(opened: OpenedSets, encoder: Encoder) -> ModelEncodings:
    """Every opened retrieval set encoded once (the loop set reuses the rtabmap route's encodings)."""
    sets, ms = {}, {}
    for name, dataset in opened.retrieval.items():
        db_codes, db_desc, db_s = encode_source(dataset.database, encoder, f"{name} map")
        q_codes, q_desc, q_s = encode_source(dataset.queries, encoder, f"{name} queries")
        sets[name] = Encoded(db_codes, db_desc, q_codes, q_desc, list(dataset.positive_lists))
        ms[name] = 1000 * (db_s + q_s) / (len(db_desc) + len(q_desc))
    return ModelEncodings(describe_encoder(encoder), encoder.bits, encoder.fingerprint, sets, ms)


def adapt_encoded(encoded: Encoded, method: str, bits: int, fingerprint: str) -> Encoded:
    """The set as searched after map adaptation ``method``: fitted on the map's descriptors alone
    (no labels), applied to map and queries alike."""
    if method == "none":
        return encoded
    adaptation = fit_adaptation(encoded.db_desc, bits, AdaptConfig(method=method), fingerprint)
    db_codes, db_desc = adaptation.apply(encoded.db_codes, encoded.db_desc)
    q_codes, q_desc = adaptation.apply(encoded.q_codes, encoded.q_desc)
    return Encoded(db_codes, db_desc, q_codes, q_desc, encoded.positives)


def retrieval_figures(encoded: Encoded, search_config: SearchConfig) -> dict[str, float]:
    """R@1/R@5 of exhaustive float search and of the two-stage search, each from a search that asks
    for N results (as ``vpr eval`` does), and how often the two agree on the top-1."""
    searcher = TwoStageSearcher(encoded.db_codes, encoded.db_desc, search_config)
    figures, top1 = {}, {}
    for k in (n for n in RECALL_NS if n <= len(encoded.db_desc)):
        for method, found in (("float", searcher.float_search(encoded.q_desc, k)),
                              ("two-stage", searcher.search(encoded.q_codes, encoded.q_desc, k))):
            figures[f"{method} R@{k}"] = evaluate_recall(found.ids, encoded.positives, [k]).recall[k]
            if k == 1:
                top1[method] = found.ids[:, 0]
    figures["two-stage top-1 = float top-1"] = float(np.mean(top1["two-stage"] == top1["float"]))
    return figures


def loop_figures(opened: OpenedSets, route: Encoded, encodings: ModelEncodings) -> dict[str, float]:
    """Loop closures over the whole sequence (the route's map, then its queries) with the node's
    ``LoopConfig`` defaults, on the model's raw outputs whatever the candidate's map adaptation: the
    node closes loops in the map it grows online, which has no adaptation (only a prebuilt map does)."""
    codes = np.concatenate([route.db_codes, route.q_codes])
    desc = np.concatenate([route.db_desc, route.q_desc])
    results = evaluate_encoded(opened.loop, codes, desc, LoopConfig(), encodings.encoder,
                               contrast=opened.loop_contrast)
    curve = results["curves"]["consistency on"]
    return {"recall @100% P": curve["recall_at_100_precision"], "best F1": curve["best_f1"]}


def score_sets(opened: OpenedSets, encodings: ModelEncodings, method: str, sets: tuple[str, ...],
               search_config: SearchConfig) -> dict[str, dict[str, float]]:
    """Per set (in ``sets`` order), the figures of one candidate: this model with adaptation ``method``."""
    scored = {}
    for name in sets:
        if name == "rtabmap-loops":
            scored[name] = loop_figures(opened, encodings.sets["rtabmap-retrieval"], encodings)
        else:
            adapted = adapt_encoded(encodings.sets[name], method, encodings.bits, encodings.fingerprint)
            scored[name] = retrieval_figures(adapted, search_config)
    return scored


def headline(set_name: str, figures: dict[str, float]) -> float:
    """The one score per set the rule reads: two-stage R@1 for retrieval, recall at 100 % precision for loops."""
    return figures[HEADLINE["loops" if set_name == "rtabmap-loops" else "retrieval"]]
