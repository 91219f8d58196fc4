"""Training the heads on cached backbone features: the backbone is frozen, so its feature maps are
computed once (``feature_cache``) and only the small heads run in the training loop."""

from vpr_core.train.config import TrainConfig, load_train_config
from vpr_core.train.feature_cache import FeatureCache, build_feature_cache
from vpr_core.train.losses import multi_similarity_loss, quantization_loss
from vpr_core.train.places import PlaceSet, cosplace_groups, gsv_cities_places, nordland_places, route_places
from vpr_core.train.sampling import affinity_graph, greedy_clique_batches, random_batches

__all__ = [
    "FeatureCache", "PlaceSet", "TrainConfig", "affinity_graph", "build_feature_cache", "cosplace_groups",
    "greedy_clique_batches", "gsv_cities_places", "load_train_config", "multi_similarity_loss",
    "nordland_places", "quantization_loss", "random_batches", "route_places",
]
