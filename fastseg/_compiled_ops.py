"""The ops of the compiled extension (``torch.ops.fastseg_C``) behind the same
Python signatures as the Triton and reference backends; they serve both the
``cpp`` (CPU) and ``cuda`` backends, the dispatcher picking the kernel by
device."""

import torch

from ._extension import extension
from ._window import PoolWindow


def _ops():
    extension()  # registers torch.ops.fastseg_C on first use
    return torch.ops.fastseg_C


def unpool_forward(x: torch.Tensor, indices: torch.Tensor, window: PoolWindow,
                   out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _ops().max_unpool2d(x, indices, list(out_hw), *window.as_lists())


def unpool_backward(grad_output: torch.Tensor, indices: torch.Tensor, window: PoolWindow) -> torch.Tensor:
    return _ops().max_unpool2d_backward(grad_output, indices, *window.as_lists())
