"""Backbones: multimodal LLMs that return hidden states at task tokens and per-frame visual tokens."""

from tpo.backbones.base import Backbone, BackboneOutput
from tpo.backbones.llava import LlavaBackbone, LlavaFamilyProcessor
from tpo.backbones.videochat import VideoChatBackbone, VideoChatProcessor, VisionTower

__all__ = [
    "Backbone",
    "BackboneOutput",
    "LlavaBackbone",
    "LlavaFamilyProcessor",
    "VideoChatBackbone",
    "VideoChatProcessor",
    "VisionTower",
]
