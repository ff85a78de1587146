"""fastseg's convs under ``torch.autocast``: the same dtypes and values as
PyTorch's own layers, whose arguments autocast casts at the dispatcher
(fastseg's dtype checks sit above it)."""

import pytest
import torch
from torch import nn

from fastseg.ops import Conv2d, DepthwiseSeparableConv2d


def _separable_pair(fused: DepthwiseSeparableConv2d) -> nn.Sequential:
    """torch.nn's depthwise + pointwise convs with ``fused``'s weights."""
    plain = nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4), nn.Conv2d(4, 6, 1))
    plain[0].load_state_dict(fused.depthwise.state_dict())
    plain[1].load_state_dict(fused.pointwise.state_dict())
    return plain


@pytest.mark.parametrize("layer", ["conv2d", "depthwise_separable_conv2d"])
def test_bf16_autocast_on_cpu_matches_torch_nn(layer):
    torch.manual_seed(0)
    if layer == "conv2d":
        ours = Conv2d(4, 6, 3, padding=1)
        theirs = nn.Conv2d(4, 6, 3, padding=1)
        theirs.load_state_dict(ours.state_dict())
    else:
        ours = DepthwiseSeparableConv2d(4, 6, 3, padding=2, dilation=2)
        theirs = _separable_pair(ours)
    x = torch.randn(2, 4, 7, 9)
    with torch.autocast("cpu", torch.bfloat16):
        out, expected = ours(x), theirs(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in ours.parameters())


def test_float64_is_left_alone_by_autocast():
    conv = Conv2d(3, 2, 1).double()
    with torch.autocast("cpu", torch.bfloat16):
        assert conv(torch.randn(1, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64


def _unfused_key(key: str) -> str:
    """The fused layer's key in the plain Sequential: 2.depthwise.weight -> 2.weight, ..."""
    for fused, plain in (("2.depthwise_norm.", "3."), ("2.depthwise.", "2."), ("2.pointwise.", "4.")):
        if key.startswith(fused):
            return plain + key.removeprefix(fused)
    return key


def test_a_channels_last_model_with_a_normalised_separable_conv(gen):
    x = torch.randn(2, 3, 9, 11, generator=gen).to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    ours = nn.Sequential(Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         DepthwiseSeparableConv2d(4, 5, 3, padding=2, dilation=2, mid_norm=True)).eval()
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
