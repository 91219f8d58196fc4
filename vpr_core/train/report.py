"""Recall@1/5/10 on the held-out test section from cached features, for the three configurations the
training issue asks about:
  (i)   frozen backbone + GeM with untrained heads (float descriptor of the seeded initial heads of
        ``--baseline``, a GeM preset on the same backbone: ``lite0`` for the Lite0 models),
  (ii)  trained float branch (exhaustive cosine),
  (iii) trained binary codes (Hamming top-k) re-ranked by the float descriptor (TwoStageSearcher).

Run once, after training; nothing here feeds back into training or model selection.

    python -m vpr_core.train.report --config config/train/lite0-nordland.yaml --checkpoint checkpoints/lite0-nordland
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vpr_core.eval.recall import recall_at_n
from vpr_core.model import VPRModel, build_model, load_checkpoint, pack_codes
from vpr_core.search import SearchConfig, TwoStageSearcher
from vpr_core.train.config import TrainConfig, load_train_config
from vpr_core.train.trainer import encode, load_split, positives_within, season_rows
from vpr_core.cli import run_module

NS = (1, 5, 10)


def test_recall(model: VPRModel, cfg: TrainConfig, split: str) -> dict[str, dict[int, float]]:
    """{'float': R@N of exhaustive cosine, 'binary+rerank': R@N of the two-stage search}."""
    data = load_split(model, cfg, split)
    seasons = len(cfg.data.seasons)
    db_logits, db_desc = encode(model, data, season_rows(data.places, 0, seasons))
    q_logits, q_desc = encode(model, data, season_rows(data.places, seasons - 1, seasons))
    positives = positives_within(data.places)
    searcher = TwoStageSearcher(pack_codes(db_logits), db_desc, SearchConfig())
    k = max(NS)
    float_ids = searcher.float_search(q_desc, k).ids
    two_stage_ids = searcher.search(pack_codes(q_logits), q_desc, k).ids
    return {"float": recall_at_n(float_ids, positives, NS), "binary+rerank": recall_at_n(two_stage_ids, positives, NS)}


def baseline_model(preset: str, trained: VPRModel) -> VPRModel:
    """The untrained GeM heads of ``preset``, refused unless they read the trained model's features."""
    baseline = build_model(preset)
    for name in ("backbone", "image_size", "mean", "std", "cnn_tap"):
        if getattr(baseline.config, name) != getattr(trained.config, name):
            raise ValueError(f"--baseline {preset} has {name} {getattr(baseline.config, name)}, the checkpoint "
                             f"{getattr(trained.config, name)}: row (i) must read the same backbone features")
    if baseline.config.aggregation != "gem":
        raise ValueError(f"--baseline {preset} aggregates with {baseline.config.aggregation}; row (i) is GeM")
    return baseline


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config (YAML/JSON) naming data and cache")
    parser.add_argument("--checkpoint", required=True, help="trained heads (directory written by vpr train)")
    parser.add_argument("--split", default=None, help="section to report on (default: the config's test_split)")
    parser.add_argument("--baseline", default="lite0", help="GeM preset whose untrained heads give row (i); "
                        "same backbone and input size as the trained model (default: lite0)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config)
    if cfg.data.kind != "nordland":
        raise ValueError(f"{args.config} trains on a {cfg.data.kind}, which has no held-out test section; "
                         f"evaluate the trained checkpoint with `vpr eval --checkpoint {args.checkpoint}` on a "
                         f"data set with ground truth")
    torch.set_num_threads(cfg.threads)
    split = args.split or cfg.data.test_split
    t0 = time.perf_counter()
    try:
        trained_model = load_checkpoint(args.checkpoint)
        baseline = baseline_model(args.baseline, trained_model)
    except (OSError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    untrained = test_recall(baseline, cfg, split)
    trained = test_recall(trained_model, cfg, split)
    rows = {"(i) frozen backbone GeM, untrained heads": untrained["float"],
            "(ii) trained float branch": trained["float"],
            "(iii) trained binary + re-rank": trained["binary+rerank"],
            "untrained binary + re-rank": untrained["binary+rerank"]}
    print(f"{Path(cfg.data.root).name}, {split} section, {cfg.data.seasons[-1]} queries vs {cfg.data.seasons[0]} map")
    print(f"{'configuration':44s} " + " ".join(f"R@{n:<4d}" for n in NS))
    for name, recall in rows.items():
        print(f"{name:44s} " + " ".join(f"{100 * recall[n]:5.1f}" for n in NS))
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {f"R@{n}": v[n] for n in NS} for k, v in rows.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m vpr_core.train.report"))
