"""Frozen ImageNet backbones (timm) that own their preprocessing; `create_backbone` is the entry point."""
from vfe.backbones.backbone import Backbone, create_backbone, resolve_device
from vfe.backbones.registry import DEFAULT_BACKBONE, PACKAGED, ExtractionSettings
from vfe.backbones.weights import WeightsNotFoundError, load_state_dict_file

__all__ = ["Backbone", "create_backbone", "resolve_device", "DEFAULT_BACKBONE", "PACKAGED", "ExtractionSettings",
           "WeightsNotFoundError", "load_state_dict_file"]
