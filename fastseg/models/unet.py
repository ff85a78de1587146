"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", MICCAI 2015), and its padded variant.

The original (``unet``) uses unpadded 3x3 convs: each level's two convs
trim 2 pixels per side, the skip features are cropped to the upsampled
map and concatenated, and the output is smaller than the input. Output
pixel (i, j) is the prediction for input pixel (i + context, j + context),
``context`` = 92 for the paper's depth 4; ``output_size(n)`` gives the
output's length for an input of length n. That is n - 2 * context when
every max-pool sees an even size (n = 188 + 16k at depth 4, e.g. the
paper's 572 -> 388); other sizes lose the rows or columns the pools drop
at the bottom and right. Large images are predicted tile by tile with
mirrored borders (``fastseg.models.tiled_predict``, the paper's
overlap-tile strategy, Fig. 2).

The padded variant (``unet_padded``) pads its convs and predicts at input
resolution; where a pool drops an odd row or column, the upsampled map is
zero-padded back to the skip's size.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._arguments import positive_int
from ._registry import register_model
from .tiling import Tiling


def _double_conv(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    return nn.Sequential(ops.Conv2d(in_channels, out_channels, 3, padding=padding), nn.ReLU(inplace=True),
                         ops.Conv2d(out_channels, out_channels, 3, padding=padding), nn.ReLU(inplace=True))


def _valid_crops(depth: int) -> tuple[list[int], int]:
    """Where the unpadded U-Net's upsampled maps start inside the skip
    features of their level (top-left offsets, finest level first), and
    the context: how far in from the input's edge the output starts.

    A level's decoder output starting t pixels in from its encoder output
    (0 at the bottom) is, after the pool and the two convs below it and the
    2x up-conv, 2 (t + 2) pixels in from the level above's encoder output;
    that level's two convs add 2 more. The offsets depend on the depth
    only, not on the input size, so odd sizes stay aligned too."""
    crops, t = [], 0
    for _ in range(depth):
        crops.append(2 * (t + 2))
        t = crops[-1] + 2
    return crops[::-1], t + 2


class UNet(nn.Module):
    """``down`` (the contracting path's double convs, bottom last),
    ``up`` (2x2 up-convs halving the channels) and ``up_convs`` (the
    expanding path's double convs), finest level first; a 1x1
    ``classifier``. ``padding``: 0 for the original, 1 for the padded
    variant. ``tiling`` describes the geometry to ``tiled_predict``."""

    def __init__(self, num_classes: int, in_channels: int, base_channels: int, depth: int, padding: int):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("base_channels", base_channels), ("depth", depth)):
            positive_int(value, name)
        channels = [base_channels * 2 ** level for level in range(depth + 1)]
        self.padding = padding
        self.down = nn.ModuleList(_double_conv(c_in, c_out, padding)
                                  for c_in, c_out in zip([in_channels, *channels[:-1]], channels))
        self.pool = ops.MaxPool2d(2)
        self.dropout = nn.Dropout()  # "at the end of the contracting path" (Sec. 3.1)
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, 2) for c in channels[1:])
        self.up_convs = nn.ModuleList(_double_conv(c, c // 2, padding) for c in channels[1:])
        self.classifier = ops.Conv2d(base_channels, num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                # Gaussian with sd sqrt(2 / N), N the inputs of a unit (Sec. 3).
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        self.crops, context = _valid_crops(depth) if padding == 0 else ([], self._padded_context(depth))
        self.tiling = Tiling(stride=2 ** depth, context=context,
                             output_size=self.output_size if padding == 0 else None)

    @staticmethod
    def _padded_context(depth: int) -> int:
        """A bound on how far the padded U-Net's output pixel sees, in input
        pixels: a 3x3 conv at level l (pixels 2^l wide) reaches 2^l further,
        a 2x2 up-conv into level l at most 2^l, a pool not at all beyond
        its own pixel. Two convs down and two up per level, one up-conv, two
        convs at the bottom."""
        return sum(5 * 2 ** level for level in range(depth)) + 2 * 2 ** depth

    def output_size(self, size: int) -> int:
        """The output length for an input of length ``size`` (0 when the
        input is too small to give any output); the input's for the padded
        variant."""
        if self.padding:
            return size
        trim = 4  # two unpadded 3x3 convs
        for _ in range(len(self.down) - 1):
            size = (size - trim) // 2
        size -= trim
        for _ in self.up:
            size = 2 * size - trim
        return max(size, 0)

    def crop_to_output(self, x: Tensor) -> Tensor:
        """The part of ``x`` (e.g. a label map [..., H, W]) the output
        covers: identity for the padded variant."""
        if self.padding:
            return x
        c = self.tiling.context
        return x[..., c:c + self.output_size(x.shape[-2]), c:c + self.output_size(x.shape[-1])]

    def _fuse(self, skip: Tensor, up: Tensor, level: int) -> Tensor:
        if self.padding:
            up = F.pad(up, (0, skip.shape[-1] - up.shape[-1], 0, skip.shape[-2] - up.shape[-2]))
        else:
            c = self.crops[level]
            skip = skip[..., c:c + up.shape[-2], c:c + up.shape[-1]]
        return torch.cat([skip, up], 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if not self.padding and min(self.output_size(n) for n in x.shape[-2:]) == 0:
            raise ValueError(f"x: the unpadded U-Net needs an input of at least {self._smallest_input()} pixels "
                             f"per side, got shape {tuple(x.shape)}")
        skips = []
        for level, down in enumerate(self.down):
            x = down(x if level == 0 else self.pool(x))
            skips.append(x)
        x = self.dropout(skips.pop())
        for level in reversed(range(len(self.up))):
            x = self.up_convs[level](self._fuse(skips[level], self.up[level](x), level))
        return {"out": self.classifier(x)}

    def _smallest_input(self) -> int:
        size = 1
        while self.output_size(size) == 0:
            size += 1
        return size


@register_model
def unet(*, num_classes: int = 2, in_channels: int = 1, base_channels: int = 64, depth: int = 4) -> UNet:
    """The original U-Net: unpadded convs, output ``2 * model.tiling.context``
    smaller than the input (see the module's docstring); the paper's
    defaults (grey-level input, two classes, 64 channels, 4 poolings)."""
    return UNet(num_classes, in_channels, base_channels, depth, padding=0)


@register_model
def unet_padded(*, num_classes: int = 2, in_channels: int = 1, base_channels: int = 64, depth: int = 4) -> UNet:
    """U-Net with padded convs: output at input resolution."""
    return UNet(num_classes, in_channels, base_channels, depth, padding=1)
