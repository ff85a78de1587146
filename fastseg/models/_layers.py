"""Small building blocks the backbones and heads share."""

import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


def resize(x: Tensor, size, align_corners: bool) -> Tensor:
    """Bilinear resize of ``x`` [N, C, h, w] to ``size`` (H, W)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                  activation: type[nn.Module] = nn.ReLU) -> list[nn.Module]:
    """A conv that keeps the size at stride 1 (no bias: the BatchNorm has
    one), BatchNorm, activation; a list, for modules that keep them flat in
    one Sequential as torchvision's heads do."""
    padding = dilation * (kernel_size // 2)
    return [ops.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(out_channels), activation(inplace=True)]


class ConvNormAct(nn.Sequential):
    """``conv_norm_act`` as one module (children 0, 1, 2, as torchvision's
    ``Conv2dNormActivation``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__(*conv_norm_act(in_channels, out_channels, kernel_size, stride, dilation, activation))


def separable_conv_norm_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Module:
    """DeepLabV3+'s atrous separable conv (its ``split_separable_conv2d``): a
    3x3 depthwise conv at ``dilation``, BatchNorm, ReLU, then a 1x1 conv,
    BatchNorm, ReLU; one fused kernel in eval mode."""
    return ops.DepthwiseSeparableConv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                        bias=False, mid_norm=True, mid_activation="relu", out_norm=True,
                                        out_activation="relu")


def init_conv_weights(module: nn.Module) -> None:
    """He initialisation of every conv (fan-out, as torchvision initialises
    its classification networks), zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def atrous_schedule(strides, output_stride: int, stride: int = 1) -> list[tuple[int, int]]:
    """(stride, dilation) of each unit of a network whose units stride by
    ``strides``, after layers of total ``stride``, once every stride that
    would take it past ``output_stride`` is replaced by dilation: the unit
    that would have strided keeps the current rate, those after it take the
    rate times that stride (DeepLab's ``stack_blocks_dense``; torchvision's
    ``replace_stride_with_dilation`` is the same rule per stage)."""
    schedule, dilation = [], 1
    for unit_stride in strides:
        if stride == output_stride:
            schedule.append((1, dilation))
            dilation *= unit_stride
        else:
            schedule.append((unit_stride, dilation))
            stride *= unit_stride
    return schedule
