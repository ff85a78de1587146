"""Reference depthwise-separable convolution: the unfused pair of PyTorch
convs, with the optional activations between and after them."""

import torch.nn.functional as F
from torch import Tensor

from .._activation import activate, activation_name


def depthwise_separable_conv2d(input: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor,
                               depthwise_bias: Tensor | None = None, pointwise_bias: Tensor | None = None,
                               stride=1, padding=0, dilation=1, *, mid_activation: str | None = None,
                               out_activation: str | None = None) -> Tensor:
    # input: [N, C_in, H, W], depthwise_weight: [C_in, 1, KH, KW], pointwise_weight: [C_out, C_in, 1, 1]
    mid = F.conv2d(input, depthwise_weight, depthwise_bias, stride, padding, dilation,
                   groups=depthwise_weight.shape[0])  # [N, C_in, Ho, Wo]
    mid = activate(mid, activation_name(mid_activation, "mid_activation"))
    out = F.conv2d(mid, pointwise_weight, pointwise_bias)  # [N, C_out, Ho, Wo]
    return activate(out, activation_name(out_activation, "out_activation"))
