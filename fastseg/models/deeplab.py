"""DeepLab v2, v3 and v3+ (Chen et al.), and torchvision's DeepLabV3.

- ``deeplabv2``: "DeepLab: Semantic Image Segmentation with Deep
  Convolutional Nets, Atrous Convolution, and Fully Connected CRFs" (2017),
  ResNet-101 at output stride 8 with ASPP-L: four 3x3 convs at rates
  6/12/18/24 straight to class scores, summed (section 3.3, fig. 7).
- ``deeplabv3``: "Rethinking Atrous Convolution for Semantic Image
  Segmentation" (2017), section 3.3: ASPP with a 1x1 branch, three 3x3
  branches at rates 6/12/18 at output stride 16 (doubled at 8) and image
  pooling, each 256 wide with BatchNorm, concatenated, a 1x1 projection,
  then the 1x1 logits.
- ``deeplabv3plus``: "Encoder-Decoder with Atrous Separable Convolution for
  Semantic Image Segmentation" (2018): v3's ASPP with atrous separable
  convs, then a decoder (section 3.1): the encoder's output upsampled 4x,
  concatenated with the stride-4 features projected to 48 channels, two 3x3
  separable convs of 256 channels, the logits, upsampled 4x.
- ``deeplabv3_resnet50``/``deeplabv3_resnet101``: torchvision's, with its
  names, arguments, state_dict keys and parameter counts (rates 12/24/36 at
  output stride 8, an extra 3x3 conv in the head, an FCN auxiliary head).

The paper models resize bilinearly with corners aligned and drop 10% of the
ASPP projection's channels, as DeepLab's reference code (``model.py``);
torchvision's keep its choices (corners not aligned, 50% dropout).
"""

import torch
from torch import Tensor, nn

from .. import ops
from ._arguments import check_num_classes, check_output_stride
from ._heads import ASPP
from ._layers import ConvNormAct, conv_norm_act, resize, separable_conv_norm_relu
from ._model import SegmentationModel
from ._registry import register_model
from ._torchvision import torchvision_segmentation
from .backbones import RESNETS, build_backbone

_V3_RATES = (6, 12, 18)  # at output stride 16 (DeepLab v3, section 4.3)
_V2_RATES = (6, 12, 18, 24)  # ASPP-L
_REFERENCE_DROPOUT = 0.1  # DeepLab's model.py keeps 90% of the concatenated ASPP features


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """The ASPP rates for ``output_stride``: the same field of view on the
    image, so doubled at 8 (v3, section 3.3) and halved at 32."""
    return tuple(rate * 16 // output_stride for rate in _V3_RATES)


# --- torchvision's DeepLabV3 ------------------------------------------------------------

class DeepLabHead(nn.Sequential):
    """torchvision's DeepLabV3 head: ASPP, 3x3 conv-BN-ReLU, 1x1 logits."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates=(12, 24, 36)):
        super().__init__(ASPP(in_channels, atrous_rates), *conv_norm_act(256, 256, 3),
                         ops.Conv2d(256, num_classes, 1))


@register_model
def deeplabv3_resnet50(*, weights=None, progress: bool = True, num_classes: int | None = None,
                       aux_loss: bool | None = None, weights_backbone=None):
    """torchvision's ``deeplabv3_resnet50``. ``weights`` and
    ``weights_backbone`` are paths of saved state_dicts (a torchvision
    model's, a torchvision ``resnet50``'s); nothing is downloaded, so
    ``progress`` has no effect."""
    return torchvision_segmentation("resnet50", DeepLabHead, weights=weights, num_classes=num_classes,
                                    aux_loss=aux_loss, weights_backbone=weights_backbone)


@register_model
def deeplabv3_resnet101(*, weights=None, progress: bool = True, num_classes: int | None = None,
                        aux_loss: bool | None = None, weights_backbone=None):
    """torchvision's ``deeplabv3_resnet101``; arguments as ``deeplabv3_resnet50``."""
    return torchvision_segmentation("resnet101", DeepLabHead, weights=weights, num_classes=num_classes,
                                    aux_loss=aux_loss, weights_backbone=weights_backbone)


# --- DeepLab v2 --------------------------------------------------------------------

class DeepLabV2Head(nn.Module):
    """ASPP-L: one 3x3 conv to class scores per rate, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates=_V2_RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            ops.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in rates)
        for branch in self.branches:  # the reference prototxt's initialisation of these layers
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: Tensor) -> Tensor:
        return sum(branch(x) for branch in self.branches)


@register_model
def deeplabv2(num_classes: int = 21, *, backbone: str = "resnet101", weights_backbone=None) -> SegmentationModel:
    """DeepLab v2 (without its CRF and multi-scale inputs) on a ResNet
    (``"resnet101"`` as the paper, or ``"resnet50"``) at output stride 8;
    ``weights_backbone`` the path of a saved backbone state_dict."""
    num_classes = check_num_classes(num_classes)
    encoder = build_backbone(backbone, 8, weights_backbone, choices=RESNETS)
    return SegmentationModel(encoder, DeepLabV2Head(encoder.channels["out"], num_classes), align_corners=True)


# --- DeepLab v3 and v3+ --------------------------------------------------------------------

@register_model
def deeplabv3(num_classes: int = 21, *, backbone: str = "resnet101", output_stride: int = 16,
              weights_backbone=None, **backbone_options) -> SegmentationModel:
    """DeepLab v3 on ``backbone`` (``"resnet50"``, ``"resnet101"``,
    ``"xception65"`` or ``"mobilenet_v2"``) at ``output_stride`` 8, 16 or 32;
    ``backbone_options`` go to the backbone (``width_mult=`` for
    MobileNetV2); ``weights_backbone`` the path of a saved backbone state_dict."""
    num_classes = check_num_classes(num_classes)
    encoder = build_backbone(backbone, check_output_stride(output_stride), weights_backbone, **backbone_options)
    head = nn.Sequential(ASPP(encoder.channels["out"], aspp_rates(output_stride), dropout=_REFERENCE_DROPOUT),
                         ops.Conv2d(256, num_classes, 1))
    return SegmentationModel(encoder, head, align_corners=True)


class DeepLabV3PlusHead(nn.Module):
    """ASPP with separable convs on the encoder's output, then the decoder:
    upsample to the low-level features' size, concatenate them projected to
    48 channels (few, so they do not outweigh the encoder's 256, section
    3.1), two 3x3 separable convs, 1x1 logits (at stride 4)."""

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int, rates):
        super().__init__()
        self.aspp = ASPP(in_channels, rates, separable=True, dropout=_REFERENCE_DROPOUT)
        self.project = ConvNormAct(low_level_channels, 48, 1)
        self.fuse = nn.Sequential(separable_conv_norm_relu(256 + 48, 256), separable_conv_norm_relu(256, 256))
        self.logits = ops.Conv2d(256, num_classes, 1)

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        low_level = self.project(low_level)
        x = resize(self.aspp(x), low_level.shape[-2:], align_corners=True)
        return self.logits(self.fuse(torch.cat([x, low_level], dim=1)))


@register_model
def deeplabv3plus(num_classes: int = 21, *, backbone: str = "xception65", output_stride: int = 16,
                  weights_backbone=None, **backbone_options) -> SegmentationModel:
    """DeepLab v3+ on ``backbone`` (``"xception65"`` as the paper,
    ``"resnet50"``, ``"resnet101"`` or ``"mobilenet_v2"``) at ``output_stride``
    8, 16 or 32; ``backbone_options`` go to the backbone (``width_mult=``
    for MobileNetV2: ``width_mult=0.25`` makes a model small enough to
    train on a CPU); ``weights_backbone`` the path of a saved backbone
    state_dict."""
    num_classes = check_num_classes(num_classes)
    encoder = build_backbone(backbone, check_output_stride(output_stride), weights_backbone, **backbone_options)
    head = DeepLabV3PlusHead(encoder.channels["out"], encoder.channels["low_level"], num_classes,
                             aspp_rates(output_stride))
    return SegmentationModel(encoder, head, classifier_inputs=("out", "low_level"), align_corners=True)
