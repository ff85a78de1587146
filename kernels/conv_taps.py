"""Where a convolution tap reads, shared by the dense and depthwise kernels.

Forward: output pixel ``o`` reads source pixel ``o * stride - pad + tap * dil``.
Transposed (the input gradient): input pixel ``i`` receives from output
pixel ``(i + pad - tap * dil) / stride`` when that division is exact.
"""

import triton
import triton.language as tl


@triton.jit
def source_coord(o, tap, size, stride, pad, dil, TRANSPOSED: tl.constexpr):
    """The source coordinate tap ``tap`` of destination coordinate ``o``
    reads, and whether it lies inside the source (size ``size``)."""
    if TRANSPOSED:
        t = o + pad - tap * dil
        i = t // stride
        ok = (t >= 0) & (i * stride == t) & (i < size)
    else:
        i = o * stride - pad + tap * dil
        ok = (i >= 0) & (i < size)
    return i, ok


@triton.jit
def any_true(mask):
    """Whether any lane of ``mask`` is set: the test that skips a tap whose
    reads all fall in the padding for this tile."""
    return tl.max(mask.to(tl.int32), axis=0) > 0


@triton.jit
def unravel_pixels(m, H, W):
    """Flat pixel index over (n, h, w) -> (n, h, w)."""
    w = m % W
    rest = m // W
    return rest // H, rest % H, w
