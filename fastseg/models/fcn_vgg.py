"""FCN-32s, FCN-16s and FCN-8s on VGG16 (Long, Shelhamer & Darrell, "Fully
Convolutional Networks for Semantic Segmentation", CVPR 2015).

As in the paper's Caffe models: conv1_1 pads by 100 and the pools round up
(Caffe's pooling), so every input size leaves fc6's 7x7 window something
to see; fc6/fc7 are VGG's classifier as convolutions; 1x1 score layers on
fc7, pool4 and pool3 (the skip ones zero-initialised, so training starts
from the coarser net's output); 2x learned upsamplings and the final
upsampling initialised to bilinear (the final one kept fixed), fused by
summation after cropping at the offsets the padding and deconvolutions
put the maps at. The output is cropped to the input's size.
"""

import os

import torch
from torch import Tensor, nn

from .. import ops
from ._registry import register_model
from ._arguments import positive_int
from .vgg import VGG16

# Where each map's pixel (0, 0) lies relative to the map it is fused with,
# from the receptive-field arithmetic of the Caffe models (conv1_1's padding
# of 100 and the deconvolutions' kernels): pool4's score map is 5 pixels in
# from the 2x upsampled fc7 score, pool3's 9, and the final upsampling's
# output is 19/27/31 pixels in from the input for FCN-32s/16s/8s.
SKIP_OFFSETS = {"pool4": 5, "pool3": 9}
OUTPUT_OFFSET = {32: 19, 16: 27, 8: 31}
FUSED_POOLS = {32: (), 16: ("pool4",), 8: ("pool4", "pool3")}  # coarsest first
FC_WIDTH = 64  # fc6/fc7 channels in units of conv1's: 4096 at width 64


def bilinear_kernel(channels: int, size: int) -> Tensor:
    """The [C, C, size, size] transposed-conv weight that upsamples each
    channel bilinearly by size // 2 (the paper's initialisation)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = taps[:, None] * taps[None, :]
    return weight


def _upsampling(channels: int, factor: int, learned: bool) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(learned)
    return up


def _crop(x: Tensor, offset: int, like: Tensor) -> Tensor:
    return x[..., offset:offset + like.shape[-2], offset:offset + like.shape[-1]]


def _score(in_channels: int, num_classes: int) -> ops.Conv2d:
    """A skip's 1x1 score layer, zero-initialised as in the paper."""
    score = ops.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(score.weight)
    nn.init.zeros_(score.bias)
    return score


class FCN(nn.Module):
    """FCN-``stride``s: the fc7 score map upsampled 2x and summed with the
    pool4 score map (16s, 8s), that upsampled 2x and summed with pool3's
    (8s), then upsampled to the input."""

    def __init__(self, stride: int, num_classes: int, width: int = 64):
        super().__init__()
        if stride not in OUTPUT_OFFSET:
            raise ValueError(f"stride must be one of {sorted(OUTPUT_OFFSET)}, got {stride!r}")
        self.stride = stride
        positive_int(num_classes, "num_classes")
        self.backbone = VGG16(width=positive_int(width, "width"), first_padding=100, ceil_mode=True)
        fc = FC_WIDTH * width
        pool_channels = dict(zip(("pool3", "pool4", "pool5"), self.backbone.channels[2:]))
        self.head = nn.Sequential(ops.Conv2d(pool_channels["pool5"], fc, 7), nn.ReLU(inplace=True), nn.Dropout(),
                                  ops.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(),
                                  ops.Conv2d(fc, num_classes, 1))
        self.skips = nn.ModuleDict()  # score layer per fused pool, coarsest first
        self.upscores = nn.ModuleList()  # the learned 2x upsampling before each fusion
        for pool in FUSED_POOLS[stride]:
            self.skips[pool] = _score(pool_channels[pool], num_classes)
            self.upscores.append(_upsampling(num_classes, 2, learned=True))
        self.upscore = _upsampling(num_classes, stride, learned=False)

    def load_torchvision(self, path: str | os.PathLike) -> None:
        """VGG16's weights from a torchvision ``vgg16`` state_dict file: the
        features, and fc6/fc7 from the classifier's first two linear layers
        reshaped into 7x7 and 1x1 convolutions (the paper's
        "convolutionalization")."""
        state = self.backbone.load_torchvision(path)
        fc6, fc7 = self.head[0], self.head[3]
        with torch.no_grad():
            for conv, name in ((fc6, "classifier.0"), (fc7, "classifier.3")):
                conv.weight.copy_(state[f"{name}.weight"].view(conv.weight.shape))
                conv.bias.copy_(state[f"{name}.bias"])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stages = self.backbone(x)
        score = self.head(stages[4].values)
        pools = {"pool4": stages[3].values, "pool3": stages[2].values}
        for (pool, skip), upscore in zip(self.skips.items(), self.upscores):
            score = upscore(score)
            score = score + _crop(skip(pools[pool]), SKIP_OFFSETS[pool], score)
        return {"out": _crop(self.upscore(score), OUTPUT_OFFSET[self.stride], x)}


def _fcn(stride: int, num_classes: int, weights_backbone, width: int) -> FCN:
    model = FCN(stride, num_classes, width)
    if weights_backbone is not None:
        model.load_torchvision(weights_backbone)
    return model


@register_model
def fcn32s_vgg16(*, num_classes: int = 21, weights_backbone: str | os.PathLike | None = None,
                 width: int = 64) -> FCN:
    """FCN-32s: fc7's scores upsampled 32x. ``weights_backbone``: a
    torchvision ``vgg16`` state_dict file (features, fc6 and fc7)."""
    return _fcn(32, num_classes, weights_backbone, width)


@register_model
def fcn16s_vgg16(*, num_classes: int = 21, weights_backbone: str | os.PathLike | None = None,
                 width: int = 64) -> FCN:
    """FCN-16s: fc7's scores fused with pool4's, upsampled 16x."""
    return _fcn(16, num_classes, weights_backbone, width)


@register_model
def fcn8s_vgg16(*, num_classes: int = 21, weights_backbone: str | os.PathLike | None = None,
                width: int = 64) -> FCN:
    """FCN-8s: fc7's scores fused with pool4's and pool3's, upsampled 8x."""
    return _fcn(8, num_classes, weights_backbone, width)
