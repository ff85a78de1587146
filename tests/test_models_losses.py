"""fastseg.models.losses against hand-computed values and F.cross_entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastseg.models.losses import PSPNET_WEIGHTS, cross_entropy, output_dict_loss, pspnet_loss, unet_weight_map


def logits_and_target(gen, ignored: int = 255):
    logits = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 7), generator=gen)
    target[0, 0, :3] = ignored
    return logits, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_cross_entropy_is_torchs(reduction, with_weight, gen):
    logits, target = logits_and_target(gen)
    weight = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64) if with_weight else None
    expected = F.cross_entropy(logits, target, weight, ignore_index=255, reduction=reduction)
    torch.testing.assert_close(cross_entropy(logits, target, weight=weight, ignore_index=255, reduction=reduction),
                               expected)
    ones = torch.ones(target.shape, dtype=torch.float64)
    torch.testing.assert_close(cross_entropy(logits, target, weight=weight, pixel_weight=ones, ignore_index=255,
                                             reduction=reduction), expected)


def test_cross_entropy_by_hand():
    # Two pixels, two classes: logits (0, ln 3) -> p = (1/4, 3/4).
    logits = torch.tensor([0.0, math.log(3)], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    pixel_weight = torch.tensor([[[3.0, 1.0]]], dtype=torch.float64)
    class_weight = torch.tensor([1.0, 2.0], dtype=torch.float64)
    nll = torch.tensor([math.log(4), math.log(4 / 3)], dtype=torch.float64)
    loss = cross_entropy(logits, target, weight=class_weight, pixel_weight=pixel_weight)
    expected = (3 * 1 * nll[0] + 1 * 2 * nll[1]) / (3 * 1 + 1 * 2)
    torch.testing.assert_close(loss, expected)


def test_ignored_pixels_carry_no_weight_or_gradient(gen):
    logits, target = logits_and_target(gen)
    logits.requires_grad_()
    pixel_weight = torch.rand(target.shape, generator=gen, dtype=torch.float64) + 0.5
    cross_entropy(logits, target, pixel_weight=pixel_weight, ignore_index=255).backward()
    assert (logits.grad[0, :, 0, :3] == 0).all()
    kept = target != 255
    terms = F.cross_entropy(logits.detach(), target, ignore_index=255, reduction="none") * pixel_weight
    torch.testing.assert_close(cross_entropy(logits.detach(), target, pixel_weight=pixel_weight, ignore_index=255),
                               terms.sum() / pixel_weight[kept].sum())


def test_pspnet_loss_is_out_plus_0_4_aux(gen):
    logits, target = logits_and_target(gen)
    aux = torch.randn(logits.shape, generator=gen, dtype=torch.float64)
    outputs = {"out": logits, "aux": aux}
    expected = F.cross_entropy(logits, target, ignore_index=255) + 0.4 * F.cross_entropy(aux, target,
                                                                                         ignore_index=255)
    torch.testing.assert_close(pspnet_loss(outputs, target, ignore_index=255), expected)
    torch.testing.assert_close(output_dict_loss(outputs, target, ignore_index=255), expected)
    assert PSPNET_WEIGHTS == {"out": 1.0, "aux": 0.4}


def test_output_dict_loss_skips_what_the_weights_do_not_name(gen):
    logits, target = logits_and_target(gen)
    outputs = {"out": logits, "unary": torch.zeros_like(logits)}
    torch.testing.assert_close(output_dict_loss(outputs, target, ignore_index=255),
                               F.cross_entropy(logits, target, ignore_index=255))
    custom = output_dict_loss(outputs, target, weights={"out": 2.0, "unary": 1.0},
                              loss=lambda out, t: out.sum() + t.numel())
    torch.testing.assert_close(custom, 2 * (logits.sum() + 70) + 70)


# --- U-Net's weight map -------------------------------------------------------------

def border_term(d1, d2, w0=10.0, sigma=5.0):
    return w0 * math.exp(-(d1 + d2) ** 2 / (2 * sigma ** 2))


def test_weight_map_between_two_cells_on_a_line():
    # Cells at columns 0 and 6: background column c is c from one, 6 - c from the other.
    cells = torch.tensor([[1, 0, 0, 0, 0, 0, 2]])
    weights = unet_weight_map(cells, class_weights=(1.0, 2.0))
    expected = torch.tensor([[2.0] + [1.0 + border_term(c, 6 - c) for c in range(1, 6)] + [2.0]])
    torch.testing.assert_close(weights, expected)


def test_weight_map_with_known_euclidean_distances():
    # 4x5 map: cell 1 at (0, 0) and (1, 0), cell 2 the block (3, 3)-(3, 4).
    cells = torch.zeros(4, 5, dtype=torch.long)
    cells[0:2, 0] = 1
    cells[3, 3:] = 2
    weights = unet_weight_map(cells, class_weights=(0.0, 0.0), w0=1.0, sigma=2.0)
    for (r, c), d1, d2 in [((0, 4), 3.0, 4.0), ((2, 2), math.sqrt(2), math.sqrt(5)), ((1, 1), 1.0, math.sqrt(8))]:
        assert weights[r, c].item() == pytest.approx(border_term(d1, d2, 1.0, 2.0), rel=1e-6), (r, c)
    assert (weights[cells != 0] == 0).all()


def test_weight_map_balances_classes_by_default():
    cells = torch.tensor([[0, 0, 0, 5]])  # one cell: no border term
    torch.testing.assert_close(unet_weight_map(cells), torch.tensor([[4 / 6, 4 / 6, 4 / 6, 2.0]]))
    batch = torch.stack([cells, torch.zeros_like(cells)])
    torch.testing.assert_close(unet_weight_map(batch)[1], torch.ones(1, 4))


# --- bad arguments -----------------------------------------------------------------

@pytest.mark.parametrize("call, error, argument", [
    (lambda l, t: cross_entropy(l[0], t), ValueError, "logits"),
    (lambda l, t: cross_entropy(l, t.float()), TypeError, "target"),
    (lambda l, t: cross_entropy(l, t[..., :4]), ValueError, "target"),
    (lambda l, t: cross_entropy(l, t, reduction="avg"), ValueError, "reduction"),
    (lambda l, t: cross_entropy(l, t, pixel_weight=torch.ones(2, 5, 6)), ValueError, "pixel_weight"),
    (lambda l, t: output_dict_loss({"aux": l}, t), TypeError, "outputs"),
    (lambda l, t: output_dict_loss({"out": l}, t, weights={"out": "1"}), TypeError, "weights"),
    (lambda l, t: unet_weight_map(t.float()), TypeError, "cells"),
    (lambda l, t: unet_weight_map(t[0, 0]), ValueError, "cells"),
    (lambda l, t: unet_weight_map(t, sigma=0), ValueError, "sigma"),
    (lambda l, t: unet_weight_map(t, class_weights=(1.0,)), ValueError, "class_weights"),
])
def test_bad_arguments_name_themselves(call, error, argument, gen):
    logits, target = logits_and_target(gen, ignored=0)
    with pytest.raises(error, match=argument):
        call(logits, target)
