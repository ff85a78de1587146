"""Overlap-tile inference: ``tiled_predict(model, image, tile)`` predicts an
image too large for one forward pass tile by tile, with the result of the
whole-image pass (up to the float rounding of convolutions of other sizes).

A model's ``tiling`` attribute (a ``Tiling``) says how its output relates
to its input:

- unpadded (the original U-Net): the output starts ``context`` pixels in
  from the input's edges. As in the U-Net paper (Fig. 2) the image is
  mirrored at its borders and each tile, of a size every pool sees as
  even, predicts its centre. The whole-image pass it equals is the model
  run on the image mirrored by ``context`` (and at the bottom and right by
  what makes the size valid), cropped to the image.
- padded (output at input resolution): tiles overlap, and only each tile's
  centre is kept, at least ``context`` (rounded up to the stride) from
  edges where the tile cuts the image, so the tile's zero padding there
  does not reach it; at the image's own edges a tile ends where the image
  does, as in the whole-image pass.

Either way tiles start at multiples of ``stride``, the net's total pooling
factor, so that every tile pools in the phase the whole image does.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._checks import FLOAT_DTYPES, check_tensor, int_pair


@dataclass(frozen=True)
class Tiling:
    """How a model's output lies on its input, for ``tiled_predict``."""

    stride: int  # tiles start at multiples of this: the net's total pooling factor
    context: int  # unpadded: the output's inset from the input's edges; padded: how far an output pixel sees
    # unpadded: the output length for an input length; padded: None
    output_size: Callable[[int], int] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Span:
    """One tile along one axis."""

    source: Tensor  # the image rows (or columns) the tile reads, mirrored where they lie outside the image
    keep: slice  # the rows of the tile's output that are kept
    dest: slice  # where they go in the full output


def _mirrored(start: int, stop: int, n: int) -> Tensor:
    """Indices start..stop-1 reflected into [0, n) (edge not repeated, as
    np.pad's "reflect"), as often as a range longer than n needs."""
    index = torch.arange(start, stop)
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.remainder(period)
    return torch.where(index >= n, period - index, index)


def _unpadded_spans(n: int, tile: int, tiling: Tiling) -> list[_Span]:
    c, stride = tiling.context, tiling.stride

    def gives_all(size: int) -> bool:  # every pool sees an even size: the output is the whole inset region
        return size > 2 * c and tiling.output_size(size) == size - 2 * c

    # Valid sizes recur every ``stride`` pixels, so the search below ends.
    whole = next(size for size in itertools.count(n + 2 * c) if gives_all(size))
    if whole <= tile:
        return [_Span(_mirrored(-c, whole - c, n), slice(0, n), slice(0, n))]
    size = next((s for s in range(tile, 2 * c, -1) if gives_all(s) and s - 2 * c >= stride), None)
    if size is None:
        smallest = next(s for s in itertools.count(2 * c + stride) if gives_all(s))
        raise ValueError(f"tile must be at least {smallest} for this model (an output of at least its stride "
                         f"{stride} from a size every pool sees as even), or cover the image; got {tile}")
    step = (size - 2 * c) // stride * stride
    return [_Span(_mirrored(p - c, p - c + size, n), slice(0, min(step, n - p)), slice(p, p + min(step, n - p)))
            for p in range(0, n, step)]


def _padded_spans(n: int, tile: int, tiling: Tiling) -> list[_Span]:
    if n <= tile:
        return [_Span(torch.arange(n), slice(0, n), slice(0, n))]
    stride = tiling.stride
    margin = -(-tiling.context // stride) * stride
    core = (tile - 2 * margin) // stride * stride
    if core < stride:
        raise ValueError(f"tile must be at least 2 * margin + stride = {2 * margin + stride} for this model "
                         f"(margin {margin}, stride {stride}), or cover the image; got {tile}")
    spans = []
    for start in range(0, n, core):
        first, last = max(0, start - margin), min(n, start + core + margin)
        kept = min(core, n - start)
        spans.append(_Span(torch.arange(first, last), slice(start - first, start - first + kept),
                           slice(start, start + kept)))
    return spans


def tiled_predict(model: nn.Module, image: Tensor, tile, *, tiling: Tiling | None = None) -> Tensor:
    """The model's ``out`` for ``image`` [B, C, H, W], at the image's
    resolution, computed from tiles of at most ``tile`` (an int or (h, w))
    pixels; ``tiling``: the model's geometry (default: ``model.tiling``).

    Runs in the caller's grad mode and the model's own mode: call it under
    ``torch.no_grad()`` on a model in ``eval()`` mode (a BatchNorm in
    training mode would normalise each tile by its own statistics)."""
    check_tensor(image, "image", (4,), FLOAT_DTYPES)
    tiling = tiling if tiling is not None else getattr(model, "tiling", None)
    if not isinstance(tiling, Tiling):
        raise TypeError(f"tiling must be a fastseg.models.Tiling (the model has no `tiling` attribute to use), "
                        f"got {type(tiling).__name__}")
    spans_of = _padded_spans if tiling.output_size is None else _unpadded_spans
    height, width = image.shape[-2:]
    tile_h, tile_w = int_pair(tile, "tile", 1)
    rows, cols = spans_of(height, tile_h, tiling), spans_of(width, tile_w, tiling)
    out = None
    for row in rows:
        strip = image.index_select(-2, row.source.to(image.device))
        for col in cols:
            result = model(strip.index_select(-1, col.source.to(image.device)))
            result = result["out"] if isinstance(result, dict) else result
            if out is None:
                out = result.new_empty((image.shape[0], result.shape[1], height, width))
            out[..., row.dest, col.dest] = result[..., row.keep, col.keep]
    return out
