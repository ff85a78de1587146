"""Autocast for fastseg's convolutions: under ``torch.autocast`` they take
their tensors in autocast's dtype, as aten's convolutions do (they are on
autocast's lower-precision list). Without this a model's second conv would
get a bfloat16 input and a float32 weight, which the dtype checks reject."""

import torch
from torch import Tensor


def autocast_inputs(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """``tensors`` cast to autocast's dtype for the first one's device when
    autocast is on there; unchanged otherwise. As aten's autocast, float64
    tensors and non-float ones keep their dtype."""
    device_type = tensors[0].device.type if isinstance(tensors[0], Tensor) else None
    if device_type is None or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)
