"""What to fit on a map: the adaptation method and its few settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

ADAPT_METHODS = ("none", "whiten", "itq")


@dataclass(frozen=True)
class AdaptConfig:
    """none: the model's outputs as they are; whiten: PCA-whitened float descriptor, the model's
    codes; itq: whitened descriptor and codes from ITQ on the map's PCA space (the model's hash
    branch is then unused).

    ``shrinkage`` is a ridge added to every eigenvalue, relative to their mean: it keeps the weakest
    directions (noise, or too few places to estimate them) from being blown up to unit variance.
    ``power`` is the eigenvalue exponent (0.5: full whitening, 0: rotation only).
    """

    method: str = "none"  # off by default: on the Nordland-trained heads it costs recall (README)
    shrinkage: float = 1.0
    power: float = 0.25  # with shrinkage: chosen on the Nordland-tiny development section (README)
    max_components: int | None = None
    itq_iterations: int = 50
    seed: int = 0
    max_fit_rows: int = 50_000  # fit on an evenly spaced sample of a larger map (PCA and ITQ cost)

    def __post_init__(self) -> None:
        if self.method not in ADAPT_METHODS:
            raise ValueError(f"adapt method must be one of {', '.join(ADAPT_METHODS)}, got {self.method!r}")
        if not (isinstance(self.shrinkage, (int, float)) and math.isfinite(self.shrinkage) and self.shrinkage >= 0):
            raise ValueError(f"adapt shrinkage must be a finite number >= 0, got {self.shrinkage!r}")
        if not (isinstance(self.power, (int, float)) and 0 <= self.power <= 1):
            raise ValueError(f"adapt power must be in [0, 1] (0.5: full whitening), got {self.power!r}")
        if self.max_components is not None and (not isinstance(self.max_components, int)
                                                or isinstance(self.max_components, bool)
                                                or self.max_components < 1):
            raise ValueError(f"adapt max_components must be None or an int >= 1, got {self.max_components!r}")
        for name, least in (("itq_iterations", 1), ("seed", 0), ("max_fit_rows", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"adapt {name} must be an int >= {least}, got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"
