"""Aligned Xception-65, the encoder of DeepLabV3+ (Chen et al., "Encoder-
Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", 2018, section 3.2; DeepLab's ``xception_65``): Xception
(Chollet 2017) deepened to 16 middle-flow modules, every max-pool replaced
by a strided separable conv, BatchNorm and ReLU after each depthwise conv
of the exit flow's last module.

Each separable conv is a 3x3 depthwise conv, BatchNorm, a 1x1 conv,
BatchNorm: one ``DepthwiseSeparableConv2d`` (a fused kernel in eval mode).
Output stride 8 or 16 replaces the later strides by dilation as DeepLab's
``stack_blocks_dense`` does: the module that would have strided keeps the
current rate, the ones after it take the rate times that stride.
"""

import torch
from torch import Tensor, nn

from .. import ops
from ._arguments import check_output_stride
from ._layers import ConvNormAct, atrous_schedule, init_conv_weights
from ._weights import load_weights

# (channels of the three separable convs, shortcut, stride, activation
# inside the separable convs) per module, in order; DeepLab's xception_65.
_ENTRY_FLOW = (((128, 128, 128), "conv", 2, False),
               ((256, 256, 256), "conv", 2, False),
               ((728, 728, 728), "conv", 2, False))
_MIDDLE_FLOW = (((728, 728, 728), "sum", 1, False),) * 16
_EXIT_FLOW = (((728, 1024, 1024), "conv", 2, False),
              ((1536, 1536, 2048), "none", 1, True))
_SHORTCUTS = ("conv", "sum", "none")


class XceptionModule(nn.Module):
    """Three separable convs (the last one strided), plus a shortcut:
    a strided 1x1 conv-BN (``"conv"``), the identity (``"sum"``) or none.

    ``activation_inside``: ReLU after each BatchNorm of the separable convs
    (exit flow's last module); otherwise a ReLU before each separable conv,
    the original Xception's order."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int], shortcut: str, stride: int = 1,
                 dilation: int = 1, activation_inside: bool = False):
        super().__init__()
        activation = "relu" if activation_inside else None
        convs = []
        for i, out_channels in enumerate(channels):
            convs.append(ops.DepthwiseSeparableConv2d(
                in_channels if i == 0 else channels[i - 1], out_channels, 3, stride if i == 2 else 1,
                padding=dilation, dilation=dilation, bias=False, mid_norm=True, mid_activation=activation,
                out_norm=True, out_activation=activation))
        self.separable = nn.ModuleList(convs)
        self.shortcut = None
        if shortcut == "conv":
            self.shortcut = nn.Sequential(ops.Conv2d(in_channels, channels[-1], 1, stride, bias=False),
                                          nn.BatchNorm2d(channels[-1]))
        self.add_input = shortcut == "sum"
        self.pre_activation = not activation_inside

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the module's output, the second separable conv's output)."""
        out = x
        for conv in self.separable:
            out = conv(torch.relu(out) if self.pre_activation else out)
            if conv is self.separable[1]:
                second = out
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        elif self.add_input:
            out = out + x
        return out, second

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[0]


class Xception65(nn.Module):
    """``forward`` returns ``{"low_level": stride-4 features, "out": exit
    flow's}``: DeepLabV3+ takes the low-level features from the second
    separable conv of the entry flow's second module (256 channels, before
    that module's stride); ``channels`` gives the channel counts."""

    def __init__(self, output_stride: int = 32):
        super().__init__()
        self.stem = nn.Sequential(ConvNormAct(3, 32, 3, stride=2), ConvNormAct(32, 64, 3))
        units = _ENTRY_FLOW + _MIDDLE_FLOW + _EXIT_FLOW
        schedule = atrous_schedule([stride for _, _, stride, _ in units], output_stride, stride=2)
        modules, in_channels = [], 64
        for (channels, shortcut, _, activation_inside), (stride, dilation) in zip(units, schedule):
            modules.append(XceptionModule(in_channels, channels, shortcut, stride, dilation, activation_inside))
            in_channels = channels[-1]
        middle_end = len(_ENTRY_FLOW) + len(_MIDDLE_FLOW)
        self.entry_flow = nn.Sequential(*modules[:len(_ENTRY_FLOW)])
        self.middle_flow = nn.Sequential(*modules[len(_ENTRY_FLOW):middle_end])
        self.exit_flow = nn.Sequential(*modules[middle_end:])
        self.channels = {"low_level": 256, "out": 2048}
        init_conv_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.entry_flow[0](self.stem(x))
        x, low_level = self.entry_flow[1].features(x)
        x = self.entry_flow[2](x)
        return {"low_level": low_level, "out": self.exit_flow(self.middle_flow(x))}

    def load_weights(self, path, argument: str = "weights") -> None:
        """Loads the state_dict saved at ``path`` (this module's)."""
        load_weights(self, path, argument)


def xception65(*, output_stride: int = 32, weights=None) -> Xception65:
    """Aligned Xception-65 backbone; ``output_stride`` 8, 16 or 32;
    ``weights`` the path of a saved state_dict."""
    model = Xception65(check_output_stride(output_stride))
    if weights is not None:
        model.load_weights(weights)
    return model
