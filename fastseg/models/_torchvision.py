"""What the builders named as torchvision's (``fcn_resnet50``,
``deeplabv3_resnet101``, ...) share: torchvision's arguments and defaults,
its ResNet backbone at output stride 8 with an FCN auxiliary head on layer3,
and its module names, so its checkpoints load with ``weights=path``."""

from collections.abc import Callable

from torch import nn

from ._arguments import check_num_classes
from ._heads import FCNHead
from ._model import SegmentationModel
from ._weights import load_state, read_state_dict
from .backbones import build_backbone

DEFAULT_NUM_CLASSES = 21  # torchvision's: the 20 PASCAL VOC classes and background
_LOGITS = "classifier.4.weight"  # the last conv of both torchvision heads


def torchvision_segmentation(backbone: str, classifier: Callable[[int, int], nn.Module], *, weights, num_classes,
                             aux_loss, weights_backbone) -> SegmentationModel:
    """``classifier(2048, num_classes)`` on ``backbone`` (a ResNet) at output
    stride 8, with an FCN head on layer3 when ``aux_loss``.

    As torchvision: ``num_classes=None`` means 21, ``aux_loss=None`` False,
    and ``weights`` (here the path of a saved state_dict) replaces the
    backbone's weights; without ``num_classes`` and ``aux_loss`` they are
    read from that state_dict.
    """
    state = None
    if weights is not None:
        state = read_state_dict(weights, "weights")
        if _LOGITS not in state:
            raise ValueError(f"weights: {weights!r} has no {_LOGITS!r}: not a torchvision segmentation state_dict")
        num_classes = state[_LOGITS].shape[0] if num_classes is None else num_classes
        aux_loss = any(key.startswith("aux_classifier.") for key in state) if aux_loss is None else aux_loss
        weights_backbone = None  # overwritten by ``weights`` anyway
    num_classes = check_num_classes(DEFAULT_NUM_CLASSES if num_classes is None else num_classes)
    model = SegmentationModel(build_backbone(backbone, 8, weights_backbone, choices=(backbone,)),
                              classifier(2048, num_classes),
                              FCNHead(1024, num_classes) if aux_loss else None)
    if state is not None:
        load_state(model, state, weights, "weights")
    return model
