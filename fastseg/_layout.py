"""Memory layout of op outputs: channels_last in, channels_last out."""

import torch


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last (channels_last_3d for 5-D) when ``x`` is laid out so
    (and not also plain contiguous, which size-1 dims allow), else contiguous."""
    for channels_last, rank in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == rank and not x.is_contiguous() and x.is_contiguous(memory_format=channels_last):
            return channels_last
    return torch.contiguous_format


def empty_like_layout(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` on x's device, laid out like ``x``."""
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format_of(x))
