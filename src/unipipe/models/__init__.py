"""Backbone models: timm ViTs and the encoder export format shared by pretraining and embedding."""

from unipipe.models.vit import EncoderMeta, build_vit, load_encoder, save_encoder

__all__ = ["EncoderMeta", "build_vit", "load_encoder", "save_encoder"]
