"""DINOv2 multi-crop on the CPU with PIL: resized crops, flips, 90° turns, photometric jitter.

Two photometric placements share the parameters in ``AugmentConfig``: ``worker`` runs the
PIL operations below in the loader workers (torchvision's semantics: random jitter order
per image, HSV hue shift); ``device`` leaves crops as uint8 and the Lightning module runs
the batched tensor version in ``unipipe.ssl.photometric`` on the accelerator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from unipipe.ssl.config import AugmentConfig, CropConfig
from unipipe.ssl.photometric import hed_jitter

__all__ = ["MultiCrop", "crop_roles", "normalize", "pil_photometric", "random_resized_crop"]

_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
_CROP_ATTEMPTS = 10
_TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


def _u(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def random_resized_crop(
    image: Image.Image, size: int, scale: tuple[float, float], gen: torch.Generator
) -> Image.Image:
    """A box covering ``scale`` of the area (aspect 3/4..4/3), resized bicubic to size x size."""
    w, h = image.size
    box = (0, 0, w, h)  # fallback: the whole image
    for _ in range(_CROP_ATTEMPTS):
        target = w * h * _u(gen, *scale)
        ratio = math.exp(_u(gen, *_LOG_RATIO))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (), generator=gen))
            top = int(torch.randint(0, h - ch + 1, (), generator=gen))
            box = (left, top, left + cw, top + ch)
            break
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _hue_shift(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def pil_photometric(
    image: Image.Image,
    cfg: AugmentConfig,
    *,
    blur_p: float,
    solarize_p: float,
    gen: torch.Generator,
) -> Image.Image:
    """Colour jitter (p), grayscale (p), Gaussian blur (blur_p), solarisation (solarize_p)."""
    if _u(gen) < cfg.jitter_p:
        bright, contrast, sat, hue = cfg.jitter
        ops = [
            lambda im: ImageEnhance.Brightness(im).enhance(
                _u(gen, max(0.0, 1 - bright), 1 + bright)
            ),
            lambda im: ImageEnhance.Contrast(im).enhance(
                _u(gen, max(0.0, 1 - contrast), 1 + contrast)
            ),
            lambda im: ImageEnhance.Color(im).enhance(_u(gen, max(0.0, 1 - sat), 1 + sat)),
            lambda im: _hue_shift(im, _u(gen, -hue, hue)),
        ]
        for k in torch.randperm(4, generator=gen).tolist():
            image = ops[k](image)
    if _u(gen) < cfg.grayscale_p:
        image = image.convert("L").convert("RGB")
    if _u(gen) < blur_p:
        image = image.filter(ImageFilter.GaussianBlur(radius=_u(gen, *cfg.blur_sigma)))
    if _u(gen) < solarize_p:
        image = ImageOps.solarize(image, threshold=128)
    return image


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(..., 3, H, W) in 0-1 -> standardised per channel."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x - m) / s


def crop_roles(cfg: AugmentConfig, n_local: int) -> list[tuple[float, float]]:
    """(blur_p, solarize_p) for each crop: first global, second global, then the locals."""
    first, second, local = cfg.blur_p
    return [(first, 0.0), (second, cfg.solarize_p)] + [(local, 0.0)] * n_local


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class MultiCrop:
    """Turns one (H, W, 3) uint8 patch into 2 global and ``n_local`` local crops.

    With ``photometric_on="worker"`` crops come out jittered and normalised (float32);
    with ``"device"`` they come out uint8 after the geometric steps (and stain jitter).
    """

    def __init__(
        self,
        crops: CropConfig,
        augment: AugmentConfig,
        *,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        self.crops = crops
        self.augment = augment
        self.mean = mean
        self.std = std

    def _geometric(self, image: Image.Image, size: int, scale, gen: torch.Generator):
        crop = random_resized_crop(image, size, scale, gen)
        if _u(gen) < self.augment.flip_p:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.augment.rotate90:  # with the flip above this reaches all 8 dihedral poses
            turn = _TURNS[int(torch.randint(0, 4, (), generator=gen))]
            crop = crop.transpose(turn) if turn is not None else crop
        return crop

    def _stain(self, patch: np.ndarray, gen: torch.Generator) -> np.ndarray:
        x = torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 255.0
        x = hed_jitter(x, self.augment.hed_sigma, gen)
        return (x[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()

    def __call__(self, patch: np.ndarray, gen: torch.Generator) -> dict[str, list[torch.Tensor]]:
        """Return ``{"global_crops": [2 x (3, G, G)], "local_crops": [n x (3, L, L)]}``."""
        if self.augment.hed_sigma > 0:  # one stain perturbation per patch, shared by its crops
            patch = self._stain(patch, gen)
        image = Image.fromarray(np.ascontiguousarray(patch), "RGB")
        c = self.crops
        sizes = [(c.global_size, c.global_scale)] * 2 + [(c.local_size, c.local_scale)] * c.n_local
        views = [self._geometric(image, size, scale, gen) for size, scale in sizes]
        if self.augment.photometric_on == "worker":
            roles = crop_roles(self.augment, c.n_local)
            views = [
                pil_photometric(v, self.augment, blur_p=b, solarize_p=s, gen=gen)
                for v, (b, s) in zip(views, roles, strict=True)
            ]
            tensors = [normalize(_to_tensor(v).float() / 255.0, self.mean, self.std) for v in views]
        else:
            tensors = [_to_tensor(v) for v in views]
        return {"global_crops": tensors[:2], "local_crops": tensors[2:]}
