"""Frozen ImageNet backbones (timm) that own their preprocessing; `create_backbone` is the entry point."""
from vfe.backbones.backbone import Backbone, create_backbone, resolve_device
from vfe.backbones.registry import DEFAULT_BACKBONE, PACKAGED, ExtractionSettings
from vfe.backbones.weights import WeightsNotFoundError, load_state_dict_file

__all__ = [
           "DEFAULT_BACKBONE",
           "PACKAGED",
           "Backbone",
           "ExtractionSettings",
           "WeightsNotFoundError",
           "create_backbone",
           "load_state_dict_file",
           "resolve_device",
]
