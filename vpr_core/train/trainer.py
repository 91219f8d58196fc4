"""The training loop over cached features: heads only, Adam with step decay, early stopping on the
validation Recall@1, a CSV log, PNG curves, and resumable checkpoints.

Every epoch draws ``places_per_epoch`` training places at random (all of them by default); the
sampler decides how they are grouped into batches: at random, or (SAGE) as cliques of a geo-visual
graph built from the current descriptors of those places, so both samplers see the same places and
differ only in which places share a batch.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from tqdm import tqdm

from vpr_core.data.seasons import SPLITS
from vpr_core.eval.recall import recall_at_n
from vpr_core.model import VPRModel, build_model, load_checkpoint, save_checkpoint
from vpr_core.model.checkpoint import CONFIG_FILE, HEADS_FILE
from vpr_core.train.config import TrainConfig
from vpr_core.train.feature_augment import augment_features, mirror_offset
from vpr_core.train.feature_cache import FeatureCache, build_feature_cache
from vpr_core.train.losses import code_similarity, multi_similarity_loss, quantization_loss
from vpr_core.train.places import PlaceSet, nordland_places, route_places
from vpr_core.train.route import read_route, route_features
from vpr_core.train.sampling import affinity_graph, greedy_clique_batches, random_batches

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FIELDS = ("epoch", "sampler", "lr", "loss", "ms_float", "ms_binary", "quant", "val_r1", "val_r5",
              "val_r10", "batches", "train_s", "sampler_s", "val_s")


@dataclass
class SplitData:
    """One section's cached features and places (train, validation or test)."""

    cache: FeatureCache
    places: PlaceSet
    rows: np.ndarray          # cache rows of these places' images, in PlaceSet image order


def load_split(model: VPRModel, cfg: TrainConfig, split: str) -> SplitData:
    """Places and cached features of a whole data section (built on first use); a route has one
    section, the whole recording, whatever ``split`` says."""
    if cfg.data.kind == "route":
        return load_route(model, cfg)
    root = Path(cfg.data.root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    places, files = nordland_places(root, SPLITS[split], cfg.data.seasons, positive_radius=cfg.data.positive_radius,
                                    negative_radius=cfg.data.negative_radius)
    cache = build_feature_cache(model, files, root, Path(cfg.cache_dir), f"{root.name}-{split}", augment=cfg.augment)
    return SplitData(cache, places, np.arange(len(files)))


def load_route(model: VPRModel, cfg: TrainConfig) -> SplitData:
    """A recording's positioned frames as places; refused before the backbone runs when the places
    cannot fill a batch or the validation slice has no place seen twice."""
    route = read_route(cfg.data.source, cfg.data.position, Path(cfg.cache_dir))
    positive, negative = cfg.data.radii
    places = route_places(route.positions, route.names, positive_radius=positive, negative_radius=negative)
    train_places, val_places = split_places(places, cfg.data.val_fraction)
    images_of = places.images_of()
    revisited = sum(len(images_of[p]) > 1 for p in val_places)
    if len(train_places) < cfg.places_per_batch or revisited == 0:
        raise ValueError(
            f"route {cfg.data.source}: {len(route.names)} frames with a position make {places.num_places} places "
            f"at positive_radius_m {positive:g}: {len(train_places)} for training (places_per_batch is "
            f"{cfg.places_per_batch}), {revisited} of the last {len(val_places)} (validation) seen twice; record "
            f"a longer route or drive it twice, or lower places_per_batch or data.positive_radius_m")
    log.info("route %s: %d places (%d for training, %d for validation, %d of them seen twice)", cfg.data.source,
             places.num_places, len(train_places), len(val_places), revisited)
    cache = route_features(model, route, Path(cfg.cache_dir), augment=cfg.augment)
    return SplitData(cache, places, np.arange(len(route.names)))


def split_places(places: PlaceSet, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training places, validation places): validation = the last ``val_fraction`` of the places,
    contiguous; training places within ``positive_radius`` of a validation place are dropped so no
    validation query has a positive among the training images."""
    n = places.num_places
    n_val = max(2, round(n * val_fraction))
    val = np.arange(n - n_val, n)
    before = np.arange(0, n - n_val)
    if not len(before):
        return before, val
    gap = cKDTree(places.positions[val]).query(places.positions[before])[0]
    return before[gap > places.positive_radius], val


def train_val_split(data: SplitData, cfg: TrainConfig) -> tuple[SplitData, SplitData]:
    """The training and validation slices of a section (see ``split_places``)."""
    train_places, val_places = split_places(data.places, cfg.data.val_fraction)
    train_p, train_rows = data.places.subset(train_places)
    val_p, val_rows = data.places.subset(val_places)
    return SplitData(data.cache, train_p, data.rows[train_rows]), SplitData(data.cache, val_p, data.rows[val_rows])


@torch.no_grad()
def encode(model: VPRModel, data: SplitData, rows: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(binary logits, float descriptors) float32 of cached rows (view 0), heads in eval mode."""
    was_training = model.training
    model.eval()
    logits, desc = [], []
    for start in range(0, len(rows), batch):
        b, d = model.heads(data.cache.batch(data.rows[rows[start:start + batch]]))
        logits.append(b.float().numpy())
        desc.append(d.float().numpy())
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(desc)


def season_rows(places: PlaceSet, season: int, seasons: int) -> np.ndarray:
    """Rows (in PlaceSet image order) of one season: nordland_places lists season after season."""
    n = places.num_places
    if len(places.image_place) < n * seasons:
        raise ValueError("place set does not hold one image per place and season")
    return np.arange(season * n, (season + 1) * n)


def positives_within(places: PlaceSet) -> list[np.ndarray]:
    pos = places.positions
    return [np.nonzero(np.linalg.norm(pos - pos[q], axis=1) <= places.positive_radius)[0] for q in range(len(pos))]


def retrieval_rows(places: PlaceSet) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(database rows, query rows, positives of each query among the database) in PlaceSet image order:
    the database is the first image of every place, the queries are the last image of every place
    that has two or more (Nordland: first and last season; a route driven twice: the two passes)."""
    images_of = places.images_of()
    db = np.array([rows[0] for rows in images_of])
    queried = np.array([p for p, rows in enumerate(images_of) if len(rows) > 1], dtype=np.int64)
    positives = positives_within(places)
    return db, np.array([images_of[p][-1] for p in queried], dtype=np.int64), [positives[p] for p in queried]


def validation_recall(model: VPRModel, data: SplitData, ns=(1, 5, 10)) -> dict[int, float]:
    """Float-descriptor Recall@N of ``retrieval_rows`` (NaN where N exceeds the number of places)."""
    db_rows, q_rows, positives = retrieval_rows(data.places)
    _, db = encode(model, data, db_rows)
    _, q = encode(model, data, q_rows)
    sim = q @ db.T
    k = min(max(ns), len(db))
    pred = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    recall = recall_at_n(pred, positives, [n for n in ns if n <= k])
    return {n: recall.get(n, float("nan")) for n in ns}   # R@N with N > places is undefined


def _masks(positions: torch.Tensor, places: PlaceSet) -> tuple[torch.Tensor, torch.Tensor]:
    dist = torch.cdist(positions, positions)
    return dist <= places.positive_radius, dist > places.negative_radius


def train_step(model: VPRModel, features: torch.Tensor, positions: torch.Tensor, places: PlaceSet,
               cfg: TrainConfig, optimizer: torch.optim.Optimizer,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """One optimiser step on one batch of cached features; returns the loss terms."""
    logits, desc = model.heads(features)
    positive, negative = _masks(positions, places)
    ms_float = multi_similarity_loss(desc @ desc.T, positive, negative, cfg.loss)
    codes, code_sim = code_similarity(logits)
    ms_binary = multi_similarity_loss(code_sim, positive, negative, cfg.loss)
    quant = quantization_loss(F.normalize(logits, dim=-1), codes, pair_fraction=cfg.quant_pair_fraction,
                              generator=generator)
    loss = ms_float + ms_binary + cfg.quant_weight * quant
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "ms_float": ms_float.item(), "ms_binary": ms_binary.item(), "quant": quant.item()}


def epoch_batches(model: VPRModel, train: SplitData, cfg: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """This epoch's batches of training places (indices into ``train.places``)."""
    n = train.places.num_places
    chosen = rng.permutation(n)[: cfg.places_per_epoch or n]
    if cfg.sampler == "random":
        return [chosen[b] for b in random_batches(len(chosen), cfg.places_per_batch, rng)]
    images_of = train.places.images_of()
    _, desc = encode(model, train, np.array([images_of[p][0] for p in chosen]))
    nbr, aff = affinity_graph(train.places.positions[chosen], desc, cfg.sage)
    return [chosen[b] for b in greedy_clique_batches(nbr, aff, cfg.places_per_batch)]


def trainable(model: VPRModel) -> list[torch.nn.Parameter]:
    return [p for p in model.head.parameters() if p.requires_grad]


@dataclass
class _Optimization:
    """What a resumed run restores besides the weights: optimiser, learning-rate schedule and the
    generator of the random draws inside the losses and augmentation."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    generator: torch.Generator


@dataclass
class _Progress:
    history: list[dict]
    start_epoch: int = 1
    best_r1: float = -1.0
    best_epoch: int = 0


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Trains the heads of ``cfg.preset``; returns a summary (best epoch, validation recall, times)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_dir, best_dir = out / "last", out / "best"
    resuming = resume and (last_dir / STATE_FILE).is_file()
    if resume and not resuming:
        log.info("nothing to resume in %s: starting from scratch", last_dir)
    model = load_checkpoint(last_dir) if resuming else build_model(cfg.preset)
    t0 = time.perf_counter()
    train_data, val_data = train_val_split(load_split(model, cfg, cfg.data.split), cfg)
    cache_s = time.perf_counter() - t0
    optimizer = torch.optim.Adam(trainable(model), lr=cfg.lr)
    opt = _Optimization(optimizer,
                        torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma),
                        torch.Generator().manual_seed(cfg.seed))
    progress = _restore(last_dir, opt) if resuming else _Progress([])
    offset = mirror_offset(train_data.places.positions, train_data.places.negative_radius)
    model.train()
    for epoch in range(progress.start_epoch, cfg.epochs + 1):
        row = _run_epoch(model, train_data, val_data, cfg, epoch, opt, offset)
        progress.history.append(row)
        log.info("epoch %d: loss %.4f, val R@1 %.3f, %.1f s training", epoch, row.get("loss", float("nan")),
                 row["val_r1"], row["train_s"])
        if row["val_r1"] > progress.best_r1:
            progress.best_r1, progress.best_epoch = row["val_r1"], epoch
            save_checkpoint(model, best_dir)
        save_checkpoint(model, last_dir)
        _save_state(last_dir, opt, progress, epoch)
        write_log(progress.history, out)
        if epoch - progress.best_epoch >= cfg.patience:
            log.info("early stop: no better validation R@1 for %d epochs", cfg.patience)
            break
    return _finish(cfg, out, best_dir, progress, cache_s)


def _restore(last_dir: Path, opt: _Optimization) -> _Progress:
    state = torch.load(last_dir / STATE_FILE, map_location="cpu", weights_only=True)
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.generator.set_state(state["generator"])
    progress = _Progress(json.loads(state["history"]), int(state["epoch"]) + 1, float(state["best_r1"]),
                         int(state["best_epoch"]))
    log.info("resumed after epoch %d (best R@1 %.3f at epoch %d)", progress.start_epoch - 1, progress.best_r1,
             progress.best_epoch)
    return progress


def _save_state(last_dir: Path, opt: _Optimization, progress: _Progress, epoch: int) -> None:
    torch.save({"optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
                "generator": opt.generator.get_state(), "history": json.dumps(progress.history), "epoch": epoch,
                "best_r1": progress.best_r1, "best_epoch": progress.best_epoch}, last_dir / STATE_FILE)


def _run_epoch(model: VPRModel, train_data: SplitData, val_data: SplitData, cfg: TrainConfig, epoch: int,
               opt: _Optimization, offset: float) -> dict:
    """Sample this epoch's batches, train on them, step the learning rate and validate; returns the
    epoch's log row."""
    rng = np.random.default_rng([cfg.seed, epoch])   # per epoch, so a resumed run draws what an unbroken one does
    t_sampler = time.perf_counter()
    batches = epoch_batches(model, train_data, cfg, rng)
    t_train = time.perf_counter()
    sums = _train_batches(model, train_data, batches, cfg, epoch, opt, rng, offset)
    t_val = time.perf_counter()
    lr = opt.optimizer.param_groups[0]["lr"]
    opt.scheduler.step()
    recall = validation_recall(model, val_data)
    t_end = time.perf_counter()
    return {"epoch": epoch, "sampler": cfg.sampler, "lr": lr,
            **{k: v / max(1, len(batches)) for k, v in sums.items()},
            "val_r1": recall[1], "val_r5": recall[5], "val_r10": recall[10], "batches": len(batches),
            "train_s": t_val - t_train, "sampler_s": t_train - t_sampler, "val_s": t_end - t_val}


def _train_batches(model: VPRModel, train_data: SplitData, batches: list[np.ndarray], cfg: TrainConfig, epoch: int,
                   opt: _Optimization, rng: np.random.Generator, offset: float) -> dict[str, float]:
    """One optimiser step per batch of places; returns each loss term summed over the batches."""
    images_of = train_data.places.images_of()
    views = train_data.cache.views
    sums: dict[str, float] = {}
    for batch in tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs} ({cfg.sampler})", unit="batch"):
        rows = np.concatenate([images_of[p] for p in batch])
        feats = train_data.cache.batch(train_data.rows[rows], rng.integers(0, views, len(rows)))
        row_place = train_data.places.image_place[rows]
        positions = torch.from_numpy(train_data.places.positions[row_place])
        if cfg.feature_augment.active:
            feats, positions = augment_features(feats, positions, row_place, cfg.feature_augment, rng,
                                                offset, opt.generator)
        terms = train_step(model, feats, positions, train_data.places, cfg, opt.optimizer, opt.generator)
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
    return sums


def _finish(cfg: TrainConfig, out: Path, best_dir: Path, progress: _Progress, cache_s: float) -> dict:
    """The run's summary (also written as summary.json), with the best heads copied to ``cfg.checkpoint``."""
    summary = {"best_epoch": progress.best_epoch, "best_val_r1": progress.best_r1, "epochs_run": len(progress.history),
               "cache_s": cache_s, "history": progress.history, "config": cfg.to_dict()}
    if cfg.checkpoint and progress.best_epoch:
        Path(cfg.checkpoint).mkdir(parents=True, exist_ok=True)
        for name in (HEADS_FILE, CONFIG_FILE):   # config.json last, as save_checkpoint writes them
            shutil.copyfile(best_dir / name, Path(cfg.checkpoint) / name)
        summary["checkpoint"] = str(cfg.checkpoint)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def write_log(history: list[dict], out: Path) -> None:
    """train_log.csv and curves.png (loss and validation R@1 per epoch)."""
    with open(out / "train_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_r1) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in ("loss", "ms_float", "ms_binary", "quant"):
        ax_loss.plot(epochs, [r.get(key, float("nan")) for r in history], marker="o", label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss")
    ax_loss.legend()
    ax_r1.plot(epochs, [r["val_r1"] for r in history], marker="o")
    ax_r1.set_xlabel("epoch")
    ax_r1.set_title(f"validation Recall@1 ({history[0]['sampler']} batches)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
