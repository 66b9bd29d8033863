"""unipipe: curate whole-slide images, pretrain with DINOv2, embed and evaluate as UNI did."""

__version__ = "0.1.0"

__all__ = ["__version__"]
