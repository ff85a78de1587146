"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", 2018) as a segmentation backbone, with a width multiplier.

Module names are torchvision's (``features.<i>.conv``) except inside a
block, where the depthwise 3x3 and the projecting 1x1 conv are one
``DepthwiseSeparableConv2d`` (one fused kernel in eval mode);
``load_weights`` renames a torchvision state_dict's keys to match.

The backbone ends at the last inverted residual (320 channels at width
1.0): the final 1x1 conv to 1280 channels serves the classifier, and
DeepLab's MobileNetV2 feature extractor stops before it too. Output stride
8 or 16 replaces the later strides by dilation, the block that would have
strided keeping the previous rate (DeepLab's ``mobilenet_v2`` with an
``output_stride``).
"""

from torch import Tensor, nn

from .. import ops
from ._arguments import check_output_stride, check_positive
from ._layers import ConvNormAct, atrous_schedule, init_conv_weights
from ._weights import load_weights

# (expansion t, channels c, blocks n, stride of the first block s), table 2 of the paper.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))
_LOW_LEVEL_BLOCK = 3  # features[3]: the last block at stride 4, DeepLabV3+'s low-level features


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor`` without losing more
    than 10% (torchvision's and TensorFlow's channel rounding)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion (ReLU6), 3x3 depthwise (ReLU6) and linear 1x1
    projection, with the identity shortcut where shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, dilation: int = 1):
        super().__init__()
        hidden = int(round(in_channels * expansion))
        layers = [] if expansion == 1 else [ConvNormAct(in_channels, hidden, 1, activation=nn.ReLU6)]
        layers.append(ops.DepthwiseSeparableConv2d(
            hidden, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False,
            mid_norm=True, mid_activation="relu6", out_norm=True))
        self.conv = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_shortcut else self.conv(x)

    def torchvision_prefixes(self, prefix: str) -> dict[str, str]:
        """torchvision's key prefixes of this block's separable part -> ours:
        its depthwise Conv2dNormActivation (.0 conv, .1 norm), then the 1x1
        conv and its norm as the next two children of ``conv``."""
        i = len(self.conv) - 1
        return {f"{prefix}conv.{i}.0.": f"{prefix}conv.{i}.depthwise.",
                f"{prefix}conv.{i}.1.": f"{prefix}conv.{i}.depthwise_norm.",
                f"{prefix}conv.{i + 1}.": f"{prefix}conv.{i}.pointwise.",
                f"{prefix}conv.{i + 2}.": f"{prefix}conv.{i}.pointwise_norm."}


class MobileNetV2(nn.Module):
    """``forward`` returns ``{"low_level": stride-4 features, "out": last
    block's}``; ``channels`` gives their channel counts."""

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32):
        super().__init__()
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvNormAct(3, channels, 3, stride=2, activation=nn.ReLU6)]
        units = [(expansion, make_divisible(base * width_mult), first_stride if i == 0 else 1)
                 for expansion, base, blocks, first_stride in _STAGES for i in range(blocks)]
        schedule = atrous_schedule([stride for _, _, stride in units], output_stride, stride=2)
        for (expansion, out_channels, _), (stride, dilation) in zip(units, schedule):
            layers.append(InvertedResidual(channels, out_channels, stride, expansion, dilation))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.channels = {"low_level": make_divisible(24 * width_mult), "out": channels}
        init_conv_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _LOW_LEVEL_BLOCK:
                low_level = x
        return {"low_level": low_level, "out": x}

    def load_weights(self, path, argument: str = "weights") -> None:
        """Loads the state_dict saved at ``path``: this module's, or a
        torchvision ``mobilenet_v2``'s of the same width (its last conv
        and classifier are dropped, its block keys renamed)."""
        last = len(self.features)
        prefixes = {}
        for i, block in enumerate(self.features[1:], start=1):
            prefixes.update(block.torchvision_prefixes(f"features.{i}."))

        def rename(key: str) -> str:
            for theirs, ours in prefixes.items():
                if key.startswith(theirs):
                    return ours + key.removeprefix(theirs)
            return key

        load_weights(self, path, argument, drop=(f"features.{last}.", "classifier."), rename=rename)


def mobilenet_v2(*, output_stride: int = 32, width_mult: float = 1.0, weights=None) -> MobileNetV2:
    """MobileNetV2 backbone; ``output_stride`` 8, 16 or 32; ``width_mult``
    scales every layer's channels; ``weights`` the path of a saved
    state_dict (see ``MobileNetV2.load_weights``)."""
    model = MobileNetV2(check_positive(width_mult, "width_mult"), check_output_stride(output_stride))
    if weights is not None:
        model.load_weights(weights)
    return model
