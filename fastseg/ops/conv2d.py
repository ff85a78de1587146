"""Convolution: ``fastseg.ops.conv2d`` and ``fastseg.ops.Conv2d``, drop-ins
for ``F.conv2d`` and ``torch.nn.Conv2d``.

The Triton kernels cover what segmentation networks are made of: dense
convs (groups=1, any kernel, stride, padding and dilation: ASPP rates,
dilated ResNet stages, the 1x1 pointwise GEMMs) as an implicit GEMM, and
depthwise convs (groups=in_channels) directly, in float16, bfloat16 and
float32. Other calls run PyTorch's conv, and ``conv2d_path`` says which
runs and why; nothing falls back silently.

Registered as ``fastseg::conv2d`` with a fake and autograd; its gradients
are the ops ``fastseg::conv2d_input_grad`` and ``fastseg::conv2d_weight_grad``,
which the fused separable conv's backward reuses.
"""

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _backend
from .._autocast import autocast_inputs
from .._backend import device_type_of
from .._checks import check_tensor
from .._conv_geometry import ConvGeometry
from .._layout import empty_like_layout

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CONV_DTYPES = (*TRITON_DTYPES, torch.float64)

# On CPU tensors PyTorch's own conv (the reference) is the fastest we have.
BACKENDS = _backend.register(
    "conv2d", {"cuda": ("triton",), "cpu": ()},
    coverage="triton: groups=1 or depthwise, float16/bfloat16/float32; other calls run PyTorch's conv "
             "(fastseg.ops.conv2d_path says which)")


def _kernels(groups: int):
    return importlib.import_module("fastseg.kernels.conv2d" if groups == 1 else "fastseg.kernels.depthwise_conv2d")


def geometry_from_lists(weight_shape, stride, padding, dilation, groups) -> ConvGeometry:
    return ConvGeometry(tuple(weight_shape[-2:]), tuple(stride), tuple(padding), tuple(dilation), groups)


@torch.library.custom_op("fastseg::conv2d", mutates_args=())
def conv2d_op(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
              dilation: list[int], groups: int) -> Tensor:
    geometry = geometry_from_lists(weight.shape, stride, padding, dilation, groups)
    return _kernels(groups).forward(x, weight, bias, geometry)


@conv2d_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    out_hw = geometry_from_lists(weight.shape, stride, padding, dilation, groups).output_size(tuple(x.shape[-2:]))
    return empty_like_layout(x, (x.shape[0], weight.shape[0], *out_hw))


@torch.library.custom_op("fastseg::conv2d_input_grad", mutates_args=())
def conv2d_input_grad_op(grad_y: Tensor, weight: Tensor, x: Tensor, stride: list[int], padding: list[int],
                         dilation: list[int], groups: int) -> Tensor:
    """Gradient of conv2d with respect to its input ``x`` (read for its
    shape and layout only)."""
    geometry = geometry_from_lists(weight.shape, stride, padding, dilation, groups)
    return _kernels(groups).input_grad(grad_y, weight, geometry, x)


@conv2d_input_grad_op.register_fake
def _(grad_y, weight, x, stride, padding, dilation, groups):
    return empty_like_layout(x, x.shape)


@torch.library.custom_op("fastseg::conv2d_weight_grad", mutates_args=())
def conv2d_weight_grad_op(grad_y: Tensor, x: Tensor, weight_shape: list[int], stride: list[int],
                          padding: list[int], dilation: list[int], groups: int) -> Tensor:
    geometry = geometry_from_lists(weight_shape, stride, padding, dilation, groups)
    return _kernels(groups).weight_grad(grad_y, x, geometry, tuple(weight_shape))


@conv2d_weight_grad_op.register_fake
def _(grad_y, x, weight_shape, stride, padding, dilation, groups):
    return x.new_empty(weight_shape)


def bias_grad(grad_y: Tensor, dtype: torch.dtype) -> Tensor:
    """Sum of ``grad_y`` over batch and pixels, accumulated in float32."""
    return grad_y.sum((0, 2, 3), dtype=torch.float32).to(dtype)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry_args = (stride, padding, dilation, groups)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = conv2d_input_grad_op(grad_y, weight, x, *ctx.geometry_args)
    if ctx.needs_input_grad[1]:
        grad_w = conv2d_weight_grad_op(grad_y, x, list(weight.shape), *ctx.geometry_args)
    if ctx.needs_input_grad[2]:
        grad_b = bias_grad(grad_y, ctx.bias_dtype)
    return grad_x, grad_w, grad_b, None, None, None, None


conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def triton_gap(dtype: torch.dtype, weight: Tensor, groups: int) -> str | None:
    """Why the Triton kernels do not cover a conv, or None when they do."""
    if dtype not in TRITON_DTYPES:
        return f"dtype {str(dtype).removeprefix('torch.')} (the Triton kernels take float16, bfloat16 and float32)"
    if groups != 1 and weight.shape[1] != 1:
        return f"groups={groups} is neither 1 nor in_channels (depthwise)"
    return None


@dataclass(frozen=True)
class ConvPath:
    """Which implementation runs a conv, and why."""

    backend: str
    reason: str


def triton_uncovered(dtype, weight, groups) -> tuple[tuple[str, str], ...]:
    """``triton_gap`` in the form ``resolve_backend(uncovered=...)`` takes."""
    gap = triton_gap(dtype, weight, groups)
    return () if gap is None else (("triton", gap),)


def check_conv_args(input, weight, bias, groups, *, input_name="input", weight_name="weight",
                    bias_name="bias") -> None:
    """The checks F.conv2d makes, as ValueError/TypeError naming the argument."""
    check_tensor(input, input_name, (3, 4), CONV_DTYPES)
    check_tensor(weight, weight_name, (4,), (input.dtype,))
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if weight.shape[0] == 0 or weight.shape[0] % groups:
        raise ValueError(f"{weight_name} must have a non-zero number of output channels divisible by "
                         f"groups={groups}, got shape {tuple(weight.shape)}")
    if input.shape[-3] != weight.shape[1] * groups:
        raise ValueError(f"{input_name} must have {weight.shape[1] * groups} channels ({weight_name} has "
                         f"{weight.shape[1]} per group, groups={groups}), got shape {tuple(input.shape)}")
    check_bias(bias, bias_name, weight.shape[0], input.dtype)
    device_type_of(input, weight, *([] if bias is None else [bias]))


def check_bias(bias, name: str, channels: int, dtype: torch.dtype) -> None:
    if bias is None:
        return
    check_tensor(bias, name, (1,), (dtype,))
    if bias.shape[0] != channels:
        raise ValueError(f"{name} must have {channels} elements, got shape {tuple(bias.shape)}")


def prepare_input(input, weight, stride, padding, dilation, groups) -> tuple[Tensor, ConvGeometry]:
    """The 4-D input (with the odd 'same' padding row/column added, as
    PyTorch adds it) and the geometry; raises when the input is too small."""
    geometry, extra = ConvGeometry.from_args(tuple(weight.shape[-2:]), stride, padding, dilation, groups)
    x = input if input.dim() == 4 else input.unsqueeze(0)
    if any(extra):
        x = F.pad(x, (0, extra[1], 0, extra[0]))
    geometry.output_size(tuple(x.shape[-2:]))
    return x, geometry


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1, *, backend: str | None = None) -> Tensor:
    """``F.conv2d``, same arguments and result, on the fastest backend that
    covers the call (``conv2d_path`` says which); ``backend`` picks one."""
    input, weight, bias = autocast_inputs(input, weight, bias)
    check_conv_args(input, weight, bias, groups)
    x, geometry = prepare_input(input, weight, stride, padding, dilation, groups)
    name = _backend.resolve_backend(BACKENDS, backend, x, weight,
                                    uncovered=triton_uncovered(x.dtype, weight, groups))
    if name == "reference":
        y = F.conv2d(x, weight, bias, geometry.stride, geometry.padding, geometry.dilation, groups)
    else:
        y = conv2d_op(x, weight, bias, *geometry.as_lists(), groups)
    return y if input.dim() == 4 else y.squeeze(0)


def conv2d_path(input: Tensor, weight: Tensor, groups: int = 1, *, backend: str | None = None) -> ConvPath:
    """Which implementation ``conv2d(input, weight, ..., groups=groups,
    backend=backend)`` runs, and why (raises as that call would when the
    requested backend cannot run)."""
    name = _backend.resolve_backend(BACKENDS, backend, input, weight,
                                    uncovered=triton_uncovered(input.dtype, weight, groups))
    if name == "triton":
        kind = "implicit GEMM" if groups == 1 else "depthwise"
        return ConvPath(name, f"Triton {kind} kernel")
    gap = triton_gap(input.dtype, weight, groups)
    if input.device.type == "cuda" and gap is not None:
        return ConvPath(name, f"PyTorch's conv: outside the Triton kernels: {gap}")
    return ConvPath(name, f"PyTorch's conv: the default for {input.device.type} tensors")


class Conv2d(nn.Conv2d):
    """Drop-in for ``torch.nn.Conv2d``: same arguments, parameters and
    state_dict, same outputs; runs on fastseg's kernels where they cover it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 backend: str | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.backend = backend

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input, padding = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0
        return conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups, backend=self.backend)

    def path(self, input: Tensor) -> ConvPath:
        """Which implementation this layer runs for ``input``, and why."""
        return conv2d_path(input, self.weight, self.groups, backend=self.backend)
