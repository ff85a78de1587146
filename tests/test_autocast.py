"""fastseg's convolutions under ``torch.autocast`` on CPU: they compute in
autocast's dtype as ``nn.Conv2d`` does, so a model of them runs under it."""

import torch
from torch import nn

from fastseg import ops


def _unfused_key(key: str) -> str:
    """The fused layer's key in the plain Sequential: 2.depthwise.weight -> 2.weight, ..."""
    for fused, plain in (("2.depthwise_norm.", "3."), ("2.depthwise.", "2."), ("2.pointwise.", "4.")):
        if key.startswith(fused):
            return plain + key.removeprefix(fused)
    return key


def test_conv_layers_follow_autocast_like_nn(gen):
    x = torch.randn(2, 3, 9, 11, generator=gen).to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    ours = nn.Sequential(ops.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         ops.DepthwiseSeparableConv2d(4, 5, 3, padding=2, dilation=2, mid_norm=True)).eval()
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                           nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(4),
                           nn.Conv2d(4, 5, 1)).eval()
    theirs.load_state_dict({_unfused_key(k): v for k, v in ours.state_dict().items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = ours(x), theirs(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


def test_float64_is_left_alone_under_autocast(gen):
    conv = ops.Conv2d(2, 3, 3).double()
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.float64
