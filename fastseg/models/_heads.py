"""Pieces the segmentation heads share: the pooled branches of ASPP's image
pooling and PSPNet's pyramid pooling, ASPP, and the FCN head. Module names follow torchvision where it has the piece
(``ASPP.convs``/``ASPP.project``, ``FCNHead`` as a flat Sequential), so its
state_dicts load."""

import torch
from torch import Tensor, nn

from .. import ops
from ._layers import ConvNormAct, conv_norm_act, resize, separable_conv_norm_relu


class PoolingBranch(nn.Sequential):
    """Average-pool to ``bins`` x ``bins`` cells, 1x1 conv-BN-ReLU, resize back
    to the input's size: ASPP's image pooling (bins=1, DeepLab v3 section
    3.3) and one level of PSPNet's pyramid pooling (Zhao et al. 2017, 3.2)."""

    def __init__(self, in_channels: int, out_channels: int, bins: int, align_corners: bool = False):
        super().__init__(nn.AdaptiveAvgPool2d(bins), *conv_norm_act(in_channels, out_channels, 1))
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        return resize(super().forward(x), x.shape[-2:], self.align_corners)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with image-level features (DeepLab v3,
    Chen et al. 2017, section 3.3): a 1x1 branch, one 3x3 branch per rate in
    ``rates``, an image-pooling branch, each ``out_channels`` wide with
    BatchNorm and ReLU, concatenated and projected by a 1x1 conv-BN-ReLU,
    then dropout. ``separable`` makes the 3x3 branches atrous separable
    convs (DeepLabV3+, section 3.2). ``extra_branches`` feature maps that
    the caller computes (``out_channels`` each, at the input's size) join
    the concatenation, after the image pooling: Gated-SCNN's boundary
    branch (Takikawa et al. 2019, fusion module)."""

    def __init__(self, in_channels: int, rates, out_channels: int = 256, *, separable: bool = False,
                 dropout: float = 0.5, extra_branches: int = 0):
        super().__init__()
        branches = [ConvNormAct(in_channels, out_channels, 1)]
        for rate in rates:
            if separable:
                branches.append(separable_conv_norm_relu(in_channels, out_channels, rate))
            else:
                branches.append(ConvNormAct(in_channels, out_channels, 3, dilation=rate))
        branches.append(PoolingBranch(in_channels, out_channels, 1))
        self.convs = nn.ModuleList(branches)
        concatenated = (len(branches) + extra_branches) * out_channels
        self.project = nn.Sequential(*conv_norm_act(concatenated, out_channels, 1), nn.Dropout(dropout))

    def forward(self, x: Tensor, *extra: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs] + list(extra), dim=1))


class FCNHead(nn.Sequential):
    """3x3 conv-BN-ReLU to ``inter_channels`` (default a quarter of the
    input's), dropout, 1x1 conv to ``channels``: torchvision's FCN head and
    auxiliary head, and PSPNet's classifier with ``dropout=nn.Dropout2d``
    (as its authors' code)."""

    def __init__(self, in_channels: int, channels: int, inter_channels: int | None = None,
                 dropout: type[nn.Module] = nn.Dropout):
        inter_channels = inter_channels or in_channels // 4
        super().__init__(*conv_norm_act(in_channels, inter_channels, 3), dropout(0.1),
                         ops.Conv2d(inter_channels, channels, 1))
