"""fastseg.models against torchvision.models.segmentation and the papers:
parameter counts, state_dict keys and shapes, dilation and ASPP rates, and
backbone checkpoints (torchvision's ResNet and MobileNetV2 layouts).

The tests that build torchvision's own models skip where torchvision is
not installed (``tests/torchvision_import.py`` imports its CUDA wheel on a
CPU machine); the rest pin down, without it, the facts those comparisons
rest on.
"""

import re

import pytest
import torch

from fastseg import ops
from fastseg.models import (deeplabv2, deeplabv3, deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3plus,
                            fcn_resnet50, fcn_resnet101, mobilenet_v2, pspnet, resnet50)
from fastseg.models.pspnet import AUX_LOSS_WEIGHT
from torchvision_import import import_torchvision

torchvision, WHY_NO_TORCHVISION = import_torchvision()
needs_torchvision = pytest.mark.skipif(torchvision is None, reason=WHY_NO_TORCHVISION)

TORCHVISION_BUILDERS = {"fcn_resnet50": fcn_resnet50, "fcn_resnet101": fcn_resnet101,
                        "deeplabv3_resnet50": deeplabv3_resnet50, "deeplabv3_resnet101": deeplabv3_resnet101}


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- torchvision's builders ------------------------------------------------------------------

TORCHVISION_COUNTS = [(fcn_resnet50, 35_322_218), (deeplabv3_resnet50, 42_004_074), (deeplabv3_resnet101, 60_996_202)]


@pytest.mark.parametrize("builder, count", TORCHVISION_COUNTS, ids=[b.__name__ for b, _ in TORCHVISION_COUNTS])
def test_parameter_count_equals_torchvisions(builder, count):
    """torchvision's counts with aux_loss=True and 21 classes."""
    assert parameter_count(builder(aux_loss=True)) == count


def test_torchvision_defaults():
    """num_classes=None means 21 and aux_loss=None no auxiliary head."""
    model = fcn_resnet50()
    assert model.aux_classifier is None
    assert model.classifier[4].out_channels == 21


# Keys and shapes of torchvision's deeplabv3_resnet50(aux_loss=True) state_dict.
DEEPLABV3_KEYS = {
    "backbone.conv1.weight": (64, 3, 7, 7),
    "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.layer3.5.conv2.weight": (256, 256, 3, 3),
    "backbone.layer4.2.bn3.running_var": (2048,),
    "classifier.0.convs.0.0.weight": (256, 2048, 1, 1),
    "classifier.0.convs.3.0.weight": (256, 2048, 3, 3),
    "classifier.0.convs.4.1.weight": (256, 2048, 1, 1),
    "classifier.0.convs.4.2.running_mean": (256,),
    "classifier.0.project.0.weight": (256, 1280, 1, 1),
    "classifier.1.weight": (256, 256, 3, 3),
    "classifier.2.running_var": (256,),
    "classifier.4.weight": (21, 256, 1, 1),
    "classifier.4.bias": (21,),
    "aux_classifier.0.weight": (256, 1024, 3, 3),
    "aux_classifier.1.num_batches_tracked": (),
    "aux_classifier.4.weight": (21, 256, 1, 1),
}


def test_deeplabv3_state_dict_has_torchvisions_keys():
    state = deeplabv3_resnet50(aux_loss=True).state_dict()
    assert {key: tuple(state[key].shape) for key in DEEPLABV3_KEYS if key in state} == DEEPLABV3_KEYS
    assert not any(key.startswith("backbone.fc.") for key in state)


def test_resnet_dilation_at_output_stride_8():
    """torchvision's replace_stride_with_dilation=[False, True, True]: the
    first block of a dilated stage keeps the previous rate, the others
    double it; only layer2 strides after the stem."""
    backbone = resnet50(output_stride=8)
    geometry = {name: (m.stride[0], m.dilation[0], m.padding[0])
                for name, m in backbone.named_modules() if isinstance(m, ops.Conv2d) and m.kernel_size == (3, 3)}
    assert geometry["layer2.0.conv2"] == (2, 1, 1)
    assert geometry["layer3.0.conv2"] == (1, 1, 1)
    assert geometry["layer3.5.conv2"] == (1, 2, 2)
    assert geometry["layer4.0.conv2"] == (1, 2, 2)
    assert geometry["layer4.2.conv2"] == (1, 4, 4)
    assert backbone.layer3[0].downsample[0].stride == (1, 1)


@needs_torchvision
@pytest.mark.parametrize("name", list(TORCHVISION_BUILDERS))
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_output(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=5,
                                                           aux_loss=True).eval()
    ours = TORCHVISION_BUILDERS[name](num_classes=5, aux_loss=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        expected, out = theirs(x), ours(x)
    assert set(out) == set(expected)
    for key in out:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=1e-4)


@needs_torchvision
def test_torchvision_resnet_checkpoint_loads_as_backbone(tmp_path):
    path = tmp_path / "resnet50.pt"
    theirs = torchvision.models.resnet50().eval()
    torch.save(theirs.state_dict(), path)
    ours = resnet50(weights=path).eval()
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        expected = theirs.layer4(theirs.layer3(theirs.layer2(theirs.layer1(
            theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))))))
        torch.testing.assert_close(ours(x)["out"], expected, rtol=1e-4, atol=1e-4)


@needs_torchvision
def test_torchvision_mobilenet_v2_checkpoint_loads_as_backbone(tmp_path):
    path = tmp_path / "mobilenet_v2.pt"
    theirs = torchvision.models.mobilenet_v2().eval()
    torch.save(theirs.state_dict(), path)
    ours = mobilenet_v2(weights=path).eval()
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], theirs.features[:18](x), rtol=1e-4, atol=1e-4)


# --- checkpoints from files ---------------------------------------------------------------

def torchvision_mobilenet_layout(state: dict) -> dict:
    """A fastseg MobileNetV2 state_dict in torchvision's key layout, renamed
    here independently of fastseg's renaming: the separable conv of a block
    is torchvision's depthwise Conv2dNormActivation at ``conv.<i>`` and the
    1x1 conv and its norm at ``conv.<i+1>``, ``conv.<i+2>``."""
    children = {"depthwise": lambda i: f"{i}.0", "depthwise_norm": lambda i: f"{i}.1",
                "pointwise": lambda i: f"{i + 1}", "pointwise_norm": lambda i: f"{i + 2}"}

    def rename(key):
        match = re.fullmatch(r"(features\.\d+\.conv\.)(\d+)\.(depthwise_norm|depthwise|pointwise_norm|pointwise)"
                             r"\.(.+)", key)
        if match is None:
            return key
        prefix, index, child, rest = match.groups()
        return f"{prefix}{children[child](int(index))}.{rest}"

    return {rename(key): value for key, value in state.items()}


# Keys and shapes of torchvision's mobilenet_v2() state_dict.
MOBILENET_V2_KEYS = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.0.1.weight": (32,),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.running_var": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.bias": (24,),
    "features.17.conv.2.weight": (320, 960, 1, 1),
}


def test_mobilenet_v2_loads_torchvisions_key_layout(tmp_path):
    """A checkpoint in torchvision's layout, with the last conv and the
    classifier a backbone drops, loads into the backbone of DeepLabV3+."""
    torch.manual_seed(0)
    source = mobilenet_v2()
    state = torchvision_mobilenet_layout(source.state_dict())
    assert {key: tuple(state[key].shape) for key in MOBILENET_V2_KEYS if key in state} == MOBILENET_V2_KEYS
    state |= {"features.18.0.weight": torch.randn(1280, 320, 1, 1), "classifier.1.weight": torch.randn(1000, 1280)}
    torch.save(state, tmp_path / "mobilenet_v2.pt")
    model = deeplabv3plus(backbone="mobilenet_v2", weights_backbone=tmp_path / "mobilenet_v2.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_resnet_backbone_weights_with_a_classifier_load(tmp_path):
    """A classification checkpoint: its ``fc`` is dropped, the rest loads."""
    torch.manual_seed(0)
    source = resnet50()
    state = source.state_dict() | {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    torch.save(state, tmp_path / "resnet50.pt")
    model = deeplabv3_resnet50(weights_backbone=str(tmp_path / "resnet50.pt"))
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_full_model_weights_give_classes_and_aux_head(tmp_path):
    """``weights=path``: num_classes and aux_loss come from the checkpoint
    when not given, as torchvision takes them from its weights' metadata."""
    torch.manual_seed(0)
    source = fcn_resnet50(num_classes=4, aux_loss=True).eval()
    torch.save(source.state_dict(), tmp_path / "fcn.pt")
    model = fcn_resnet50(weights=tmp_path / "fcn.pt").eval()
    x = torch.randn(1, 3, 17, 22)
    with torch.no_grad():
        expected, out = source(x), model(x)
    assert set(out) == {"out", "aux"}
    for key in out:
        assert torch.equal(out[key], expected[key])


def test_xception_backbone_weights_load(tmp_path):
    torch.manual_seed(0)
    source = deeplabv3plus(num_classes=2)
    torch.save(source.backbone.state_dict(), tmp_path / "xception65.pt")
    model = deeplabv3plus(num_classes=2, weights_backbone=tmp_path / "xception65.pt")
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


# --- the papers' heads -------------------------------------------------------------------

def dilations(module: torch.nn.Module) -> list[int]:
    return [m.dilation[0] for m in module.modules() if isinstance(m, ops.Conv2d) and m.kernel_size == (3, 3)]


NARROW = {"backbone": "mobilenet_v2", "width_mult": 0.25}


@pytest.mark.parametrize("output_stride, rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_deeplabv3_aspp(output_stride, rates):
    """Section 3.3: 1x1, three 3x3 at 6/12/18 (doubled at output stride 8),
    image pooling; 5 x 256 channels projected to 256, then the logits."""
    aspp = deeplabv3(num_classes=5, output_stride=output_stride, **NARROW).classifier[0]
    assert len(aspp.convs) == 5
    assert dilations(aspp) == rates
    assert aspp.project[0].in_channels == 5 * 256
    assert all(not isinstance(m, ops.DepthwiseSeparableConv2d) for m in aspp.modules())


def test_deeplabv3plus_head():
    """Atrous separable convs at 6/12/18 in ASPP, a 48-channel low-level
    projection, two 3x3 separable convs of 256 after the concatenation."""
    head = deeplabv3plus(num_classes=5, **NARROW).classifier
    separable = [m for m in head.aspp.convs if isinstance(m, ops.DepthwiseSeparableConv2d)]
    assert [m.depthwise.dilation[0] for m in separable] == [6, 12, 18]
    assert head.project[0].out_channels == 48
    assert head.project[0].in_channels == 8  # MobileNetV2's 24 stride-4 channels at width 0.25
    assert [(m.depthwise.in_channels, m.pointwise.out_channels, m.depthwise.kernel_size) for m in head.fuse] == [
        (256 + 48, 256, (3, 3)), (256, 256, (3, 3))]
    assert head.logits.out_channels == 5


def test_deeplabv2_sums_four_atrous_branches():
    head = deeplabv2(num_classes=5, backbone="resnet50").classifier
    assert dilations(head) == [6, 12, 18, 24]
    assert all(branch.out_channels == 5 for branch in head.branches)
    x = torch.randn(1, 2048, 5, 6)
    torch.testing.assert_close(head(x), sum(branch(x) for branch in head.branches))


def test_pspnet_pyramid_and_aux_head():
    model = pspnet(num_classes=5)
    pyramid = model.classifier[0]
    assert [branch[0].output_size for branch in pyramid.features] == [1, 2, 3, 6]
    assert [branch[1].out_channels for branch in pyramid.features] == [512] * 4
    assert model.classifier[1][0].in_channels == 4096
    assert model.aux_classifier[0].in_channels == 1024
    assert dilations(model.backbone.layer4)[-1] == 4  # output stride 8
    assert AUX_LOSS_WEIGHT == 0.4
    assert pspnet(aux_loss=False).aux_classifier is None
