"""fastseg.convert: torch.nn layers swapped for fastseg's, same outputs and
gradients, the original model untouched unless inplace=True."""

import pytest
import torch
from torch import nn

import fastseg
from fastseg import ops
from torchvision_import import import_torchvision


class PlainNet(nn.Module):
    """A torch.nn model with each convertible kind: a dilated conv, a
    depthwise + pointwise pair, a pool with indices and its unpool (3x3
    windows, stride 2: the windows overlap), and layers that stay."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.BatchNorm2d(8), nn.ReLU())
        self.separable = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 6, 1), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1, return_indices=True, ceil_mode=True)
        self.unpool = nn.MaxUnpool2d(3, 2, 1)
        self.head = nn.Conv2d(6, 2, 1, bias=False)

    def forward(self, x):
        y = self.separable(self.stem(x))
        values, indices = self.pool(y)
        return self.head(self.unpool(values, indices, output_size=y.shape[-2:]))


def model_and_input(gen):
    torch.manual_seed(0)
    return PlainNet().eval(), torch.randn(2, 3, 11, 13, generator=gen)


def test_converted_model_uses_fastseg_layers(gen):
    model, _ = model_and_input(gen)
    converted = fastseg.convert(model)
    assert type(converted.stem[0]) is ops.Conv2d and converted.stem[0].dilation == (2, 2)
    assert type(converted.separable[0]) is ops.DepthwiseSeparableConv2d
    assert type(converted.separable[1]) is nn.Identity
    assert type(converted.pool) is ops.MaxPool2d and converted.pool.return_indices and converted.pool.ceil_mode
    assert type(converted.unpool) is ops.MaxUnpool2d
    assert type(converted.head) is ops.Conv2d and converted.head.bias is None
    assert type(converted.stem[1]) is nn.BatchNorm2d


def test_outputs_and_gradients_are_kept(gen):
    model, x = model_and_input(gen)
    converted = fastseg.convert(model)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, out = model(x1), converted(x2)
    torch.testing.assert_close(out, expected)
    expected.square().sum().backward()
    out.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(converted.separable[0].depthwise.weight.grad, model.separable[0].weight.grad)


def test_the_original_is_left_alone(gen):
    model, x = model_and_input(gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = fastseg.convert(model)
    assert all(type(m) in (PlainNet, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d,
                           nn.MaxUnpool2d) for m in model.modules())
    assert converted.head.weight is not model.head.weight
    with torch.no_grad():
        converted.head.weight.add_(1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_inplace_converts_the_model_itself_with_its_parameters(gen):
    model, x = model_and_input(gen)
    expected = model(x)
    weight = model.stem[0].weight
    converted = fastseg.convert(model, inplace=True)
    assert converted is model and type(model.stem[0]) is ops.Conv2d
    assert model.stem[0].weight is weight
    torch.testing.assert_close(model(x), expected)


def test_state_dict_moves_only_for_the_fused_pair(gen):
    model, _ = model_and_input(gen)
    converted = fastseg.convert(model)
    renamed = {"separable.0.weight": "separable.0.depthwise.weight", "separable.0.bias": "separable.0.depthwise.bias",
               "separable.1.weight": "separable.0.pointwise.weight", "separable.1.bias": "separable.0.pointwise.bias"}
    converted_state = converted.state_dict()
    assert set(converted_state) == {renamed.get(k, k) for k in model.state_dict()}
    for key, value in model.state_dict().items():
        assert torch.equal(converted_state[renamed.get(key, key)], value), key


@pytest.mark.parametrize("pair, reason", [
    ((nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 5, 1, bias=False)), "one bias, not both"),
    ((nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.Conv2d(8, 5, 1)), "a depth multiplier of 2"),
    ((nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 5, 1, stride=2)), "a strided pointwise conv"),
    ((nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 5, 1)), "a grouped, not depthwise, conv"),
])
def test_pairs_the_fused_layer_cannot_represent_stay_two_convs(pair, reason, gen):
    model = nn.Sequential(*pair).eval()
    x = torch.randn(1, 4, 7, 9, generator=gen)
    converted = fastseg.convert(model)
    assert [type(m) for m in converted] == [ops.Conv2d, ops.Conv2d], reason
    torch.testing.assert_close(converted(x), model(x))


def test_shared_and_tied_layers_stay_shared(gen):
    conv = nn.Conv2d(3, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    converted = fastseg.convert(model)
    assert converted[0] is converted[2] and type(converted[0]) is ops.Conv2d
    x = torch.randn(1, 3, 5, 6, generator=gen)
    torch.testing.assert_close(converted(x), model(x))


def test_subclasses_and_fastseg_layers_are_left_as_they_are():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 3, 1), ops.Conv2d(3, 3, 1), ops.MaxPool2d(2))
    converted = fastseg.convert(model)
    assert [type(m) for m in converted] == [MyConv, ops.Conv2d, ops.MaxPool2d]


def test_a_layer_on_its_own_is_returned_converted(gen):
    pool = nn.MaxPool2d(2, return_indices=True)
    converted = fastseg.convert(pool)
    assert type(converted) is ops.MaxPool2d and type(pool) is nn.MaxPool2d
    x = torch.randn(1, 2, 5, 7, generator=gen)
    for got, expected in zip(converted(x), pool(x)):
        torch.testing.assert_close(got, expected)


def test_training_mode_is_kept():
    model = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    assert not fastseg.convert(model)[0].training
    assert fastseg.convert(model.train())[0].training


@pytest.mark.parametrize("kwargs, error, argument", [
    (dict(model="net"), TypeError, "model"),
    (dict(model=nn.Conv2d(1, 1, 1), inplace="yes"), TypeError, "inplace"),
])
def test_bad_arguments_name_themselves(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        fastseg.convert(**kwargs)


torchvision, WHY_NO_TORCHVISION = import_torchvision()


@pytest.mark.skipif(torchvision is None, reason=WHY_NO_TORCHVISION)
@pytest.mark.parametrize("name", ["mobilenet_v2", "vgg11", "deeplabv3_mobilenet_v3_large"])
def test_torchvision_models_keep_their_outputs(name, gen):
    """Models as users have them: torchvision's, with their depthwise convs
    (inside Conv2dNormActivation, so not fused: a norm sits between), max
    pools and segmentation heads."""
    torch.manual_seed(0)
    build = getattr(torchvision.models, name, None) or getattr(torchvision.models.segmentation, name)
    kwargs = {"weights_backbone": None} if name.startswith("deeplab") else {}
    model = build(weights=None, **kwargs).eval()
    converted = fastseg.convert(model)
    layers = [m for m in converted.modules() if isinstance(m, (ops.Conv2d, ops.MaxPool2d))]
    assert layers and not any(type(m) in (nn.Conv2d, nn.MaxPool2d) for m in converted.modules())
    x = torch.randn(1, 3, 67, 61, generator=gen)
    with torch.no_grad():
        expected, out = model(x), converted(x)
    if isinstance(expected, dict):
        expected, out = expected["out"], out["out"]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
