"""The VGG-based models (FCN, SegNet, DeepLab v1) and U-Net: forward and
backward at odd sizes, backends, autocast and channels_last, torchvision's
state_dict names, U-Net's valid geometry and tiled inference.

Small widths keep every case fast; the geometry does not depend on width.
"""

import math

import numpy as np
import pytest
import torch

from fastseg import models, ops
from fastseg.models import Tiling, set_backend, tiled_predict
from fastseg.models.vgg import VGG16

SIZE = (37, 45)  # odd, and not a multiple of any stride

# name -> (builder, small keyword arguments)
CASES = {
    "fcn32s": ("fcn32s_vgg16", dict(width=2)),
    "fcn16s": ("fcn16s_vgg16", dict(width=2)),
    "fcn8s": ("fcn8s_vgg16", dict(width=2)),
    "segnet": ("segnet", dict(width=2)),
    "segnet-flat-indices": ("segnet", dict(width=2, compact_indices=False)),
    "deeplabv1": ("deeplabv1_vgg16", dict(width=2)),
    "deeplabv1-crf": ("deeplabv1_vgg16", dict(width=2, crf=True)),
    "unet": ("unet", dict(base_channels=2, depth=1, in_channels=3)),  # deeper needs more than SIZE
    "unet-padded": ("unet_padded", dict(base_channels=2, depth=2, in_channels=3)),
}
NUM_CLASSES = 3

# Same model on two backends, or in two dtypes: tolerances per dtype.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4),
       torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def build(case: str, seed: int = 0) -> torch.nn.Module:
    name, kwargs = CASES[case]
    torch.manual_seed(seed)
    return models.create(name, num_classes=NUM_CLASSES, **kwargs)


def expected_size(model, size) -> tuple[int, int]:
    """Input resolution, except for the unpadded U-Net's valid output."""
    return tuple(model.output_size(n) for n in size) if hasattr(model, "output_size") else tuple(size)


def image(batch: int, size, gen, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(batch, 3, *size, generator=gen, dtype=torch.float64) * 255).to(dtype)


def test_every_builder_is_registered():
    assert {name for name, _ in CASES.values()} <= set(models.list_models())


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_forward_backward_at_odd_size(case, batch, gen):
    model = build(case)
    x = image(batch, SIZE, gen).requires_grad_()
    outputs = model(x)
    out = outputs["out"]
    assert out.shape == (batch, NUM_CLASSES, *expected_size(model, SIZE))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("size", [(1, 1), (2, 7), (33, 32)])
@pytest.mark.parametrize("case", ["fcn8s", "fcn32s", "segnet", "deeplabv1"])
def test_any_input_size_gives_input_resolution(case, size, gen):
    model = build(case).eval()
    with torch.no_grad():
        assert model(image(1, size, gen))["out"].shape[-2:] == size


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_reference_backend_gives_the_same_outputs(case, dtype, gen):
    model = build(case).eval().to(dtype)
    x = image(2, SIZE, gen, dtype)
    with torch.no_grad():
        fast = model(x)
        reference = set_backend(model, "reference")(x)
    assert fast.keys() == reference.keys()
    for key in fast:
        torch.testing.assert_close(fast[key], reference[key], **TOL[dtype])


@pytest.mark.parametrize("case", CASES)
def test_autocast_bf16_with_channels_last(case, gen):
    model = build(case).eval()
    x = image(2, SIZE, gen)
    with torch.no_grad():
        expected = model(x)["out"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last))["out"]
    assert out.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits through a dozen layers: compare the whole map.
    assert (out.float() - expected).norm() <= 0.05 * expected.norm()


def test_deeplabv1_crf_refines_the_softmax(gen):
    model = build("deeplabv1-crf").eval()
    x = image(2, SIZE, gen)
    with torch.no_grad():
        outputs = model(x)
        expected = model.crf(outputs["unary"].softmax(1), x)
    torch.testing.assert_close(outputs["out"].exp(), expected)
    assert not torch.allclose(outputs["out"].softmax(1), outputs["unary"].softmax(1), atol=1e-3)


# --- torchvision's names ---------------------------------------------------------

# torchvision's vgg16 / vgg16_bn ``features`` indices of the 13 convs.
TORCHVISION_CONVS = {False: [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
                     True: [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]}


def torchvision_feature_keys(batch_norm: bool) -> set[str]:
    keys = set()
    for i in TORCHVISION_CONVS[batch_norm]:
        keys |= {f"features.{i}.weight", f"features.{i}.bias"}
        if batch_norm:
            keys |= {f"features.{i + 1}.{k}" for k in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return keys


@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg16_has_torchvision_names(batch_norm):
    backbone = VGG16(batch_norm=batch_norm)
    assert set(backbone.state_dict()) == torchvision_feature_keys(batch_norm)
    assert backbone.features[0].weight.shape == (64, 3, 3, 3)
    assert backbone.features[TORCHVISION_CONVS[batch_norm][-1]].weight.shape == (512, 512, 3, 3)


def torchvision_like_state(batch_norm: bool, width: int, gen) -> dict[str, torch.Tensor]:
    """A state_dict with torchvision's vgg16(_bn) names, scaled to ``width``."""
    state = {k: torch.randn(v.shape, generator=gen).to(v.dtype) if v.is_floating_point() else v
             for k, v in VGG16(batch_norm=batch_norm, width=width).state_dict().items()}
    fc = 64 * width
    for i, shape in ((0, (fc, 8 * width * 49)), (3, (fc, fc)), (6, (1000, fc))):
        state[f"classifier.{i}.weight"] = torch.randn(shape, generator=gen)
        state[f"classifier.{i}.bias"] = torch.randn(shape[0], generator=gen)
    return state


def test_fcn_loads_torchvision_vgg16_weights(tmp_path, gen):
    state = torchvision_like_state(False, 2, gen)
    torch.save(state, tmp_path / "vgg16.pth")
    model = models.create("fcn8s_vgg16", num_classes=NUM_CLASSES, width=2, weights_backbone=tmp_path / "vgg16.pth")
    for key in torchvision_feature_keys(False):
        assert torch.equal(model.backbone.state_dict()[key], state[key]), key
    fc6, fc7 = model.head[0], model.head[3]
    assert torch.equal(fc6.weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(fc7.weight.flatten(1), state["classifier.3.weight"])


@pytest.mark.parametrize("name, batch_norm", [("segnet", True), ("deeplabv1_vgg16", False)])
def test_backbone_weights_load(name, batch_norm, tmp_path, gen):
    state = torchvision_like_state(batch_norm, 2, gen)
    torch.save(state, tmp_path / "vgg.pth")
    model = models.create(name, num_classes=NUM_CLASSES, width=2, weights_backbone=str(tmp_path / "vgg.pth"))
    backbone = model.encoder if name == "segnet" else model.backbone
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


# --- U-Net geometry and tiled inference --------------------------------------------

def unet64(builder: str, depth: int = 2) -> torch.nn.Module:
    """A narrow U-Net in float64, where tiles and whole image agree to
    rounding whatever the conv algorithm each size gets."""
    torch.manual_seed(0)
    return models.create(builder, num_classes=NUM_CLASSES, base_channels=2, depth=depth,
                         in_channels=3).eval().double()


def test_unet_has_the_papers_geometry():
    model = models.create("unet", base_channels=1)
    assert model.tiling.context == 92 and model.tiling.stride == 16
    assert model.output_size(572) == 388  # Fig. 1
    assert model.crops == [88, 40, 16, 4]  # 568 -> 392, 280 -> 200, 136 -> 104, 64 -> 56 in Fig. 1


def test_unet_valid_output_is_aligned_at_odd_sizes(gen):
    # Output pixel i is input pixel i + context's prediction whatever the
    # size: an odd input and its even crop agree where both have output.
    # At 63 rows the first level's features are 59 rows, where a centred
    # crop of the skip would start a row off.
    model = unet64("unet")
    x = image(1, (63, 67), gen, torch.float64)
    with torch.no_grad():
        odd = model(x)["out"]
        even = model(x[..., :60, :64])["out"]
    h, w = even.shape[-2:]
    torch.testing.assert_close(odd[..., :h, :w], even)


def test_unet_crop_to_output_matches_the_output(gen):
    model = build("unet")
    x = image(2, SIZE, gen)
    assert model.crop_to_output(x).shape[-2:] == model(x)["out"].shape[-2:]


def mirrored_whole_image(model, x: torch.Tensor) -> torch.Tensor:
    """The unpadded model on the whole image mirrored by its context (and at
    the bottom/right to a size every pool sees as even), cropped to x."""
    c = model.tiling.context
    padded = []
    for n in x.shape[-2:]:
        size = next(s for s in range(n + 2 * c, n + 2 * c + model.tiling.stride) if model.output_size(s) == s - 2 * c)
        padded.append((c, size - n - c))
    mirrored = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), *padded), mode="reflect"))
    return model(mirrored)["out"][..., :x.shape[-2], :x.shape[-1]]


@pytest.mark.parametrize("tile", [50, (61, 47), 200])
def test_tiled_unet_equals_whole_image(tile, gen):
    model = unet64("unet")
    x = image(2, SIZE, gen, torch.float64)
    with torch.no_grad():
        whole = mirrored_whole_image(model, x)
        tiled = tiled_predict(model, x, tile)
    assert tiled.shape == (2, NUM_CLASSES, *SIZE)
    torch.testing.assert_close(tiled, whole)


@pytest.mark.parametrize("depth, size, tile", [(2, (75, 83), 60), (2, (75, 83), (70, 64)), (3, (131, 150), 130)])
def test_tiled_padded_unet_equals_whole_image(depth, size, tile, gen):
    model = unet64("unet_padded", depth)
    x = image(1, size, gen, torch.float64)
    with torch.no_grad():
        whole = model(x)["out"]
        tiled = tiled_predict(model, x, tile)
        # A margin smaller than what the output sees shows at the tiles' seams.
        too_little = tiled_predict(model, x, tile, tiling=Tiling(model.tiling.stride, model.tiling.stride))
    torch.testing.assert_close(tiled, whole)
    assert not torch.allclose(too_little, whole)


# --- bad arguments --------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, error, argument", [
    ("fcn8s_vgg16", dict(num_classes=0), ValueError, "num_classes"),
    ("fcn32s_vgg16", dict(width=1.5), ValueError, "width"),
    ("segnet", dict(width=0), ValueError, "width"),
    ("segnet", dict(weights_backbone=3), TypeError, "weights_backbone"),
    ("deeplabv1_vgg16", dict(crf="yes"), TypeError, "crf"),
    ("deeplabv1_vgg16", dict(num_classes=3, crf=ops.DenseCRF(4)), ValueError, "crf"),
    ("unet", dict(depth=0), ValueError, "depth"),
    ("unet_padded", dict(base_channels=-1), ValueError, "base_channels"),
])
def test_builders_reject_bad_arguments(name, kwargs, error, argument):
    with pytest.raises(error, match=argument):
        models.create(name, **kwargs)


def test_unet_rejects_an_input_too_small(gen):
    with pytest.raises(ValueError, match="x: .* at least"):
        build("unet")(image(1, (17, 40), gen))


@pytest.mark.parametrize("kwargs, error, argument", [
    (dict(image=torch.zeros(3, 37, 45)), ValueError, "image"),
    (dict(tile=0), ValueError, "tile"),
    (dict(tile=2.5), TypeError, "tile"),
    (dict(tile=43), ValueError, "tile"),  # 44 is the smallest tile with an output of at least the stride
    (dict(tiling="yes"), TypeError, "tiling"),
])
def test_tiled_predict_rejects_bad_arguments(kwargs, error, argument, gen):
    model = unet64("unet")
    arguments = dict(image=image(1, (101, 45), gen, torch.float64), tile=50) | kwargs
    with pytest.raises(error, match=argument):
        tiled_predict(model, **arguments)


def test_tiled_predict_needs_a_tiling_for_other_models(gen):
    with pytest.raises(TypeError, match="tiling"):
        tiled_predict(build("fcn8s"), image(1, SIZE, gen), 20)


def test_fcn_upsampling_starts_bilinear():
    model = build("fcn32s")
    taps = 1 - (torch.arange(64) - 31.5).abs() / 32
    assert torch.equal(model.upscore.weight[1, 1], taps[:, None] * taps[None, :])
    assert model.upscore.weight[0, 1].abs().sum() == 0 and not model.upscore.weight.requires_grad
    assert math.isclose(model.upscore.weight[0, 0].sum().item(), 32 ** 2, rel_tol=1e-6)
