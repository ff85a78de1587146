"""Folding an inference-mode BatchNorm into the convolution before it.

``bn(conv(x, w) + b) = conv(x, w * s) + (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``, per output channel. Folded with torch ops
on every call, so gradients still reach the conv and BatchNorm parameters.
"""

import torch
from torch import nn


def can_fold(norm: nn.BatchNorm2d) -> bool:
    """Whether ``norm`` normalises with fixed running statistics (eval mode
    with tracked stats); in training, or without tracked stats, it needs the
    batch's own statistics, which only exist after the conv ran."""
    return not norm.training and norm.running_mean is not None


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None,
                    norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the conv followed by ``norm``, in the weight's dtype
    (the fold itself is computed in float32)."""
    scale = torch.rsqrt(norm.running_var.float() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.float()
    shift = -norm.running_mean.float() * scale
    if bias is not None:
        shift = shift + bias.float() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.float()
    folded = weight.float() * scale.view(-1, *([1] * (weight.dim() - 1)))
    return folded.to(weight.dtype), shift.to(weight.dtype)
