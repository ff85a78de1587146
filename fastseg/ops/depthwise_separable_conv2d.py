"""Depthwise-separable convolution: ``fastseg.ops.depthwise_separable_conv2d``
and ``fastseg.ops.DepthwiseSeparableConv2d`` (a depthwise k x k conv, then a
1x1 pointwise conv: the layer DeepLabV3+'s Xception, MobileNet and their
kin are made of).

On CUDA tensors the forward is one fused Triton kernel whose depthwise
result never goes to global memory. Its backward recomputes that result and
runs the conv2d gradient ops (depthwise and 1x1 Triton kernels).
Registered as ``fastseg::depthwise_separable_conv2d`` with a fake and
autograd.
"""

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _backend
from .._activation import activate, activation_grad, activation_name
from .._autocast import autocast_inputs
from .._backend import device_type_of
from .._batch_norm import can_fold, fold_batch_norm
from .._checks import check_tensor
from .._layout import empty_like_layout
from .conv2d import (CONV_DTYPES, Conv2d, bias_grad, check_bias, check_conv_args, conv2d_input_grad_op, conv2d_op,
                     conv2d_weight_grad_op, geometry_from_lists, prepare_input, triton_uncovered)

_reference = importlib.import_module("fastseg.reference.depthwise_separable_conv2d")

BACKENDS = _backend.register(
    "depthwise_separable_conv2d", {"cuda": ("triton",), "cpu": ()},
    coverage="triton: float16/bfloat16/float32 (fused forward); float64 runs PyTorch's convs")

_POINTWISE = ([1, 1], [0, 0], [1, 1])  # stride, padding, dilation of the 1x1 conv


@torch.library.custom_op("fastseg::depthwise_separable_conv2d", mutates_args=())
def _separable_op(x: Tensor, depthwise_weight: Tensor, depthwise_bias: Tensor | None, pointwise_weight: Tensor,
                  pointwise_bias: Tensor | None, stride: list[int], padding: list[int], dilation: list[int],
                  mid_activation: str, out_activation: str) -> Tensor:
    kernels = importlib.import_module("fastseg.kernels.depthwise_separable_conv2d")
    geometry = geometry_from_lists(depthwise_weight.shape, stride, padding, dilation, x.shape[1])
    return kernels.forward(x, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias, geometry,
                           mid_activation, out_activation)


@_separable_op.register_fake
def _(x, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias, stride, padding, dilation,
      mid_activation, out_activation):
    out_hw = geometry_from_lists(depthwise_weight.shape, stride, padding, dilation, x.shape[1]).output_size(
        tuple(x.shape[-2:]))
    return empty_like_layout(x, (x.shape[0], pointwise_weight.shape[0], *out_hw))


def _setup_context(ctx, inputs, output):
    x, wd, bd, wp, bp, stride, padding, dilation, mid_activation, out_activation = inputs
    ctx.save_for_backward(x, wd, bd, wp, output)
    ctx.depthwise_args = (stride, padding, dilation, x.shape[1])
    ctx.activations = (mid_activation, out_activation)
    ctx.bias_dtypes = (None if bd is None else bd.dtype, None if bp is None else bp.dtype)


def _backward(ctx, grad_y):
    x, wd, bd, wp, y = ctx.saved_tensors
    mid_activation, out_activation = ctx.activations
    needs_x, needs_wd, needs_bd, needs_wp, needs_bp = ctx.needs_input_grad[:5]
    # The forward kept its intermediate in registers; recompute it here.
    mid = activate(conv2d_op(x, wd, bd, *ctx.depthwise_args), mid_activation)
    grad_out = activation_grad(grad_y, y, out_activation)
    grad_wp = conv2d_weight_grad_op(grad_out, mid, list(wp.shape), *_POINTWISE, 1) if needs_wp else None
    grad_bp = bias_grad(grad_out, ctx.bias_dtypes[1]) if needs_bp else None
    grad_x = grad_wd = grad_bd = None
    if needs_x or needs_wd or needs_bd:
        grad_mid = activation_grad(conv2d_input_grad_op(grad_out, wp, mid, *_POINTWISE, 1), mid, mid_activation)
        if needs_x:
            grad_x = conv2d_input_grad_op(grad_mid, wd, x, *ctx.depthwise_args)
        if needs_wd:
            grad_wd = conv2d_weight_grad_op(grad_mid, x, list(wd.shape), *ctx.depthwise_args)
        if needs_bd:
            grad_bd = bias_grad(grad_mid, ctx.bias_dtypes[0])
    return grad_x, grad_wd, grad_bd, grad_wp, grad_bp, None, None, None, None, None


_separable_op.register_autograd(_backward, setup_context=_setup_context)


def depthwise_separable_conv2d(input: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor,
                               depthwise_bias: Tensor | None = None, pointwise_bias: Tensor | None = None,
                               stride=1, padding=0, dilation=1, *, mid_activation: str | None = None,
                               out_activation: str | None = None, backend: str | None = None) -> Tensor:
    """``act_out(conv1x1(act_mid(depthwise(input))))``: the depthwise conv of
    ``depthwise_weight`` [C_in, 1, KH, KW] (with ``stride``, ``padding``,
    ``dilation``), then the 1x1 conv of ``pointwise_weight`` [C_out, C_in, 1, 1];
    activations ``None``, ``"relu"`` or ``"relu6"``."""
    input, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias = autocast_inputs(
        input, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias)
    mid_activation = activation_name(mid_activation, "mid_activation")
    out_activation = activation_name(out_activation, "out_activation")
    check_tensor(input, "input", (3, 4), CONV_DTYPES)
    check_tensor(depthwise_weight, "depthwise_weight", (4,), (input.dtype,))
    in_channels = input.shape[-3]
    if tuple(depthwise_weight.shape[:2]) != (in_channels, 1):
        raise ValueError(f"depthwise_weight must have one filter per input channel: shape ({in_channels}, 1, KH, KW) "
                         f"for an input of shape {tuple(input.shape)}; got {tuple(depthwise_weight.shape)}")
    check_conv_args(input, depthwise_weight, depthwise_bias, in_channels,
                    weight_name="depthwise_weight", bias_name="depthwise_bias")
    check_tensor(pointwise_weight, "pointwise_weight", (4,), (input.dtype,))
    if tuple(pointwise_weight.shape[1:]) != (in_channels, 1, 1) or pointwise_weight.shape[0] == 0:
        raise ValueError(f"pointwise_weight must have shape (C_out, {in_channels}, 1, 1) with C_out > 0, "
                         f"got {tuple(pointwise_weight.shape)}")
    check_bias(pointwise_bias, "pointwise_bias", pointwise_weight.shape[0], input.dtype)
    device_type_of(input, pointwise_weight, *([] if pointwise_bias is None else [pointwise_bias]))
    x, geometry = prepare_input(input, depthwise_weight, stride, padding, dilation, in_channels)
    name = _backend.resolve_backend(BACKENDS, backend, x, depthwise_weight, pointwise_weight,
                                    uncovered=triton_uncovered(x.dtype, depthwise_weight, in_channels))
    if name == "reference":
        y = _reference.depthwise_separable_conv2d(
            x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, geometry.stride,
            geometry.padding, geometry.dilation, mid_activation=mid_activation, out_activation=out_activation)
    else:
        y = _separable_op(x, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias,
                          *geometry.as_lists(), mid_activation, out_activation)
    return y if input.dim() == 4 else y.squeeze(0)


class DepthwiseSeparableConv2d(nn.Module):
    """A depthwise ``kernel_size`` conv, then a 1x1 pointwise conv.

    Children ``depthwise`` (groups=in_channels) and ``pointwise`` are
    ``Conv2d`` layers, so the state_dict is that of a module with two
    ``nn.Conv2d`` children of those names and weights move both ways.
    ``bias`` applies to both convs. Optionally a BatchNorm and an
    activation after each conv (``mid_norm``/``mid_activation`` between
    them as in MobileNetV2 and Xception, ``out_norm``/``out_activation``
    after the pointwise), as children ``depthwise_norm``/``pointwise_norm``.

    In eval mode the BatchNorms fold into the conv weights and the whole
    layer is one fused kernel. In training a BatchNorm between the convs
    needs the batch statistics of the intermediate, so the two convs run
    as separate kernels there.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, *, mid_norm: bool = False, mid_activation: str | None = None,
                 out_norm: bool = False, out_activation: str | None = None, norm_eps: float = 1e-5,
                 norm_momentum: float = 0.1, padding_mode: str = "zeros", device=None, dtype=None,
                 backend: str | None = None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.depthwise = Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation,
                                groups=in_channels, bias=bias, padding_mode=padding_mode, backend=backend, **factory)
        self.depthwise_norm = nn.BatchNorm2d(in_channels, norm_eps, norm_momentum, **factory) if mid_norm else None
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=bias, backend=backend, **factory)
        self.pointwise_norm = nn.BatchNorm2d(out_channels, norm_eps, norm_momentum, **factory) if out_norm else None
        self.mid_activation = activation_name(mid_activation, "mid_activation")
        self.out_activation = activation_name(out_activation, "out_activation")
        self.backend = backend

    def _unfused(self, x: Tensor) -> Tensor:
        mid = self.depthwise(x)
        if self.depthwise_norm is not None:
            mid = self.depthwise_norm(mid)
        out = self.pointwise(activate(mid, self.mid_activation))
        if self.pointwise_norm is not None:
            out = self.pointwise_norm(out)
        return activate(out, self.out_activation)

    def forward(self, input: Tensor) -> Tensor:
        if self.depthwise_norm is not None and not can_fold(self.depthwise_norm):
            return self._unfused(input)
        wd, bd = self.depthwise.weight, self.depthwise.bias
        if self.depthwise_norm is not None:
            wd, bd = fold_batch_norm(wd, bd, self.depthwise_norm)
        wp, bp = self.pointwise.weight, self.pointwise.bias
        out_norm_folds = self.pointwise_norm is None or can_fold(self.pointwise_norm)
        if self.pointwise_norm is not None and out_norm_folds:
            wp, bp = fold_batch_norm(wp, bp, self.pointwise_norm)
        conv = self.depthwise
        padding = conv.padding
        if conv.padding_mode != "zeros":
            input, padding = F.pad(input, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0
        out = depthwise_separable_conv2d(input, wd, wp, bd, bp, conv.stride, padding, conv.dilation,
                                         mid_activation=self.mid_activation,
                                         out_activation=self.out_activation if out_norm_folds else None,
                                         backend=self.backend)
        if out_norm_folds:
            return out
        return activate(self.pointwise_norm(out), self.out_activation)

    def extra_repr(self) -> str:
        return f"mid_activation={self.mid_activation!r}, out_activation={self.out_activation!r}"
