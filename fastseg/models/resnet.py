"""ResNet-50 and ResNet-101 (He et al., "Deep Residual Learning for Image
Recognition", 2016) as segmentation backbones, with torchvision's module
names: a torchvision ``resnet50``/``resnet101`` state_dict loads into them
(its ``fc`` classifier, which a backbone has no use for, is dropped).

Output stride 8 or 16 replaces the stride of the last stages by dilation,
as torchvision's ``replace_stride_with_dilation`` does (DeepLab's atrous
convolution, Chen et al. 2017): the first block of a dilated stage keeps the
previous dilation in the conv that would have strided, the others take the
new one. The bottleneck strides in its 3x3 conv (torchvision's "v1.5").
"""

from torch import Tensor, nn

from .. import ops
from ._arguments import check_output_stride
from ._layers import init_conv_weights
from ._weights import load_weights

# The stages a stride of 2 can be replaced in, from the last: layer4, layer3.
_DILATED_STAGES = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ops.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = ops.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = ops.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """The convolutional part of a bottleneck ResNet (no pooling, no fc).

    ``forward`` returns the features by name: ``"stem"`` (conv1 after
    BatchNorm and ReLU, stride 2), ``"low_level"`` (layer1, stride 4),
    ``"layer2"``, ``"aux"`` (layer3, where auxiliary heads attach) and
    ``"out"`` (layer4); ``channels`` gives their channel counts. Gated-SCNN's
    shape stream reads the stem and gates on layer2 to layer4.
    """

    def __init__(self, blocks_per_stage: tuple[int, int, int, int],
                 replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False)):
        super().__init__()
        self.in_channels, self.dilation = 64, 1
        self.conv1 = ops.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = ops.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, blocks_per_stage[0])
        self.layer2 = self._stage(128, blocks_per_stage[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._stage(256, blocks_per_stage[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._stage(512, blocks_per_stage[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.channels = {"stem": 64, "low_level": 256, "layer2": 512, "aux": 1024, "out": 2048}
        init_conv_weights(self)

    def load_weights(self, path, argument: str = "weights") -> None:
        """Loads the state_dict saved at ``path`` (a torchvision ResNet's: its
        ``fc`` is dropped, every other key must fit)."""
        load_weights(self, path, argument, drop=("fc.",))

    def _stage(self, width: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(ops.Conv2d(self.in_channels, out_channels, 1, stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        layers = [Bottleneck(self.in_channels, width, stride, previous_dilation, downsample)]
        self.in_channels = out_channels
        layers += [Bottleneck(out_channels, width, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        low_level = self.layer1(self.maxpool(stem))
        layer2 = self.layer2(low_level)
        aux = self.layer3(layer2)
        return {"stem": stem, "low_level": low_level, "layer2": layer2, "aux": aux, "out": self.layer4(aux)}


def _resnet(blocks_per_stage, output_stride: int, weights) -> ResNet:
    model = ResNet(blocks_per_stage, _DILATED_STAGES[check_output_stride(output_stride)])
    if weights is not None:
        model.load_weights(weights)
    return model


def resnet50(*, output_stride: int = 32, weights=None) -> ResNet:
    """ResNet-50 backbone; ``output_stride`` 8, 16 or 32; ``weights`` the path
    of a saved state_dict (a torchvision ``resnet50``'s loads)."""
    return _resnet((3, 4, 6, 3), output_stride, weights)


def resnet101(*, output_stride: int = 32, weights=None) -> ResNet:
    """ResNet-101 backbone; arguments as ``resnet50``."""
    return _resnet((3, 4, 23, 3), output_stride, weights)
