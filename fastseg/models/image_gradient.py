"""``ImageGradient``: an edge map of the input image computed with torch ops
on the image's device, Gated-SCNN's substitute for the Canny edge map.

Gated-SCNN (Takikawa et al. 2019) fuses the image gradients
with the shape stream's boundaries; its authors' code runs OpenCV's Canny
on the CPU inside ``forward``, which copies every batch to the host and
waits for the device. Here the first three steps of Canny (1986) run as
convolutions and elementwise ops, asynchronously and under torch.compile:

1. grey image: BT.601 luma of the (normalised) RGB input;
2. smoothing: a 5x5 binomial filter, a Gaussian of sigma 1, Canny's usual;
3. Sobel derivatives, their magnitude, and non-maximum suppression: a pixel
   is kept where it is larger than its neighbour behind and no smaller than
   its neighbour ahead along the gradient direction rounded to a multiple
   of 45 degrees, so edges are one pixel thin as Canny's (the unequal
   comparisons break the tie of a step between two pixels, as OpenCV does).

Canny's last step, hysteresis (two thresholds, weak edges kept where they
connect to strong ones), is left out: connectivity is an iterative,
data-dependent flood that needs as many passes as the longest edge, and the
1x1 conv that fuses this map with the shape stream weighs its magnitude
anyway. The map is a soft one, divided by each image's largest value, so
it lies in [0, 1] whatever the input's normalisation, as Canny's binary map
does. Like Canny's it is a fixed function of the image: no gradient flows
through it (the magnitude's square root has none where the image is flat).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # /16: a Gaussian of sigma 1
_SOBEL_SMOOTH, _SOBEL_DIFF = (1.0, 2.0, 1.0), (-1.0, 0.0, 1.0)
# Row and column step to the neighbour along each rounded gradient direction
# (0, 45, 90, 135 degrees; rows grow downwards, as y does in atan2(gy, gx)).
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))


def _outer(rows, cols) -> Tensor:
    return torch.outer(torch.tensor(rows), torch.tensor(cols))


class ImageGradient(nn.Module):
    """``forward(images)``: [N, 3, H, W] -> [N, 1, H, W] edge map in [0, 1].

    The filters are buffers (not in the state_dict), so they follow the
    module to a device and dtype and nothing is copied from the host per call.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)
        smooth = _outer(_BINOMIAL, _BINOMIAL) / 256
        self.register_buffer("smooth", smooth.view(1, 1, 5, 5), persistent=False)
        sobel_x = _outer(_SOBEL_SMOOTH, _SOBEL_DIFF)  # d/dx: columns differ, rows smooth
        self.register_buffer("sobel", torch.stack([sobel_x, sobel_x.T]).unsqueeze(1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        images = images.detach()
        grey = (images * self.luma.to(images.dtype)).sum(1, keepdim=True)  # [N, 1, H, W]
        # Replicated borders: the image's edge is no edge of its content.
        grey = F.conv2d(F.pad(grey, (2, 2, 2, 2), mode="replicate"), self.smooth.to(grey.dtype))
        gx, gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.sobel.to(grey.dtype)).unbind(1)
        magnitude = torch.hypot(gx, gy).unsqueeze(1)  # [N, 1, H, W]
        thin = magnitude * _is_local_maximum(magnitude, gx, gy)
        return thin / thin.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(thin.dtype).tiny)


def _is_local_maximum(magnitude: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Canny's non-maximum suppression: True where ``magnitude`` [N, 1, H, W]
    is > its neighbour behind and >= its neighbour ahead along the gradient
    (gx, gy) [N, H, W] rounded to the nearest of four directions; outside
    the image counts as 0."""
    height, width = magnitude.shape[-2:]
    padded = F.pad(magnitude, (1, 1, 1, 1))
    direction = torch.remainder(torch.round(torch.atan2(gy, gx) / (math.pi / 4)), 4).unsqueeze(1)
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (dy, dx) in enumerate(_DIRECTIONS):
        ahead = padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        behind = padded[..., 1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        keep |= (direction == index) & (magnitude >= ahead) & (magnitude > behind)
    return keep
