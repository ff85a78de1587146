"""The segmentation models of fastseg.models at work: forward and backward
at odd input sizes, batches of 1 and 2, in training (batch statistics,
unfused separable convs) and in eval mode (folded BatchNorms, the fused
separable kernel); outputs at the input's size; the same outputs on the
reference backend, in channels_last, under bf16 autocast and torch.compile.

Models are few and narrow where a builder allows (2 CPU cores): every
architecture once at its cheapest backbone; ``test_every_registered_model_runs``
runs each registered builder's default once. FASTSEG_SLOW_TESTS=1 adds
the Inductor compile (over a minute on 2 cores) and a model on the Triton
interpreter (half a minute): on the CPU the default backend of every layer
is the reference, so only those and the ``cuda`` tests compare backends.
"""

import os

import pytest
import torch

from fastseg.models import create, list_models, set_backend
from model_helpers import BuiltModels, assert_close_relative, assert_reference_backend_matches, image

NUM_CLASSES = 3
slow = pytest.mark.skipif(os.environ.get("FASTSEG_SLOW_TESTS") != "1", reason="slow: set FASTSEG_SLOW_TESTS=1")

# id -> (builder, arguments): each architecture once, on its cheapest backbone.
MODELS = {
    "fcn_resnet50-aux": ("fcn_resnet50", {"aux_loss": True}),
    "deeplabv3_resnet50-aux": ("deeplabv3_resnet50", {"aux_loss": True}),
    "deeplabv2-resnet50": ("deeplabv2", {"backbone": "resnet50"}),
    "deeplabv3-mobilenet_v2-os8": ("deeplabv3", {"backbone": "mobilenet_v2", "width_mult": 0.25, "output_stride": 8}),
    "deeplabv3plus-xception65": ("deeplabv3plus", {"backbone": "xception65"}),
    "deeplabv3plus-mobilenet_v2": ("deeplabv3plus", {"backbone": "mobilenet_v2", "width_mult": 0.25}),
    "pspnet-resnet50-aux": ("pspnet", {"backbone": "resnet50"}),
}
NARROW = "deeplabv3plus-mobilenet_v2"


BUILT = BuiltModels()


def model(model_id: str) -> torch.nn.Module:
    """One instance per id for the whole module; tests set the mode they need."""
    name, kwargs = MODELS[model_id]
    return BUILT.get(model_id, lambda: create(name, num_classes=NUM_CLASSES, **kwargs))


@pytest.fixture(autouse=True)
def _models_as_built():
    """The shared models leave each test on the default backend, without gradients."""
    yield
    BUILT.reset()


def expected_keys(model_id: str) -> set[str]:
    return {"out", "aux"} if model_id.endswith("-aux") else {"out"}


# --- forward and backward -------------------------------------------------------------

# Sizes that are no multiple of any output stride.
@pytest.mark.parametrize("batch, training, size", [(2, True, (33, 47)), (1, False, (17, 22))],
                         ids=["batch2-train-33x47", "batch1-eval-17x22"])
@pytest.mark.parametrize("model_id", MODELS)
def test_forward_backward(model_id, batch, training, size, gen):
    """Logits [N, classes, H, W] at the input's size, finite, and a gradient
    for the input and for every parameter. Batch 1 runs in eval mode: in
    training, BatchNorm after image pooling sees one value per channel and
    PyTorch refuses it, as it does for torchvision's DeepLabV3."""
    net = model(model_id).train(training)
    x = image(batch, size, gen).requires_grad_()
    out = net(x)
    assert set(out) == expected_keys(model_id)
    for key, logits in out.items():
        assert logits.shape == (batch, NUM_CLASSES, *size), key
        assert torch.isfinite(logits).all(), key
    sum(logits.square().mean() for logits in out.values()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"


def test_every_registered_model_runs(gen):
    """Each registered builder with its defaults (ResNet-101 where the paper
    has it, Xception-65 for v3+), in eval mode on one small image: RGB, and
    grey for the U-Nets (the paper's input). The original U-Net's output is
    its valid region, 184 pixels smaller than its input on each axis."""
    for name in list_models():
        unet = name.startswith("unet")
        size = (188 + 16, 188 + 33) if name == "unet" else (17, 22)
        x = image(1, size, gen)[:, :1] if unet else image(1, size, gen)
        torch.manual_seed(0)
        net = create(name, num_classes=NUM_CLASSES).eval()
        with torch.no_grad():
            out = net(x)
        expected = tuple(net.output_size(n) for n in size) if name == "unet" else size
        assert out["out"].shape == (1, NUM_CLASSES, *expected), name


# --- backends, layouts, precision, compile ---------------------------------------------------

@pytest.mark.parametrize("model_id", ["pspnet-resnet50-aux", NARROW])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_reference_backend_matches_default(model_id, device, gen):
    """On the CPU both run PyTorch's ops (no faster CPU conv exists); on a
    GPU the default is the Triton kernels (fused separable conv included)."""
    assert_reference_backend_matches(model(model_id), image(2, (33, 47), gen), device)


@slow
def test_triton_backend_matches_reference(gen):
    """The Triton kernels (CPU interpreter here) through a whole model: the
    narrow DeepLabV3+ in eval mode, where every separable conv is the fused
    kernel, on a small image (the interpreter takes half a minute)."""
    net = model(NARROW).eval()
    x = image(2, (9, 11), gen)
    with torch.no_grad():
        reference = set_backend(net, "reference")(x)["out"]
        triton = set_backend(net, "triton")(x)["out"]
    assert_close_relative(triton, reference, torch.float32, "out")


@pytest.mark.parametrize("model_id", ["deeplabv3_resnet50-aux", NARROW])
def test_channels_last_matches_contiguous(model_id, gen):
    net = model(model_id).eval()
    x = image(2, (33, 47), gen)
    with torch.no_grad():
        expected = net(x)
        net.to(memory_format=torch.channels_last)
        try:
            out = net(x.contiguous(memory_format=torch.channels_last))
        finally:
            net.to(memory_format=torch.contiguous_format)
    for key in expected:
        assert_close_relative(out[key], expected[key], torch.float32, key)


def test_channels_last_trains(gen):
    net = model(NARROW).train().to(memory_format=torch.channels_last)
    try:
        net(image(2, (33, 47), gen, torch.channels_last))["out"].mean().backward()
        assert all(p.grad is not None for p in net.parameters())
    finally:
        net.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("model_id", ["deeplabv3_resnet50-aux", NARROW])
def test_bf16_autocast_on_cpu(model_id, gen):
    """Eval outputs close to float32's; training gives float32 gradients."""
    net = model(model_id).eval()
    x = image(2, (33, 47), gen)
    with torch.no_grad():
        expected = net(x)["out"]
        with torch.autocast("cpu", torch.bfloat16):
            out = net(x)["out"]
    assert out.dtype == torch.bfloat16
    assert_close_relative(out, expected, torch.bfloat16, "out")
    net.train()
    with torch.autocast("cpu", torch.bfloat16):
        loss = sum(logits.float().square().mean() for logits in net(x).values())
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_compile_traces_without_graph_breaks(gen, fresh_dynamo):
    """torch.compile(fullgraph=True) traces the narrow DeepLabV3+ in eval mode
    through the custom ops, the fused separable conv's fake and autograd
    included, with AOT autograd; Inductor's code generation is the slow test's."""
    net = model(NARROW).eval()
    x = image(2, (33, 47), gen)
    out = torch.compile(net, fullgraph=True, backend="aot_eager")(x)["out"]
    assert_close_relative(out, net(x)["out"], torch.float32, "out")
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


@slow
def test_inductor_compile_matches_eager(gen, fresh_dynamo):
    net = model(NARROW).eval()
    x = image(1, (17, 23), gen)
    with torch.no_grad():
        out = torch.compile(net, fullgraph=True)(x)["out"]
        expected = net(x)["out"]
    assert_close_relative(out, expected, torch.float32, "out")
