"""Reference convolution: PyTorch's own ``F.conv2d``. It is the ground truth
the Triton kernels are tested against (in float64), and what runs wherever
they do not (CPU tensors, float64, grouped convs that are not depthwise)."""

import torch.nn.functional as F
from torch import Tensor


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    # input: [N, C_in, H, W], weight: [C_out, C_in / groups, KH, KW] -> [N, C_out, Ho, Wo]
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
