"""DINOv2 losses, one per module, and the teacher centering they share."""

from unipipe.ssl.losses.centering import SoftmaxCenter, sinkhorn_knopp
from unipipe.ssl.losses.dino import dino_cls_loss
from unipipe.ssl.losses.ibot import ibot_patch_loss
from unipipe.ssl.losses.koleo import koleo_loss

__all__ = ["SoftmaxCenter", "dino_cls_loss", "ibot_patch_loss", "koleo_loss", "sinkhorn_knopp"]
