"""Reference max-pool with indices: PyTorch's own kernel, plus the
conversion of its flat indices to fastseg's compact window positions.

Semantics the fast backends reproduce exactly: each window scans its taps
row by row; the first maximum wins, except that a NaN always wins (so the
last NaN of a window wins); padding never wins.
"""

import torch
import torch.nn.functional as F

from .._layout import memory_format_of
from .._window import PoolWindow


def max_pool2d_with_indices(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, compact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Same signature as ``fastseg.ops.max_pool2d_with_indices``."""
    return pool_forward(input, PoolWindow.from_args(kernel_size, stride, padding, dilation), ceil_mode, compact)


def pool_forward(x: torch.Tensor, window: PoolWindow, ceil_mode: bool,
                 compact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # x: [N, C, H, W] -> values, indices: [N, C, Ho, Wo]
    values, flat = F.max_pool2d(x, window.kernel, window.stride, window.padding, window.dilation,
                                ceil_mode=ceil_mode, return_indices=True)
    if not compact:
        return values, flat
    return values, window.flat_to_compact(flat, x.shape[-1])


def pool_backward(grad_values: torch.Tensor, indices: torch.Tensor, window: PoolWindow,
                        in_hw: tuple[int, int]) -> torch.Tensor:
    """Gradient of the pool input: every output's gradient added at its max
    (several windows may share one max when they overlap)."""
    # grad_values, indices: [N, C, Ho, Wo] -> [N, C, H, W]
    n, c = grad_values.shape[:2]
    if indices.dtype == torch.int64:
        flat = indices
    else:
        rows, cols = window.compact_to_target(indices)
        flat = rows * in_hw[1] + cols
    # Sums in float32 at least (float64 stays float64), rounded once at the end.
    accumulate = torch.promote_types(grad_values.dtype, torch.float32)
    pooled_size = grad_values.shape[-2] * grad_values.shape[-1]
    grad_input = grad_values.new_zeros(n * c, in_hw[0] * in_hw[1], dtype=accumulate)
    grad_input.scatter_add_(1, flat.reshape(n * c, pooled_size), grad_values.reshape(n * c, pooled_size).to(accumulate))
    grad_input = grad_input.view(n, c, *in_hw).to(grad_values.dtype)
    return grad_input.contiguous(memory_format=memory_format_of(grad_values))
