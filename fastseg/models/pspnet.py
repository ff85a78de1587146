"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", 2017): a ResNet
dilated to output stride 8, the pyramid pooling module (section 3.2: the
features average-pooled to 1x1, 2x2, 3x3 and 6x6 bins, each reduced to a
quarter of the channels by a 1x1 conv, upsampled and concatenated with the
features), a 3x3 conv of 512 channels and the logits.

The auxiliary head on layer3 (section 4.2: "res4b22") helps optimise the
deep ResNet in training; the paper weights its loss 0.4 against the main
loss (``loss = ce(out) + 0.4 * ce(aux)``) and drops it at test time. Layer
sizes, Dropout2d and the corner-aligned resizes follow the authors' PyTorch
code (hszhao/semseg). The backbone is torchvision's ResNet, whose stem is
one 7x7 conv, not the three 3x3 convs of the authors' ResNets.
"""

import torch
from torch import Tensor, nn

from ._arguments import check_num_classes
from ._heads import FCNHead, PoolingBranch
from ._model import SegmentationModel
from ._registry import register_model
from .backbones import RESNETS, build_backbone

AUX_LOSS_WEIGHT = 0.4
_BINS = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """The features and their pooled-and-upsampled summaries, concatenated
    (2x the input's channels with four bins)."""

    def __init__(self, in_channels: int, bins=_BINS):
        super().__init__()
        self.features = nn.ModuleList(
            PoolingBranch(in_channels, in_channels // len(bins), size, align_corners=True) for size in bins)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, *(branch(x) for branch in self.features)], dim=1)


@register_model
def pspnet(num_classes: int = 21, *, backbone: str = "resnet50", aux_loss: bool = True,
           weights_backbone=None) -> SegmentationModel:
    """PSPNet on ``backbone`` (``"resnet50"`` or ``"resnet101"``) at output
    stride 8, with the auxiliary head (output ``"aux"``, loss weight
    ``AUX_LOSS_WEIGHT``) unless ``aux_loss=False``; ``weights_backbone`` the
    path of a saved backbone state_dict (a torchvision ResNet's loads)."""
    num_classes = check_num_classes(num_classes)
    encoder = build_backbone(backbone, 8, weights_backbone, choices=RESNETS)
    channels = encoder.channels["out"]
    head = nn.Sequential(PyramidPooling(channels),
                         FCNHead(2 * channels, num_classes, inter_channels=512, dropout=nn.Dropout2d))
    aux = FCNHead(encoder.channels["aux"], num_classes, inter_channels=256, dropout=nn.Dropout2d) if aux_loss else None
    return SegmentationModel(encoder, head, aux, align_corners=True)
