"""``SegmentationModel``: a backbone, a classifier on its features and an
optional auxiliary classifier, with logits resized to the input's size:
the shape of every model here, torchvision's ``_SimpleSegmentationModel``
with the attribute names of its FCN and DeepLabV3."""

from torch import Tensor, nn

from ._layers import resize


class SegmentationModel(nn.Module):
    """``forward(x)`` returns ``{"out": logits}``, plus ``"aux"`` with an
    auxiliary classifier, both [N, num_classes, H, W] for x [N, 3, H, W].

    ``classifier_inputs`` names the backbone features the classifier takes,
    in order (DeepLabV3+'s decoder takes ``"low_level"`` too); the auxiliary
    classifier takes ``"aux"``. ``align_corners`` is that of the final
    bilinear resize: False as torchvision, True where a model's reference
    code resizes so.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None, *,
                 classifier_inputs: tuple[str, ...] = ("out",), align_corners: bool = False):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.classifier_inputs = classifier_inputs
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        logits = self.classifier(*(features[name] for name in self.classifier_inputs))
        result = {"out": resize(logits, size, self.align_corners)}
        if self.aux_classifier is not None:
            result["aux"] = resize(self.aux_classifier(features["aux"]), size, self.align_corners)
        return result
