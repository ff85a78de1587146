"""fastseg.ops.depthwise_separable_conv2d / DepthwiseSeparableConv2d against
the unfused pair of PyTorch convs (with F.relu / F.relu6 between and after
them) run in float64, on every backend.

The Triton forward is one fused kernel (the depthwise result stays in
registers, rounded to the input dtype as the unfused pair stores it); its
backward recomputes that result and runs the conv2d gradient ops. The
module's BatchNorms fold into the fused kernel in eval mode and run
unfused in training; both must equal plain torch.nn layers, whose
state_dict the module shares.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastseg
from conv_helpers import (CONV_BACKENDS, LAYOUTS, ConvCase, FastsegOps, assert_close_to_truth,
                          assert_compiled_matches_eager, assert_layout, check_against_truth, dtype_id, float64_copies,
                          make_input, on_devices, random_tensor, randomize, relayout)
from fastseg import BackendUnavailable
from fastseg.ops import DepthwiseSeparableConv2d, depthwise_separable_conv2d

BACKENDS = on_devices(CONV_BACKENDS)
# PyTorch's float64 CPU conv of these tiny tensors (the ground truth) takes
# milliseconds with several threads on a busy machine, microseconds with one.
pytestmark = pytest.mark.usefixtures("single_thread")
ACTIVATIONS = (None, "relu", "relu6")
TORCH_ACTIVATIONS = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6}

# ConvCase(shape, pointwise out_channels, depthwise kernel, stride, padding, dilation)
K3 = ConvCase((2, 5, 9, 11), 7, 3, padding=1, groups=None)
S2 = ConvCase((1, 6, 8, 9), 4, 3, stride=2, padding=1, groups=None)
D2 = ConvCase((1, 4, 9, 10), 6, 3, padding=2, dilation=2, groups=None)
ASYMMETRIC = ConvCase((1, 3, 7, 9), 5, (3, 5), stride=(1, 2), padding=(1, 2), groups=None)
K5_S2_D2 = ConvCase((2, 3, 11, 10), 4, 5, stride=2, padding=4, dilation=2, groups=None)
RATE_OVER_MAP = ConvCase((1, 3, 5, 6), 4, 3, padding=8, dilation=8, groups=None)
# More channels than one tile holds (16 under the interpreter), in and out.
WIDE = ConvCase((1, 18, 5, 6), 17, 3, padding=1, groups=None)
CASES = [K3, S2, D2, ASYMMETRIC, K5_S2_D2, RATE_OVER_MAP, WIDE]

BIASES = ("both", "none", "depthwise", "pointwise")


def make_separable(case: ConvCase, *, dtype=torch.float32, layout="nchw", device="cpu", biases="both", gen):
    """x, depthwise weight, pointwise weight, depthwise bias, pointwise bias.
    Scaled so the middle and the output are about N(0, 3^2): ReLU6 clamps
    some values at 6 in both places."""
    c_in, (kh, kw) = case.in_channels, case.kernel2
    x = make_input(case.shape, dtype=dtype, layout=layout, device=device, gen=gen)
    wd = random_tensor((c_in, 1, kh, kw), dtype, gen, 3 / (kh * kw) ** 0.5).to(device)
    wp = random_tensor((case.out_channels, c_in, 1, 1), dtype, gen, 3 / c_in ** 0.5).to(device)
    bd = random_tensor((c_in,), dtype, gen).to(device) if biases in ("both", "depthwise") else None
    bp = random_tensor((case.out_channels,), dtype, gen).to(device) if biases in ("both", "pointwise") else None
    return x, wd, wp, bd, bp


def unfused(x, wd, wp, bd, bp, case: ConvCase, mid=None, out=None):
    """The layer as two PyTorch convs: the ground truth (in float64) and
    PyTorch's baseline (in the input's dtype)."""
    m = TORCH_ACTIVATIONS[mid](F.conv2d(x, wd, bd, **case.window_args, groups=x.shape[-3]))
    return TORCH_ACTIVATIONS[out](F.conv2d(m, wp, bp))


def check_separable(case: ConvCase, backend: str, *, mid=None, out=None, dtype=torch.float32, layout="nchw",
                    device="cpu", biases="both", grads=False, gen):
    x, wd, wp, bd, bp = make_separable(case, dtype=dtype, layout=layout, device=device, biases=biases, gen=gen)
    before = x.clone()
    grad_output = None
    if grads:
        for t in (x, wd, wp, bd, bp):
            if t is not None:
                t.requires_grad_()
        shape = unfused(x.detach(), wd.detach(), wp.detach(), None, None, case).shape
        grad_output = relayout(random_tensor(shape, dtype, gen).to(device), layout)

    def op(*t):
        return depthwise_separable_conv2d(*t, **case.window_args, mid_activation=mid, out_activation=out,
                                          backend=backend)

    result, _ = check_against_truth(op, lambda *t: unfused(*t, case, mid, out), (x, wd, wp, bd, bp),
                                    grad_output=grad_output,
                                    names=["input", "depthwise_weight", "pointwise_weight", "depthwise_bias",
                                           "pointwise_bias"])
    assert_layout(result, x)
    assert torch.equal(x.detach(), before)
    return result


@pytest.mark.parametrize("biases", BIASES)
@pytest.mark.parametrize("out", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("mid", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_activations_and_biases(device, backend, mid, out, biases, gen):
    result = check_separable(K3, backend, mid=mid, out=out, biases=biases, device=device, gen=gen)
    if out == "relu6":  # the case is big enough that both clamps engage
        assert (result == 0).any() and (result == 6).any()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_float64_truth(device, backend, case, layout, gen):
    check_separable(case, backend, mid="relu6", out="relu", layout=layout, device=device, gen=gen)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", [K3, K5_S2_D2, WIDE], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_half_precision_within_pytorchs_error(device, backend, case, dtype, layout, gen):
    check_separable(case, backend, mid="relu", out="relu6", dtype=dtype, layout=layout, device=device, gen=gen)


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_unbatched_input(device, backend, gen):
    x, wd, wp, bd, bp = make_separable(S2, device=device, gen=gen)
    out = depthwise_separable_conv2d(x[0], wd, wp, bd, bp, **S2.window_args, mid_activation="relu", backend=backend)
    assert out.dim() == 3
    assert_close_to_truth(out, unfused(*float64_copies(x, wd, wp, bd, bp), S2, "relu")[0])


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_empty_batch(device, backend, gen):
    x, wd, wp, bd, bp = make_separable(S2, device=device, gen=gen)
    x = x[:0].clone().requires_grad_()
    params = [t.requires_grad_() for t in (wd, wp, bd, bp)]
    out = depthwise_separable_conv2d(x, wd, wp, bd, bp, **S2.window_args, mid_activation="relu", backend=backend)
    assert out.shape == unfused(x.detach(), wd.detach(), wp.detach(), None, None, S2).shape
    out.sum().backward()
    assert x.grad.shape == x.shape
    for p in params:
        assert torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_non_contiguous_weights(device, backend, gen):
    """Depthwise taps stored column-major, the pointwise weight a strided
    slice of a wider buffer (its gaps NaN): the kernels read both through
    their strides."""
    case = ASYMMETRIC
    x, wd, wp, bd, bp = make_separable(case, device=device, gen=gen)
    wd = wd.transpose(2, 3).contiguous().transpose(2, 3)
    wide = torch.full((wp.shape[0], 2 * wp.shape[1], 1, 1), float("nan"), device=device)
    wp = wide[:, ::2].copy_(wp)
    assert not wd.is_contiguous() and not wp.is_contiguous()
    params = [t.requires_grad_() for t in (x, wd, wp, bd, bp)]
    grad_output = random_tensor(unfused(x.detach(), wd.detach(), wp.detach(), None, None, case).shape, x.dtype,
                                gen).to(device)
    check_against_truth(
        lambda *t: depthwise_separable_conv2d(*t, **case.window_args, mid_activation="relu", backend=backend),
        lambda *t: unfused(*t, case, "relu"), params, grad_output=grad_output)


# --- gradients ------------------------------------------------------------------------

GRAD_CASES = [
    pytest.param(K3, None, None, "both", id="k3-none-none"),
    pytest.param(K3, "relu", "relu6", "both", id="k3-relu-relu6"),
    pytest.param(K3, "relu6", "relu", "none", id="k3-relu6-relu-nobias"),
    pytest.param(S2, "relu", None, "both", id="s2-relu-none"),
    pytest.param(D2, "relu6", "relu6", "pointwise", id="d2-relu6-relu6"),
    pytest.param(ASYMMETRIC, None, "relu", "both", id="asymmetric-none-relu"),
    pytest.param(K5_S2_D2, "relu", "relu", "both", id="k5s2d2-relu-relu"),
    pytest.param(RATE_OVER_MAP, "relu", None, "both", id="rate-over-map-relu-none"),
    pytest.param(WIDE, "relu6", None, "both", id="wide-relu6-none"),
]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case, mid, out, biases", GRAD_CASES)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradients_match_float64_truth(device, backend, case, mid, out, biases, layout, gen):
    """Gradients of x, both weights and both biases in float32 against
    autograd through the unfused float64 pair. (Activation kinks: a value
    within float32 rounding of 0 or 6 is too rare to matter here.)"""
    check_separable(case, backend, mid=mid, out=out, biases=biases, layout=layout, device=device, grads=True,
                    gen=gen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradients_in_half_precision(device, backend, dtype, gen):
    """ReLU only: a middle value rounded onto ReLU6's 6 in 16 bits would
    switch its gradient off against the float64 truth."""
    check_separable(S2, backend, mid="relu", dtype=dtype, device=device, grads=True, gen=gen)


@pytest.mark.parametrize("mid, out", [("relu6", None), (None, "relu6"), ("relu", "relu")], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradient_at_activation_kinks_follows_torch_nn(device, backend, mid, out, gen):
    """Where a pre-activation is exactly 0 (a zero neighbourhood and no bias:
    common after a ReLU), the gradient is that of nn.ReLU / nn.ReLU6 (zero
    at the kink) on every backend, so backends agree on the same input."""
    case = ConvCase((1, 3, 6, 7), 4, 3, padding=1, groups=None)
    x, wd, wp, _, _ = make_separable(case, device=device, biases="none", gen=gen)
    x = x.relu()  # exact zeros, ...
    x[..., :3, :] = 0.0  # ... and whole zero neighbourhoods
    x.requires_grad_()
    wd.requires_grad_()
    wp.requires_grad_()
    grad_output = random_tensor(unfused(x.detach(), wd.detach(), wp.detach(), None, None, case).shape, x.dtype,
                                gen).to(device)
    check_against_truth(
        lambda *t: depthwise_separable_conv2d(*t, padding=1, mid_activation=mid, out_activation=out, backend=backend),
        lambda *t: unfused(*t, None, None, case, mid, out), (x, wd, wp), grad_output=grad_output,
        names=["input", "depthwise_weight", "pointwise_weight"])


# --- the module ---------------------------------------------------------------------

class PlainSeparable(nn.Module):
    """The layer as plain torch.nn parts: children of the same names."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, *,
                 mid_norm=False, mid_activation=None, out_norm=False, out_activation=None, padding_mode="zeros"):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation,
                                   groups=in_channels, bias=bias, padding_mode=padding_mode)
        self.depthwise_norm = nn.BatchNorm2d(in_channels) if mid_norm else None
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.pointwise_norm = nn.BatchNorm2d(out_channels) if out_norm else None
        self.mid_activation, self.out_activation = mid_activation, out_activation

    def forward(self, x):
        x = self.depthwise(x)
        if self.depthwise_norm is not None:
            x = self.depthwise_norm(x)
        x = self.pointwise(TORCH_ACTIVATIONS[self.mid_activation](x))
        if self.pointwise_norm is not None:
            x = self.pointwise_norm(x)
        return TORCH_ACTIVATIONS[self.out_activation](x)


MODULE_ARGS = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(bias=False, stride=2, padding=1), id="nobias-s2"),
    pytest.param(dict(padding=2, dilation=2, mid_activation="relu6", out_activation="relu"), id="d2-relu6-relu"),
    pytest.param(dict(padding=1, mid_norm=True, out_norm=True, mid_activation="relu"), id="norms"),
    pytest.param(dict(padding=1, bias=False, mid_norm=True, mid_activation="relu6"), id="mid-norm-nobias"),
    pytest.param(dict(padding="same", dilation=2, padding_mode="reflect", out_activation="relu6"), id="reflect-same"),
    pytest.param(dict(stride=2, padding=(1, 2), padding_mode="circular", out_norm=True), id="circular-out-norm"),
]


def _module_pair(args, device, backend, gen):
    args = dict(in_channels=4, out_channels=6, kernel_size=3) | args
    plain = PlainSeparable(**args).to(device)
    randomize(plain, gen)
    ours = DepthwiseSeparableConv2d(**args, device=device, backend=backend)
    return ours, plain


@pytest.mark.parametrize("args", MODULE_ARGS)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_state_dict_round_trip_with_plain_convs(device, backend, args, gen):
    """A module with two nn.Conv2d children named depthwise/pointwise (and
    BatchNorms depthwise_norm/pointwise_norm) loads strictly into the layer
    and back; the layer then computes what the plain module does (eval)."""
    ours, plain = _module_pair(args, device, backend, gen)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    ours.load_state_dict(plain.state_dict(), strict=True)
    ours.eval()
    plain.eval()
    x = make_input((2, 4, 9, 8), device=device, gen=gen)
    with torch.no_grad():
        assert_close_to_truth(ours(x), copy.deepcopy(plain).double()(x.double()), plain(x))

    back = PlainSeparable(**(dict(in_channels=4, out_channels=6, kernel_size=3) | args)).to(device)
    back.load_state_dict(ours.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_eval_folds_batch_norms_into_the_fused_op(device, backend, layout, gen, monkeypatch):
    """In eval mode both BatchNorms fold into the conv weights (never the
    unfused path); output and the gradients of x, both convs and both
    BatchNorms' weight and bias equal the unfused float64 layers'."""
    args = dict(stride=2, padding=1, mid_norm=True, mid_activation="relu", out_norm=True, out_activation="relu6")
    ours, plain = _module_pair(args, device, backend, gen)
    ours.load_state_dict(plain.state_dict())
    ours.eval()
    plain.eval()
    plain64 = copy.deepcopy(plain).double()

    def unfused_forbidden(*_):
        raise AssertionError("eval mode ran the unfused path")

    monkeypatch.setattr(ours, "_unfused", unfused_forbidden)
    x = make_input((2, 4, 9, 8), layout=layout, device=device, gen=gen).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out, out64, base = ours(x), plain64(x64), plain(x.detach())
    assert_close_to_truth(out, out64, base)
    assert_layout(out, x)
    grad = random_tensor(out.shape, out.dtype, gen).to(device)
    out.backward(grad)
    out64.backward(grad.double())
    base.backward(grad)
    assert_close_to_truth(x.grad, x64.grad, name="input gradient")
    ours_params, truth_params, base_params = (dict(m.named_parameters()) for m in (ours, plain64, plain))
    assert ours_params.keys() == truth_params.keys()
    assert {"depthwise_norm.weight", "depthwise_norm.bias", "pointwise_norm.weight",
            "pointwise_norm.bias"} <= ours_params.keys()
    for name, p in ours_params.items():
        assert p.grad is not None, f"no gradient reached {name}"
        assert_close_to_truth(p.grad, truth_params[name].grad, base_params[name].grad, name=f"gradient of {name}")


@pytest.mark.parametrize("norms", [(True, True), (True, False), (False, True)], ids=["both", "mid", "out"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_train_mode_matches_plain_layers(device, backend, norms, gen):
    """In training the BatchNorms use batch statistics: output, gradients
    and the updated running statistics equal plain torch.nn layers'."""
    mid_norm, out_norm = norms
    args = dict(padding=1, mid_norm=mid_norm, mid_activation="relu6", out_norm=out_norm, out_activation="relu")
    ours, plain = _module_pair(args, device, backend, gen)
    ours.load_state_dict(plain.state_dict())
    ours.train()
    plain.train()
    plain64 = copy.deepcopy(plain).double()
    x = make_input((2, 4, 7, 8), device=device, gen=gen).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out, out64, base = ours(x), plain64(x64), plain(x.detach())
    assert_close_to_truth(out, out64, base)
    grad = random_tensor(out.shape, out.dtype, gen).to(device)
    out.backward(grad)
    out64.backward(grad.double())
    base.backward(grad)
    assert_close_to_truth(x.grad, x64.grad, name="input gradient")
    truth_params, base_params = dict(plain64.named_parameters()), dict(plain.named_parameters())
    for name, p in ours.named_parameters():
        assert_close_to_truth(p.grad, truth_params[name].grad, base_params[name].grad, name=f"gradient of {name}")
    truth_buffers, base_buffers = dict(plain64.named_buffers()), dict(plain.named_buffers())
    for name, b in ours.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert b.item() == 1
        else:
            assert_close_to_truth(b, truth_buffers[name].double(), base_buffers[name], name=name)


def test_module_rejects_bad_activation_at_construction():
    with pytest.raises(ValueError, match=r"mid_activation must be None, 'relu' or 'relu6', got 'gelu'"):
        DepthwiseSeparableConv2d(4, 6, 3, mid_activation="gelu")
    with pytest.raises(ValueError, match=r"out_activation must be None, 'relu' or 'relu6', got 'ReLU'"):
        DepthwiseSeparableConv2d(4, 6, 3, out_activation="ReLU")


def test_module_rejects_same_padding_with_stride():
    with pytest.raises(ValueError, match=r"padding='same'.*strided"):
        DepthwiseSeparableConv2d(4, 6, 3, stride=2, padding="same")


def test_module_float64_with_triton_raises():
    module = DepthwiseSeparableConv2d(4, 6, 3, dtype=torch.float64, backend="triton")
    with pytest.raises(BackendUnavailable, match=r"dtype float64"):
        module(torch.zeros((1, 4, 5, 5), dtype=torch.float64))


# --- which backend runs -------------------------------------------------------------

def test_cpu_default_and_float64_run_pytorchs_convs(monkeypatch, gen):
    monkeypatch.delenv("FASTSEG_BACKEND", raising=False)
    assert fastseg.backends()["ops"]["depthwise_separable_conv2d"]["default"]["cpu"] == "reference"
    for dtype in (torch.float32, torch.float64):
        x, wd, wp, bd, bp = (None if t is None else t.to(dtype) for t in make_separable(S2, gen=gen))
        out = depthwise_separable_conv2d(x, wd, wp, bd, bp, **S2.window_args, mid_activation="relu")
        assert torch.equal(out, unfused(x, wd, wp, bd, bp, S2, "relu"))


# --- validation -------------------------------------------------------------------------

def _t(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


ERRORS = [
    pytest.param(dict(input=_t(4, 6)), ValueError, r"input must be 3-D or 4-D", id="input-rank-2"),
    pytest.param(dict(input=_t(1, 1, 4, 6, 6)), ValueError, r"input must be 3-D or 4-D", id="input-rank-5"),
    pytest.param(dict(depthwise_weight=_t(4, 3, 3)), ValueError, r"depthwise_weight must be 4-D",
                 id="depthwise-weight-rank"),
    pytest.param(dict(pointwise_weight=_t(6, 4)), ValueError, r"pointwise_weight must be 4-D",
                 id="pointwise-weight-rank"),
    pytest.param(dict(input=_t(1, 4, 6, 6).half()), TypeError, r"depthwise_weight must have dtype float16; got float32",
                 id="input-dtype-mismatch"),
    pytest.param(dict(pointwise_weight=_t(6, 4, 1, 1).bfloat16()), TypeError,
                 r"pointwise_weight must have dtype float32; got bfloat16", id="pointwise-dtype-mismatch"),
    pytest.param(dict(depthwise_bias=_t(4).double()), TypeError, r"depthwise_bias must have dtype float32",
                 id="depthwise-bias-dtype"),
    pytest.param(dict(input=_t(1, 4, 6, 6).int()), TypeError, r"input must have dtype", id="input-int"),
    pytest.param(dict(depthwise_weight=_t(8, 1, 3, 3)), ValueError,
                 r"depthwise_weight must have one filter per input channel: shape \(4, 1, KH, KW\)",
                 id="depthwise-multiplier"),
    pytest.param(dict(depthwise_weight=_t(4, 2, 3, 3)), ValueError,
                 r"depthwise_weight must have one filter per input channel: .* got \(4, 2, 3, 3\)",
                 id="depthwise-not-depthwise"),
    pytest.param(dict(input=_t(1, 5, 6, 6)), ValueError,
                 r"depthwise_weight must have one filter per input channel: shape \(5, 1, KH, KW\) "
                 r"for an input of shape \(1, 5, 6, 6\)",
                 id="channels-mismatch"),
    pytest.param(dict(pointwise_weight=_t(6, 3, 1, 1)), ValueError,
                 r"pointwise_weight must have shape \(C_out, 4, 1, 1\)", id="pointwise-channels"),
    pytest.param(dict(pointwise_weight=_t(6, 4, 3, 3)), ValueError,
                 r"pointwise_weight must have shape \(C_out, 4, 1, 1\)", id="pointwise-not-1x1"),
    pytest.param(dict(pointwise_weight=_t(0, 4, 1, 1)), ValueError, r"pointwise_weight .* C_out > 0",
                 id="pointwise-no-outputs"),
    pytest.param(dict(depthwise_bias=_t(6)), ValueError, r"depthwise_bias must have 4 elements, got shape \(6,\)",
                 id="depthwise-bias-length"),
    pytest.param(dict(pointwise_bias=_t(4)), ValueError, r"pointwise_bias must have 6 elements, got shape \(4,\)",
                 id="pointwise-bias-length"),
    pytest.param(dict(pointwise_bias=_t(6, 1)), ValueError, r"pointwise_bias must be 1-D", id="pointwise-bias-rank"),
    pytest.param(dict(dilation=3), ValueError, r"input of spatial size \(6, 6\) .* smaller than the dilated kernel",
                 id="input-smaller-than-dilated-kernel"),
    pytest.param(dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1", id="same-stride-2"),
    pytest.param(dict(stride=0), ValueError, r"stride must be >= 1", id="stride-0"),
    pytest.param(dict(padding=(1, -1)), ValueError, r"padding must be >= 0", id="padding-negative"),
    pytest.param(dict(mid_activation="gelu"), ValueError, r"mid_activation must be None, 'relu' or 'relu6', got 'gelu'",
                 id="mid-activation"),
    pytest.param(dict(out_activation=torch.relu), ValueError, r"out_activation must be None, 'relu' or 'relu6'",
                 id="out-activation-callable"),
]


@pytest.mark.parametrize("kwargs, error, match", ERRORS)
@pytest.mark.parametrize("backend", [None, *CONV_BACKENDS["cpu"]])
def test_invalid_arguments_raise_naming_them(backend, kwargs, error, match):
    args = dict(input=_t(1, 4, 6, 6), depthwise_weight=_t(4, 1, 3, 3), pointwise_weight=_t(6, 4, 1, 1)) | kwargs
    with pytest.raises(error, match=match):
        depthwise_separable_conv2d(**args, backend=backend)


@pytest.mark.parametrize("backend, error, match", [
    ("triton2", ValueError, r"backend must be one of \('triton', 'cuda', 'cpp', 'reference'\) or None, got 'triton2'"),
    ("cuda", BackendUnavailable, r"depthwise_separable_conv2d has no 'cuda' backend"),
])
def test_unknown_or_missing_backend_raises(backend, error, match):
    with pytest.raises(error, match=match):
        depthwise_separable_conv2d(_t(1, 4, 6, 6), _t(4, 1, 3, 3), _t(6, 4, 1, 1), backend=backend)


def test_explicit_triton_on_float64_raises_naming_the_dtype():
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' .* does not cover this call: dtype float64"):
        depthwise_separable_conv2d(_t(1, 4, 6, 6).double(), _t(4, 1, 3, 3).double(), _t(6, 4, 1, 1).double(),
                                   backend="triton")


@pytest.mark.cuda
def test_tensors_on_different_devices_raise():
    with pytest.raises(ValueError, match=r"all tensors must be on one device"):
        depthwise_separable_conv2d(_t(1, 4, 6, 6).cuda(), _t(4, 1, 3, 3).cuda(), _t(6, 4, 1, 1))


# --- which kernels run -------------------------------------------------------------------

def test_triton_forward_is_one_fused_op(gen):
    """The forward is the fused op alone; the backward recomputes the middle
    with the depthwise conv and runs the two gradient ops of each conv."""
    x, wd, wp, bd, bp = make_separable(S2, gen=gen)
    params = [t.requires_grad_() for t in (x, wd, wp, bd, bp)]
    with FastsegOps() as forward:
        out = depthwise_separable_conv2d(*params, **S2.window_args, mid_activation="relu", backend="triton")
    with FastsegOps() as backward:
        out.sum().backward()
    assert forward.names == ["fastseg::depthwise_separable_conv2d"]
    assert sorted(backward.names) == ["fastseg::conv2d", "fastseg::conv2d_input_grad", "fastseg::conv2d_input_grad",
                                      "fastseg::conv2d_weight_grad", "fastseg::conv2d_weight_grad"]


@pytest.mark.parametrize("mode, mid_norm, expected", [
    ("eval", True, ["fastseg::depthwise_separable_conv2d"]),
    ("train", False, ["fastseg::depthwise_separable_conv2d"]),  # the out norm runs after the fused op
    ("train", True, ["fastseg::conv2d", "fastseg::conv2d"]),  # the mid norm needs the batch's statistics
])
def test_module_fuses_unless_a_mid_norm_trains(mode, mid_norm, expected, gen):
    module = DepthwiseSeparableConv2d(4, 6, 3, padding=1, mid_norm=mid_norm, out_norm=True, mid_activation="relu",
                                      backend="triton")
    getattr(module, mode)()
    with FastsegOps() as ops:
        module(make_input((2, 4, 6, 7), gen=gen))
    assert ops.names == expected


# --- torch.library registration, torch.compile, torch.export ------------------------------

@pytest.mark.parametrize("biases", ["both", "none"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(device, layout, biases, gen):
    """Schema, fake (shapes and strides), autograd registration and AOT
    dispatch of fastseg::depthwise_separable_conv2d."""
    case = ConvCase((1, 3, 5, 6), 4, 3, stride=2, padding=2, dilation=2, groups=None)
    x, wd, wp, bd, bp = make_separable(case, layout=layout, device=device, biases=biases, gen=gen)
    tensors = [None if t is None else t.requires_grad_() for t in (x, wd, bd, wp, bp)]
    torch.library.opcheck(torch.ops.fastseg.depthwise_separable_conv2d.default,
                          (*tensors, [2, 2], [2, 2], [2, 2], "relu", "relu6"))


def test_compile_fullgraph_matches_eager(gen, fresh_dynamo):
    """The functional op under torch.compile (Inductor, CPU) without graph
    breaks; forward and all five gradients equal eager's (the same kernels
    run; Inductor may sum the bias gradients in another order)."""
    x, wd, wp, bd, bp = make_separable(S2, gen=gen)
    params = tuple(t.requires_grad_() for t in (x, wd, wp, bd, bp))

    def layer(*t):
        return depthwise_separable_conv2d(*t, **S2.window_args, mid_activation="relu", out_activation="relu6",
                                          backend="triton")

    assert_compiled_matches_eager(layer, params, grad_atol=1e-5)


def test_compile_eval_module_with_folded_norms(gen, fresh_dynamo):
    """The eval-mode layer (BatchNorm folds on every call) compiles without
    graph breaks and equals eager."""
    args = dict(padding=1, mid_norm=True, mid_activation="relu6", out_norm=True, out_activation="relu")
    ours, plain = _module_pair(args, "cpu", "triton", gen)
    ours.load_state_dict(plain.state_dict())
    ours.eval()
    x = make_input((1, 4, 7, 8), gen=gen)
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ours(x), rtol=1e-6, atol=1e-5)


def test_export_eval_module(gen):
    """torch.export of the eval layer: the BatchNorm fold is traced as plain
    tensor ops before one fastseg::depthwise_separable_conv2d node."""
    args = dict(stride=2, padding=1, mid_norm=True, mid_activation="relu", out_norm=True, out_activation="relu6")
    ours, plain = _module_pair(args, "cpu", "triton", gen)
    ours.load_state_dict(plain.state_dict())
    ours.eval()
    program = torch.export.export(ours, (make_input((1, 4, 7, 8), gen=gen),))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.fastseg.depthwise_separable_conv2d.default) == 1
    fresh = make_input((1, 4, 7, 8), gen=gen)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(fresh), ours(fresh), rtol=1e-6, atol=1e-5)
