"""``vpr train-local``: train the FoL++ local branch on cached backbone features, tune the re-ranking
on the validation slice, and measure pseudo-correspondence precision.

Uses the heads' training config (same data section, same feature cache, same validation slice:
the last ``val_fraction`` of the development places); the heads themselves stay as trained. After
training, the fusion weight and the scheduler margin are chosen by Recall@1 on the validation slice
(global float top candidates re-ranked by the local stage); the test section is never read here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vpr_core.eval.recall import recall_at_n
from vpr_core.model import load_checkpoint
from vpr_core.model.local_branch import LocalBranch, LocalBranchConfig, multiscale, save_local_branch, select_patches
from vpr_core.search.config import SearchResult
from vpr_core.search.local_rerank import LocalFeatures, LocalReranker, LocalRerankConfig
from vpr_core.train.config import load_train_config
from vpr_core.train.local_losses import (contrast_loss, correspondence_precision, matching_evidence,
                                         pseudo_correspondences, reliability_alignment_loss)
from vpr_core.train.trainer import SplitData, load_split, positives_within, season_rows, train_val_split
from vpr_core.cli import run_module

log = logging.getLogger(__name__)

MARGINS = (0.0, 0.02, 0.05, 0.1, 0.2, 1.0)
LOCAL_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
MIN_SIMILARITIES = (0.0, 0.5, 0.7)
CANDIDATES = 20


def patch_grid(features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Unit multi-scale patch features [N, P, 2C] of a cached map [N, C, h, w], and its grid."""
    x = multiscale(features.float())
    return x.flatten(2).transpose(1, 2), (int(features.shape[2]), int(features.shape[3]))


def pair_features(data: SplitData, places: np.ndarray, seasons: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached maps of the first and last season's images of ``places`` (same order)."""
    first = data.rows[season_rows(data.places, 0, seasons)[places]]
    last = data.rows[season_rows(data.places, seasons - 1, seasons)[places]]
    return data.cache.batch(first).float(), data.cache.batch(last).float()


def pseudo_precision(data: SplitData, seasons: int, threshold: float, ratio: float, batch: int = 128) -> dict:
    """Pseudo-correspondence precision over every same-place pair of a section (both directions)."""
    good = total = 0
    for start in range(0, data.places.num_places, batch):
        places = np.arange(start, min(start + batch, data.places.num_places))
        fa, fb = pair_features(data, places, seasons)
        pa, grid = patch_grid(fa)
        pb, _ = patch_grid(fb)
        for a, b in ((pa, pb), (pb, pa)):
            g, t = correspondence_precision(pseudo_correspondences(a, b, threshold=threshold, ratio=ratio), grid)
            good, total = good + g, total + t
    pairs = 2 * data.places.num_places
    return {"precision": good / max(total, 1), "matches": total, "pairs": pairs,
            "matches_per_pair": total / pairs, "patches_per_image": grid[0] * grid[1]}


def train_branch(branch: LocalBranch, train: SplitData, seasons: int, *, minutes: float, batch: int, lr: float,
                 threshold: float, ratio: float, align_weight: float, seed: int) -> list[dict]:
    """Adam over random batches of same-place pairs until ``minutes`` have passed; returns the log."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(branch.parameters(), lr=lr)
    history, start, step = [], time.monotonic(), 0
    branch.train()
    while time.monotonic() - start < 60 * minutes:
        places = rng.choice(train.places.num_places, size=batch, replace=False)
        fa, fb = pair_features(train, places, seasons)
        pa, grid = patch_grid(fa)
        pb, _ = patch_grid(fb)
        da, ra = branch(fa)
        db, rb = branch(fb)
        contrast = align = 0.0
        for x, y, rx, m in ((da, db, ra, pseudo_correspondences(pa, pb, threshold=threshold, ratio=ratio)),
                            (db, da, rb, pseudo_correspondences(pb, pa, threshold=threshold, ratio=ratio))):
            contrast = contrast + contrast_loss(x, y, rx, m, grid)
            align = align + reliability_alignment_loss(rx, matching_evidence(x, y, m))
        loss = contrast + align_weight * align
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 25 == 0:
            history.append({"step": step, "s": round(time.monotonic() - start, 1), "loss": loss.item(),
                            "contrast": contrast.item(), "align": align.item()})
            log.info("step %d: loss %.4f (contrast %.4f, align %.4f)", step, loss.item(), contrast.item(), align.item())
    branch.eval()
    return history


@torch.no_grad()
def section_outputs(model, branch: LocalBranch, data: SplitData, rows: np.ndarray,
                    batch: int = 128) -> tuple[np.ndarray, LocalFeatures]:
    """Global float descriptors and kept local patches of cached rows."""
    descs, parts = [], []
    for start in range(0, len(rows), batch):
        f = data.cache.batch(data.rows[rows[start:start + batch]]).float()
        _, d = model.heads(f)
        ld, rel = branch(f)
        grid = (int(f.shape[2]), int(f.shape[3]))
        descs.append(torch.nn.functional.normalize(d, dim=-1).numpy())
        parts.append(select_patches(ld.numpy(), rel.numpy(), grid, branch.config.kept(grid[0] * grid[1])))
    return np.concatenate(descs), LocalFeatures(*(np.concatenate([p[i] for p in parts]) for i in range(3)))


def tune(model, branch: LocalBranch, val: SplitData, seasons: int) -> dict:
    """Recall@1 on the validation slice for each (margin, local weight, min similarity), the global
    float top-20 as candidates; returns the grid and the best setting (ties: the smaller mean pool)."""
    db_desc, db_local = section_outputs(model, branch, val, season_rows(val.places, 0, seasons))
    q_desc, q_local = section_outputs(model, branch, val, season_rows(val.places, seasons - 1, seasons))
    positives = positives_within(val.places)
    sim = q_desc @ db_desc.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :CANDIDATES]
    result = SearchResult(ids=top, scores=np.take_along_axis(sim, top, 1).astype(np.float32),
                          hamming=np.zeros_like(top, dtype=np.int32))
    grid = [{"margin": 0.0, "local_weight": 0.0, "min_similarity": 0.0,
             "r1": recall_at_n(top[:, :1], positives, [1])[1], "pool": 0.0}]
    for margin, weight, min_sim in itertools.product(MARGINS, LOCAL_WEIGHTS, MIN_SIMILARITIES):
        config = LocalRerankConfig(margin=margin, local_weight=weight, max_candidates=CANDIDATES,
                                   min_similarity=min_sim)
        out = LocalReranker(db_local, config).rerank(result, q_local, 1)
        grid.append({"margin": margin, "local_weight": weight, "min_similarity": min_sim,
                     "r1": recall_at_n(out.ids, positives, [1])[1], "pool": float(out.pool.mean())})
    best = max(grid[1:], key=lambda g: (round(g["r1"], 6), -g["pool"]))
    return {"global_r1": grid[0]["r1"], "best": best, "grid": grid, "queries": len(q_desc)}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="the heads' training YAML (data, cache, split)")
    parser.add_argument("--checkpoint", required=True, type=Path, help="trained heads (global descriptors)")
    parser.add_argument("--out", required=True, type=Path, help="local branch checkpoint directory to write")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--batch", type=int, default=32, help="same-place pairs per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=128, help="local descriptor dimension")
    parser.add_argument("--keep", type=float, default=0.4, help="fraction of patches kept per image")
    parser.add_argument("--threshold", type=float, default=0.5, help="pseudo-match cosine threshold")
    parser.add_argument("--ratio", type=float, default=0.95, help="pseudo-match ratio test (distances)")
    parser.add_argument("--align-weight", type=float, default=1.0, help="weight of the reliability alignment loss")
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_train_config(args.config)
    model = load_checkpoint(args.checkpoint).eval()
    seasons = len(cfg.data.seasons)
    dev = load_split(model, cfg, cfg.data.split)
    train, val = train_val_split(dev, cfg)
    precision = pseudo_precision(dev, seasons, args.threshold, args.ratio)
    log.info("pseudo-correspondence precision on %s: %.4f over %d matches", cfg.data.split,
             precision["precision"], precision["matches"])
    channels = int(dev.cache.features.shape[2])
    branch = LocalBranch(LocalBranchConfig(in_channels=channels, dim=args.dim, keep_fraction=args.keep))
    untrained = tune(model, branch, val, seasons)
    history = train_branch(branch, train, seasons, minutes=args.minutes, batch=args.batch, lr=args.lr,
                           threshold=args.threshold, ratio=args.ratio, align_weight=args.align_weight, seed=0)
    tuned = tune(model, branch, val, seasons)
    report = {"pseudo_correspondences": {"section": cfg.data.split, "threshold": args.threshold,
                                         "ratio": args.ratio, **precision},
              "training": {"steps": history[-1]["step"] if history else 0, "minutes": args.minutes,
                           "batch": args.batch, "lr": args.lr, "align_weight": args.align_weight,
                           "log": history},
              "validation_untrained": {k: untrained[k] for k in ("global_r1", "best", "queries")},
              "validation": tuned}
    save_local_branch(branch, args.out, backbone_digest=model.backbone_digest(),
                      extra={"heads_fingerprint": model.fingerprint(), "rerank": tuned["best"]})
    (args.out / "train_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("pseudo_correspondences", "validation_untrained")}, indent=1))
    print(json.dumps({"global_r1": tuned["global_r1"], "best": tuned["best"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr train-local"))
