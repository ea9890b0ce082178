"""Gated CNN vision encoder: ``HxWxC`` uint8 pixels -> keypoint features.

Conv stack (DrQ-style: stride 2 first, then stride 1, no padding) of gated convs,
then a spatial softmax that turns each channel into its expected ``(x, y)`` image
coordinate -- a precise, cheap position read-out (anchors.md: precision is the
bottleneck of pixel BC). A gated-off channel's keypoint is multiplied by its gate so
it is exactly zero, and the sparse mode simply leaves it out.

Pixels are normalised either by a fixed map (``/255 - 0.5``) or per image
(``input_norm="image"``): each channel standardised over its pixels, so the light's
strength and a global colour cast drop out. With the latter the first conv's gate reads
channel means that are always zero, so its units are switched by their learned bias
alone (input-independent); the gates of the later layers read features.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from swan_policy.nn import flops
from swan_policy.nn.layers import Active, GatedConv2d, GateOptions

InputNorm = Literal["fixed", "image"]
IMAGE_NORM_EPS = 0.01  # std floor, in [0, 1] pixel units: a flat image stays finite


def preprocess_pixels(pixels: Tensor, norm: InputNorm = "fixed") -> Tensor:
    """``[B, H, W, C]`` uint8 -> ``[B, C, H, W]`` float.

    ``norm="fixed"``: ``x / 255 - 0.5``, in ``[-0.5, 0.5]``. ``norm="image"``: each image's
    channels standardised over their pixels, ``(x - mean) / sqrt(var + eps^2)`` (in
    ``[0, 1]`` units), so scaling an image's brightness or shifting a channel leaves it
    (up to uint8 rounding) unchanged.
    """
    # contiguous NCHW: a channels-last view would send small convs down slow paths
    x = pixels.permute(0, 3, 1, 2).to(torch.float32).div(255.0)
    if norm == "image":
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        return ((x - mean) * torch.rsqrt(var + IMAGE_NORM_EPS**2)).contiguous()
    return x.sub(0.5).contiguous()


class SpatialSoftmax(nn.Module):
    """``[B, C, H, W]`` -> ``[B, 2C]``: per channel, ``softmax(x) @ coords`` (x, y)."""

    coords: Tensor

    def __init__(self, hw: tuple[int, int]) -> None:
        super().__init__()
        self.hw = hw
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, hw[0]), torch.linspace(-1.0, 1.0, hw[1]), indexing="ij"
        )
        self.register_buffer("coords", torch.stack([xs, ys], -1).reshape(-1, 2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        attn = torch.softmax(x.flatten(2), dim=-1)  # [B, C, HW]
        return torch.matmul(attn, self.coords).flatten(1)  # [B, 2C] as (x0, y0, x1, y1, ...)


def keypoint_index(channel_idx: Tensor) -> Tensor:
    """Feature indices ``(2c, 2c+1)`` of the keypoints of channels ``channel_idx``."""
    return torch.stack([2 * channel_idx, 2 * channel_idx + 1], dim=1).flatten()


class GatedConvEncoder(nn.Module):
    """Gated conv stack + spatial softmax.

    Args:
        in_channels: image channels (3 per stacked frame).
        image_hw: image height and width.
        channels / strides: per conv layer.
        kernel_size: conv kernel size (all layers).
        gated: gates on every conv (``False`` builds the dense baseline).
        options: gate hyper-parameters.
        ref_units: per-layer unit count the budget refers to (set by compaction).
        input_norm: pixel normalisation (:func:`preprocess_pixels`).
    """

    def __init__(
        self,
        in_channels: int,
        image_hw: tuple[int, int],
        channels: list[int],
        strides: list[int],
        kernel_size: int = 3,
        *,
        gated: bool = True,
        options: GateOptions | None = None,
        ref_units: list[int] | None = None,
        input_norm: InputNorm = "fixed",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_norm: InputNorm = input_norm
        layers: list[GatedConv2d] = []
        hw, c_in = image_hw, in_channels
        for i, (c_out, stride) in enumerate(zip(channels, strides, strict=True)):
            layer = GatedConv2d(
                c_in,
                c_out,
                kernel_size,
                stride,
                in_hw=hw,
                gated=gated,
                options=options,
                num_ref_units=ref_units[i] if ref_units else None,
            )
            layers.append(layer)
            hw, c_in = layer.out_hw, c_out
        self.layers = nn.ModuleList(layers)
        self.convs: list[GatedConv2d] = layers  # typed view of the same modules
        self.pool = SpatialSoftmax(hw)
        self.out_dim = 2 * c_in

    def forward(self, pixels: Tensor, budget: float = 1.0) -> tuple[Tensor, list[Tensor | None]]:
        """Masked mode. Returns features ``[B, 2C]`` and each layer's gates."""
        x = preprocess_pixels(pixels, self.input_norm)
        gates: list[Tensor | None] = []
        for layer in self.convs:
            x, g = layer(x, budget)
            gates.append(g)
        feats = self.pool(x)
        if gates[-1] is not None:
            feats = feats * gates[-1].repeat_interleave(2, dim=1)
        return feats, gates

    def forward_sparse(self, pixels: Tensor, budget: float = 1.0) -> Active:
        """Sparse mode: the present keypoint features (gates: ``layer.gate.last_gates``)."""
        a = Active(preprocess_pixels(pixels, self.input_norm))
        for layer in self.convs:
            a = layer.forward_sparse(a, budget)
        feats = self.pool(a.x)
        return Active(feats, None if a.idx is None else keypoint_index(a.idx))

    def executed_macs(self, gates: list[Tensor | None], batch: int) -> dict[str, Tensor]:
        """Per-sample MACs of each conv layer and the pool for the given gate pattern."""
        out: dict[str, Tensor] = {}
        n_in = torch.full((batch,), float(self.in_channels))
        for i, (layer, g) in enumerate(zip(self.convs, gates, strict=True)):
            n_out = g.sum(1) if g is not None else torch.full((batch,), float(layer.num_units))
            out[f"encoder.layers.{i}"] = layer.macs(n_in, n_out)
            n_in = n_out
        out["encoder.pool"] = flops.spatial_softmax_macs(n_in, self.pool.hw)
        return out
