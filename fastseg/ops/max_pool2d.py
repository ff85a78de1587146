"""Max-pool with indices: ``fastseg.ops.max_pool2d_with_indices`` and
``fastseg.ops.MaxPool2d``, drop-ins for PyTorch's, plus compact indices.

``compact=True`` stores each max's position inside its window in one byte
(uint8) instead of an int64 flat index: 8x less index memory and traffic,
which is most of what a SegNet decoder reads. ``fastseg.ops.max_unpool2d``
takes either kind.

Registered as ``fastseg::max_pool2d_with_indices`` with a fake and autograd
(backward: ``fastseg::max_pool2d_backward``), so torch.compile and
torch.export trace through it.
"""

import importlib

import torch
from torch import Tensor, nn

from .. import _backend
from .._checks import FLOAT_DTYPES, check_nonempty_planes, check_tensor
from .._layout import empty_like_layout
from .._window import COMPACT_DTYPE, FLAT_DTYPE, PoolWindow

_reference = importlib.import_module("fastseg.reference.max_pool2d")  # the module, not its function

# On CPU PyTorch's own pooling kernel (the reference) is the fastest we have.
BACKENDS = _backend.register("max_pool2d_with_indices", {"cuda": ("triton",), "cpu": ()})


def _implementation(backend: str):
    if backend == "triton":
        return importlib.import_module("fastseg.kernels.max_pool2d")
    return _reference


@torch.library.custom_op("fastseg::max_pool2d_with_indices", mutates_args=())
def _max_pool2d_op(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                   dilation: list[int], ceil_mode: bool, compact: bool, backend: str) -> tuple[Tensor, Tensor]:
    window = PoolWindow.from_lists(kernel_size, stride, padding, dilation)
    return _implementation(backend).pool_forward(x, window, ceil_mode, compact)


@_max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, compact, backend):
    out_hw = PoolWindow.from_lists(kernel_size, stride, padding, dilation).pooled_size(tuple(x.shape[-2:]), ceil_mode)
    values = empty_like_layout(x, (*x.shape[:2], *out_hw))
    return values, torch.empty_like(values, dtype=COMPACT_DTYPE if compact else FLAT_DTYPE)


@torch.library.custom_op("fastseg::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward_op(grad_values: Tensor, indices: Tensor, input_size: list[int], kernel_size: list[int],
                            stride: list[int], padding: list[int], dilation: list[int], backend: str) -> Tensor:
    window = PoolWindow.from_lists(kernel_size, stride, padding, dilation)
    return _implementation(backend).pool_backward(grad_values, indices, window, tuple(input_size))


@_max_pool2d_backward_op.register_fake
def _(grad_values, indices, input_size, kernel_size, stride, padding, dilation, backend):
    return empty_like_layout(grad_values, (*grad_values.shape[:2], *input_size))


def _setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, _, _, backend = inputs
    ctx.save_for_backward(output[1])
    ctx.pool_args = (list(x.shape[-2:]), kernel_size, stride, padding, dilation, backend)


def _backward(ctx, grad_values, _grad_indices):
    (indices,) = ctx.saved_tensors
    grad_x = _max_pool2d_backward_op(grad_values, indices, *ctx.pool_args)
    return grad_x, None, None, None, None, None, None, None


_max_pool2d_op.register_autograd(_backward, setup_context=_setup_context)


def max_pool2d_with_indices(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, *, compact: bool = False,
                            backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``F.max_pool2d(..., return_indices=True)``, same arguments and results.

    ``compact=True`` returns uint8 window positions instead of int64 flat
    indices. ``backend`` picks the implementation (None: the fastest here).
    """
    check_tensor(input, "input", (3, 4), FLOAT_DTYPES)
    check_nonempty_planes(input, "input")
    window = PoolWindow.from_args(kernel_size, stride, padding, dilation)
    if compact and window.area > 256:
        raise ValueError(f"compact indices need a window of at most 256 taps, got kernel_size={window.kernel}")
    window.pooled_size(tuple(input.shape[-2:]), ceil_mode)  # raises when the window does not fit
    x = input if input.dim() == 4 else input.unsqueeze(0)
    name = _backend.resolve_backend(BACKENDS, backend, x)
    values, indices = _max_pool2d_op(x, *window.as_lists(), bool(ceil_mode), bool(compact), name)
    if input.dim() == 3:
        return values.squeeze(0), indices.squeeze(0)
    return values, indices


class MaxPool2d(nn.Module):
    """Drop-in for ``torch.nn.MaxPool2d`` (same arguments, outputs and index
    semantics), with ``compact_indices=True`` for uint8 window positions."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False, *, compact_indices: bool = False, backend: str | None = None):
        super().__init__()
        PoolWindow.from_args(kernel_size, stride, padding, dilation)  # bad arguments fail here, not in forward
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode
        self.compact_indices = compact_indices
        self.backend = backend

    def forward(self, input: Tensor):
        values, indices = max_pool2d_with_indices(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
            compact=self.compact_indices, backend=self.backend)
        return (values, indices) if self.return_indices else values

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}, compact_indices={self.compact_indices}")
