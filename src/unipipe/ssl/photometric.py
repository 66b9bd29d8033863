"""Batched photometric augmentations on float images, with per-image random parameters.

The same code serves the CPU path (a batch of one crop inside a loader worker) and the
device path (the whole batch on the accelerator after transfer). Random numbers are drawn
from a CPU ``torch.Generator`` and moved to the images' device, so both paths are
reproducible from a seed.

Departures from torchvision, stated plainly: the hue shift rotates chroma in YIQ space
(a linear approximation of torchvision's HSV hue shift), and the random order of the four
jitter operations is drawn once per call, not once per image.
"""

from __future__ import annotations

import math

import torch

from unipipe.ssl.config import AugmentConfig

__all__ = ["gaussian_blur", "hed_jitter", "photometric", "rgb_to_gray"]

_GRAY = (0.299, 0.587, 0.114)
# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB) in optical-density RGB.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_YIQ_FROM_RGB = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)
_BLUR_KERNEL_PX = 9


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device):
    return (low + (high - low) * torch.rand(n, generator=gen)).to(device)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma (ITU-R 601 weights)."""
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _color_matrix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    # (N, 3, H, W) x (N or 1, 3, 3) -> (N, 3, H, W): out[c] = sum_k m[c, k] * x[k]
    return torch.einsum("nck,nkhw->nchw", matrix.to(x), x)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    theta = 2.0 * math.pi * shift  # (N,) hue shift as a fraction of the colour wheel
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = _RGB_FROM_YIQ.to(x.device) @ rot @ _YIQ_FROM_RGB.to(x.device)  # (N, 3, 3)
    return _color_matrix(x, m)


def _jitter_ops(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor).to(x.dtype)
    if op == 0:  # brightness
        return x * f
    if op == 1:  # contrast, around each image's mean luma
        mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * f + mean
    if op == 2:  # saturation, around each pixel's luma
        gray = rgb_to_gray(x)
        return (x - gray) * f + gray
    return _hue(x, factor)


def gaussian_blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Blur each image of (N, 3, H, W) with its own sigma (N,) in pixels; 9-px separable kernel."""
    n, c, h, w = x.shape
    t = torch.arange(_BLUR_KERNEL_PX, device=x.device, dtype=x.dtype) - _BLUR_KERNEL_PX // 2
    k = torch.exp(-(t.view(1, -1) ** 2) / (2.0 * sigma_px.to(x).view(-1, 1) ** 2))  # (N, 9)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*3, 9)
    pad = _BLUR_KERNEL_PX // 2
    y = x.reshape(1, n * c, h, w)
    y = torch.nn.functional.pad(y, (pad, pad, 0, 0), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = torch.nn.functional.pad(y, (0, 0, pad, pad), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def hed_jitter(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Perturb haematoxylin/eosin/DAB concentrations: s' = s * U(1-σ, 1+σ) + U(-σ, σ) per image."""
    n = x.shape[0]
    od = -torch.log(x.clamp(min=1e-6))  # optical density (natural log)
    stains = _color_matrix(od, _HED_FROM_RGB.t().expand(n, 3, 3))  # (N, 3=HED, H, W)
    alpha = (1.0 + sigma * (2.0 * torch.rand(n, 3, 1, 1, generator=gen) - 1.0)).to(x)
    beta = (sigma * (2.0 * torch.rand(n, 3, 1, 1, generator=gen) - 1.0)).to(x)
    stains = stains * alpha + beta
    od = _color_matrix(stains, _RGB_FROM_HED.t().expand(n, 3, 3))
    return torch.exp(-od).clamp(0.0, 1.0)


def photometric(
    x: torch.Tensor,
    cfg: AugmentConfig,
    *,
    blur_p: float,
    solarize_p: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Apply colour jitter, grayscale, blur and solarisation to (N, 3, H, W) in 0-1.

    Args:
        x: images on any device, values in [0, 1].
        cfg: probabilities and strengths.
        blur_p: blur probability for this crop role (1.0 / 0.1 / 0.5 in DINOv2).
        solarize_p: solarisation probability for this crop role (0.2 for the second global).
        gen: CPU generator the random parameters come from.
    """
    n, dev = x.shape[0], x.device
    x = x.float()  # stain jitter, if on, already ran per patch in the loader (augment.py)

    apply = _per_image(_uniform(n, 0, 1, gen, dev) < cfg.jitter_p)
    bright, contrast, sat, hue = cfg.jitter
    ranges = [
        (1 - bright, 1 + bright),
        (1 - contrast, 1 + contrast),
        (1 - sat, 1 + sat),
        (-hue, hue),
    ]
    factors = [
        _uniform(n, max(lo, 0.0) if i < 3 else lo, hi, gen, dev)
        for i, (lo, hi) in enumerate(ranges)
    ]
    for op in torch.randperm(4, generator=gen).tolist():
        x = torch.where(apply, _jitter_ops(x, op, factors[op]).clamp(0.0, 1.0), x)

    gray = _per_image(_uniform(n, 0, 1, gen, dev) < cfg.grayscale_p)
    x = torch.where(gray, rgb_to_gray(x).expand_as(x), x)

    blur = _per_image(_uniform(n, 0, 1, gen, dev) < blur_p)
    sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, dev)
    if blur_p > 0:
        x = torch.where(blur, gaussian_blur(x, sigma), x)

    solar = _per_image(_uniform(n, 0, 1, gen, dev) < solarize_p)
    x = torch.where(solar & (x >= 0.5), 1.0 - x, x)
    return x.clamp(0.0, 1.0)
