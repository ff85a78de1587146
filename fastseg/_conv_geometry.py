"""Convolution geometry shared by conv2d, depthwise_separable_conv2d, their
references and kernels: torch.nn.Conv2d's argument rules and output size,
and which taps of a dilated kernel can ever see the input.

A tap ``(r, q)`` of output pixel ``(oh, ow)`` reads input pixel
``(oh * sh - ph + r * dh, ow * sw - pw + q * dw)``. At ASPP rates on small
maps (rate 24 on a 32x32 map) whole rows and columns of taps land in the
padding for every output pixel; ``live_taps`` names the ones that do not,
so kernels never multiply those zeros.
"""

from dataclasses import dataclass

from ._checks import int_pair


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]  # zeros on each side, symmetric
    dilation: tuple[int, int]
    groups: int

    @classmethod
    def from_args(cls, kernel: tuple[int, int], stride=1, padding=0, dilation=1,
                  groups: int = 1) -> tuple["ConvGeometry", tuple[int, int]]:
        """Normalise F.conv2d-style arguments for a ``kernel``-sized weight.

        Returns the geometry and the extra zero rows/columns to add after the
        input (bottom, right): ``padding="same"`` with an odd total padding
        puts the odd one there, as PyTorch does.
        """
        stride = int_pair(stride, "stride", 1)
        dilation = int_pair(dilation, "dilation", 1)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        extra = (0, 0)
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                if stride != (1, 1):
                    raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride={stride}")
                total = tuple(d * (k - 1) for d, k in zip(dilation, kernel))
                padding = tuple(t // 2 for t in total)
                extra = tuple(t % 2 for t in total)
            else:
                raise ValueError(f"padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
        else:
            padding = int_pair(padding, "padding", 0)
        return cls(tuple(kernel), stride, padding, dilation, groups), extra

    def output_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """PyTorch's output size; an input smaller than the dilated kernel
        (after padding) is a ValueError, as PyTorch raises."""
        out = []
        for size, k, s, p, d in zip(input_hw, self.kernel, self.stride, self.padding, self.dilation):
            reach = d * (k - 1) + 1
            if size + 2 * p < reach:
                raise ValueError(f"input of spatial size {tuple(input_hw)} with padding {self.padding} is smaller "
                                 f"than the dilated kernel ({self.kernel} at dilation {self.dilation})")
            out.append((size + 2 * p - reach) // s + 1)
        return tuple(out)

    def live_taps(self, input_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The smallest half-open ranges ``(r_lo, r_hi), (q_lo, q_hi)`` of kernel
        rows and columns holding every tap that reads at least one input pixel
        (tap ``r`` reads input rows ``r*d - p + s*o``, o in [0, Ho)). Kernels
        loop over these ranges only; a dead tap inside them costs masked loads."""
        ranges = []
        for size, out, k, s, p, d in zip(input_hw, self.output_size(input_hw), self.kernel, self.stride,
                                         self.padding, self.dilation):
            live = []
            for r in range(k):
                first_o = max(0, -((r * d - p) // s))  # the first output whose read is >= 0
                if first_o < out and first_o * s + r * d - p < size:
                    live.append(r)
            ranges.append((live[0], live[-1] + 1) if live else (0, 0))
        return ranges[0], ranges[1]

    def as_lists(self) -> tuple[list[int], list[int], list[int]]:
        """(stride, padding, dilation) as lists, for op schemas."""
        return list(self.stride), list(self.padding), list(self.dilation)
