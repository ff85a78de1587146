"""Memory layout of op outputs: channels_last in, channels_last out."""

import torch


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` is laid out so (and not also plain
    contiguous, which size-1 dims allow), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` on x's device, laid out like ``x``."""
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format_of(x))
