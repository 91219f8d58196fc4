"""Map-adaptive heads fitted without labels on a map's own descriptors.

At `vpr build-map` time the map's float descriptors give a PCA-whitening of the descriptor (the
directions that every place of this map shares stop dominating the cosine) and, with ``itq``, a
binarisation learned by iterative quantisation (Gong & Lazebnik, "Iterative quantization: a
Procrustean approach to learning binary codes", CVPR 2011 / TPAMI 2013) on the map's PCA space, which
replaces the model's hash branch. Both are stored with the map and applied to every query searched
against it, so map and queries stay in one space. Nothing here needs labels, a GPU or torch.
"""

from vpr_core.adapt.adaptation import ADAPTATION_VERSION, AdaptationError, MapAdaptation
from vpr_core.adapt.config import ADAPT_METHODS, AdaptConfig
from vpr_core.adapt.fit import fit_adaptation

__all__ = ["ADAPTATION_VERSION", "ADAPT_METHODS", "AdaptConfig", "AdaptationError", "MapAdaptation",
           "fit_adaptation"]
