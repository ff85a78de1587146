"""Max-unpool in Triton.

Flat (int64) indices may name any position of the output plane, so they
are scattered into a zeroed output, as PyTorch does. Compact (uint8)
indices name a position inside their own window, so the output is a dense
gather over windows (``pool_window.window_gather``): one write per output,
no zero-fill, deterministic. Invalid indices are skipped, never followed,
and raise a flag the caller turns into an error.
"""

import torch
import triton
import triton.language as tl

from .._layout import empty_like_layout
from .layout import BLOCK, grid_for, unravel_nchw, walks_channels_last
from .pool_window import window_gather


@triton.jit
def _unpool_scatter_kernel(
    x_ptr,  # [N, C, Hi, Wi] values
    idx_ptr,  # [N, C, Hi, Wi] int64 flat positions in the output plane
    out_ptr,  # [N, C, Ho, Wo] zero-filled before the launch
    invalid_ptr,  # int32 [1]
    C, Hi, Wi, Wo, plane_size, numel,
    x_n, x_c, x_h, x_w,
    i_n, i_c, i_h, i_w,
    o_n, o_c, o_h, o_w,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    n, c, h, w = unravel_nchw(offs, C, Hi, Wi, CHANNELS_LAST)
    target = tl.load(idx_ptr + n * i_n + c * i_c + h * i_h + w * i_w, mask=live, other=0)
    valid = (target >= 0) & (target < plane_size)
    val = tl.load(x_ptr + n * x_n + c * x_c + h * x_h + w * x_w, mask=live & valid)
    tl.store(out_ptr + n * o_n + c * o_c + (target // Wo) * o_h + (target % Wo) * o_w, val, mask=live & valid)
    if tl.max((live & ~valid).to(tl.int32), axis=0) > 0:
        tl.atomic_or(invalid_ptr, 1)


@triton.jit
def _unpool_backward_kernel(
    grad_out_ptr,  # [N, C, Ho, Wo]
    idx_ptr,  # [N, C, Hi, Wi] int64 flat or uint8 compact
    grad_in_ptr,  # [N, C, Hi, Wi]
    C, Hi, Wi, Ho, Wo, numel,
    g_n, g_c, g_h, g_w,
    i_n, i_c, i_h, i_w,
    d_n, d_c, d_h, d_w,
    pad_h, pad_w, stride_h, stride_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    COMPACT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    n, c, h, w = unravel_nchw(offs, C, Hi, Wi, CHANNELS_LAST)
    idx = tl.load(idx_ptr + n * i_n + c * i_c + h * i_h + w * i_w, mask=live, other=0)
    if COMPACT:
        pos = idx.to(tl.int32)
        th = h * stride_h - pad_h + (pos // KW) * dil_h
        tw = w * stride_w - pad_w + (pos % KW) * dil_w
        valid = (pos < KH * KW) & (th >= 0) & (th < Ho) & (tw >= 0) & (tw < Wo)
    else:
        th = idx // Wo
        tw = idx % Wo
        valid = (idx >= 0) & (idx < Ho * Wo)
    grad = tl.load(grad_out_ptr + n * g_n + c * g_c + th * g_h + tw * g_w, mask=live & valid, other=0)
    tl.store(grad_in_ptr + n * d_n + c * d_c + h * d_h + w * d_w, grad, mask=live)


def unpool_forward(x: torch.Tensor, indices: torch.Tensor, window,
                   out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    # x, indices: [N, C, Hi, Wi] -> output [N, C, Ho, Wo] laid out like x, invalid flag int32 [1]
    n, c, hi, wi = x.shape
    invalid = torch.zeros(1, dtype=torch.int32, device=x.device)
    if indices.dtype == torch.uint8:
        out = empty_like_layout(x, (n, c, *out_hw))
        window_gather(x, indices, window, out, invalid, accumulate=False)
        return out, invalid
    out = empty_like_layout(x, (n, c, *out_hw)).zero_()
    if x.numel() == 0:
        return out, invalid
    _unpool_scatter_kernel[grid_for(x.numel())](
        x, indices, out, invalid,
        c, hi, wi, out_hw[1], out_hw[0] * out_hw[1], x.numel(),
        *x.stride(), *indices.stride(), *out.stride(),
        CHANNELS_LAST=walks_channels_last(x), BLOCK=BLOCK,
    )
    return out, invalid


def unpool_backward(grad_output: torch.Tensor, indices: torch.Tensor, window) -> torch.Tensor:
    # grad_output: [N, C, Ho, Wo], indices: [N, C, Hi, Wi] -> [N, C, Hi, Wi]
    _, c, hi, wi = indices.shape
    ho, wo = grad_output.shape[-2:]
    grad_input = empty_like_layout(indices, indices.shape, grad_output.dtype)
    if grad_input.numel() == 0:
        return grad_input
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window.kernel, window.stride, window.padding, window.dilation
    _unpool_backward_kernel[grid_for(grad_input.numel())](
        grad_output, indices, grad_input,
        c, hi, wi, ho, wo, grad_input.numel(),
        *grad_output.stride(), *indices.stride(), *grad_input.stride(),
        ph, pw, sh, sw, dh, dw,
        KH=kh, KW=kw, COMPACT=indices.dtype == torch.uint8,
        CHANNELS_LAST=walks_channels_last(grad_input), BLOCK=BLOCK,
    )
    return grad_input
