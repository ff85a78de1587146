"""Gated-SCNN (fastseg.models.gated_scnn), its image gradient and its
dual-task loss: forward and backward at odd sizes, the reference backend,
torch.compile with a full graph (no host round trip in forward), the edge
map on known images, the loss terms against hand-computed values, bad
arguments named.

One ResNet-50 model is shared by the module's tests (2 CPU cores); the
compile test traces the whole Gated-SCNN on a small stand-in backbone
(tracing a ResNet-50 takes half a minute, and the backbone's ops are the
other models' tests')."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastseg.models import create, gated_scnn, list_models
from fastseg.models.gated_scnn import GatedSCNN
from fastseg.models.image_gradient import ImageGradient
from model_helpers import BuiltModels, assert_reference_backend_matches, image
from fastseg.models.losses import (GATED_SCNN_WEIGHTS, balanced_binary_cross_entropy, boundary_magnitude,
                                   gated_scnn_loss, semantic_boundaries)

NUM_CLASSES = 3
BUILT = BuiltModels()


def model() -> nn.Module:
    return BUILT.get("resnet50", lambda: gated_scnn(NUM_CLASSES))


@pytest.fixture(autouse=True)
def _model_as_built():
    yield
    BUILT.reset()


# --- the model ----------------------------------------------------------------------

@pytest.mark.parametrize("batch, training, size", [(2, True, (33, 47)), (1, False, (17, 22))],
                         ids=["batch2-train-33x47", "batch1-eval-17x22"])
def test_forward_backward(batch, training, size, gen):
    """Segmentation and boundary logits at the input's size, finite; the
    dual-task loss gives every parameter and the input a finite gradient.
    Batch 1 runs in eval mode (ASPP's image pooling has one value per
    channel, which BatchNorm refuses in training)."""
    net = model().train(training)
    x = image(batch, size, gen).requires_grad_()
    out = net(x)
    assert set(out) == {"out", "edge"}
    assert out["out"].shape == (batch, NUM_CLASSES, *size)
    assert out["edge"].shape == (batch, 1, *size)
    assert all(torch.isfinite(logits).all() for logits in out.values())
    target = torch.randint(0, NUM_CLASSES, (batch, *size), generator=gen)
    gated_scnn_loss(out, target).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_reference_backend_matches_default(device, gen):
    assert_reference_backend_matches(model(), image(2, (33, 47), gen), device)


def test_registered_with_its_defaults():
    assert "gated_scnn" in list_models()
    net = create("gated_scnn")
    assert net.head.logits.out_channels == 19  # Cityscapes
    assert not any(key.startswith("image_gradient") for key in net.state_dict())  # fixed filters, not weights


class _StandIn(nn.Module):
    """A two-conv backbone with a ResNet's feature names and strides (2 and
    8), so that compiling the whole Gated-SCNN takes seconds."""

    channels = {"stem": 8, "layer2": 8, "aux": 8, "out": 16}

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.deep = nn.Conv2d(8, 16, 3, stride=4, padding=1)

    def forward(self, x):
        stem = torch.relu(self.stem(x))
        deep = torch.relu(self.deep(stem))
        return {"stem": stem, "layer2": deep[:, :8], "aux": deep[:, 8:], "out": deep}


def test_compile_full_graph_without_host_round_trip(gen, fresh_dynamo):
    """torch.compile(fullgraph=True) traces the forward, image gradient
    included: a host round trip (``.item()``, ``.cpu().numpy()`` for an
    OpenCV Canny) would break the graph and fail here."""
    torch.manual_seed(0)
    net = GatedSCNN(_StandIn(), NUM_CLASSES).eval()
    x = image(2, (33, 47), gen)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")(x)
    expected = net(x)
    for key in expected:
        torch.testing.assert_close(compiled[key], expected[key])
    gated_scnn_loss(compiled, torch.randint(0, NUM_CLASSES, (2, 33, 47), generator=gen)).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.cuda
def test_forward_does_not_synchronize_on_cuda(gen):
    """On a GPU no op of the forward waits for the device (the authors' code
    copies each batch to the host for OpenCV's Canny)."""
    net = model().eval().cuda()
    x = image(2, (33, 47), gen).cuda()
    try:
        with torch.no_grad():
            net(x)  # first call: cuDNN and Triton set up
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                net(x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        net.to("cpu")


# --- the image gradient -----------------------------------------------------------------

def test_image_gradient_of_a_step_is_one_thin_line():
    """A vertical step between columns 3 and 4 (and a horizontal one between
    rows 4 and 5): Canny's one-pixel line, on the column (row) before the
    step, at the map's maximum 1; zero elsewhere."""
    edges = ImageGradient()
    vertical = torch.zeros(2, 3, 7, 9)
    vertical[..., 4:] = 2.0
    expected = torch.zeros(2, 1, 7, 9)
    expected[..., 3] = 1.0
    torch.testing.assert_close(edges(vertical), expected)
    horizontal = torch.zeros(1, 3, 10, 6)
    horizontal[..., 5:, :] = -1.0
    expected = torch.zeros(1, 1, 10, 6)
    expected[..., 4, :] = 1.0
    torch.testing.assert_close(edges(horizontal), expected)


def test_image_gradient_in_unit_range_without_gradient(gen):
    x = image(2, (13, 10), gen).requires_grad_()
    edges = ImageGradient()(x)
    assert edges.shape == (2, 1, 13, 10) and not edges.requires_grad
    assert edges.min() >= 0 and torch.allclose(edges.amax(dim=(-2, -1)), torch.ones(2, 1))
    assert (ImageGradient()(torch.full((1, 3, 5, 4), 0.3)) == 0).all()  # a flat image has no edges


def test_image_gradient_follows_the_input_dtype(gen):
    x = image(1, (9, 12), gen)
    edges = ImageGradient()
    half = edges(x.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - edges(x)).abs().max() < 0.1


# --- the loss --------------------------------------------------------------------------------

def test_semantic_boundaries_by_hand():
    target = torch.tensor([[[0, 0, 1],
                            [0, 2, 1]]])
    assert semantic_boundaries(target).tolist() == [[[False, True, True], [True, True, True]]]
    # Class 2 ignored: no boundary between it and its neighbours.
    assert semantic_boundaries(target, ignore_index=2).tolist() == [[[False, True, True], [False, False, False]]]


def test_balanced_binary_cross_entropy_by_hand():
    # One boundary pixel of three: beta = 2/3 on it, 1/3 on the others.
    logits = torch.tensor([0.0, 0.0, math.log(3)], dtype=torch.float64).view(1, 1, 1, 3)
    edges = torch.tensor([[[True, False, False]]])
    # -log sigmoid(0) = log 2; -log(1 - sigmoid(0)) = log 2; -log(1 - sigmoid(ln 3)) = log 4.
    expected = (2 / 3 * math.log(2) + 1 / 3 * math.log(2) + 1 / 3 * math.log(4)) / 3
    torch.testing.assert_close(balanced_binary_cross_entropy(logits, edges), torch.tensor(expected,
                                                                                          dtype=torch.float64))
    valid = torch.tensor([[[True, True, False]]])  # the last pixel left out: beta = 1/2 over two pixels
    torch.testing.assert_close(balanced_binary_cross_entropy(logits, edges, valid),
                               torch.tensor((0.5 * math.log(2) + 0.5 * math.log(2)) / 2, dtype=torch.float64))


def test_boundary_magnitude_by_hand():
    """One-hot maps: 1 before each change of class along a row or column,
    sqrt(2) where it changes both ways; probabilities: |delta p| for two classes."""
    labels = torch.tensor([[[0, 0, 1],
                            [0, 2, 1]]])
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).double()
    expected = torch.tensor([[[0.0, math.sqrt(2), 0.0],
                              [1.0, 1.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(boundary_magnitude(one_hot), expected)
    probabilities = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.75, 0.75]], dtype=torch.float64).view(1, 2, 1, 3)
    torch.testing.assert_close(boundary_magnitude(probabilities),
                               torch.tensor([[[0.25, 0.0, 0.0]]], dtype=torch.float64))


def _three_pixels(edge_logits=(3.0, 0.0, 0.0)):
    """Two classes, pixels 0 | 1 1: logits give p(class 1) = 1/2, 3/4, 3/4."""
    out = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(3), math.log(3)]], dtype=torch.float64).view(1, 2, 1, 3)
    edge = torch.tensor(edge_logits, dtype=torch.float64).view(1, 1, 1, 3)
    return {"out": out, "edge": edge}, torch.tensor([[[0, 1, 1]]])


def test_gated_scnn_loss_by_hand():
    """Each term on three pixels, then their sum with the paper's weights.

    Boundaries: pixels 0 and 1 (beta = 1/3 for them, 2/3 for pixel 2).
    CE: log 2, log(4/3), log(4/3). zeta of the target: 1, 0, 0; of the
    prediction: |3/4 - 1/2| = 1/4, 0, 0. Only pixel 0's edge logit (3)
    passes sigmoid > 0.8."""
    outputs, target = _three_pixels()
    log2, log43 = math.log(2), math.log(4 / 3)
    expected = {
        "edge": (1 / 3 * math.log1p(math.exp(-3)) + 1 / 3 * log2 + 2 / 3 * log2) / 3,
        "out": (log2 + 2 * log43) / 3,
        "boundary": abs(0.25 - 1) / 3,
        "edge_consistency": log2,
    }
    alone = {name: {other: 0.0 for other in GATED_SCNN_WEIGHTS} | {name: 1.0} for name in GATED_SCNN_WEIGHTS}
    for name, value in expected.items():
        torch.testing.assert_close(gated_scnn_loss(outputs, target, weights=alone[name]),
                                   torch.tensor(value, dtype=torch.float64), msg=name)
    total = sum(GATED_SCNN_WEIGHTS[name] * value for name, value in expected.items())
    torch.testing.assert_close(gated_scnn_loss(outputs, target), torch.tensor(total, dtype=torch.float64))
    assert GATED_SCNN_WEIGHTS == {"edge": 20.0, "out": 1.0, "boundary": 1.0, "edge_consistency": 1.0}


def test_temperature_and_threshold():
    outputs, target = _three_pixels()
    # Temperature 2: p(class 1) at pixel 1 is sqrt(3) / (1 + sqrt(3)); zeta at pixel 0 the step from 1/2.
    step = math.sqrt(3) / (1 + math.sqrt(3)) - 0.5
    weights = {"edge": 0.0, "out": 0.0, "boundary": 1.0, "edge_consistency": 0.0}
    torch.testing.assert_close(gated_scnn_loss(outputs, target, weights=weights, temperature=2.0),
                               torch.tensor((1 - step) / 3, dtype=torch.float64))
    # No edge logit above the threshold: the term is 0, not 0/0.
    weights = {"edge": 0.0, "out": 0.0, "boundary": 0.0, "edge_consistency": 1.0}
    assert gated_scnn_loss(outputs, target, weights=weights, edge_threshold=0.99).item() == 0.0
    # Threshold 0.4: every pixel (sigmoid(0) = 1/2) counts, so the term is the CE.
    torch.testing.assert_close(gated_scnn_loss(outputs, target, weights=weights, edge_threshold=0.4),
                               F.cross_entropy(outputs["out"], target))


def test_segmentation_term_is_cross_entropy_and_ignored_pixels_have_no_gradient(gen):
    out = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    edge = torch.randn(2, 1, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 7), generator=gen)
    target[0, 2, 3] = 255
    only_ce = {"edge": 0.0, "out": 1.0, "boundary": 0.0, "edge_consistency": 0.0}
    torch.testing.assert_close(gated_scnn_loss({"out": out, "edge": edge}, target, weights=only_ce, ignore_index=255),
                               F.cross_entropy(out, target, ignore_index=255))
    gated_scnn_loss({"out": out, "edge": edge}, target, ignore_index=255).backward()
    assert (out.grad[0, :, 2, 3] == 0).all() and edge.grad[0, 0, 2, 3] == 0
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0 and edge.grad.abs().sum() > 0


# --- bad arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, argument", [
    ({"num_classes": 0}, ValueError, "num_classes"),
    ({"num_classes": 2.0}, TypeError, "num_classes"),
    ({"backbone": "mobilenet_v2"}, ValueError, "backbone"),
    ({"backbone": "xception65"}, ValueError, "backbone"),
], ids=["num_classes-0", "num_classes-float", "backbone-mobilenet_v2", "backbone-xception65"])
def test_bad_builder_argument_is_named(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        gated_scnn(**kwargs)


def _bad_loss_calls():
    outputs, target = _three_pixels()
    return [
        ("no edge", lambda: gated_scnn_loss({"out": outputs["out"]}, target), TypeError, "outputs"),
        ("edge shape", lambda: gated_scnn_loss({**outputs, "edge": outputs["edge"].expand(1, 2, 1, 3)}, target),
         ValueError, r"outputs\['edge'\]"),
        ("target dtype", lambda: gated_scnn_loss(outputs, target.float()), TypeError, "target"),
        ("target shape", lambda: gated_scnn_loss(outputs, target[..., :2]), ValueError, "target"),
        ("unknown weight", lambda: gated_scnn_loss(outputs, target, weights={"aux": 0.4}), ValueError, "weights"),
        ("weight type", lambda: gated_scnn_loss(outputs, target, weights={"edge": "20"}), TypeError, "weights"),
        ("temperature", lambda: gated_scnn_loss(outputs, target, temperature=0), ValueError, "temperature"),
        ("edge_threshold", lambda: gated_scnn_loss(outputs, target, edge_threshold=1.5), ValueError,
         "edge_threshold"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_loss_calls())), ids=[c[0] for c in _bad_loss_calls()])
def test_bad_loss_argument_is_named(case):
    _, call, error, argument = _bad_loss_calls()[case]
    with pytest.raises(error, match=argument):
        call()
