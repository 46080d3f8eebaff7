"""Augmentation applied to whole batches at once (no per-image Python loop).

Policies:
* ``none``: images unchanged.
* ``basic``: random crop with reflect padding (``size // 14`` pixels, 2 at 28 px) and horizontal
  flip with probability 1/2.
* ``strong``: a random affine map (rotation +-15 degrees, scale 0.9-1.1, shift up to 8%),
  horizontal flip, and brightness/contrast jitter of +-20%.

All randomness comes from an explicit ``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POLICIES = ("none", "basic", "strong")


def _rand(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Crop each image of ``x`` (N, C, H, W) at a random offset from its padded copy."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return xp[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flip a random half of the batch left-right."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_affine(x: torch.Tensor, g: torch.Generator, *, degrees: float = 15.0,
                  scale: tuple[float, float] = (0.9, 1.1), shift: float = 0.08) -> torch.Tensor:
    n = x.shape[0]
    angle = _rand(n, -degrees, degrees, g) * math.pi / 180
    s = _rand(n, *scale, g)
    tx, ty = _rand(n, -shift, shift, g), _rand(n, -shift, shift, g)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.2) -> torch.Tensor:
    n = x.shape[0]
    brightness = _rand(n, -strength, strength, g)[:, None, None, None]
    contrast = _rand(n, 1 - strength, 1 + strength, g)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness * 0.5).clamp_(0, 1)


def augment_batch(x: torch.Tensor, policy: str, g: torch.Generator) -> torch.Tensor:
    """Apply an augmentation policy to a float batch ``x`` (N, C, H, W) in [0, 1]."""
    if policy == "none":
        return x
    if policy == "basic":
        return random_flip(random_crop(x, max(1, x.shape[-1] // 14), g), g)
    if policy == "strong":
        return color_jitter(random_flip(random_affine(x, g), g), g)
    raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {POLICIES}")
