"""VGG16 and VGG16-BN (Simonyan & Zisserman 2015, configuration D): the
backbone of FCN, SegNet and DeepLab v1, built from fastseg layers.

The layers sit in ``features`` at torchvision's indices (``features.0`` is
conv1_1, ``features.4`` pool1, ...), so the ``features.*`` entries of a
torchvision ``vgg16``/``vgg16_bn`` state_dict load unchanged. The variants
the segmentation models need (FCN's padded first conv and ceil-mode pools,
SegNet's pooling indices, DeepLab's stride-1 pools and dilated conv5)
change no parameter shape.
"""

import os
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import ops
from ._arguments import positive_int

STAGE_CONVS = (2, 2, 3, 3, 3)  # 3x3 convs in each of the five stages
STAGE_WIDTHS = (1, 2, 4, 8, 8)  # each stage's channels, in units of the first stage's (64 in the paper)


class PoolOutput(NamedTuple):
    """One stage's output: its pool's values, and what an unpool needs."""

    values: Tensor
    indices: Tensor | None  # where each max came from, when the pools return indices
    unpooled_size: torch.Size  # (H, W) before the pool: the unpool's output_size


class VGG16(nn.Module):
    """VGG16's convolutional part; ``forward`` returns the five stages'
    pooled outputs (pool1 ... pool5) as ``PoolOutput``s.

    - ``width``: channels of the first stage (64 in the paper; the others
      are 2, 4, 8, 8 times that);
    - ``first_padding``: conv1_1's padding (FCN pads by 100);
    - ``pool_kernel``, ``pool_padding``, ``pool_strides`` (one per stage),
      ``ceil_mode``: the max pools; ``return_indices``/``compact_indices``
      as ``fastseg.ops.MaxPool2d``'s;
    - ``conv5_dilation``: the dilation (and padding) of conv5_x.
    """

    def __init__(self, *, batch_norm: bool = False, width: int = 64, first_padding: int = 1, pool_kernel: int = 2,
                 pool_padding: int = 0, pool_strides=(2, 2, 2, 2, 2), ceil_mode: bool = False,
                 conv5_dilation: int = 1, return_indices: bool = False, compact_indices: bool = True):
        super().__init__()
        positive_int(width, "width")
        if len(pool_strides) != len(STAGE_CONVS):
            raise ValueError(f"pool_strides must have one stride per stage ({len(STAGE_CONVS)}), got {pool_strides!r}")
        self.channels = tuple(width * k for k in STAGE_WIDTHS)
        layers: list[nn.Module] = []
        in_channels = 3
        for stage, (convs, channels, stride) in enumerate(zip(STAGE_CONVS, self.channels, pool_strides)):
            dilation = conv5_dilation if stage == 4 else 1
            for i in range(convs):
                padding = first_padding if not layers else dilation
                layers.append(ops.Conv2d(in_channels, channels, 3, padding=padding, dilation=dilation))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = channels
            layers.append(ops.MaxPool2d(pool_kernel, stride, pool_padding, ceil_mode=ceil_mode,
                                        return_indices=return_indices, compact_indices=compact_indices))
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[PoolOutput]:
        stages = []
        for layer in self.features:
            if not isinstance(layer, ops.MaxPool2d):
                x = layer(x)
                continue
            unpooled_size = x.shape[-2:]
            x, indices = layer(x) if layer.return_indices else (layer(x), None)
            stages.append(PoolOutput(x, indices, unpooled_size))
        return stages

    def load_torchvision(self, path: str | os.PathLike) -> dict[str, Tensor]:
        """Loads the ``features.*`` entries of the torchvision ``vgg16`` (or
        ``vgg16_bn``, to match ``batch_norm``) state_dict saved at ``path``,
        all of them (strict); returns the whole state_dict, whose
        ``classifier.*`` entries FCN turns into convolutions."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"weights_backbone must be a path to a saved state_dict, got {type(path).__name__}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"weights_backbone: {os.fspath(path)!r} holds a {type(state).__name__}, not a state_dict")
        self.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
        return state


def vgg16_backbone(*, batch_norm: bool = False, weights_backbone: str | os.PathLike | None = None,
                   **variant) -> VGG16:
    """A ``VGG16`` (``variant``: its keyword arguments), with the weights of
    a torchvision state_dict file when ``weights_backbone`` names one."""
    backbone = VGG16(batch_norm=batch_norm, **variant)
    if weights_backbone is not None:
        backbone.load_torchvision(weights_backbone)
    return backbone
