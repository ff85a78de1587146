"""Index arithmetic shared by the pooling kernels: walking a 4-D tensor in
its physical order, so that NCHW and channels_last both get coalesced
accesses."""

import torch
import triton
import triton.language as tl

from .._layout import memory_format_of

BLOCK = 512


@triton.jit
def unravel_nchw(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Linear offsets in the tensor's memory order -> (n, c, h, w)."""
    if CHANNELS_LAST:
        c = offs % C
        rest = offs // C
        w = rest % W
        rest = rest // W
        h = rest % H
        n = rest // H
    else:
        w = offs % W
        rest = offs // W
        h = rest % H
        rest = rest // H
        c = rest % C
        n = rest // C
    return n, c, h, w


def walks_channels_last(t: torch.Tensor) -> bool:
    """Whether kernels walking ``t`` should go channels fastest."""
    return memory_format_of(t) == torch.channels_last


def grid_for(numel: int) -> tuple[int]:
    return (triton.cdiv(numel, BLOCK),)
