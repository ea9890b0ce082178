"""Multiply-accumulate (MAC) counts: what a layer executes for a given gate pattern.

Counts are per sample. A dense layer's count equals what
:class:`torch.utils.flop_counter.FlopCounterMode` reports (FLOPs = 2 x MACs); a gated
layer executes only its active output units, fed only by the active input units
(inactive inputs are exact zeros, so the sparse mode never touches them), plus its gate
network. The formulas take ints or tensors of per-sample active counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

N = TypeVar("N", int, Tensor)


def conv2d_macs(c_in: N, c_out: N, kernel: tuple[int, int], out_hw: tuple[int, int]) -> N:
    """MACs of a (groups=1) 2-D convolution: ``c_out * c_in * kh * kw * H_out * W_out``."""
    return c_out * c_in * (kernel[0] * kernel[1] * out_hw[0] * out_hw[1])


def linear_macs(d_in: N, d_out: N) -> N:
    """MACs of ``x @ W.T`` for one sample."""
    return d_in * d_out


def conv_gate_macs(c_in: N, in_hw: tuple[int, int], num_units: int) -> N:
    """Gate of a conv layer: global average pool (one add per input element) + linear."""
    return c_in * (in_hw[0] * in_hw[1]) + c_in * num_units


def lowrank_gate_macs(d_in: N, rank: int, num_units: int) -> N:
    """Gate of a linear layer: ``in -> r -> N`` low-rank map."""
    return d_in * rank + rank * num_units


def spatial_softmax_macs(channels: N, hw: tuple[int, int]) -> N:
    """Expected keypoint coordinates: ``softmax(x) @ coords`` with 2 coordinates."""
    return channels * (hw[0] * hw[1] * 2)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs that :class:`FlopCounterMode` sees while running ``fn(*args, **kwargs)``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
