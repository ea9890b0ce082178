"""Image augmentation for pixel policies (torch side, on uint8 HWC batches)."""

from __future__ import annotations

import torch
from torch import Tensor


def random_shift(pixels: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """DrQ random shift: translate each image by up to ``pad`` pixels, edges replicated.

    Replicate-pads by ``pad`` and crops each image back to ``H x W`` at its random offset
    (Kostrikov et al. 2020; Yarats et al. 2021), on uint8 ``[B, H, W, C]`` batches without
    a float copy. The pad is written once and each crop is one strided copy: at batch 64
    on one CPU thread 1.8 ms, against 7.6 ms for a per-pixel index gather of the same
    result (scripts/bench_bc_parts.py, docs/results.md).

    Args:
        pixels: ``[B, H, W, C]`` images (any dtype).
        pad: maximum shift in pixels (0 returns the input unchanged).
        generator: RNG for the shifts (reproducible training).
    """
    if pad <= 0:
        return pixels
    b, h, w, c = pixels.shape
    shifts = torch.randint(-pad, pad + 1, (b, 2), generator=generator)
    padded = pixels.new_empty(b, h + 2 * pad, w + 2 * pad, c)
    padded[:, pad : pad + h, pad : pad + w] = pixels
    padded[:, :pad, pad : pad + w] = pixels[:, :1]  # top and bottom rows replicated
    padded[:, pad + h :, pad : pad + w] = pixels[:, -1:]
    padded[:, :, :pad] = padded[:, :, pad : pad + 1]  # then the columns, corners included
    padded[:, :, pad + w :] = padded[:, :, pad + w - 1 : pad + w]
    out = torch.empty_like(pixels)
    for i, (dy, dx) in enumerate((shifts + pad).tolist()):
        out[i] = padded[i, dy : dy + h, dx : dx + w]
    return out


def random_colour_mix(
    pixels: Tensor, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """Per image, a random 1x1 colour mix and tint: ``x' = clip(M x + o)`` on RGB in [0, 1].

    ``M = I + U(-s, s)^{3x3}`` and ``o = U(-s/2, s/2)^3``, drawn per image. Because ``M``
    mixes the channels, it moves differently coloured things differently (a red cube and a
    green target do not shift alike), as a recoloured scene does -- a global brightness or
    tint could not; the tint covers a light's colour and strength. A 1x1 random
    convolution in the sense of Lee et al. 2020 ("Network Randomization"), on the pixels.

    Args:
        pixels: ``[B, H, W, 3k]`` uint8 images (``k`` stacked RGB frames share one draw:
            a scene keeps its colours within an episode).
        strength: ``s`` (0 returns the input unchanged and draws nothing).
        generator: RNG for the draws (the global one by default: resume reproduces it).
    """
    if strength <= 0:
        return pixels
    b, h, w, c = pixels.shape
    if pixels.dtype != torch.uint8:  # [0, 255] in and out: a float image would be re-quantised
        raise TypeError(f"colour mix needs uint8 images, got {pixels.dtype}")
    if c % 3:
        raise ValueError(f"colour mix needs RGB frames (channels a multiple of 3), got {c}")
    mix = torch.eye(3) + (torch.rand(b, 3, 3, generator=generator) * 2 - 1) * strength
    tint = (torch.rand(b, 1, 3, generator=generator) - 0.5) * strength
    x = pixels.reshape(b, h * w * c // 3, 3).to(torch.float32).div_(255.0)
    # rows of x are pixels: x @ M^T applies M to each pixel's colour
    out = torch.baddbmm(tint, x, mix.transpose(1, 2))
    return out.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).reshape(b, h, w, c)
