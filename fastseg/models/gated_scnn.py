"""Gated-SCNN (Takikawa, Acuna, Jampani and Fidler, "Gated-SCNN: Gated Shape
CNNs for Semantic Segmentation", ICCV 2019), written from the paper.

- Regular stream: a dilated ResNet at output stride 8.
- Shape stream: the regular stream's first conv, brought to the
  image's resolution, through residual blocks interleaved with gated
  convolutional layers (GCL), one per regular-stream stage it is gated
  by (layer2, layer3, layer4: the paper gates on the last three), then a
  1x1 conv to boundary logits ("edge", supervised by the dual-task loss).
- GCL: an attention map alpha = sigmoid(BN(C_1x1(s || r))) from the shape
  features s and the regular features r (upsampled bilinearly), then
  s_hat = ((s * alpha) + s)^T w, a 1x1 conv w of the gated features.
- Fusion module: the shape stream's boundaries fused with the image gradient
  (``ImageGradient``, a GPU substitute for Canny, see its module) by a 1x1
  conv and a sigmoid, then merged with the regular features by ASPP, the
  boundary map one more branch of its concatenation; 1x1 logits, upsampled
  to the input's size.

The paper gives no widths for the shape stream; it runs at the image's
resolution, so it is narrow here: 32, 16 and 8 channels. Two 1x1 convs are
moved below a bilinear upsampling, which they commute with (both are
linear and the bilinear weights sum to 1): the shape stream's entry conv
runs on the stem at stride 2, and the regular features' part of each GCL's
C_1x1 (the conv of a concatenation is the sum of convs of its parts) at
stride 8, before the upsampling to the image's size; the results are those
of the paper's order, at a fraction of the cost. The fusion is ASPP
alone: no decoder on low-level features.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._arguments import check_num_classes
from ._heads import ASPP
from ._layers import ConvNormAct, conv_norm_act, resize
from ._registry import register_model
from .backbones import RESNETS, build_backbone
from .deeplab import aspp_rates
from .image_gradient import ImageGradient

OUTPUT_STRIDE = 8  # the regular stream's: dense features, as DeepLab's at their finest
GATING_FEATURES = ("layer2", "aux", "out")  # the ResNet stages that gate the shape stream, in order
SHAPE_WIDTHS = (32, 16, 8)  # the shape stream's channels before each GCL
ALIGN_CORNERS = False


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN at a constant width, the input added, ReLU: the shape
    stream's residual blocks (ResNet's basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*conv_norm_act(channels, channels, 3),
                                  ops.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.body(x))


class GatedConv(nn.Module):
    """The gated convolutional layer on shape features [N, channels, H, W]
    gated by regular features [N, C_r, h, w] at a lower resolution;
    ``out_channels`` wide."""

    def __init__(self, channels: int, regular_channels: int, out_channels: int):
        super().__init__()
        # C_1x1 over (s || r), split by part: the regular part runs before the upsampling.
        self.shape_attention = ops.Conv2d(channels, 1, 1, bias=False)
        self.regular_attention = ops.Conv2d(regular_channels, 1, 1, bias=False)  # the BN has the bias
        self.norm = nn.BatchNorm2d(1)
        self.weight = ops.Conv2d(channels, out_channels, 1, bias=False)  # w_t

    def forward(self, shape: Tensor, regular: Tensor) -> Tensor:
        regular = resize(self.regular_attention(regular), shape.shape[-2:], ALIGN_CORNERS)
        attention = torch.sigmoid(self.norm(self.shape_attention(shape) + regular))  # alpha [N, 1, H, W]
        return self.weight(shape * (attention + 1))


class ShapeStream(nn.Module):
    """``forward(stem, regular, size)``: boundary logits [N, 1, *size] from
    the stem's features and the gating features ``regular`` (one per GCL)."""

    def __init__(self, stem_channels: int, regular_channels, widths=SHAPE_WIDTHS):
        super().__init__()
        self.entry = ops.Conv2d(stem_channels, widths[0], 1)
        out_widths = (*widths[1:], widths[-1])
        self.blocks = nn.ModuleList(ResidualBlock(width) for width in widths)
        self.gates = nn.ModuleList(GatedConv(width, channels, out_width)
                                   for width, channels, out_width in zip(widths, regular_channels, out_widths))
        self.edge = ops.Conv2d(out_widths[-1], 1, 1)

    def forward(self, stem: Tensor, regular: list[Tensor], size) -> Tensor:
        shape = resize(self.entry(stem), size, ALIGN_CORNERS)
        for block, gate, features in zip(self.blocks, self.gates, regular):
            shape = gate(block(shape), features)
        return self.edge(shape)


class FusionHead(nn.Module):
    """Section 3.3: the boundary map (the shape stream's sigmoid fused with
    the image gradient) as an extra ASPP branch over the regular features;
    logits at the regular features' stride."""

    def __init__(self, in_channels: int, num_classes: int, rates):
        super().__init__()
        self.boundary = ops.Conv2d(2, 1, 1)
        self.boundary_branch = ConvNormAct(1, 256, 1)
        self.aspp = ASPP(in_channels, rates, extra_branches=1)
        self.logits = ops.Conv2d(256, num_classes, 1)

    def forward(self, regular: Tensor, edge: Tensor, image_gradient: Tensor) -> Tensor:
        boundary = torch.sigmoid(self.boundary(torch.cat([torch.sigmoid(edge), image_gradient], dim=1)))
        # Average pooling to the features' size keeps one-pixel edges a bilinear resize would skip.
        boundary = F.adaptive_avg_pool2d(boundary, regular.shape[-2:])
        return self.logits(self.aspp(regular, self.boundary_branch(boundary)))


class GatedSCNN(nn.Module):
    """``forward(x)`` returns ``{"out": logits [N, num_classes, H, W],
    "edge": boundary logits [N, 1, H, W]}`` for x [N, 3, H, W]; the loss
    of both is ``fastseg.models.losses.gated_scnn_loss``."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        channels = backbone.channels
        self.backbone = backbone
        self.shape_stream = ShapeStream(channels["stem"], [channels[name] for name in GATING_FEATURES])
        self.image_gradient = ImageGradient()
        self.head = FusionHead(channels["out"], num_classes, aspp_rates(OUTPUT_STRIDE))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        edge = self.shape_stream(features["stem"], [features[name] for name in GATING_FEATURES], size)
        logits = self.head(features["out"], edge, self.image_gradient(x))
        return {"out": resize(logits, size, ALIGN_CORNERS), "edge": edge}


@register_model
def gated_scnn(num_classes: int = 19, *, backbone: str = "resnet50", weights_backbone=None) -> GatedSCNN:
    """Gated-SCNN on a dilated ResNet (``"resnet50"``, or ``"resnet101"`` as
    the paper's ResNet baseline) at output stride 8; ``num_classes`` 19 for
    Cityscapes, the paper's benchmark; ``weights_backbone`` the path of a
    saved backbone state_dict (a torchvision ``resnet50``'s loads)."""
    num_classes = check_num_classes(num_classes)
    return GatedSCNN(build_backbone(backbone, OUTPUT_STRIDE, weights_backbone, choices=RESNETS), num_classes)
