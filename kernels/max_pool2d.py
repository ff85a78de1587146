"""Max-pool with indices in Triton: one program per block of outputs, each
output scanning its window's taps row by row.

Tie-breaking is PyTorch's: the first maximum wins, a NaN always wins (so
the last NaN of a window), padding never wins. 16-bit inputs are compared
in float32, which holds them exactly (and Triton's interpreter compares
bfloat16 by its raw bits); float64 stays float64.
"""

import torch
import triton
import triton.language as tl

from .._layout import empty_like_layout
from .layout import BLOCK, grid_for, unravel_nchw, walks_channels_last
from .pool_window import window_gather


@triton.jit
def _max_pool2d_kernel(
    x_ptr,  # [N, C, H, W]
    y_ptr,  # [N, C, Ho, Wo] max values
    idx_ptr,  # [N, C, Ho, Wo] int64 flat (h * W + w) or uint8 compact (r * KW + q)
    C, H, W, Ho, Wo, numel,
    x_n, x_c, x_h, x_w,  # strides of x
    y_n, y_c, y_h, y_w,  # strides of y; idx has the same layout
    pad_h, pad_w, stride_h, stride_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    COMPACT: tl.constexpr,
    COMPARE: tl.constexpr,  # float32 for 16-bit inputs (exact), else the input dtype
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    n, c, oh, ow = unravel_nchw(offs, C, Ho, Wo, CHANNELS_LAST)
    x_plane = n * x_n + c * x_c
    h0 = oh * stride_h - pad_h
    w0 = ow * stride_w - pad_w
    best = tl.full([BLOCK], float("-inf"), dtype=COMPARE)
    best_tap = tl.full([BLOCK], -1, dtype=tl.int32)
    for r in range(KH):
        ih = h0 + r * dil_h
        row_ok = live & (ih >= 0) & (ih < H)
        for q in tl.static_range(KW):
            iw = w0 + q * dil_w
            ok = row_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_ptr + x_plane + ih * x_h + iw * x_w, mask=ok, other=float("-inf")).to(COMPARE)
            # The first valid tap is taken unconditionally (it is PyTorch's
            # starting index even when every tap is -inf); v != v is NaN.
            take = ok & ((v > best) | (v != v) | (best_tap < 0))
            best = tl.where(take, v, best)
            best_tap = tl.where(take, r * KW + q, best_tap)
    out = n * y_n + c * y_c + oh * y_h + ow * y_w
    tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=live)
    if COMPACT:
        tl.store(idx_ptr + out, best_tap.to(tl.uint8), mask=live)
    else:
        ih = h0 + (best_tap // KW) * dil_h
        iw = w0 + (best_tap % KW) * dil_w
        tl.store(idx_ptr + out, ih * W + iw, mask=live)


def pool_forward(x: torch.Tensor, window, ceil_mode: bool,
                 compact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # x: [N, C, H, W] -> values, indices: [N, C, Ho, Wo], laid out like x
    n, c, h, w = x.shape
    out_hw = window.pooled_size((h, w), ceil_mode)
    values = empty_like_layout(x, (n, c, *out_hw))
    indices = torch.empty_like(values, dtype=torch.uint8 if compact else torch.int64)
    if values.numel() == 0:
        return values, indices
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window.kernel, window.stride, window.padding, window.dilation
    _max_pool2d_kernel[grid_for(values.numel())](
        x, values, indices,
        c, h, w, out_hw[0], out_hw[1], values.numel(),
        *x.stride(), *values.stride(),
        ph, pw, sh, sw, dh, dw,
        KH=kh, KW=kw, COMPACT=compact,
        COMPARE=tl.float64 if x.dtype == torch.float64 else tl.float32,
        CHANNELS_LAST=walks_channels_last(values), BLOCK=BLOCK,
    )
    return values, indices


def pool_backward(grad_values: torch.Tensor, indices: torch.Tensor, window,
                  in_hw: tuple[int, int]) -> torch.Tensor:
    # grad_values, indices: [N, C, Ho, Wo] -> [N, C, H, W], every element written once
    n, c = grad_values.shape[:2]
    grad_input = empty_like_layout(grad_values, (n, c, *in_hw))
    window_gather(grad_values, indices, window, grad_input, invalid=None, accumulate=True)
    return grad_input
