"""FCN on a dilated ResNet, torchvision's ``fcn_resnet50``/``fcn_resnet101``
(Long et al., "Fully Convolutional Networks for Semantic Segmentation",
2015, with torchvision's output-stride-8 backbone and 3x3 head): same
names, arguments, state_dict keys and parameter counts."""

from ._heads import FCNHead
from ._registry import register_model
from ._torchvision import torchvision_segmentation


@register_model
def fcn_resnet50(*, weights=None, progress: bool = True, num_classes: int | None = None,
                 aux_loss: bool | None = None, weights_backbone=None):
    """torchvision's ``fcn_resnet50``. ``weights`` and ``weights_backbone``
    are paths of saved state_dicts (a torchvision model's, a torchvision
    ``resnet50``'s); nothing is downloaded, so ``progress`` has no effect."""
    return torchvision_segmentation("resnet50", FCNHead, weights=weights, num_classes=num_classes,
                                    aux_loss=aux_loss, weights_backbone=weights_backbone)


@register_model
def fcn_resnet101(*, weights=None, progress: bool = True, num_classes: int | None = None,
                  aux_loss: bool | None = None, weights_backbone=None):
    """torchvision's ``fcn_resnet101``; arguments as ``fcn_resnet50``."""
    return torchvision_segmentation("resnet101", FCNHead, weights=weights, num_classes=num_classes,
                                    aux_loss=aux_loss, weights_backbone=weights_backbone)
