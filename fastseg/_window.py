"""Pooling-window geometry shared by max-pool, max-unpool, their references
and kernels: argument normalisation, output sizes (PyTorch's formulas, same
errors), and the two index formats.

Index formats, per (n, c) plane:
- flat (int64, PyTorch's): ``h * W + w`` of the max in the pool's input plane;
- compact (uint8, fastseg's): ``r * KW + q``, the max's position inside its own
  window, whose top-left corner is ``(oh * sh - ph, ow * sw - pw)`` and whose
  taps are ``dilation`` apart. A window has at most 256 positions.
"""

from dataclasses import dataclass

import torch

from ._checks import int_pair

COMPACT_DTYPE = torch.uint8
FLAT_DTYPE = torch.int64


@dataclass(frozen=True)
class PoolWindow:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def from_args(cls, kernel_size, stride=None, padding=0, dilation=1) -> "PoolWindow":
        """Normalise nn.MaxPool2d-style arguments; ``stride=None`` (or an
        empty sequence, as F.max_pool2d accepts) means ``kernel_size``."""
        kernel = int_pair(kernel_size, "kernel_size", 1)
        stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
            else int_pair(stride, "stride", 1)
        padding = int_pair(padding, "padding", 0)
        dilation = int_pair(dilation, "dilation", 1)
        for axis in range(2):
            if padding[axis] > kernel[axis] // 2:
                raise ValueError(f"padding must be at most half of kernel_size, got padding={padding} "
                                 f"for kernel_size={kernel}")
        return cls(kernel, stride, padding, dilation)

    @property
    def area(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def extent(self) -> tuple[int, int]:
        """Rows and columns one window spans, dilation included."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def non_overlapping(self) -> bool:
        return all(s >= e for s, e in zip(self.stride, self.extent))

    @classmethod
    def from_lists(cls, kernel_size, stride, padding, dilation) -> "PoolWindow":
        """The inverse of ``as_lists``: arguments already checked."""
        return cls(tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))

    def as_lists(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """The four pairs as lists, the form torch.library schemas take."""
        return list(self.kernel), list(self.stride), list(self.padding), list(self.dilation)

    def pooled_size(self, in_hw: tuple[int, int], ceil_mode: bool) -> tuple[int, int]:
        """Pool output size, with PyTorch's formula: in ceil mode the last
        window must still start inside the input or its left padding."""
        out = []
        for size, k, s, p, e in zip(in_hw, self.kernel, self.stride, self.padding, self.extent):
            span = size + 2 * p - e + (s - 1 if ceil_mode else 0)
            n = span // s + 1
            if ceil_mode and (n - 1) * s >= size + p:
                n -= 1
            out.append(n)
        if min(out) < 1:
            raise ValueError(f"input: the pooling window (kernel_size={self.kernel}, dilation={self.dilation}, "
                             f"padding={self.padding}) is larger than the padded input {tuple(in_hw)}; "
                             f"output would be {tuple(out)}")
        for axis in range(2):
            if not self._every_window_has_input(axis, in_hw[axis], out[axis]):
                raise ValueError(f"input: with kernel_size={self.kernel}, stride={self.stride}, "
                                 f"padding={self.padding}, dilation={self.dilation} some pooling window on an "
                                 f"input of size {tuple(in_hw)} holds padding only (it would have no max)")
        return tuple(out)

    def _every_window_has_input(self, axis: int, size: int, windows: int) -> bool:
        """PyTorch's padding <= kernel // 2 rule ignores dilation, so a
        dilated window can straddle a small input without touching it."""
        k, s, p, d = self.kernel[axis], self.stride[axis], self.padding[axis], self.dilation[axis]

        def touches(o: int) -> bool:
            return any(0 <= o * s - p + r * d < size for r in range(k))

        # With taps closer than the input is wide, a window whose span meets
        # the input has a tap in it, and spans move monotonically: the two
        # end windows decide. Wider taps are rare; check every window.
        candidates = (0, windows - 1) if d <= size else range(windows)
        return all(touches(o) for o in candidates)

    def default_unpooled_size(self, pooled_hw: tuple[int, int]) -> tuple[int, int]:
        """nn.MaxUnpool2d's default output size (dilation included)."""
        return tuple((n - 1) * s - 2 * p + e
                     for n, s, p, e in zip(pooled_hw, self.stride, self.padding, self.extent))

    def compact_to_target(self, compact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, C, Ho, Wo] window positions -> (row, col) of each in the
        unpooled plane, int64."""
        ho, wo = compact.shape[-2:]
        pos = compact.long()
        oh = torch.arange(ho, device=compact.device).view(ho, 1)
        ow = torch.arange(wo, device=compact.device).view(1, wo)
        rows = oh * self.stride[0] - self.padding[0] + (pos // self.kernel[1]) * self.dilation[0]
        cols = ow * self.stride[1] - self.padding[1] + (pos % self.kernel[1]) * self.dilation[1]
        return rows, cols

    def flat_to_compact(self, flat: torch.Tensor, in_w: int) -> torch.Tensor:
        """[N, C, Ho, Wo] flat positions in a plane of width ``in_w`` (each
        inside its own window) -> window positions, uint8."""
        ho, wo = flat.shape[-2:]
        oh = torch.arange(ho, device=flat.device).view(ho, 1)
        ow = torch.arange(wo, device=flat.device).view(1, wo)
        r = (flat // in_w - (oh * self.stride[0] - self.padding[0])) // self.dilation[0]
        q = (flat % in_w - (ow * self.stride[1] - self.padding[1])) // self.dilation[1]
        return (r * self.kernel[1] + q).to(COMPACT_DTYPE)
