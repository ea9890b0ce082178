"""Image augmentation for pixel policies (torch side, on uint8 HWC batches)."""

from __future__ import annotations

import torch
from torch import Tensor


def random_shift(pixels: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """DrQ random shift: translate each image by up to ``pad`` pixels, edges replicated.

    Equivalent to replicate-padding by ``pad`` and randomly cropping back to ``H x W``
    (Kostrikov et al. 2020; Yarats et al. 2021), done with clamped index gathers so it
    works on uint8 ``[B, H, W, C]`` batches without a float copy.

    Args:
        pixels: ``[B, H, W, C]`` images (any dtype).
        pad: maximum shift in pixels (0 returns the input unchanged).
        generator: RNG for the shifts (reproducible training).
    """
    if pad <= 0:
        return pixels
    b, h, w, _ = pixels.shape
    device = pixels.device
    shifts = torch.randint(-pad, pad + 1, (b, 2), generator=generator).to(device)
    rows = (torch.arange(h, device=device)[None, :] + shifts[:, :1]).clamp(0, h - 1)
    cols = (torch.arange(w, device=device)[None, :] + shifts[:, 1:]).clamp(0, w - 1)
    batch = torch.arange(b, device=device)[:, None, None]
    return pixels[batch, rows[:, :, None], cols[:, None, :]]
