"""Activations applied inside fused kernels; codes from
``fastseg._activation.ACTIVATION_CODES``."""

import triton
import triton.language as tl


@triton.jit
def activate(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == 1:  # relu
        x = tl.maximum(x, 0.0)
    elif ACTIVATION == 2:  # relu6
        x = tl.minimum(tl.maximum(x, 0.0), 6.0)
    return x
