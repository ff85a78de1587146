"""Reference max-unpool for flat (int64) and compact (uint8) indices.

Each input value goes to the position its index names in a zero output
plane. Where several indices name one position (overlapping pool windows),
the last in row-major input order wins: PyTorch's CPU kernel does the same,
and this reference gets it deterministically by electing the winner with an
``amax`` over input positions instead of relying on a scatter's order.
"""

import torch

from .._layout import memory_format_of
from .._window import PoolWindow


def unpool_targets(indices: torch.Tensor, window: PoolWindow,
                   out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat target of every index in its output plane, and whether it is a
    valid one (inside the plane; for compact indices also inside the window)."""
    # indices: [N, C, Hi, Wi] -> targets (int64), valid (bool): [N, C, Hi, Wi]
    if indices.dtype == torch.int64:
        valid = (indices >= 0) & (indices < out_hw[0] * out_hw[1])
        return indices, valid
    rows, cols = window.compact_to_target(indices)
    valid = ((indices.long() < window.area) & (rows >= 0) & (rows < out_hw[0])
             & (cols >= 0) & (cols < out_hw[1]))
    return rows * out_hw[1] + cols, valid


def max_unpool2d(input: torch.Tensor, indices: torch.Tensor, kernel_size, stride=None, padding=0,
                 output_size=None, *, dilation=1) -> torch.Tensor:
    """Same signature as ``fastseg.ops.max_unpool2d`` (4-D input)."""
    window = PoolWindow.from_args(kernel_size, stride, padding, dilation)
    out_hw = tuple(output_size[-2:]) if output_size is not None \
        else window.default_unpooled_size(tuple(input.shape[-2:]))
    out, invalid = unpool_forward(input, indices, window, out_hw)
    if invalid.item():
        raise ValueError(f"indices: {invalid.item()} entries do not name a position of the output plane {out_hw}")
    return out


def unpool_forward(x: torch.Tensor, indices: torch.Tensor, window: PoolWindow,
                   out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the output and the number of invalid indices (int32 [1]);
    invalid indices are skipped."""
    # x, indices: [N, C, Hi, Wi] -> [N, C, Ho, Wo]
    n, c = x.shape[:2]
    planes, plane_size = n * c, out_hw[0] * out_hw[1]
    targets, valid = unpool_targets(indices, window, out_hw)
    in_size = x.shape[-2] * x.shape[-1]
    targets = targets.reshape(planes, in_size)
    valid = valid.reshape(planes, in_size)
    source = torch.arange(targets.shape[1], device=x.device).expand(planes, -1)
    # winner[p, t]: the last input position whose index names output t, or -1
    winner = torch.full((planes, plane_size + 1), -1, dtype=torch.int64, device=x.device)
    dump = torch.full_like(targets, plane_size)  # invalid indices land in a discarded column
    winner.scatter_reduce_(1, torch.where(valid, targets, dump), source, reduce="amax")
    winner = winner[:, :plane_size]
    picked = x.reshape(planes, in_size).gather(1, winner.clamp(min=0))
    out = torch.where(winner >= 0, picked, torch.zeros_like(picked))
    invalid = (~valid).sum().to(torch.int32).reshape(1)
    return out.view(n, c, *out_hw).contiguous(memory_format=memory_format_of(x)), invalid


def unpool_backward(grad_output: torch.Tensor, indices: torch.Tensor,
                          window: PoolWindow) -> torch.Tensor:
    """Each input's gradient is the output gradient at its target (0 for an
    invalid index)."""
    # grad_output: [N, C, Ho, Wo], indices: [N, C, Hi, Wi] -> [N, C, Hi, Wi]
    n, c = grad_output.shape[:2]
    out_hw = tuple(grad_output.shape[-2:])
    targets, valid = unpool_targets(indices, window, out_hw)
    flat_grad = grad_output.reshape(n * c, out_hw[0] * out_hw[1])
    picked = flat_grad.gather(1, torch.where(valid, targets, 0).reshape(n * c, indices.shape[-2] * indices.shape[-1]))
    grad_input = torch.where(valid, picked.view(indices.shape), 0).to(grad_output.dtype)
    return grad_input.contiguous(memory_format=memory_format_of(indices))
