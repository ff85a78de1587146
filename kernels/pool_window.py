"""The window gather: for every pixel of a dense plane, look up the pooling
windows that contain it and take the values whose index names it.

It is max-pool's backward (sum the gradients of every window whose max the
pixel is) and, for compact indices, max-unpool's forward (the value of the
last such window). Walking the dense output instead of scattering from the
windows writes every output element once, needs no zero-fill, no atomics on
data, and is deterministic.
"""

import torch
import triton
import triton.language as tl

from .layout import BLOCK, grid_for, unravel_nchw, walks_channels_last


@triton.jit
def _only_window(h, pad, stride, dil, K: tl.constexpr, size_src):
    """For non-overlapping windows: the one window holding pixel ``h`` of an
    axis, the tap it is there, and whether there is one."""
    shifted = h + pad
    window = shifted // stride
    offset = shifted - window * stride
    tap = offset // dil
    return window, tap, (offset == tap * dil) & (tap < K) & (window < size_src)


@triton.jit
def _take_tap(src_ptr, idx_ptr, src_plane, idx_plane, s_h, s_w, i_h, i_w,
              ok, oh, ow, r, q, h, w, Hd, Wd,
              pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, acc, bad,
              KH: tl.constexpr, KW: tl.constexpr, COMPACT: tl.constexpr, SUM: tl.constexpr,
              CHECK: tl.constexpr):
    """Pixel (h, w) is tap (r, q) of window (oh, ow) where ``ok``: take the
    window's value if its index names the pixel."""
    idx = tl.load(idx_ptr + idx_plane + oh * i_h + ow * i_w, mask=ok, other=0)
    if COMPACT:
        pos = idx.to(tl.int32)
        hit = ok & (pos == r * KW + q)
        if CHECK:
            th = oh * stride_h - pad_h + (pos // KW) * dil_h
            tw = ow * stride_w - pad_w + (pos % KW) * dil_w
            bad |= ok & ((pos >= KH * KW) | (th < 0) | (th >= Hd) | (tw < 0) | (tw >= Wd))
    else:
        hit = ok & (idx == h * Wd + w)
    val = tl.load(src_ptr + src_plane + oh * s_h + ow * s_w, mask=hit, other=0)
    if SUM:
        acc += val.to(acc.dtype)
    else:
        acc = tl.where(hit, val, acc)
    return acc, bad


@triton.jit
def _window_gather_kernel(
    src_ptr,  # [N, C, Hs, Ws] values at window positions (pool grads / unpool input)
    idx_ptr,  # [N, C, Hs, Ws] int64 flat or uint8 compact indices
    out_ptr,  # [N, C, Hd, Wd] dense result
    invalid_ptr,  # int32 [1], raised when a compact index names no pixel of the dense plane
    C, Hs, Ws, Hd, Wd, numel,
    s_n, s_c, s_h, s_w,  # strides of src
    i_n, i_c, i_h, i_w,  # strides of idx
    o_n, o_c, o_h, o_w,  # strides of out
    pad_h, pad_w, stride_h, stride_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    COMPACT: tl.constexpr,
    SUM: tl.constexpr,  # sum every match (pool backward) or keep the last (unpool)
    CHECK: tl.constexpr,  # validate compact indices (unpool of user indices)
    ONE_WINDOW: tl.constexpr,  # windows do not overlap
    ACC: tl.constexpr,  # sum dtype: float32, or float64 for float64 data
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    n, c, h, w = unravel_nchw(offs, C, Hd, Wd, CHANNELS_LAST)
    src_plane = n * s_n + c * s_c
    idx_plane = n * i_n + c * i_c
    if SUM:
        acc = tl.zeros([BLOCK], dtype=ACC)
    else:
        acc = tl.zeros([BLOCK], dtype=src_ptr.dtype.element_ty)
    bad = tl.zeros([BLOCK], dtype=tl.int1)
    if ONE_WINDOW:
        # Windows do not overlap: a pixel lies in at most one, found directly.
        oh, r, row_ok = _only_window(h, pad_h, stride_h, dil_h, KH, Hs)
        ow, q, col_ok = _only_window(w, pad_w, stride_w, dil_w, KW, Ws)
        acc, bad = _take_tap(src_ptr, idx_ptr, src_plane, idx_plane, s_h, s_w, i_h, i_w,
                             live & row_ok & col_ok, oh, ow, r, q, h, w, Hd, Wd,
                             pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, acc, bad,
                             KH, KW, COMPACT, SUM, CHECK)
    else:
        # Taps in descending order, so that of several matching windows the
        # one with the largest (oh, ow) is written last: "last index wins".
        for rr in range(KH):
            r = KH - 1 - rr
            hh = h + pad_h - r * dil_h
            hh_pos = tl.where(hh >= 0, hh, 0)
            oh = hh_pos // stride_h
            row_ok = live & (hh >= 0) & (oh * stride_h == hh_pos) & (oh < Hs)
            for qq in tl.static_range(KW):
                q = KW - 1 - qq
                ww = w + pad_w - q * dil_w
                ww_pos = tl.where(ww >= 0, ww, 0)
                ow = ww_pos // stride_w
                ok = row_ok & (ww >= 0) & (ow * stride_w == ww_pos) & (ow < Ws)
                acc, bad = _take_tap(src_ptr, idx_ptr, src_plane, idx_plane, s_h, s_w, i_h, i_w,
                                     ok, oh, ow, r, q, h, w, Hd, Wd,
                                     pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, acc, bad,
                                     KH, KW, COMPACT, SUM, CHECK)
    tl.store(out_ptr + n * o_n + c * o_c + h * o_h + w * o_w, acc.to(out_ptr.dtype.element_ty), mask=live)
    if CHECK:
        if tl.max(bad.to(tl.int32), axis=0) > 0:
            tl.atomic_or(invalid_ptr, 1)


def window_gather(src: torch.Tensor, indices: torch.Tensor, window, out: torch.Tensor,
                  invalid: torch.Tensor | None, accumulate: bool) -> None:
    """Fill ``out`` [N, C, Hd, Wd] from ``src``/``indices`` [N, C, Hs, Ws]."""
    if out.numel() == 0:
        return
    compact = indices.dtype == torch.uint8
    check = invalid is not None
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window.kernel, window.stride, window.padding, window.dilation
    _window_gather_kernel[grid_for(out.numel())](
        src, indices, out, invalid if check else out,
        out.shape[1], src.shape[2], src.shape[3], out.shape[2], out.shape[3], out.numel(),
        *src.stride(), *indices.stride(), *out.stride(),
        ph, pw, sh, sw, dh, dw,
        KH=kh, KW=kw, COMPACT=compact, SUM=accumulate, CHECK=check, ONE_WINDOW=window.non_overlapping,
        ACC=tl.float64 if src.dtype == torch.float64 else tl.float32,
        CHANNELS_LAST=walks_channels_last(out), BLOCK=BLOCK,
    )
