"""fastseg.ops.conv2d / Conv2d against PyTorch's F.conv2d run in float64,
on every backend.

The Triton kernels (dense implicit GEMM for groups=1, direct depthwise for
groups=in_channels with any channel multiplier) accumulate in float32; each
result must stay within twice the error PyTorch's own conv makes in the same
dtype (conv_helpers). Awkward cases: odd sizes, channel counts that are not
multiples of 8 or that span several tiles, 1x1 to 7x7 and non-square
kernels, stride 2, dilation up to rates where most taps, or all but the
centre, land in the padding, and NCHW, channels_last, permuted and strided
inputs.
"""

import copy
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastseg
from conv_helpers import (CONV_BACKENDS, LAYOUTS, ConvCase, FastsegOps, ambiguous_layout, assert_close_to_truth,
                          assert_compiled_matches_eager, assert_layout, check_against_truth, dtype_id, float64_copies,
                          make_conv, make_input, on_devices, random_tensor, randomize, relayout)
from fastseg import BackendUnavailable
from fastseg._conv_geometry import ConvGeometry
from fastseg.ops import Conv2d, ConvPath, conv2d, conv2d_path

BACKENDS = on_devices(CONV_BACKENDS)
# PyTorch's float64 CPU conv of these tiny tensors (the ground truth) takes
# milliseconds with several threads on a busy machine, microseconds with one.
pytestmark = pytest.mark.usefixtures("single_thread")
DW = None  # ConvCase(groups=DW): depthwise

# --- cases -------------------------------------------------------------------------

MINIMAL = ConvCase((1, 1, 1, 1), 1, 1)
K3_SAME = ConvCase((2, 5, 9, 11), 7, 3, padding=1)
K1_S2 = ConvCase((2, 5, 9, 11), 6, 1, stride=2)
K5_S2 = ConvCase((1, 3, 8, 7), 5, 5, stride=2, padding=2)
K7_SAME = ConvCase((1, 3, 8, 8), 4, 7, padding=3)
ASYMMETRIC = ConvCase((2, 6, 7, 9), 10, (3, 5), stride=(2, 1), padding=(1, 2))
DILATED_2 = ConvCase((2, 4, 10, 9), 7, 3, padding=2, dilation=2)
STRIDED_DILATED = ConvCase((1, 4, 11, 10), 5, 3, stride=2, padding=3, dilation=3)
# ASPP-like rate 6 on a 7x9 map: most taps of most pixels read padding.
RATE_6 = ConvCase((1, 4, 7, 9), 6, 3, padding=6, dilation=6)
# Rate 8 on a 5x6 map: every off-centre tap reads padding only.
RATE_OVER_MAP = ConvCase((1, 3, 5, 6), 4, 3, padding=8, dilation=8)
# More channels than one tile holds (16 under the interpreter) on both sides.
WIDE = ConvCase((1, 18, 5, 5), 17, 3, padding=1)
# Every output pixel reads padding only: the output is the bias.
PADDING_ONLY = ConvCase((1, 2, 1, 1), 3, 1, stride=3, padding=2)

DW_K3 = ConvCase((2, 6, 9, 11), 6, 3, padding=1, groups=DW)
DW_M2_K5_S2 = ConvCase((1, 5, 8, 9), 10, 5, stride=2, padding=2, groups=DW)
DW_M3_K7 = ConvCase((1, 4, 7, 8), 12, 7, padding=3, groups=DW)
DW_ASYMMETRIC = ConvCase((2, 3, 9, 8), 6, (3, 5), padding=(2, 2), dilation=(2, 1), groups=DW)
DW_RATE_6 = ConvCase((1, 4, 7, 9), 4, 3, padding=6, dilation=6, groups=DW)
DW_RATE_OVER_MAP = ConvCase((1, 3, 5, 6), 6, 3, padding=8, dilation=8, groups=DW)

CASES = [MINIMAL, K3_SAME, K1_S2, K5_S2, K7_SAME, ASYMMETRIC, DILATED_2, STRIDED_DILATED, RATE_6, RATE_OVER_MAP, WIDE,
         PADDING_ONLY, DW_K3, DW_M2_K5_S2, DW_M3_K7, DW_ASYMMETRIC, DW_RATE_6, DW_RATE_OVER_MAP]

# Small cases for the backward, which runs three kernels per call.
G_K3_S2 = ConvCase((1, 3, 7, 8), 4, 3, stride=2, padding=1)
G_DILATED = ConvCase((2, 3, 7, 6), 5, 3, padding=2, dilation=2)
G_ASYMMETRIC = ConvCase((1, 4, 6, 7), 3, (3, 5), stride=(1, 2), padding=(2, 1), dilation=(1, 2))
G_DW_S2_D2 = ConvCase((2, 5, 7, 8), 5, 3, stride=2, padding=2, dilation=2, groups=DW)
G_DW_M2 = ConvCase((1, 3, 6, 7), 6, 5, padding=2, groups=DW)
GRAD_CASES = [G_K3_S2, G_DILATED, G_ASYMMETRIC, RATE_OVER_MAP, WIDE, G_DW_S2_D2, G_DW_M2, DW_RATE_OVER_MAP]


def check_conv(case: ConvCase, backend: str, *, dtype=torch.float32, layout="nchw", device="cpu", bias=True,
               grads=False, gen) -> None:
    """conv2d of a random ``case`` against F.conv2d in float64 (and its
    gradients with ``grads``); output laid out like the input; input unchanged."""
    x, weight, b = make_conv(case, dtype=dtype, layout=layout, device=device, bias=bias, gen=gen)
    before = x.clone()
    grad_output = None
    if grads:
        for t in (x, weight, b):
            if t is not None:
                t.requires_grad_()
        out_shape = F.conv2d(x.detach(), weight.detach(), None, **case.conv_args).shape
        grad_output = relayout(random_tensor(out_shape, dtype, gen).to(device), layout)

    def op(x_, w_, b_):
        return conv2d(x_, w_, b_, **case.conv_args, backend=backend)

    def reference(x_, w_, b_):
        return F.conv2d(x_, w_, b_, **case.conv_args)

    out, grads_ = check_against_truth(op, reference, (x, weight, b), grad_output=grad_output,
                                      names=["input", "weight", "bias"])
    if backend != "reference" or not ambiguous_layout(x):
        assert_layout(out, x)
        if grads:
            assert_layout(grads_[0], x)
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_float64_truth(device, backend, case, layout, gen):
    check_conv(case, backend, layout=layout, device=device, gen=gen)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", [K3_SAME, ASYMMETRIC, RATE_6, WIDE, DW_K3, DW_M2_K5_S2], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_half_precision_within_pytorchs_error(device, backend, case, dtype, layout, gen):
    check_conv(case, backend, dtype=dtype, layout=layout, device=device, gen=gen)


@pytest.mark.parametrize("case", [K3_SAME, DW_M2_K5_S2], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_without_bias(device, backend, case, gen):
    check_conv(case, backend, bias=False, device=device, gen=gen)


def test_padding_only_output_is_the_bias(device, gen):
    """Every tap of every output pixel reads padding: the kernel must write
    the bias (and zeros without one), never leave memory unwritten."""
    x, weight, b = make_conv(PADDING_ONLY, device=device, gen=gen)
    out = conv2d(x, weight, b, **PADDING_ONLY.conv_args, backend="triton")
    assert torch.equal(out, b.view(1, -1, 1, 1).expand_as(out))
    out = conv2d(x, weight, None, **PADDING_ONLY.conv_args, backend="triton")
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("case", [K3_SAME, DW_M2_K5_S2], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_unbatched_input(device, backend, case, gen):
    x, weight, b = make_conv(case, device=device, gen=gen)
    x = x[0]
    out = conv2d(x, weight, b, **case.conv_args, backend=backend)
    assert out.dim() == 3
    assert_close_to_truth(out, F.conv2d(*float64_copies(x, weight, b), **case.conv_args))


@pytest.mark.parametrize("case", [K3_SAME, DW_M2_K5_S2], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_empty_batch(device, backend, case, gen):
    x, weight, b = make_conv(case, device=device, gen=gen)
    x = x[:0].clone().requires_grad_()
    weight.requires_grad_()
    b.requires_grad_()
    out = conv2d(x, weight, b, **case.conv_args, backend=backend)
    assert out.shape == F.conv2d(x.detach(), weight.detach(), None, **case.conv_args).shape
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("padding, kernel, dilation", [
    ("same", (2, 4), (1, 2)),  # odd total padding: PyTorch puts the extra row/column after
    ("same", 3, 2),
    ("valid", (3, 2), 1),
], ids=["same-k2x4-d1x2", "same-k3-d2", "valid-k3x2"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_string_padding(device, backend, padding, kernel, dilation, gen):
    case = ConvCase((1, 3, 7, 8), 4, kernel, padding=padding, dilation=dilation)
    check_conv(case, backend, device=device, grads=True, gen=gen)


# --- gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradients_match_float64_truth(device, backend, case, layout, gen):
    """Input, weight and bias gradients (three custom ops) in float32 against
    autograd through F.conv2d in float64; the upstream gradient is laid out
    like the input, so dy's strides vary too."""
    check_conv(case, backend, layout=layout, device=device, grads=True, gen=gen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", [G_K3_S2, G_DW_S2_D2], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradients_in_half_precision(device, backend, case, dtype, gen):
    check_conv(case, backend, dtype=dtype, device=device, grads=True, gen=gen)


GRAD_OPS = {"input": ["fastseg::conv2d_input_grad"], "weight": ["fastseg::conv2d_weight_grad"], "bias": []}


@pytest.mark.parametrize("needs", ["input", "weight", "bias", "weight+bias"])
@pytest.mark.parametrize("case", [G_K3_S2, G_DW_M2], ids=str)
def test_gradients_of_a_subset(device, case, needs, gen):
    """Only the gradient ops of the inputs that require grad run, and their
    results are right."""
    x, weight, b = make_conv(case, device=device, gen=gen)
    wanted = dict(zip(("input", "weight", "bias"), (x, weight, b)))
    for name in needs.split("+"):
        wanted[name].requires_grad_()
    out_shape = F.conv2d(x, weight, None, **case.conv_args).shape
    grad_output = random_tensor(out_shape, torch.float32, gen).to(device)

    def op(*t):
        return conv2d(*t, **case.conv_args, backend="triton")

    out = op(x, weight, b)
    with FastsegOps() as backward:
        torch.autograd.grad(out, [t for t in (x, weight, b) if t.requires_grad], grad_output)
    assert sorted(backward.names) == sorted(sum((GRAD_OPS[name] for name in needs.split("+")), []))
    check_against_truth(op, lambda *t: F.conv2d(*t, **case.conv_args), (x, weight, b), grad_output=grad_output,
                        names=["input", "weight", "bias"])


@pytest.mark.parametrize("case", [G_K3_S2, G_DW_S2_D2], ids=str)
def test_weight_gradient_is_deterministic(device, case, gen):
    """The weight gradients sum per-slice partials, not atomics: two runs
    give the same bits."""
    x, weight, _ = make_conv(case, device=device, gen=gen)
    weight.requires_grad_()
    grads = [torch.autograd.grad(conv2d(x, weight, None, **case.conv_args, backend="triton").sum(), weight)[0]
             for _ in range(2)]
    assert torch.equal(*grads)


def test_gradcheck_reference_with_odd_same_padding(gen):
    """float64 runs PyTorch's conv; what fastseg adds there is the odd
    'same' padding row/column, which must be differentiable as PyTorch's."""
    case = ConvCase((1, 2, 4, 5), 3, (2, 4), padding="same", dilation=(1, 2))
    x, weight, b = (t.double().requires_grad_() for t in make_conv(case, gen=gen))
    assert torch.autograd.gradcheck(lambda *t: conv2d(*t, **case.conv_args), (x, weight, b))


# --- the module -----------------------------------------------------------------------

MODULE_ARGS = [
    pytest.param(dict(stride=2, padding=1), id="zeros-s2"),
    pytest.param(dict(padding=2, dilation=2, bias=False), id="zeros-d2-nobias"),
    pytest.param(dict(padding="same", dilation=2), id="zeros-same-d2"),
    pytest.param(dict(padding=(1, 2), padding_mode="reflect"), id="reflect"),
    pytest.param(dict(padding=2, dilation=2, padding_mode="replicate"), id="replicate-d2"),
    pytest.param(dict(stride=2, padding=1, padding_mode="circular"), id="circular-s2"),
    pytest.param(dict(padding="same", padding_mode="reflect"), id="reflect-same"),
    pytest.param(dict(padding=1, groups=4, out_channels=8), id="depthwise-m2"),
]


@pytest.mark.parametrize("args", MODULE_ARGS)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_module_is_a_drop_in_for_nn(device, backend, args, gen):
    args = dict(in_channels=4, out_channels=5, kernel_size=3) | args
    theirs = nn.Conv2d(**args).to(device)
    randomize(theirs, gen)
    ours = Conv2d(**args, device=device, backend=backend)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = make_input((2, 4, 7, 9), device=device, gen=gen)
    out = ours(x)
    expected = copy.deepcopy(theirs).double()(x.double())
    assert_close_to_truth(out, expected, theirs(x))
    assert ours.path(x).backend == backend

    # ... and back: a trained fastseg layer loads into torch.nn.
    with torch.no_grad():
        ours.weight.mul_(-2.0)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(theirs.weight, ours.weight)


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_module_gradients(device, backend, gen):
    args = dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1, padding_mode="reflect")
    ours = Conv2d(**args, device=device, backend=backend)
    randomize(ours, gen)
    theirs = nn.Conv2d(**args).to(device).double()
    theirs.load_state_dict(ours.state_dict())
    x = make_input((1, 3, 7, 8), device=device, gen=gen).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    ours(x).square().sum().backward()
    theirs(x64).square().sum().backward()
    assert_close_to_truth(x.grad, x64.grad, name="input gradient")
    assert_close_to_truth(ours.weight.grad, theirs.weight.grad, name="weight gradient")
    assert_close_to_truth(ours.bias.grad, theirs.bias.grad, name="bias gradient")


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_channels_last_model(device, backend, gen):
    """``model.to(memory_format=torch.channels_last)`` makes a dense conv's
    weight channels_last too; the kernels read it through its strides."""
    case = K3_SAME
    ours = Conv2d(case.in_channels, case.out_channels, case.kernel, **case.conv_args, device=device,
                  backend=backend)
    randomize(ours, gen)
    ours.to(memory_format=torch.channels_last)
    assert not ours.weight.is_contiguous()
    x = make_input(case.shape, layout="channels_last", device=device, gen=gen)
    out = ours(x)
    expected = F.conv2d(*float64_copies(x, ours.weight, ours.bias), **case.conv_args)
    assert_close_to_truth(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", [ASYMMETRIC, DW_ASYMMETRIC], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_transposed_weight(device, backend, case, gen):
    """A weight whose kernel taps are stored column-major (a transposed view)."""
    x, weight, b = make_conv(case, device=device, gen=gen)
    weight = weight.transpose(2, 3).contiguous().transpose(2, 3)
    assert not weight.is_contiguous()
    x.requires_grad_()
    weight.requires_grad_()
    grad_output = random_tensor(F.conv2d(x, weight, b, **case.conv_args).shape, x.dtype, gen).to(device)
    check_against_truth(lambda *t: conv2d(*t, **case.conv_args, backend=backend),
                        lambda *t: F.conv2d(*t, **case.conv_args), (x, weight, b), grad_output=grad_output,
                        names=["input", "weight", "bias"])


# --- which backend runs -------------------------------------------------------------

@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("FASTSEG_BACKEND", raising=False)


def test_cpu_default_is_pytorchs_conv(no_backend_env, gen, monkeypatch):
    x, weight, b = make_conv(K3_SAME, gen=gen)
    path = conv2d_path(x, weight)
    assert path == ConvPath("reference", "PyTorch's conv: the default for cpu tensors")
    assert fastseg.backends()["ops"]["conv2d"]["default"]["cpu"] == "reference"
    calls, real = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(a) or real(*a, **k))
    conv2d(x, weight, b, padding=1)
    assert calls, "backend=None on CPU tensors did not run PyTorch's conv"


@pytest.mark.parametrize("case, kind", [(K3_SAME, "implicit GEMM"), (DW_M2_K5_S2, "depthwise")], ids=str)
def test_path_names_the_triton_kernel(case, kind, gen):
    x, weight, _ = make_conv(case, gen=gen)
    assert conv2d_path(x, weight, case.group_count, backend="triton") == ConvPath("triton", f"Triton {kind} kernel")
    module = Conv2d(case.in_channels, case.out_channels, case.kernel, **case.conv_args, backend="triton")
    assert module.path(x) == ConvPath("triton", f"Triton {kind} kernel")


def test_env_var_picks_triton_and_explains_gaps(monkeypatch, gen):
    monkeypatch.setenv("FASTSEG_BACKEND", "triton")
    x, weight, b = make_conv(K3_SAME, gen=gen)
    assert conv2d_path(x, weight).backend == "triton"
    assert_close_to_truth(conv2d(x, weight, b, padding=1), F.conv2d(*float64_copies(x, weight, b), padding=1))
    with pytest.raises(BackendUnavailable, match=r"asked for by FASTSEG_BACKEND.*dtype float64"):
        conv2d(x.double(), weight.double())


def test_grouped_conv_outside_the_kernels(no_backend_env, gen):
    """groups=2 of 4 channels is neither dense nor depthwise: the default
    runs PyTorch's conv; asking for Triton says why it cannot."""
    case = ConvCase((1, 4, 6, 7), 6, 3, padding=1, groups=2)
    x, weight, b = make_conv(case, gen=gen)
    out = conv2d(x, weight, b, **case.conv_args)
    assert_close_to_truth(out, F.conv2d(*float64_copies(x, weight, b), **case.conv_args))
    assert conv2d_path(x, weight, 2).backend == "reference"
    for call in (lambda: conv2d(x, weight, b, **case.conv_args, backend="triton"),
                 lambda: conv2d_path(x, weight, 2, backend="triton")):
        with pytest.raises(BackendUnavailable, match=r"groups=2 is neither 1 nor in_channels"):
            call()


def test_float64_runs_pytorchs_conv_by_default(no_backend_env, gen):
    x, weight, b = (t.double() for t in make_conv(K3_SAME, gen=gen))
    assert torch.equal(conv2d(x, weight, b, padding=1), F.conv2d(x, weight, b, padding=1))
    module = Conv2d(5, 7, 3, padding=1, dtype=torch.float64, backend="triton")
    with pytest.raises(BackendUnavailable, match=r"dtype float64"):
        module(x)
    with pytest.raises(BackendUnavailable, match=r"dtype float64"):
        module.path(x)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, groups, backend, reason", [
    (torch.float32, 1, "triton", r"Triton implicit GEMM kernel"),
    (torch.float16, 4, "triton", r"Triton depthwise kernel"),
    (torch.float64, 1, "reference", r"outside the Triton kernels: dtype float64"),
    (torch.float32, 2, "reference", r"outside the Triton kernels: groups=2"),
], ids=["dense", "depthwise", "float64", "grouped"])
def test_cuda_default_path(no_backend_env, dtype, groups, backend, reason):
    x = torch.zeros((1, 4, 6, 6), device="cuda", dtype=dtype)
    weight = torch.zeros((4, 4 // groups, 3, 3), device="cuda", dtype=dtype)
    path = conv2d_path(x, weight, groups)
    assert path.backend == backend
    assert re.search(reason, path.reason), path.reason


# --- validation -------------------------------------------------------------------------

def _x(shape=(1, 4, 6, 6), dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


def _w(shape=(3, 4, 3, 3), dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


ERRORS = [
    pytest.param(dict(input=_x((6, 6))), ValueError, r"input must be 3-D or 4-D", id="input-rank-2"),
    pytest.param(dict(input=_x((1, 1, 4, 6, 6))), ValueError, r"input must be 3-D or 4-D", id="input-rank-5"),
    pytest.param(dict(weight=_w((3, 4, 3))), ValueError, r"weight must be 4-D", id="weight-rank-3"),
    pytest.param(dict(input=[[0.0]]), TypeError, r"input must be a torch.Tensor", id="input-list"),
    pytest.param(dict(input=_x().int(), weight=_w().int()), TypeError, r"input must have dtype .*got int32",
                 id="input-int"),
    pytest.param(dict(weight=_w(dtype=torch.float16)), TypeError, r"weight must have dtype float32; got float16",
                 id="weight-dtype-mismatch"),
    pytest.param(dict(bias=torch.zeros(3, dtype=torch.float64)), TypeError,
                 r"bias must have dtype float32; got float64", id="bias-dtype-mismatch"),
    pytest.param(dict(weight=_w((3, 5, 3, 3))), ValueError, r"input must have 5 channels .*got shape \(1, 4, 6, 6\)",
                 id="channels-mismatch"),
    pytest.param(dict(bias=torch.zeros(4)), ValueError, r"bias must have 3 elements, got shape \(4,\)",
                 id="bias-length"),
    pytest.param(dict(bias=torch.zeros(3, 1)), ValueError, r"bias must be 1-D", id="bias-rank"),
    pytest.param(dict(weight=_w((3, 2, 3, 3)), groups=2), ValueError,
                 r"weight must have a non-zero number of output channels divisible by groups=2",
                 id="groups-not-dividing-output-channels"),
    pytest.param(dict(weight=_w((3, 1, 3, 3)), groups=3), ValueError,
                 r"input must have 3 channels \(weight has 1 per group, groups=3\)", id="groups-not-dividing-input"),
    pytest.param(dict(groups=0), ValueError, r"groups must be a positive int", id="groups-0"),
    pytest.param(dict(weight=_w((0, 4, 3, 3))), ValueError, r"weight must have a non-zero number of output channels",
                 id="no-output-channels"),
    pytest.param(dict(dilation=3), ValueError,
                 r"input of spatial size \(6, 6\) with padding \(0, 0\) is smaller than the dilated kernel",
                 id="input-smaller-than-dilated-kernel"),
    pytest.param(dict(weight=_w((3, 4, 7, 3))), ValueError, r"input of spatial size \(6, 6\) .* smaller",
                 id="input-smaller-than-kernel"),
    pytest.param(dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1", id="same-stride-2"),
    pytest.param(dict(padding="full"), ValueError, r"padding must be 'valid', 'same', an int or a pair",
                 id="padding-unknown-string"),
    pytest.param(dict(padding=-1), ValueError, r"padding must be >= 0", id="padding-negative"),
    pytest.param(dict(stride=0), ValueError, r"stride must be >= 1", id="stride-0"),
    pytest.param(dict(stride=1.5), TypeError, r"stride must be an int or a pair", id="stride-float"),
    pytest.param(dict(dilation=(1, 2, 3)), TypeError, r"dilation must be an int or a pair", id="dilation-3-tuple"),
    pytest.param(dict(dilation=0), ValueError, r"dilation must be >= 1", id="dilation-0"),
]


@pytest.mark.parametrize("kwargs, error, match", ERRORS)
@pytest.mark.parametrize("backend", [None, *CONV_BACKENDS["cpu"]])
def test_invalid_arguments_raise_naming_them(backend, kwargs, error, match):
    args = dict(input=_x(), weight=_w(), bias=None) | kwargs
    with pytest.raises(error, match=match):
        conv2d(**args, backend=backend)


@pytest.mark.parametrize("backend, error, match", [
    ("fast", ValueError, r"backend must be one of \('triton', 'cuda', 'cpp', 'reference'\) or None, got 'fast'"),
    ("cpp", BackendUnavailable, r"conv2d has no 'cpp' backend"),
    ("cuda", BackendUnavailable, r"conv2d has no 'cuda' backend"),
])
def test_unknown_or_missing_backend_raises(backend, error, match):
    with pytest.raises(error, match=match):
        conv2d(_x(), _w(), backend=backend)
    with pytest.raises(error, match=match):
        conv2d_path(_x(), _w(), backend=backend)


def test_explicit_triton_on_float64_raises_naming_the_dtype():
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' .* does not cover this call: dtype float64"):
        conv2d(_x(dtype=torch.float64), _w(dtype=torch.float64), backend="triton")


@pytest.mark.cuda
def test_tensors_on_different_devices_raise():
    with pytest.raises(ValueError, match=r"all tensors must be on one device"):
        conv2d(_x().cuda(), _w())


# --- live taps ----------------------------------------------------------------------------

def _geometry(kernel, stride=1, padding=0, dilation=1) -> ConvGeometry:
    return ConvGeometry.from_args(kernel, stride, padding, dilation)[0]


@pytest.mark.parametrize("kernel, padding, dilation, hw", [
    ((3, 3), 1, 1, (9, 11)),
    ((7, 7), 3, 1, (8, 8)),
    ((3, 5), (2, 4), 2, (5, 6)),
    ((3, 3), 6, 6, (7, 9)),  # rate 6 on 7x9: every tap reads the map for some pixel
])
def test_live_taps_all_live_for_small_rates(kernel, padding, dilation, hw):
    assert _geometry(kernel, 1, padding, dilation).live_taps(hw) == ((0, kernel[0]), (0, kernel[1]))


@pytest.mark.parametrize("kernel, rate, hw", [((3, 3), 8, (5, 6)), ((3, 3), 24, (16, 16)), ((7, 7), 12, (10, 11)),
                                              ((5, 3), 6, (6, 5))])
def test_live_taps_only_centre_when_rate_exceeds_map(kernel, rate, hw):
    centre = tuple((k // 2, k // 2 + 1) for k in kernel)
    assert _geometry(kernel, 1, tuple(rate * (k // 2) for k in kernel), rate).live_taps(hw) == centre


def _reads_input(size, k, s, p, d, r) -> bool:
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    return any(0 <= o * s - p + r * d < size for o in range(out))


def test_live_taps_cover_every_tap_that_reads_the_input():
    """Against a brute-force scan, per axis, over small geometries: every
    tap that reads an input pixel for some output pixel lies in the range
    (the kernels skip the others); with stride 1 the range is exactly those
    taps. (With larger strides it may keep a tap whose reads all step over
    the map: still correct, as every load is masked.)"""
    checked = 0
    for size, k, s, p, d in itertools.product(range(1, 8), range(1, 6), range(1, 4), range(0, 7), range(1, 5)):
        if size + 2 * p < d * (k - 1) + 1:
            continue
        (lo, hi), _ = _geometry((k, 1), s, (p, 0), (d, 1)).live_taps((size, 1))
        reading = [r for r in range(k) if _reads_input(size, k, s, p, d, r)]
        assert all(lo <= r < hi for r in reading), (size, k, s, p, d, (lo, hi), reading)
        if s == 1:
            assert list(range(lo, hi)) == reading, (size, k, s, p, d, (lo, hi), reading)
        checked += 1
    assert checked > 1000


# --- torch.library registration, torch.compile ------------------------------------------

OPCHECK_CASES = [ConvCase((1, 3, 5, 6), 4, 3, stride=2, padding=1, dilation=1),
                 ConvCase((1, 3, 5, 6), 6, 3, padding=2, dilation=2, groups=DW)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck(device, case, layout, gen):
    """Schema, fake (shapes and strides), autograd registration and AOT
    dispatch of fastseg::conv2d and its two gradient ops."""
    x, weight, b = make_conv(case, layout=layout, device=device, gen=gen)
    geometry = ([case.stride] * 2, [case.padding] * 2, [case.dilation] * 2, case.group_count)
    torch.library.opcheck(torch.ops.fastseg.conv2d.default,
                          (x.requires_grad_(), weight.requires_grad_(), b.requires_grad_(), *geometry))
    x, weight = x.detach(), weight.detach()
    out = torch.ops.fastseg.conv2d(x, weight, None, *geometry)
    grad_y = relayout(random_tensor(out.shape, x.dtype, gen).to(device), layout)
    torch.library.opcheck(torch.ops.fastseg.conv2d_input_grad.default, (grad_y, weight, x, *geometry))
    torch.library.opcheck(torch.ops.fastseg.conv2d_weight_grad.default, (grad_y, x, list(weight.shape), *geometry))


@pytest.mark.parametrize("case", [G_K3_S2, G_DW_S2_D2], ids=str)
def test_compile_fullgraph_matches_eager(case, gen, fresh_dynamo):
    """conv -> relu -> conv under torch.compile (Inductor, CPU) without graph
    breaks; the same kernels run, so forward and gradients equal eager's up
    to the order Inductor sums the bias gradient in."""
    x, weight, b = make_conv(case, gen=gen)
    second = random_tensor((2, case.out_channels, 1, 1), torch.float32, gen).requires_grad_()
    params = (x.requires_grad_(), weight.requires_grad_(), b.requires_grad_(), second)

    def net(x_, w_, b_, w2_):
        mid = torch.relu(conv2d(x_, w_, b_, **case.conv_args, backend="triton"))
        return conv2d(mid, w2_, backend="triton")

    assert_compiled_matches_eager(net, params, grad_atol=1e-6)


def test_export(gen):
    """torch.export keeps fastseg::conv2d as one node; the exported program
    computes what the layer does."""
    model = nn.Sequential(Conv2d(3, 5, 3, stride=2, padding=1, backend="triton"), nn.ReLU(),
                          Conv2d(5, 5, 3, padding=2, dilation=2, groups=5, backend="triton")).eval()
    x = make_input((1, 3, 9, 8), gen=gen)
    program = torch.export.export(model, (x,))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.fastseg.conv2d.default) == 2
    fresh = make_input((1, 3, 9, 8), gen=gen)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(fresh), model(fresh), rtol=0, atol=0)
