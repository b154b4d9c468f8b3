"""Backbones: multimodal LLMs that return hidden states at task tokens and per-frame visual tokens.

Importing the package imports the model-family modules, which register their classes with
:func:`register_backbone`, so :meth:`Backbone.from_pretrained` finds them by ``model_type``.
"""

from tpo.backbones.base import (
    Backbone,
    BackboneOutput,
    backbone_class,
    register_backbone,
    registered_model_types,
)
from tpo.backbones.hf import HFBackbone
from tpo.backbones.internvl import InternVLBackbone, InternVLFamilyProcessor
from tpo.backbones.llava import LlavaBackbone, LlavaFamilyProcessor
from tpo.backbones.qwen_vl import QwenVLBackbone, QwenVLProcessor
from tpo.backbones.videochat import VideoChatBackbone, VideoChatProcessor, VisionTower

__all__ = [
    "Backbone",
    "BackboneOutput",
    "HFBackbone",
    "InternVLBackbone",
    "InternVLFamilyProcessor",
    "LlavaBackbone",
    "LlavaFamilyProcessor",
    "QwenVLBackbone",
    "QwenVLProcessor",
    "VideoChatBackbone",
    "VideoChatProcessor",
    "VisionTower",
    "backbone_class",
    "register_backbone",
    "registered_model_types",
]
