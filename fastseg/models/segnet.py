"""SegNet (Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional
Encoder-Decoder Architecture for Image Segmentation", TPAMI 2017).

The encoder is VGG16-BN's 13 convolutions; the decoder mirrors it, each
stage upsampling with the max-pooling indices of its encoder stage (no
learned upsampling, no skip features: Sec. 3) and then convolving. The
indices are fastseg's compact ones by default: one byte per pooled value
instead of eight, most of the memory the decoder reads. The pools round up
and each unpool restores its stage's exact size, so any input size gives
the output at input resolution.
"""

import os

from torch import Tensor, nn

from .. import ops
from ._arguments import positive_int
from ._registry import register_model
from .vgg import STAGE_CONVS, vgg16_backbone


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [ops.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class SegNet(nn.Module):
    """``encoder`` (a VGG16-BN returning pooling indices), ``decoder`` (one
    stage per encoder stage, deepest first: as many conv-BN-ReLUs as the
    encoder stage, the last narrowing to the next stage's channels) and a
    3x3 ``classifier``, which stands in for the first stage's last conv
    (the paper's conv1_1_D)."""

    def __init__(self, num_classes: int, width: int = 64, *, compact_indices: bool = True,
                 weights_backbone: str | os.PathLike | None = None):
        super().__init__()
        positive_int(num_classes, "num_classes")
        self.encoder = vgg16_backbone(batch_norm=True, width=positive_int(width, "width"), ceil_mode=True,
                                      return_indices=True, compact_indices=compact_indices,
                                      weights_backbone=weights_backbone)
        channels = self.encoder.channels
        self.unpool = ops.MaxUnpool2d(2, 2)
        self.decoder = nn.ModuleList()
        for stage in reversed(range(len(STAGE_CONVS))):
            out_channels = channels[max(stage - 1, 0)]
            layers = []
            convs = STAGE_CONVS[stage] - (stage == 0)
            for i in range(convs):
                layers += _conv_bn_relu(channels[stage], out_channels if i == convs - 1 else channels[stage])
            self.decoder.append(nn.Sequential(*layers))
        self.classifier = ops.Conv2d(channels[0], num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stages = self.encoder(x)
        y = stages[-1].values
        for stage, decode in zip(reversed(stages), self.decoder):
            y = decode(self.unpool(y, stage.indices, stage.unpooled_size))
        return {"out": self.classifier(y)}


@register_model
def segnet(*, num_classes: int = 21, weights_backbone: str | os.PathLike | None = None, width: int = 64,
           compact_indices: bool = True) -> SegNet:
    """SegNet; ``weights_backbone``: a torchvision ``vgg16_bn`` state_dict
    file for the encoder; ``compact_indices=False`` keeps PyTorch's int64
    pooling indices."""
    return SegNet(num_classes, width, compact_indices=compact_indices, weights_backbone=weights_backbone)
