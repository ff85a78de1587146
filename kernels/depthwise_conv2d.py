"""Depthwise convolution (groups = C_in, C_out = C_in * multiplier) in Triton:
forward, input gradient and weight gradient.

Each output channel reads one input channel, so there is no GEMM: a program
owns a tile of [pixels, channels] and accumulates the live taps in float32
(``depthwise_tile``, which the fused separable kernel shares). The tap loop
bounds are runtime values, so a 7x7 or 13x13 kernel runs the same code as a
3x3, not a slower generic path.

The weight gradient is where PyTorch's native kernel is weakest (one block
per weight, re-reading x and dy k^2 times). Here a program owns a block of
channels and a slice of the pixels, reads each dy tile once and gathers the
input under all k^2 taps at once as a [pixels, taps, channels] block, so x
and dy pass through DRAM once; slices write partial sums that are added up
afterwards (no atomics, the same result on every run).
"""

import torch
import triton
import triton.language as tl

from .._layout import empty_like_layout
from .conv_taps import any_true, source_coord, unravel_pixels
from .tuning import autotune_configs, reduction_slices

_TILE_CONFIGS = [
    triton.Config({"BLOCK_P": bp, "BLOCK_C": bc}, num_warps=w)
    for bp, bc, w in [(64, 32, 4), (32, 64, 4), (128, 32, 8), (16, 128, 4), (64, 64, 8), (256, 8, 4)]
]
_TILE_INTERPRETER = triton.Config({"BLOCK_P": 32, "BLOCK_C": 8})


@triton.jit
def depthwise_tile(
    src_ptr, w_ptr,
    n, oh, ow, p_live,  # [BLOCK_P]: destination pixels
    c_src, c_w, c_live,  # [BLOCK_C]: source channel and weight row of each destination channel
    src_n, src_c, src_h, src_w,
    w_c, w_r, w_q,
    H_SRC, W_SRC, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    r_lo, r_hi, q_lo, q_hi,  # live taps
    TRANSPOSED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Sum over the live taps of src[n, c_src, tap's pixel] * w[c_w, tap],
    as a float32 [BLOCK_P, BLOCK_C] tile."""
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    src_channels = src_ptr + c_src[None, :] * src_c
    image = n * src_n
    for r in range(r_lo, r_hi):
        ih, row_ok = source_coord(oh, r, H_SRC, stride_h, pad_h, dil_h, TRANSPOSED)
        row_ok = row_ok & p_live
        if any_true(row_ok):
            for q in range(q_lo, q_hi):
                iw, col_ok = source_coord(ow, q, W_SRC, stride_w, pad_w, dil_w, TRANSPOSED)
                ok = row_ok & col_ok
                v = tl.load(src_channels + (image + ih * src_h + iw * src_w)[:, None],
                            mask=ok[:, None] & c_live[None, :], other=0.0)
                tap_w = tl.load(w_ptr + c_w * w_c + r * w_r + q * w_q, mask=c_live, other=0.0)
                acc += v.to(tl.float32) * tap_w.to(tl.float32)[None, :]
    return acc


@triton.autotune(configs=autotune_configs(_TILE_CONFIGS, _TILE_INTERPRETER),
                 key=["P_TOTAL", "C_DST", "KH", "KW"], cache_results=True)
@triton.jit
def _depthwise_kernel(
    src_ptr,  # forward: x [N, C_in, H, W]; transposed: dy [N, C_out, Ho, Wo]; any strides
    w_ptr,  # [C_out, 1, KH, KW], any strides
    bias_ptr,  # [C_out], read when HAS_BIAS
    dst_ptr,  # forward: y [N, C_out, Ho, Wo]; transposed: dx [N, C_in, H, W]
    P_TOTAL, C_DST, MULTIPLIER, H_SRC, W_SRC, H_DST, W_DST, KH, KW,
    src_n, src_c, src_h, src_w,
    dst_n, dst_c, dst_h, dst_w,
    w_c, w_r, w_q,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    r_lo, r_hi, q_lo, q_hi,
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_live = p < P_TOTAL
    n, oh, ow = unravel_pixels(p, H_DST, W_DST)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_live = c < C_DST
    if TRANSPOSED:
        # Input channel c received from output channels c * MULTIPLIER + j.
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for j in range(MULTIPLIER):
            c_out = c * MULTIPLIER + j
            acc += depthwise_tile(src_ptr, w_ptr, n, oh, ow, p_live, c_out, c_out, c_live,
                                  src_n, src_c, src_h, src_w, w_c, w_r, w_q,
                                  H_SRC, W_SRC, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                  r_lo, r_hi, q_lo, q_hi, True, BLOCK_P, BLOCK_C)
    else:
        acc = depthwise_tile(src_ptr, w_ptr, n, oh, ow, p_live, c // MULTIPLIER, c, c_live,
                             src_n, src_c, src_h, src_w, w_c, w_r, w_q,
                             H_SRC, W_SRC, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                             r_lo, r_hi, q_lo, q_hi, False, BLOCK_P, BLOCK_C)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=c_live, other=0.0).to(tl.float32)[None, :]
    out = dst_ptr + (n * dst_n + oh * dst_h + ow * dst_w)[:, None] + c[None, :] * dst_c
    tl.store(out, acc.to(dst_ptr.dtype.element_ty), mask=p_live[:, None] & c_live[None, :])


def _prune_gathers(configs, named_args, TAPS_BLOCK, **kwargs):
    """Keep the [pixels, taps, channels] gather within registers: at most
    8192 elements per program (a 7x7 kernel pads to 64 taps)."""
    fitting = [c for c in configs if c.kwargs["BLOCK_P"] * TAPS_BLOCK * c.kwargs["BLOCK_C"] <= 8192]
    return fitting or [min(configs, key=lambda c: c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_C"])]


_WGRAD_CONFIGS = [
    triton.Config({"BLOCK_P": bp, "BLOCK_C": bc}, num_warps=w)
    for bp, bc, w in [(16, 32, 4), (8, 64, 4), (32, 16, 4), (4, 64, 4), (8, 32, 4), (4, 32, 2), (2, 32, 2), (1, 64, 2)]
]
_WGRAD_INTERPRETER = triton.Config({"BLOCK_P": 8, "BLOCK_C": 8})


@triton.autotune(configs=autotune_configs(_WGRAD_CONFIGS, _WGRAD_INTERPRETER),
                 key=["P_TOTAL", "C_OUT", "TAPS_BLOCK", "PIX_PER_SPLIT"],
                 prune_configs_by={"early_config_prune": _prune_gathers}, cache_results=True)
@triton.jit
def _depthwise_weight_grad_kernel(
    x_ptr,  # [N, C_in, H, W], any strides
    dy_ptr,  # [N, C_out, Ho, Wo], any strides
    partial_ptr,  # [SPLITS, C_OUT, TAPS] float32, contiguous
    P_TOTAL, C_OUT, MULTIPLIER, H, W, HO, WO, KW, TAPS, PIX_PER_SPLIT,
    x_n, x_c, x_h, x_w,
    dy_n, dy_c, dy_h, dy_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    TAPS_BLOCK: tl.constexpr,  # TAPS rounded up to a power of two
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_live = c < C_OUT
    x_channels = (c // MULTIPLIER) * x_c
    t = tl.arange(0, TAPS_BLOCK)
    t_live = t < TAPS
    r = t // KW
    q = t % KW
    split = tl.program_id(1)
    p_start = split.to(tl.int64) * PIX_PER_SPLIT
    p_end = tl.minimum(p_start + PIX_PER_SPLIT, P_TOTAL)
    acc = tl.zeros([TAPS_BLOCK, BLOCK_C], dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        live = p < p_end
        n, oh, ow = unravel_pixels(p, HO, WO)
        g = tl.load(dy_ptr + (n * dy_n + oh * dy_h + ow * dy_w)[:, None] + c[None, :] * dy_c,
                    mask=live[:, None] & c_live[None, :], other=0.0).to(tl.float32)  # [BLOCK_P, BLOCK_C]
        ih, row_ok = source_coord(oh[:, None], r[None, :], H, stride_h, pad_h, dil_h, False)  # [BLOCK_P, TAPS]
        iw, col_ok = source_coord(ow[:, None], q[None, :], W, stride_w, pad_w, dil_w, False)
        ok = live[:, None] & t_live[None, :] & row_ok & col_ok
        pixel = n[:, None] * x_n + ih * x_h + iw * x_w  # [BLOCK_P, TAPS]
        xs = tl.load(x_ptr + pixel[:, :, None] + x_channels[None, None, :],
                     mask=ok[:, :, None] & c_live[None, None, :], other=0.0)  # [BLOCK_P, TAPS, BLOCK_C]
        acc += tl.sum(xs.to(tl.float32) * g[:, None, :], axis=0)
    out = partial_ptr + (split * C_OUT + c[None, :]) * TAPS + t[:, None]
    tl.store(out, acc, mask=t_live[:, None] & c_live[None, :])


def _launch(src, weight, bias, dst, geometry, live_taps, transposed: bool) -> None:
    c_dst, h_dst, w_dst = dst.shape[1:]
    (r_lo, r_hi), (q_lo, q_hi) = live_taps
    p_total = dst.shape[0] * h_dst * w_dst
    multiplier = weight.shape[0] // (dst.shape[1] if transposed else src.shape[1])
    grid = lambda meta: (triton.cdiv(p_total, meta["BLOCK_P"]), triton.cdiv(c_dst, meta["BLOCK_C"]))  # noqa: E731
    _depthwise_kernel[grid](
        src, weight, bias if bias is not None else dst, dst,
        p_total, c_dst, multiplier, src.shape[2], src.shape[3], h_dst, w_dst, *geometry.kernel,
        *src.stride(), *dst.stride(), weight.stride(0), weight.stride(2), weight.stride(3),
        *geometry.stride, *geometry.padding, *geometry.dilation,
        r_lo, r_hi, q_lo, q_hi,
        TRANSPOSED=transposed, HAS_BIAS=bias is not None,
    )


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry) -> torch.Tensor:
    # x: [N, C_in, H, W], weight: [C_in * m, 1, KH, KW] -> y: [N, C_in * m, Ho, Wo], laid out like x
    y = empty_like_layout(x, (x.shape[0], weight.shape[0], *geometry.output_size(tuple(x.shape[-2:]))))
    if y.numel() == 0:
        return y
    _launch(x, weight, bias, y, geometry, geometry.live_taps(tuple(x.shape[-2:])), transposed=False)
    return y


def input_grad(grad_y: torch.Tensor, weight: torch.Tensor, geometry, input_like: torch.Tensor) -> torch.Tensor:
    # grad_y: [N, C_in * m, Ho, Wo] -> grad_x: [N, C_in, H, W], laid out like the input
    grad_x = empty_like_layout(input_like, (grad_y.shape[0], *input_like.shape[1:]))
    if grad_x.numel() == 0:
        return grad_x
    _launch(grad_y, weight, None, grad_x, geometry, geometry.live_taps(tuple(input_like.shape[-2:])),
            transposed=True)
    return grad_x


def weight_grad(grad_y: torch.Tensor, x: torch.Tensor, geometry, weight_shape) -> torch.Tensor:
    # grad_y: [N, C_in * m, Ho, Wo], x: [N, C_in, H, W] -> grad_w: [C_in * m, 1, KH, KW] (x's dtype)
    c_out, _, kh, kw = weight_shape
    n, _, ho, wo = grad_y.shape
    pixels = n * ho * wo
    if pixels == 0:
        return torch.zeros(weight_shape, dtype=x.dtype, device=x.device)
    per_slice = reduction_slices(pixels, triton.cdiv(c_out, 32), x.device)
    slices = triton.cdiv(pixels, per_slice)
    partial = torch.empty((slices, c_out, kh * kw), dtype=torch.float32, device=x.device)
    grid = lambda meta: (triton.cdiv(c_out, meta["BLOCK_C"]), slices)  # noqa: E731
    _depthwise_weight_grad_kernel[grid](
        x, grad_y, partial,
        pixels, c_out, c_out // x.shape[1], x.shape[2], x.shape[3], ho, wo, kw, kh * kw, per_slice,
        *x.stride(), *grad_y.stride(),
        *geometry.stride, *geometry.padding, *geometry.dilation,
        TAPS_BLOCK=triton.next_power_of_2(kh * kw),
    )
    return partial.sum(0).view(weight_shape).to(x.dtype)
