"""Backbone features computed once per (backbone, images, transform) and cached on disk in shards."""
from vfe.features.cache import FeatureCache, FeatureSet, default_cache_root

__all__ = ["FeatureCache", "FeatureSet", "default_cache_root"]
