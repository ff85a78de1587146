"""Dense (groups=1) convolution in Triton as an implicit GEMM: no im2col
buffer; the dilation is folded into the address of each tap.

Forward: rows are output pixels (N*Ho*Wo), columns output channels, and the
reduction runs over taps x input channels: for every live tap the tile of
shifted input pixels times the tap's [C_in, C_out] weight slice goes to the
tensor cores. The input gradient is the same GEMM in transposed form (rows
are input pixels, the reduction runs over taps x output channels). A tap
whose reads all land in the padding for a tile is skipped, not multiplied:
at ASPP rates on 32x32-64x64 maps that is most taps.

The weight gradient reduces over pixels: each program owns a tile of
(C_out, C_in) for one tap and one slice of the pixels, writes its partial
sum, and the slices are summed afterwards, so no atomics contend and the
result is the same on every run.
"""

import torch
import triton
import triton.language as tl

from .._layout import empty_like_layout
from .conv_taps import any_true, source_coord, unravel_pixels
from .tuning import GEMM_INTERPRETER, autotune_configs, dot_dtype, gemm_configs, input_precision, reduction_slices

_GEMM_CONFIGS = gemm_configs([(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4),
                              (128, 128, 64, 8, 3), (64, 64, 64, 4, 3), (128, 32, 32, 4, 4), (64, 32, 64, 4, 4)])


@triton.autotune(configs=autotune_configs(_GEMM_CONFIGS, GEMM_INTERPRETER),
                 key=["M_TOTAL", "K_CH", "N_CH", "H_DST", "TRANSPOSED"], cache_results=True)
@triton.jit
def _implicit_gemm_kernel(
    src_ptr,  # [N, K_CH, H_SRC, W_SRC]: x (forward) or dy (input gradient), any strides
    w_ptr,  # [KH, KW, K_CH, N_CH]: the weight's taps, any strides
    bias_ptr,  # [N_CH], read when HAS_BIAS
    dst_ptr,  # [N, N_CH, H_DST, W_DST]: y (forward) or dx (input gradient)
    M_TOTAL, K_CH, N_CH, H_SRC, W_SRC, H_DST, W_DST,
    src_n, src_c, src_h, src_w,
    dst_n, dst_c, dst_h, dst_w,
    w_r, w_q, w_k, w_n,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    r_lo, r_hi, q_lo, q_hi,  # live taps
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_live = m < M_TOTAL
    n, oh, ow = unravel_pixels(m, H_DST, W_DST)
    cn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cn_live = cn < N_CH
    ck = tl.arange(0, BLOCK_K).to(tl.int64)
    src_image = n * src_n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for r in range(r_lo, r_hi):
        ih, row_ok = source_coord(oh, r, H_SRC, stride_h, pad_h, dil_h, TRANSPOSED)
        row_ok = row_ok & m_live
        if any_true(row_ok):
            for q in range(q_lo, q_hi):
                iw, col_ok = source_coord(ow, q, W_SRC, stride_w, pad_w, dil_w, TRANSPOSED)
                ok = row_ok & col_ok
                if any_true(ok):
                    a_rows = src_ptr + src_image + ih * src_h + iw * src_w  # [BLOCK_M] pointers
                    b_tap = w_ptr + r * w_r + q * w_q
                    for k0 in range(0, K_CH, BLOCK_K):
                        kk = k0 + ck
                        k_live = kk < K_CH
                        a = tl.load(a_rows[:, None] + kk[None, :] * src_c,
                                    mask=ok[:, None] & k_live[None, :], other=0.0)
                        b = tl.load(b_tap + kk[:, None] * w_k + cn[None, :] * w_n,
                                    mask=k_live[:, None] & cn_live[None, :], other=0.0)
                        acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cn, mask=cn_live, other=0.0).to(tl.float32)[None, :]
    out = dst_ptr + (n * dst_n + oh * dst_h + ow * dst_w)[:, None] + cn[None, :] * dst_c
    tl.store(out, acc.to(dst_ptr.dtype.element_ty), mask=m_live[:, None] & cn_live[None, :])


_WGRAD_CONFIGS = [
    triton.Config({"BLOCK_CO": bco, "BLOCK_CI": bci, "BLOCK_P": bp}, num_warps=w, num_stages=s)
    for bco, bci, bp, w, s in [(64, 64, 64, 4, 4), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (128, 128, 32, 8, 3),
                               (32, 32, 128, 4, 4), (64, 64, 128, 8, 3)]
]
_WGRAD_INTERPRETER = triton.Config({"BLOCK_CO": 16, "BLOCK_CI": 16, "BLOCK_P": 32})


@triton.autotune(configs=autotune_configs(_WGRAD_CONFIGS, _WGRAD_INTERPRETER),
                 key=["P_TOTAL", "C_OUT", "C_IN", "PIX_PER_SPLIT"], cache_results=True)
@triton.jit
def _weight_grad_kernel(
    x_ptr,  # [N, C_IN, H, W], any strides
    dy_ptr,  # [N, C_OUT, HO, WO], any strides
    partial_ptr,  # [SPLITS, KH * KW, C_OUT, C_IN] float32, contiguous
    P_TOTAL, C_IN, C_OUT, H, W, HO, WO, KW, PIX_PER_SPLIT,
    x_n, x_c, x_h, x_w,
    dy_n, dy_c, dy_h, dy_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_P: tl.constexpr,
):
    ci_blocks = tl.cdiv(C_IN, BLOCK_CI)
    tile = tl.program_id(0)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    co = (tile // ci_blocks).to(tl.int64) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci = (tile % ci_blocks).to(tl.int64) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co_live = co < C_OUT
    ci_live = ci < C_IN
    r = tap // KW
    q = tap % KW
    p_start = split.to(tl.int64) * PIX_PER_SPLIT
    p_end = tl.minimum(p_start + PIX_PER_SPLIT, P_TOTAL)
    acc = tl.zeros([BLOCK_CO, BLOCK_CI], dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        live = p < p_end
        n, oh, ow = unravel_pixels(p, HO, WO)
        ih, row_ok = source_coord(oh, r, H, stride_h, pad_h, dil_h, False)
        iw, col_ok = source_coord(ow, q, W, stride_w, pad_w, dil_w, False)
        ok = live & row_ok & col_ok
        if any_true(ok):
            dy_t = tl.load(dy_ptr + (n * dy_n + oh * dy_h + ow * dy_w)[None, :] + co[:, None] * dy_c,
                           mask=co_live[:, None] & live[None, :], other=0.0)  # [BLOCK_CO, BLOCK_P]
            xs = tl.load(x_ptr + (n * x_n + ih * x_h + iw * x_w)[:, None] + ci[None, :] * x_c,
                         mask=ok[:, None] & ci_live[None, :], other=0.0)  # [BLOCK_P, BLOCK_CI]
            acc = tl.dot(dy_t.to(DOT_DTYPE), xs.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    taps = tl.num_programs(1)
    out = partial_ptr + ((split * taps + tap) * C_OUT + co[:, None]) * C_IN + ci[None, :]
    tl.store(out, acc, mask=co_live[:, None] & ci_live[None, :])


def _launch_gemm(src, w_taps, bias, dst, geometry, live_taps, transposed: bool) -> None:
    n, k_ch, h_src, w_src = src.shape
    n_ch, h_dst, w_dst = dst.shape[1:]
    (r_lo, r_hi), (q_lo, q_hi) = live_taps
    m_total = n * h_dst * w_dst
    grid = lambda meta: (triton.cdiv(m_total, meta["BLOCK_M"]), triton.cdiv(n_ch, meta["BLOCK_N"]))  # noqa: E731
    _implicit_gemm_kernel[grid](
        src, w_taps, bias if bias is not None else dst, dst,
        m_total, k_ch, n_ch, h_src, w_src, h_dst, w_dst,
        *src.stride(), *dst.stride(), *w_taps.stride(),
        *geometry.stride, *geometry.padding, *geometry.dilation,
        r_lo, r_hi, q_lo, q_hi,
        TRANSPOSED=transposed, HAS_BIAS=bias is not None,
        DOT_DTYPE=dot_dtype(src.dtype), INPUT_PRECISION=input_precision(),
    )


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry) -> torch.Tensor:
    # x: [N, C_in, H, W], weight: [C_out, C_in, KH, KW] -> y: [N, C_out, Ho, Wo], laid out like x
    y = empty_like_layout(x, (x.shape[0], weight.shape[0], *geometry.output_size(tuple(x.shape[-2:]))))
    if y.numel() == 0:
        return y
    w_taps = weight.permute(2, 3, 1, 0)  # [KH, KW, C_in, C_out]: the reduction runs over C_in
    _launch_gemm(x, w_taps, bias, y, geometry, geometry.live_taps(tuple(x.shape[-2:])), transposed=False)
    return y


def input_grad(grad_y: torch.Tensor, weight: torch.Tensor, geometry, input_like: torch.Tensor) -> torch.Tensor:
    # grad_y: [N, C_out, Ho, Wo] -> grad_x: [N, C_in, H, W], laid out like the input
    grad_x = empty_like_layout(input_like, (grad_y.shape[0], weight.shape[1], *input_like.shape[-2:]))
    if grad_x.numel() == 0:
        return grad_x
    if grad_y.numel() == 0:
        return grad_x.zero_()
    w_taps = weight.permute(2, 3, 0, 1)  # [KH, KW, C_out, C_in]: the reduction runs over C_out
    _launch_gemm(grad_y, w_taps, None, grad_x, geometry, geometry.live_taps(tuple(input_like.shape[-2:])),
                 transposed=True)
    return grad_x


def weight_grad(grad_y: torch.Tensor, x: torch.Tensor, geometry, weight_shape) -> torch.Tensor:
    # grad_y: [N, C_out, Ho, Wo], x: [N, C_in, H, W] -> grad_w: [C_out, C_in, KH, KW] (x's dtype)
    c_out, c_in, kh, kw = weight_shape
    n, _, ho, wo = grad_y.shape
    pixels = n * ho * wo
    if pixels == 0:
        return torch.zeros(weight_shape, dtype=x.dtype, device=x.device)
    nominal_tiles = triton.cdiv(c_out, 64) * triton.cdiv(c_in, 64) * kh * kw
    per_slice = reduction_slices(pixels, nominal_tiles, x.device)
    slices = triton.cdiv(pixels, per_slice)
    partial = torch.empty((slices, kh * kw, c_out, c_in), dtype=torch.float32, device=x.device)
    grid = lambda meta: (triton.cdiv(c_out, meta["BLOCK_CO"]) * triton.cdiv(c_in, meta["BLOCK_CI"]),  # noqa: E731
                         kh * kw, slices)
    _weight_grad_kernel[grid](
        x, grad_y, partial,
        pixels, c_in, c_out, x.shape[2], x.shape[3], ho, wo, kw, per_slice,
        *x.stride(), *grad_y.stride(),
        *geometry.stride, *geometry.padding, *geometry.dilation,
        DOT_DTYPE=dot_dtype(x.dtype), INPUT_PRECISION=input_precision(),
    )
    return partial.sum(0).view(kh, kw, c_out, c_in).permute(2, 3, 0, 1).to(x.dtype).contiguous()
