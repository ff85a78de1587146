"""The backbones the segmentation builders take by name (``backbone=``).

Each is a module whose ``forward`` returns a dict of features (``"out"``,
``"low_level"`` at stride 4, and ``"aux"`` for the ResNets) with their
channel counts in ``.channels``, and whose ``load_weights(path, argument)``
loads a saved state_dict.
"""

from torch import nn

from ._arguments import check_choice
from .mobilenetv2 import mobilenet_v2
from .resnet import resnet50, resnet101
from .xception import xception65

BACKBONES = {"resnet50": resnet50, "resnet101": resnet101, "mobilenet_v2": mobilenet_v2, "xception65": xception65}
RESNETS = ("resnet50", "resnet101")


def build_backbone(name: str, output_stride: int, weights_backbone=None, *, choices=tuple(BACKBONES),
                   **options) -> nn.Module:
    """The backbone ``name`` (one of ``choices``) at ``output_stride``, with
    the weights saved at ``weights_backbone`` when given; ``options`` go to
    its builder (``width_mult`` for ``mobilenet_v2``)."""
    builder = BACKBONES[check_choice(name, "backbone", choices)]
    backbone = builder(output_stride=output_stride, **options)
    if weights_backbone is not None:
        backbone.load_weights(weights_backbone, "weights_backbone")
    return backbone
