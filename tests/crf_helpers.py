"""Inputs and checks shared by the permutohedral-filter and dense-CRF suites.

The ground truth of the filter is ``fastseg.reference.exact_gaussian_filter``
(the O(N^2) sum, in float64); the lattice approximates it, so its accuracy
is bounded by measured numbers (PSNR on a natural image, the absolute scale
where pixels are dense), while the backends must agree with each other to
rounding.
"""

import functools
import math

import pytest
import torch

from fastseg.reference import exact_gaussian_filter
from pool_helpers import DTYPES, dtype_id  # noqa: F401 (re-exported)

# Largest error of a backend's output in a dtype against the float64
# reference on the same (rounded) inputs, relative to the largest |value|:
# a few units in the last place of the dtype (the lattice computes in
# float32 for 16-bit inputs and rounds once at the end).
OUTPUT_TOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str = "output") -> None:
    """max |actual - expected| <= tol * max(|expected|, 1), in float64."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    error = (actual.double() - expected.double()).abs().max().item()
    scale = max(expected.double().abs().max().item(), 1.0)
    assert error <= tol * scale, f"{name}: max error {error:.3g} > {tol:g} * {scale:.3g}"


# --- layouts -------------------------------------------------------------------------

def to_flat(x: torch.Tensor) -> torch.Tensor:
    """[B, C, *spatial] -> [B, N, C] (contiguous)."""
    return x.reshape(*x.shape[:2], -1).transpose(1, 2).contiguous()


def from_flat(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, C, *spatial of like]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *like.shape[2:])


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` [B, C, *spatial] with the same values laid out as ``layout``:
    contiguous; channels_last (4-D) / channels_last_3d (5-D); permuted (dense,
    the dims in reverse order in memory); sliced (every other element of a
    wider buffer whose gaps hold NaN, read by a kernel that ignores strides)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[t.dim()]
        return t.contiguous(memory_format=fmt)
    if layout == "permuted":
        dims = tuple(reversed(range(t.dim())))
        return t.permute(dims).contiguous().permute(dims)
    if layout == "sliced":
        wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype, device=t.device)
        out = wide[..., 1::2]
        return out.copy_(t)
    raise AssertionError(layout)


def is_channels_last(t: torch.Tensor) -> bool:
    """fastseg's rule: channels-last memory and not also plain contiguous."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
    return fmt is not None and not t.is_contiguous() and t.is_contiguous(memory_format=fmt)


# --- ground truth --------------------------------------------------------------------

def exact_filter(values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """sum_j exp(-|f_i - f_j|^2 / 2) v_j per image, exactly, in float64:
    values [B, C, *spatial], features [B, d, *spatial]."""
    return from_flat(exact_gaussian_filter(to_flat(values), to_flat(features)), values)


def psnr(actual: torch.Tensor, expected: torch.Tensor, peak: float = 1.0) -> float:
    mse = (actual.double() - expected.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def positions(shape, scale, dtype=torch.float64) -> torch.Tensor:
    """[len(shape), *shape]: each pixel's index along each axis times
    ``scale`` (one number per axis)."""
    axes = [torch.arange(n, dtype=dtype) * s for n, s in zip(shape, scale)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


# --- images ----------------------------------------------------------------------------

def astronaut_crop(top: int, left: int, size: int, step: int) -> torch.Tensor:
    """[3, size, size] float64 in [0, 1]: every ``step``-th pixel of a crop of
    scikit-image's astronaut (a natural photograph: edges, texture, flat
    regions)."""
    image = _astronaut()
    return image[:, top:top + size * step:step, left:left + size * step:step].contiguous()


@functools.cache
def _astronaut_or_none() -> torch.Tensor | None:
    try:
        from skimage import data
    except ImportError:
        return None
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1).double() / 255


def _astronaut() -> torch.Tensor:
    image = _astronaut_or_none()
    if image is None:
        pytest.skip("scikit-image is not installed (pip install scikit-image)")
    return image


def coloured_regions(gen: torch.Generator, shape, labels: int, channels: int = 3, noise: float = 8.0):
    """A synthetic image of Voronoi regions, each in one of ``labels``
    random colours plus Gaussian noise: (labels [*shape] int64, image
    [channels, *shape] uint8). Any spatial rank."""
    grid = positions(shape, [1.0] * len(shape), torch.float32).reshape(len(shape), -1).T  # [N, rank]
    centres = torch.rand(3 * labels, len(shape), generator=gen) * torch.tensor(shape, dtype=torch.float32)
    region = torch.cdist(grid, centres).argmin(1)
    label = (region % labels).view(shape)
    palette = torch.rand(labels, channels, generator=gen) * 255
    image = palette[label].movedim(-1, 0) + noise * torch.randn(channels, *shape, generator=gen)
    return label, image.clamp(0, 255).round().to(torch.uint8)
