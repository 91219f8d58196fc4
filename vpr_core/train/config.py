"""Training configuration: one dataclass tree, read from a YAML or JSON file.

Paths in the file are relative to the directory the command runs in (the repository root in the
documented commands), so a config never names a machine's absolute paths.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpr_core.train.feature_augment import FeatureAugmentConfig
from vpr_core.train.feature_cache import AugmentConfig
from vpr_core.train.losses import MSLossConfig
from vpr_core.train.route import POSITIONS
from vpr_core.train.sampling import SageConfig

SAMPLERS = ("random", "sage")
DATA_KINDS = ("nordland", "route")


@dataclass(frozen=True)
class DataConfig:
    """What the heads learn from.

    ``kind: nordland``: season pairs, place = file index, images = the same file in each season
    (``root``, ``split``, ``seasons``; radii in files). ``kind: route``: one recording with positions,
    ``source`` a source spec as for ``vpr build-map --source`` (a bag with a pose/odometry or NavSatFix
    topic, or a folder whose frames carry positions); ``position`` picks the pose, UTM or GPS positions
    (``auto``: pose, else UTM, else GPS); frames within ``positive_radius_m`` metres are the same place,
    frames farther than ``negative_radius_m`` are negatives, pairs in between are left out. The
    defaults are NetVLAD's (positives within 10 m, negatives beyond 25 m). Both kinds validate on the
    last ``val_fraction`` of their places, contiguous: the end of the route.
    """

    kind: str = "nordland"
    root: str = "../shared/data/nordland_tiny"
    split: str = "dev"                 # trained on (train + validation slice)
    test_split: str = "test"           # reported on by `python -m vpr_core.train.report` only
    seasons: tuple[str, ...] = ("summer", "winter")
    val_fraction: float = 0.15         # last places of the split, contiguous
    positive_radius: int = 1           # +-1 file index is the same place (Nordland protocol)
    negative_radius: int = 1
    source: str = ""                   # kind route: the recording
    position: str = "auto"             # kind route: auto, pose, utm or gps
    positive_radius_m: float = 10.0
    negative_radius_m: float = 25.0

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data.kind {self.kind!r} is not supported by `vpr train`; choose one of "
                             f"{', '.join(DATA_KINDS)} (GSV-Cities tables are read with "
                             f"vpr_core.train.places.gsv_cities_places)")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        object.__setattr__(self, "seasons", tuple(self.seasons))
        if self.kind == "nordland" and len(self.seasons) < 2:
            raise ValueError(f"data.seasons needs two or more seasons (database first), got {self.seasons}")
        if self.kind == "route":
            self._check_route()

    def _check_route(self) -> None:
        if not self.source:
            raise ValueError("data.source is empty: name the recording to train on, e.g. "
                             "source: rosbag:drive.mcap?pose_topic=/odom")
        if self.position not in POSITIONS:
            raise ValueError(f"data.position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if not 0.0 < self.positive_radius_m < self.negative_radius_m:
            raise ValueError(f"data.negative_radius_m ({self.negative_radius_m}) must be larger than "
                             f"data.positive_radius_m ({self.positive_radius_m}) > 0: frames within the first "
                             f"are the same place, frames beyond the second are negatives (e.g. 10 and 25)")

    @property
    def radii(self) -> tuple[float, float]:
        """(positive, negative) radius in the units of the place positions (files, or metres)."""
        if self.kind == "route":
            return self.positive_radius_m, self.negative_radius_m
        return float(self.positive_radius), float(self.negative_radius)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "lite0"
    seed: int = 0
    threads: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    cache_dir: str = ".cache/features"
    augment: AugmentConfig = field(default_factory=AugmentConfig)              # image views, before caching
    feature_augment: FeatureAugmentConfig = field(default_factory=FeatureAugmentConfig)   # on cached features
    sampler: str = "sage"
    sage: SageConfig = field(default_factory=SageConfig)
    places_per_batch: int = 32
    places_per_epoch: int | None = None     # None: every training place once per epoch
    epochs: int = 10
    lr: float = 4e-4
    lr_step_epochs: int = 3
    lr_gamma: float = 0.5
    patience: int = 3                       # epochs without a better validation R@1 before stopping
    loss: MSLossConfig = field(default_factory=MSLossConfig)
    quant_weight: float = 0.1               # lambda of L_Q
    quant_pair_fraction: float = 1.0
    out_dir: str = "out/train/lite0-nordland"
    checkpoint: str | None = None           # where the best heads are written at the end

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        for name in ("places_per_batch", "epochs", "lr_step_epochs", "patience", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.places_per_batch < 2:
            raise ValueError("places_per_batch must be >= 2 (the losses need negatives)")
        if self.places_per_epoch is not None and self.places_per_epoch < self.places_per_batch:
            raise ValueError(f"places_per_epoch {self.places_per_epoch} < places_per_batch {self.places_per_batch}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    nested = {"data": DataConfig, "augment": AugmentConfig, "feature_augment": FeatureAugmentConfig,
              "sage": SageConfig, "loss": MSLossConfig}
    kwargs = {k: _build(nested[k], v, f"{where}.{k}") if k in nested and cls is TrainConfig else v
              for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    return _build(TrainConfig, values, where)


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config in ``path`` (YAML or JSON), with top-level ``overrides`` applied."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} not found")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    values = dict(values or {})
    values.update(overrides or {})
    return config_from_dict(values, str(path))
