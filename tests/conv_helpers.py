"""Cases and checks shared by the conv2d and depthwise-separable suites.

The ground truth is PyTorch's own conv (``F.conv2d``) run in float64 on
float64 copies of the very inputs the op got, rounding included. An op's
result in a dtype is accepted when its largest error against that truth is
at most twice the error PyTorch's conv makes in the same dtype on the same
inputs (flash-attention's criterion), plus a floor of a few units in the
last place of the largest value: PyTorch's error can be zero, and on CUDA
float32 goes through tf32 tensor cores (cuDNN's default) in both.
"""

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pool_helpers import LAYOUTS, _pair, assert_layout, dtype_id, on_devices, relayout  # noqa: F401 (re-exported)

CONV_BACKENDS = {"cpu": ("triton", "reference"), "cuda": ("triton", "reference")}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# --- tolerances ------------------------------------------------------------------

# Error floor relative to the largest |value| of the truth: about two units
# in the last place (float16 has 11 significant bits, bfloat16 8, float32
# 24). The kernels accumulate in float32 and round once, as PyTorch does.
ERROR_FLOOR = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}
# float32 tile products on CUDA use tf32 (10-bit mantissa) exactly when
# PyTorch's cuDNN conv does (torch.backends.cudnn.allow_tf32).
TF32_FLOOR = 2e-3


def error_floor(dtype: torch.dtype, device) -> float:
    if dtype == torch.float32 and torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        return TF32_FLOOR
    return ERROR_FLOOR[dtype]


def assert_close_to_truth(actual: torch.Tensor, truth: torch.Tensor, baseline: torch.Tensor | None = None, *,
                          name: str = "output") -> None:
    """``actual`` (the op's result in its dtype) against ``truth`` (float64):
    max error <= 2 * ``baseline``'s max error (PyTorch in the same dtype) +
    the dtype's floor times the largest |truth|."""
    assert actual.shape == truth.shape, f"{name}: shape {tuple(actual.shape)}, expected {tuple(truth.shape)}"
    assert truth.dtype == torch.float64
    if actual.numel() == 0:
        return
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    error = (actual.double() - truth).abs()
    scale = max(truth.abs().max().item(), 1.0)
    bound = error_floor(actual.dtype, actual.device) * scale
    baseline_error = 0.0
    if baseline is not None:
        baseline_error = (baseline.double() - truth).abs().max().item()
        bound += 2 * baseline_error
    worst = error.max().item()
    if worst > bound:
        where = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
        raise AssertionError(
            f"{name} ({dtype_id(actual.dtype)}): max error {worst:.3g} at {where} "
            f"(got {actual[where].item():.6g}, truth {truth[where].item():.6g}) exceeds {bound:.3g} "
            f"(PyTorch's own error in this dtype {baseline_error:.3g}, largest |truth| {scale:.3g})")


# --- cases -------------------------------------------------------------------------

def _fmt(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


@dataclass(frozen=True)
class ConvCase:
    """A conv: the input's shape, the output channels and F.conv2d's arguments.
    ``groups=None`` means depthwise (groups = input channels)."""

    shape: tuple[int, int, int, int]
    out_channels: int
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | str = 0
    dilation: int | tuple[int, int] = 1
    groups: int | None = 1
    note: str = field(default="", compare=False)

    def __str__(self) -> str:
        kind = "dw" if self.groups is None else ("" if self.groups == 1 else f"g{self.groups}")
        parts = ["x".join(map(str, self.shape)), f"to{self.out_channels}", f"k{_fmt(self.kernel)}"]
        for prefix, value, default in (("s", self.stride, 1), ("p", self.padding, 0), ("d", self.dilation, 1)):
            if value != default:
                parts.append(f"{prefix}{_fmt(value)}")
        if kind:
            parts.append(kind)
        if self.note:
            parts.append(self.note)
        return "-".join(parts)

    @property
    def in_channels(self) -> int:
        return self.shape[1]

    @property
    def group_count(self) -> int:
        return self.in_channels if self.groups is None else self.groups

    @property
    def kernel2(self) -> tuple[int, int]:
        return _pair(self.kernel)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.group_count, *self.kernel2)

    @property
    def conv_args(self) -> dict:
        """F.conv2d's keyword arguments after (input, weight, bias)."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.group_count)

    @property
    def window_args(self) -> dict:
        """stride, padding, dilation: the separable op's arguments."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)


def ambiguous_layout(t: torch.Tensor) -> bool:
    """Size-1 dims can make a tensor both contiguous and channels_last;
    PyTorch's conv then picks channels_last, fastseg's kernels contiguous."""
    return t.dim() == 4 and t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def random_tensor(shape, dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Normal values drawn in float64 on the CPU (the same for every dtype
    and device), then rounded to ``dtype``."""
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)


def make_input(shape, *, dtype=torch.float32, layout="nchw", device="cpu", gen: torch.Generator) -> torch.Tensor:
    return relayout(random_tensor(shape, dtype, gen).to(device), layout)


def make_conv(case: ConvCase, *, dtype=torch.float32, layout="nchw", device="cpu", bias=True,
              gen: torch.Generator):
    """Input (laid out as ``layout``), weight and bias of ``case``; the weight
    scaled by 1/sqrt(fan-in) so outputs stay O(1) in every dtype."""
    x = make_input(case.shape, dtype=dtype, layout=layout, device=device, gen=gen)
    fan_in = case.weight_shape[1] * case.weight_shape[2] * case.weight_shape[3]
    weight = random_tensor(case.weight_shape, dtype, gen, fan_in ** -0.5).to(device)
    b = random_tensor((case.out_channels,), dtype, gen).to(device) if bias else None
    return x, weight, b


def randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random conv weights and biases (scaled by 1/sqrt(fan-in)), and random
    BatchNorm affine parameters and running statistics (a fresh
    BatchNorm's identity would hide a wrong fold)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(random_tensor(m.weight.shape, m.weight.dtype, gen, m.weight[0].numel() ** -0.5))
                if m.bias is not None:
                    m.bias.copy_(random_tensor(m.bias.shape, m.bias.dtype, gen))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + random_tensor(m.weight.shape, m.weight.dtype, gen, 0.3))
                m.bias.copy_(random_tensor(m.bias.shape, m.bias.dtype, gen, 0.5))
                m.running_mean.copy_(random_tensor(m.running_mean.shape, m.running_mean.dtype, gen, 0.5))
                # Some variances near eps's scale, so that a fold that drops eps shows.
                m.running_var.copy_(10 ** (torch.rand(m.running_var.shape, generator=gen) * 2.5 - 2.2))


def float64_copies(*tensors):
    """Detached float64 copies (same layout), requiring grad where the
    original does; None stays None."""
    return tuple(None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors)


def same_dtype_copies(*tensors):
    """Detached copies in the same dtype, for PyTorch's baseline run."""
    return tuple(None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in tensors)


def output_and_grads(fn, inputs, grad_output=None):
    """``fn(*inputs)`` and, with ``grad_output``, the gradients of every input
    that requires grad (None for the others)."""
    out = fn(*inputs)
    if grad_output is None:
        return out, ()
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(out, leaves, grad_output))
    return out, tuple(next(grads) if t is not None and t.requires_grad else None for t in inputs)


def check_against_truth(op, reference, inputs, *, grad_output=None, names=None) -> tuple:
    """Runs ``op`` on ``inputs`` (and backward with ``grad_output``),
    ``reference`` (PyTorch, same signature) on float64 copies and on
    same-dtype copies, and compares output and gradients. Returns the op's
    (output, grads)."""
    out, grads = output_and_grads(op, inputs, grad_output)
    grad64 = None if grad_output is None else grad_output.double()
    truth, truth_grads = output_and_grads(reference, float64_copies(*inputs), grad64)
    base, base_grads = output_and_grads(reference, same_dtype_copies(*inputs), grad_output)
    assert out.dtype == inputs[0].dtype
    assert_close_to_truth(out, truth, base)
    names = names or [f"input {i}" for i in range(len(inputs))]
    for name, g, g64, g_base, t in zip(names, grads, truth_grads, base_grads, inputs):
        if t is None or not t.requires_grad:
            continue
        assert g.dtype == t.dtype and g.shape == t.shape, (name, g.dtype, g.shape)
        assert_close_to_truth(g, g64, g_base, name=f"gradient of {name}")
    return out, grads


class FastsegOps(TorchDispatchMode):
    """Records the fastseg:: ops dispatched under it (below autograd, so the
    backward's ops too), by name: which kernels a call really ran."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastseg":
            self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def assert_compiled_matches_eager(fn, params, *, grad_atol: float) -> None:
    """``fn`` under ``torch.compile(fullgraph=True)`` (a graph break fails it)
    gives eager's output exactly, and the gradients of ``params`` (through
    ``out.square().sum()``) within rtol 1e-6 and ``grad_atol``."""
    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(*params)
    grads = torch.autograd.grad(out.square().sum(), params)
    expected = fn(*params)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=grad_atol)
