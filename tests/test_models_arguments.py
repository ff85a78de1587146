"""Bad arguments to the model and backbone builders raise a TypeError or
ValueError naming the argument, before any layer is built; so do weights
files that are missing or do not fit."""

import pytest
import torch

from fastseg.models import (create, deeplabv2, deeplabv3, deeplabv3_resnet101, deeplabv3plus, fcn_resnet50,
                            mobilenet_v2, pspnet, resnet50, resnet101, xception65)

BAD_ARGUMENTS = [
    (deeplabv3plus, {"num_classes": 0}, ValueError, "num_classes"),
    (pspnet, {"num_classes": -1}, ValueError, "num_classes"),
    (fcn_resnet50, {"num_classes": 0}, ValueError, "num_classes"),
    (deeplabv3_resnet101, {"num_classes": 0}, ValueError, "num_classes"),
    (deeplabv2, {"num_classes": 2.5}, TypeError, "num_classes"),
    (deeplabv3, {"num_classes": True}, TypeError, "num_classes"),
    (deeplabv3plus, {"output_stride": 4}, ValueError, "output_stride"),
    (deeplabv3, {"output_stride": "16"}, TypeError, "output_stride"),
    (resnet50, {"output_stride": 64}, ValueError, "output_stride"),
    (mobilenet_v2, {"output_stride": 12}, ValueError, "output_stride"),
    (xception65, {"output_stride": 0}, ValueError, "output_stride"),
    (deeplabv3plus, {"backbone": "resnet18"}, ValueError, "backbone"),
    (pspnet, {"backbone": "xception65"}, ValueError, "backbone"),  # no layer3 for the auxiliary head
    (deeplabv2, {"backbone": "mobilenet_v2"}, ValueError, "backbone"),
    (deeplabv3plus, {"backbone": "mobilenet_v2", "width_mult": 0}, ValueError, "width_mult"),
    (mobilenet_v2, {"width_mult": "1"}, TypeError, "width_mult"),
    (deeplabv3plus, {"backbone": "resnet50", "width_mult": 0.5}, TypeError, "width_mult"),
]


@pytest.mark.parametrize("builder, kwargs, error, argument", BAD_ARGUMENTS,
                         ids=[f"{b.__name__}-{'-'.join(map(str, k.values()))}" for b, k, _, _ in BAD_ARGUMENTS])
def test_bad_argument_is_named(builder, kwargs, error, argument):
    with pytest.raises(error, match=argument):
        builder(**kwargs)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="name: no model 'deeplabv4'"):
        create("deeplabv4")


@pytest.mark.parametrize("builder, argument", [(deeplabv3plus, "weights_backbone"), (resnet101, "weights"),
                                               (fcn_resnet50, "weights")])
def test_missing_weights_file(builder, argument, tmp_path):
    with pytest.raises(ValueError, match=f"{argument}: no file at .*missing.pt"):
        builder(**{argument: tmp_path / "missing.pt"})


def test_weights_path_of_wrong_type():
    with pytest.raises(TypeError, match="weights_backbone must be the path"):
        pspnet(weights_backbone=1)


def test_weights_that_do_not_fit(tmp_path):
    """A ResNet's checkpoint for a MobileNetV2, and a MobileNetV2's of another
    width: named as not fitting, with the first keys that do not."""
    path = tmp_path / "resnet50.pt"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(ValueError, match=r"weights_backbone: .* does not fit MobileNetV2: \d+ missing keys "
                                         r"\(features.0.0.weight, .*\); \d+ unexpected keys \(conv1.weight, "):
        deeplabv3plus(backbone="mobilenet_v2", width_mult=0.25, weights_backbone=path)
    torch.save(mobilenet_v2(width_mult=0.5).state_dict(), path)
    first_mismatch = r"features.0.0.weight \(16, 3, 3, 3\) for \(8, 3, 3, 3\)"
    with pytest.raises(ValueError, match=rf"\d+ shapes that differ \({first_mismatch}, "):
        deeplabv3plus(backbone="mobilenet_v2", width_mult=0.25, weights_backbone=path)


def test_weights_file_without_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="weights_backbone: .* does not hold a state_dict"):
        pspnet(weights_backbone=path)


def test_torchvision_weights_without_a_classifier(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(ValueError, match="weights: .* has no 'classifier.4.weight'"):
        fcn_resnet50(weights=path)
