"""Autocast for fastseg's convs: what ``torch.autocast`` does to
``F.conv2d``'s arguments, done before our checks and kernels.

Autocast casts at the dispatcher, below ``F.conv2d``; our convs check
dtypes and pick a backend above it, so without this an fp32 weight meets a
bf16 activation and the dtype check rejects a model that PyTorch's own
layers would run.
"""

import torch

# Autocast leaves float64 alone (and never touches integer tensors).
_CASTABLE = (torch.float16, torch.bfloat16, torch.float32)


def autocast_conv_args(input, *others):
    """``(input, *others)`` cast to the autocast dtype of the input's device
    when autocast is on there, as autocast casts a conv's input, weight and
    bias. Anything that is not a tensor passes unchanged, for the argument
    checks to name."""
    if not isinstance(input, torch.Tensor) or not torch.is_autocast_enabled(input.device.type):
        return (input, *others)
    dtype = torch.get_autocast_dtype(input.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _CASTABLE else t
                 for t in (input, *others))
