"""Depthwise-separable convolution fused into one Triton kernel (forward).

A program owns [BLOCK_M output pixels, BLOCK_N output channels]. For each
block of BLOCK_K input channels it computes the depthwise result of its
pixels in registers (``depthwise_tile``), adds the depthwise bias, applies
the middle activation, and feeds that tile straight into the pointwise GEMM
on the tensor cores. The intermediate activation never touches global
memory; x is read once per BLOCK_N columns of output channels (from L2
after the first), y written once.

The backward pass is composed in ``fastseg.ops.depthwise_separable_conv2d``
from the depthwise and dense kernels.
"""

import torch
import triton
import triton.language as tl

from .._activation import ACTIVATION_CODES
from .._layout import empty_like_layout
from .activation import activate
from .conv_taps import unravel_pixels
from .depthwise_conv2d import depthwise_tile
from .tuning import GEMM_INTERPRETER, autotune_configs, dot_dtype, gemm_configs, input_precision

_CONFIGS = gemm_configs([(128, 128, 32, 8, 2), (64, 128, 32, 4, 2), (128, 64, 32, 4, 2), (64, 64, 32, 4, 2),
                         (128, 256, 32, 8, 2), (64, 256, 32, 8, 2), (128, 128, 64, 8, 2), (64, 32, 32, 4, 2)])


@triton.autotune(configs=autotune_configs(_CONFIGS, GEMM_INTERPRETER),
                 key=["M_TOTAL", "C_IN", "C_OUT", "KH", "KW"], cache_results=True)
@triton.jit
def _separable_kernel(
    x_ptr,  # [N, C_IN, H, W], any strides
    wd_ptr,  # [C_IN, 1, KH, KW] depthwise weight, any strides
    bd_ptr,  # [C_IN] depthwise bias, read when HAS_DEPTHWISE_BIAS
    wp_ptr,  # [C_OUT, C_IN, 1, 1] pointwise weight, any strides
    bp_ptr,  # [C_OUT] pointwise bias, read when HAS_POINTWISE_BIAS
    y_ptr,  # [N, C_OUT, HO, WO]
    M_TOTAL, C_IN, C_OUT, H, W, HO, WO, KH, KW,
    x_n, x_c, x_h, x_w,
    y_n, y_c, y_h, y_w,
    wd_c, wd_r, wd_q,
    wp_n, wp_k,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    r_lo, r_hi, q_lo, q_hi,
    MID_ACTIVATION: tl.constexpr, OUT_ACTIVATION: tl.constexpr,
    HAS_DEPTHWISE_BIAS: tl.constexpr, HAS_POINTWISE_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_live = m < M_TOTAL
    n, oh, ow = unravel_pixels(m, HO, WO)
    cn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cn_live = cn < C_OUT
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, C_IN, BLOCK_K):
        ck = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        ck_live = ck < C_IN
        mid = depthwise_tile(x_ptr, wd_ptr, n, oh, ow, m_live, ck, ck, ck_live,
                             x_n, x_c, x_h, x_w, wd_c, wd_r, wd_q,
                             H, W, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                             r_lo, r_hi, q_lo, q_hi, False, BLOCK_M, BLOCK_K)
        if HAS_DEPTHWISE_BIAS:
            mid += tl.load(bd_ptr + ck, mask=ck_live, other=0.0).to(tl.float32)[None, :]
        # Rounded to the input dtype as the unfused pair stores it; padding
        # channels are zero (masked weights), so they add nothing below.
        mid = activate(mid, MID_ACTIVATION).to(x_ptr.dtype.element_ty)
        wp = tl.load(wp_ptr + ck[:, None] * wp_k + cn[None, :] * wp_n,
                     mask=ck_live[:, None] & cn_live[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(mid.to(DOT_DTYPE), wp.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    if HAS_POINTWISE_BIAS:
        acc += tl.load(bp_ptr + cn, mask=cn_live, other=0.0).to(tl.float32)[None, :]
    acc = activate(acc, OUT_ACTIVATION)
    out = y_ptr + (n * y_n + oh * y_h + ow * y_w)[:, None] + cn[None, :] * y_c
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_live[:, None] & cn_live[None, :])


def forward(x: torch.Tensor, depthwise_weight: torch.Tensor, depthwise_bias: torch.Tensor | None,
            pointwise_weight: torch.Tensor, pointwise_bias: torch.Tensor | None, geometry,
            mid_activation: str | None, out_activation: str | None) -> torch.Tensor:
    # x: [N, C_in, H, W] -> y: [N, C_out, Ho, Wo], laid out like x
    c_out, c_in = pointwise_weight.shape[:2]
    out_hw = geometry.output_size(tuple(x.shape[-2:]))
    y = empty_like_layout(x, (x.shape[0], c_out, *out_hw))
    if y.numel() == 0:
        return y
    (r_lo, r_hi), (q_lo, q_hi) = geometry.live_taps(tuple(x.shape[-2:]))
    m_total = x.shape[0] * out_hw[0] * out_hw[1]
    grid = lambda meta: (triton.cdiv(m_total, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]))  # noqa: E731
    _separable_kernel[grid](
        x, depthwise_weight, depthwise_bias if depthwise_bias is not None else x,
        pointwise_weight, pointwise_bias if pointwise_bias is not None else x, y,
        m_total, c_in, c_out, x.shape[2], x.shape[3], *out_hw, *geometry.kernel,
        *x.stride(), *y.stride(),
        depthwise_weight.stride(0), depthwise_weight.stride(2), depthwise_weight.stride(3),
        pointwise_weight.stride(0), pointwise_weight.stride(1),
        *geometry.stride, *geometry.padding, *geometry.dilation,
        r_lo, r_hi, q_lo, q_hi,
        MID_ACTIVATION=ACTIVATION_CODES[mid_activation], OUT_ACTIVATION=ACTIVATION_CODES[out_activation],
        HAS_DEPTHWISE_BIAS=depthwise_bias is not None, HAS_POINTWISE_BIAS=pointwise_bias is not None,
        DOT_DTYPE=dot_dtype(x.dtype), INPUT_PRECISION=input_precision(),
    )
    return y
