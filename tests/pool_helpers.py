"""Cases and checks shared by the max-pool and max-unpool suites.

The window geometry here is written out from DESIGN/_window.py's definition
(compact index ``r * KW + q`` inside the window whose corner is
``(oh * sh - ph, ow * sw - pw)``, taps ``dilation`` apart) and does not use
fastseg's own conversion functions, so the tests check them rather than
repeat them.
"""

from dataclasses import dataclass

import pytest
import torch

# --- backends per device -----------------------------------------------------

POOL_BACKENDS = {"cpu": ("triton", "reference"), "cuda": ("triton", "reference")}
UNPOOL_BACKENDS = {"cpu": ("triton", "cpp", "reference"), "cuda": ("triton", "cuda", "reference")}


def on_devices(backends_by_device: dict[str, tuple[str, ...]]) -> list:
    """``(device, backend)`` parameters, CUDA ones with the ``cuda`` mark."""
    params = []
    for device, names in backends_by_device.items():
        for name in names:
            marks = [pytest.mark.cuda] if device == "cuda" else []
            params.append(pytest.param(device, name, marks=marks, id=f"{device}-{name}"))
    return params


# --- dtypes and tolerances -----------------------------------------------------

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# Max-pool's backward sums the gradients of the windows whose max a pixel is,
# in float32 (float64 for float64), compared here with the float64 sum:
# float16/bfloat16 within the final rounding to the dtype (rtol: torch's
# defaults for the dtype), float32 and float64 within summation-order error.
GRAD_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


# --- geometry ------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass(frozen=True)
class Geometry:
    """A max-pool case: the pool input's shape and the pool's arguments."""

    shape: tuple[int, int, int, int]
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    dilation: int | tuple[int, int] = 1
    ceil_mode: bool = False

    def __str__(self) -> str:
        def fmt(v):
            return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)

        parts = ["x".join(map(str, self.shape)), f"k{fmt(self.kernel)}"]
        if self.stride is not None:
            parts.append(f"s{fmt(self.stride)}")
        if self.padding != 0:
            parts.append(f"p{fmt(self.padding)}")
        if self.dilation != 1:
            parts.append(f"d{fmt(self.dilation)}")
        if self.ceil_mode:
            parts.append("ceil")
        return "-".join(parts)

    @property
    def schema_lists(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """kernel, stride, padding, dilation as the registered ops take them."""
        return list(self.kernel2), list(self.stride2), list(self.padding2), list(self.dilation2)

    @property
    def pool_args(self) -> dict:
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding, dilation=self.dilation,
                    ceil_mode=self.ceil_mode)

    @property
    def unpool_args(self) -> dict:
        """fastseg.ops.max_unpool2d's window arguments (dilation included)."""
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def kernel2(self):
        return _pair(self.kernel)

    @property
    def stride2(self):
        return self.kernel2 if self.stride is None else _pair(self.stride)

    @property
    def padding2(self):
        return _pair(self.padding)

    @property
    def dilation2(self):
        return _pair(self.dilation)

    @property
    def area(self) -> int:
        return self.kernel2[0] * self.kernel2[1]

    def default_unpooled_hw(self, pooled_hw) -> tuple[int, int]:
        """nn.MaxUnpool2d's default output size, with the dilated extent."""
        return tuple((n - 1) * s - 2 * p + d * (k - 1) + 1
                     for n, k, s, p, d in zip(pooled_hw, self.kernel2, self.stride2, self.padding2, self.dilation2))

    def window_corner(self, pooled_hw, device):
        """Top-left corner (row [Ho, 1], col [1, Wo]) of every window."""
        (sh, sw), (ph, pw) = self.stride2, self.padding2
        oh = torch.arange(pooled_hw[0], device=device).view(-1, 1)
        ow = torch.arange(pooled_hw[1], device=device).view(1, -1)
        return oh * sh - ph, ow * sw - pw

    def compact_targets(self, compact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) named by each compact index, int64 [N, C, Ho, Wo]."""
        (_, kw), (dh, dw) = self.kernel2, self.dilation2
        h0, w0 = self.window_corner(compact.shape[-2:], compact.device)
        pos = compact.long()
        return h0 + (pos // kw) * dh, w0 + (pos % kw) * dw

    def compact_to_flat(self, compact: torch.Tensor, width: int) -> torch.Tensor:
        rows, cols = self.compact_targets(compact)
        return rows * width + cols

    def flat_to_compact(self, flat: torch.Tensor, width: int) -> torch.Tensor:
        """PyTorch's flat indices of a pool -> window positions, uint8."""
        (_, kw), (dh, dw) = self.kernel2, self.dilation2
        h0, w0 = self.window_corner(flat.shape[-2:], flat.device)
        dr, dq = flat // width - h0, flat % width - w0
        assert ((dr % dh) == 0).all() and ((dq % dw) == 0).all(), "a flat index is off its window's taps"
        return ((dr // dh) * kw + dq // dw).to(torch.uint8)


GEOMETRIES = [
    Geometry((1, 1, 1, 1), 1),
    Geometry((1, 1, 1, 1), 3, 1, 1),
    Geometry((2, 3, 9, 11), 2),
    Geometry((2, 3, 9, 11), 3, 2, 1, ceil_mode=True),
    Geometry((2, 3, 9, 11), 3, 1, 1, 2),
    Geometry((1, 5, 17, 8), (2, 3), (1, 2), (1, 1), (2, 1), ceil_mode=True),
    Geometry((3, 2, 8, 13), (3, 2), (2, 3), (0, 1), (1, 2), ceil_mode=True),
    Geometry((2, 2, 10, 10), 2, 3),
]
GEOMETRY_IDS = [str(g) for g in GEOMETRIES]
# Overlapping windows (several windows share a max) and a plain one.
K3S2_CEIL = GEOMETRIES[3]
K3S1_DIL2 = GEOMETRIES[4]
ASYMMETRIC = GEOMETRIES[5]
PLAIN_K2 = GEOMETRIES[2]


# --- inputs --------------------------------------------------------------------

LAYOUTS = ("nchw", "channels_last", "permuted", "strided")
VALUE_KINDS = ("randn", "ties", "nonfinite")


def random_values(shape, dtype: torch.dtype, kind: str, gen: torch.Generator) -> torch.Tensor:
    """CPU tensor of ``shape``: normal values, small integers (many ties),
    or small integers with NaN, -inf and +inf, and one plane all -inf."""
    if kind == "randn":
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    values = torch.randint(-3, 4, shape, generator=gen).to(torch.float64)
    if kind == "nonfinite":
        u = torch.rand(shape, generator=gen, dtype=torch.float64)
        values[u < 0.1] = float("nan")
        values[(u >= 0.1) & (u < 0.25)] = float("-inf")
        values[(u >= 0.25) & (u < 0.3)] = float("inf")
        if values.dim() == 4 and values.numel():
            values[0, 0] = float("-inf")  # every window of this plane is a tie of -inf
    else:
        assert kind == "ties", kind
    return values.to(dtype)


def _poison(dtype: torch.dtype):
    """What fills the gaps of a strided buffer: a value that changes the
    result if a kernel reads it (NaN wins every max; -1 is an invalid index)."""
    if dtype.is_floating_point:
        return float("nan")
    return -1 if dtype == torch.int64 else 255


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` (4-D) with the same values, laid out as ``layout`` on its device:
    - nchw: contiguous;
    - channels_last: contiguous in NHWC order;
    - permuted: dense but in W, N, H, C order (neither of the above);
    - strided: every other element of a wider buffer, the gaps poisoned."""
    n, c, h, w = t.shape
    if layout == "nchw":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "permuted":
        out = torch.empty((w, n, h, c), dtype=t.dtype, device=t.device).permute(1, 3, 2, 0)
    elif layout == "strided":
        out = torch.full((n, c, h, 2 * w), _poison(t.dtype), dtype=t.dtype, device=t.device)[..., 1::2]
    else:
        raise AssertionError(layout)
    return out.copy_(t)


def make_input(shape, *, dtype=torch.float32, values="randn", layout="nchw", device="cpu",
               gen: torch.Generator) -> torch.Tensor:
    return relayout(random_values(shape, dtype, values, gen).to(device), layout)


# --- checks --------------------------------------------------------------------

def expects_channels_last(like: torch.Tensor) -> bool:
    """fastseg's rule: channels_last out iff the input is laid out so (and
    not also plain contiguous, as size-1 dims allow)."""
    return like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last)


def assert_layout(out: torch.Tensor, like: torch.Tensor) -> None:
    if expects_channels_last(like):
        assert out.is_contiguous(memory_format=torch.channels_last), f"expected channels_last, strides {out.stride()}"
    else:
        assert out.is_contiguous(), f"expected contiguous, strides {out.stride()}"


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same dtype, shape and values, NaN where NaN (max is exact)."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def unpool_expected(values: torch.Tensor, flat: torch.Tensor, out_hw) -> torch.Tensor | None:
    """PyTorch's max-unpool of ``values`` at flat ``indices`` into planes of
    ``out_hw``, or None when some index is out of the plane (fastseg must
    then raise). ``aten.max_unpool2d`` is F.max_unpool2d's kernel without its
    output_size range check, which does not know about dilation."""
    plane = out_hw[0] * out_hw[1]
    if ((flat < 0) | (flat >= plane)).any():
        return None
    return torch.ops.aten.max_unpool2d(values, flat, list(out_hw))


def values_at_targets(table: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``table[n, c].flatten()[flat[n, c, i, j]]``: random unpool inputs that
    agree wherever two indices name one pixel, so that which duplicate wins
    does not matter (it is unspecified on CUDA)."""
    n, c = flat.shape[:2]
    return table.reshape(n, c, -1).gather(2, flat.reshape(n, c, -1)).view(flat.shape)
