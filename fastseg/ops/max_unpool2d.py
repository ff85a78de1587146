"""Max-unpool: ``fastseg.ops.max_unpool2d`` and ``fastseg.ops.MaxUnpool2d``,
drop-ins for PyTorch's, taking flat (int64) or compact (uint8) indices.

With compact indices the output is a dense gather over pooling windows:
every output written once, deterministic, so it also runs under
``torch.use_deterministic_algorithms(True)``. Flat indices are scattered as
in PyTorch; on CUDA that is non-deterministic where indices repeat
(overlapping windows), and says so under deterministic mode.

Every backend skips invalid indices instead of following them and raises a
``ValueError`` naming them, on CUDA too (where PyTorch fires a device-side
assert). Registered as ``fastseg::max_unpool2d`` (backward:
``fastseg::max_unpool2d_backward``) with fakes and autograd.
"""

import importlib

import torch
from torch import Tensor, nn

from .. import _backend, _compiled_ops
from .._checks import FLOAT_DTYPES, check_nonempty_planes, check_tensor
from .._layout import empty_like_layout
from .._window import COMPACT_DTYPE, FLAT_DTYPE, PoolWindow

_reference = importlib.import_module("fastseg.reference.max_unpool2d")  # the module, not its function

# Triton first on CUDA until a GPU run measures the CUDA kernel against it.
BACKENDS = _backend.register("max_unpool2d", {"cuda": ("triton", "cuda"), "cpu": ("cpp",)})


def _implementation(backend: str):
    if backend == "triton":
        return importlib.import_module("fastseg.kernels.max_unpool2d")
    if backend in ("cpp", "cuda"):
        return _compiled_ops
    return _reference


def _raise_invalid(indices: Tensor, window: PoolWindow, out_hw: tuple[int, int]) -> None:
    """The error path: say how many indices are bad and show the first."""
    _, valid = _reference.unpool_targets(indices, window, out_hw)
    bad = (~valid).nonzero()
    first = tuple(bad[0].tolist())
    got = int(indices[first])
    if indices.dtype == FLAT_DTYPE:
        kind = f"flat indices must lie in [0, H_out * W_out) = [0, {out_hw[0] * out_hw[1]}), got {got}"
    else:
        kind = (f"compact indices must name a tap of their window (< {window.area}) inside the output {out_hw}, "
                f"got {got}")
    raise ValueError(f"indices: {bad.shape[0]} of {indices.numel()} entries are invalid; {kind} at {first}")


@torch.library.custom_op("fastseg::max_unpool2d", mutates_args=())
def _max_unpool2d_op(x: Tensor, indices: Tensor, output_size: list[int], kernel_size: list[int],
                     stride: list[int], padding: list[int], dilation: list[int], backend: str) -> Tensor:
    window = PoolWindow.from_lists(kernel_size, stride, padding, dilation)
    if x.is_cuda and indices.dtype == FLAT_DTYPE and backend != "reference":
        torch._C._alert_not_deterministic(
            "fastseg.ops.max_unpool2d with flat (int64) indices on CUDA; compact (uint8) indices are deterministic")
    out, invalid = _implementation(backend).unpool_forward(x, indices, window, tuple(output_size))
    # Reading the flag synchronizes; inside a CUDA graph capture that is not
    # allowed, and the kernels have already skipped the bad indices.
    if not (x.is_cuda and torch.cuda.is_current_stream_capturing()) and invalid.item():
        _raise_invalid(indices, window, tuple(output_size))
    return out


@_max_unpool2d_op.register_fake
def _(x, indices, output_size, kernel_size, stride, padding, dilation, backend):
    return empty_like_layout(x, (*x.shape[:2], *output_size))


@torch.library.custom_op("fastseg::max_unpool2d_backward", mutates_args=())
def _max_unpool2d_backward_op(grad_output: Tensor, indices: Tensor, kernel_size: list[int], stride: list[int],
                              padding: list[int], dilation: list[int], backend: str) -> Tensor:
    window = PoolWindow.from_lists(kernel_size, stride, padding, dilation)
    return _implementation(backend).unpool_backward(grad_output, indices, window)


@_max_unpool2d_backward_op.register_fake
def _(grad_output, indices, kernel_size, stride, padding, dilation, backend):
    return empty_like_layout(indices, indices.shape, grad_output.dtype)


def _setup_context(ctx, inputs, output):
    _, indices, _, kernel_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(indices)
    ctx.window_args = (kernel_size, stride, padding, dilation, backend)


def _backward(ctx, grad_output):
    (indices,) = ctx.saved_tensors
    grad_x = _max_unpool2d_backward_op(grad_output, indices, *ctx.window_args)
    return grad_x, None, None, None, None, None, None, None


_max_unpool2d_op.register_autograd(_backward, setup_context=_setup_context)


def _pools_to(window: PoolWindow, in_hw: tuple[int, int], ceil_mode: bool) -> tuple[int, int] | None:
    try:
        return window.pooled_size(in_hw, ceil_mode)
    except ValueError:  # the window does not fit: this size pools to nothing
        return None


def _output_hw(output_size, window: PoolWindow, in_hw: tuple[int, int], compact: bool) -> tuple[int, int]:
    default = window.default_unpooled_size(in_hw)
    if output_size is None:
        return default
    if isinstance(output_size, (torch.Size, tuple, list)):
        sizes = tuple(output_size)
    else:
        raise TypeError(f"output_size must be a sequence of ints, got {output_size!r}")
    if len(sizes) not in (2, 3, 4) or not all(isinstance(v, int) for v in sizes):
        raise TypeError(f"output_size must be (H, W), (C, H, W) or (N, C, H, W) ints, got {output_size!r}")
    out_hw = sizes[-2:]
    if compact:
        # Only the sizes that pool back to the indices' size put every window where the indices say.
        if in_hw not in {_pools_to(window, out_hw, ceil) for ceil in (False, True)}:
            raise ValueError(f"output_size {out_hw} does not pool to the indices' size {in_hw} with "
                             f"kernel_size={window.kernel}, stride={window.stride}, padding={window.padding}, "
                             f"dilation={window.dilation}")
        return out_hw
    for axis in range(2):
        low, high = default[axis] - window.stride[axis], default[axis] + window.stride[axis]
        if not low < out_hw[axis] < high:
            bounds = [(d - s, d + s) for d, s in zip(default, window.stride)]
            raise ValueError(f"output_size {out_hw} must lie strictly between {bounds[0]} (height) and "
                             f"{bounds[1]} (width), around the default {default}")
    return out_hw


def max_unpool2d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0, output_size=None, *,
                 dilation=1, backend: str | None = None) -> Tensor:
    """``F.max_unpool2d``, same arguments and results, for flat (int64) or
    compact (uint8) indices. ``dilation`` is the pool's, needed to place
    compact indices; ``backend`` picks the implementation (None: fastest)."""
    check_tensor(input, "input", (3, 4), FLOAT_DTYPES)
    check_tensor(indices, "indices", (3, 4), (FLAT_DTYPE, COMPACT_DTYPE))
    if indices.shape != input.shape:
        raise ValueError(f"indices must have the shape of input {tuple(input.shape)}, got {tuple(indices.shape)}")
    if indices.device != input.device:
        raise ValueError(f"indices must be on input's device {input.device}, got {indices.device}")
    check_nonempty_planes(input, "input")
    window = PoolWindow.from_args(kernel_size, stride, padding, dilation)
    compact = indices.dtype == COMPACT_DTYPE
    if compact and window.area > 256:
        raise ValueError(f"compact indices need a window of at most 256 taps, got kernel_size={window.kernel}")
    out_hw = _output_hw(output_size, window, tuple(input.shape[-2:]), compact)
    x, idx = (input, indices) if input.dim() == 4 else (input.unsqueeze(0), indices.unsqueeze(0))
    name = _backend.resolve_backend(BACKENDS, backend, x)
    out = _max_unpool2d_op(x, idx, list(out_hw), *window.as_lists(), name)
    return out if input.dim() == 4 else out.squeeze(0)


class MaxUnpool2d(nn.Module):
    """Drop-in for ``torch.nn.MaxUnpool2d`` taking flat or compact indices.
    ``dilation`` (keyword-only, not in PyTorch) is the pool's."""

    def __init__(self, kernel_size, stride=None, padding=0, *, dilation=1, backend: str | None = None):
        super().__init__()
        PoolWindow.from_args(kernel_size, stride, padding, dilation)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.backend = backend

    def forward(self, input: Tensor, indices: Tensor, output_size=None) -> Tensor:
        return max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding, output_size,
                            dilation=self.dilation, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}")
