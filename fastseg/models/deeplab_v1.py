"""DeepLab v1, DeepLab-LargeFOV (Chen et al., "Semantic Image Segmentation
with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015).

VGG16 made dense: pool4 and pool5 keep stride 1 (3x3 windows, padding 1,
as all five pools), conv5 is dilated by 2 to see what it saw before, and
fc6 becomes a 3x3 conv of 1024 channels dilated by 12 (the large field of
view of Sec. 4.1), so the scores come at stride 8 and are upsampled
bilinearly to the input. Optionally the fully connected CRF of Krähenbühl
& Koltun refines the softmax with the input image (Sec. 3.2), through
``fastseg.ops.DenseCRF``.
"""

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._arguments import positive_int
from ._registry import register_model
from .vgg import vgg16_backbone

FC_WIDTH = 16  # fc6/fc7 channels in units of conv1's: 1024 at width 64
FC6_DILATION = 12

# The CRF parameters of the released DeepLab-LargeFOV (cross-validated on
# PASCAL VOC 2012 val): bilateral weight 4, position sd 121, colour sd 5;
# Gaussian weight 3, sd 3; 10 mean-field iterations.
CRF_PARAMS = dict(iterations=10, bilateral_compat=4.0, bilateral_sxy=121.0, bilateral_srgb=5.0,
                  gaussian_compat=3.0, gaussian_sxy=3.0)


class DeepLabV1(nn.Module):
    """``backbone`` (dense VGG16), ``head`` (pool5a, fc6, fc7, fc8) and an
    optional ``crf``.

    ``forward(x, image=None)``: without a CRF, ``{"out": scores}``. With
    one, ``out`` holds the log of the CRF's label probabilities (so argmax,
    softmax and cross-entropy read the refined result) and ``unary`` the
    network's own scores. The CRF compares colours of ``image`` [B, C, H, W]
    (``x`` when None); pass the unnormalised image, in the units of the
    CRF's ``bilateral_srgb`` (0..255 for the default parameters), when
    ``x`` is normalised.
    """

    def __init__(self, num_classes: int, width: int = 64, crf: ops.DenseCRF | None = None,
                 weights_backbone: str | os.PathLike | None = None):
        super().__init__()
        positive_int(num_classes, "num_classes")
        self.backbone = vgg16_backbone(width=positive_int(width, "width"), pool_kernel=3, pool_padding=1,
                                       pool_strides=(2, 2, 2, 1, 1), ceil_mode=True, conv5_dilation=2,
                                       weights_backbone=weights_backbone)
        fc = FC_WIDTH * width
        self.head = nn.Sequential(
            nn.AvgPool2d(3, 1, 1),  # pool5a of the released model
            ops.Conv2d(self.backbone.channels[4], fc, 3, padding=FC6_DILATION, dilation=FC6_DILATION),
            nn.ReLU(inplace=True), nn.Dropout(),
            ops.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(),
            ops.Conv2d(fc, num_classes, 1))
        if crf is not None and crf.num_labels != num_classes:
            raise ValueError(f"crf must have num_labels=num_classes={num_classes}, got {crf.num_labels}")
        self.crf = crf

    def forward(self, x: Tensor, image: Tensor | None = None) -> dict[str, Tensor]:
        scores = self.head(self.backbone(x)[4].values)
        scores = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.crf is None:
            return {"out": scores}
        unary = scores.softmax(1) if self.crf.probabilities else scores
        # The lattice is built from the image's features, which the CRF does
        # not differentiate: gradients flow through the scores only.
        probabilities = self.crf(unary, (x if image is None else image).detach())
        return {"out": probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log(), "unary": scores}


@register_model
def deeplabv1_vgg16(*, num_classes: int = 21, weights_backbone: str | os.PathLike | None = None, width: int = 64,
                    crf: bool | ops.DenseCRF = False) -> DeepLabV1:
    """DeepLab-LargeFOV. ``weights_backbone``: a torchvision ``vgg16``
    state_dict file (conv1-conv5; fc6/fc7 change shape and start afresh).
    ``crf``: True for the paper's dense CRF on the softmax (``CRF_PARAMS``),
    or a ``fastseg.ops.DenseCRF`` of one's own."""
    if isinstance(crf, bool):
        crf = ops.DenseCRF(num_classes, probabilities=True, **CRF_PARAMS) if crf else None
    elif not isinstance(crf, ops.DenseCRF):
        raise TypeError(f"crf must be a bool or a fastseg.ops.DenseCRF, got {type(crf).__name__}")
    return DeepLabV1(num_classes, width, crf, weights_backbone)
