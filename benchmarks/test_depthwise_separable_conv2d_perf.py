"""Depthwise-separable convolution (``fastseg.ops.depthwise_separable_conv2d``:
a depthwise conv, then a 1x1 conv, fused into one kernel on CUDA) at the
shapes of DeepLabV3+'s layers.

The aligned Xception-65 of DeepLabV3+ (Chen et al., 2018, Sec. 3.2: every
max-pool replaced by a strided separable conv, BatchNorm and ReLU after
each depthwise conv) at a 512x512 input and output stride 16: entry flow
block 3 at 64x64, the 728-channel middle flow at 32x32, the exit flow up to
1024/1536/2048 channels, dilated by 2; DeepLabV3+'s separable ASPP (2048 ->
256 at rates 6/12/18) and separable decoder convs; MobileNetV2's inverted
residuals as depthwise conv + ReLU6 + linear 1x1 projection (Sandler et
al., 2018), stride 1 and 2, and dilated at output stride 16. Batch 1 and 16;
on the CPU the quick subset at batch 1 (``roofline.py`` holds the tables).
The BatchNorms are folded into the weights and biases, as in inference.

A group (mode, layer) holds PyTorch eager (the depthwise ``F.conv2d`` with
groups=C, the activation, the 1x1 ``F.conv2d``, the activation) in float16
NCHW, bfloat16 NCHW and bfloat16 channels_last (``cudnn.benchmark`` on),
``torch.compile`` of the same layer (bfloat16 channels_last,
``--fastseg-compile-mode``, max-autotune by default), and fastseg in each of
those dtypes and layouts, on the same inputs; on the CPU float16 and
bfloat16 channels_last give way to float32 (``roofline.CONV_CONFIGS`` says
why) and torch.compile is skipped. Modes: ``fwd`` (inference) and
``fwd+bwd`` (the forward, then the gradients of the input and of both
convs' weights and biases). The bytes a layer must move are x read once, y
written once and both convs' weights once (the intermediate never crosses
memory); its FLOPs are both convs', the 1x1's being the tensor-core share
(``roofline.separable_flops``). Every result other than PyTorch eager's is
checked against PyTorch eager's in the same dtype and layout once, outside
the timing. Nothing asserts on speed.
"""

import importlib
import math

import pytest
import roofline
import torch
import torch.nn.functional as F

import fastseg

BACKENDS = importlib.import_module("fastseg.ops.depthwise_separable_conv2d").BACKENDS
MODES = ("fwd", "fwd+bwd")
ACTIVATIONS = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6}  # nn.ReLU, nn.ReLU6
pytestmark = pytest.mark.usefixtures("cudnn_benchmark")


class Case(roofline.ConvCase):
    OP = "depthwise_separable_conv2d"

    def layer_info(self) -> dict:
        layer = self.layer
        depthwise, pointwise = layer.depthwise, layer.pointwise
        return {"shape": list(depthwise.x_shape), "depthwise_weight_shape": list(depthwise.weight_shape),
                "pointwise_weight_shape": list(pointwise.weight_shape), "out_shape": list(pointwise.y_shape),
                "kernel": layer.kernel, "stride": layer.stride, "padding": depthwise.padding,
                "dilation": layer.dilation, "mid_activation": layer.mid_activation,
                "out_activation": layer.out_activation}


def pytest_generate_tests(metafunc):
    """Cases layer by layer, then dtype and layout, then mode, PyTorch
    first (as in test_conv2d_perf.py)."""
    if "separable_case" in metafunc.fixturenames:
        config = metafunc.config
        device_type = roofline.resolve_device(config).type
        cases = [Case(layer, mode, dtype, layout, variant)
                 for layer in roofline.layer_cases(roofline.SEPARABLE_CONV_LAYERS, roofline.full_shapes(config))
                 for dtype, layout in roofline.CONV_CONFIGS[device_type]
                 for mode in MODES
                 for variant in roofline.conv_variants(BACKENDS, device_type, (dtype, layout))]
        metafunc.parametrize("separable_case", cases, ids=[c.id for c in cases])


# --- inputs and layers -----------------------------------------------------------

def _sets(bench_env, case: Case, disabled: bool):
    """Input sets ``(x, depthwise weight, depthwise bias, pointwise weight,
    pointwise bias, dy)``, random, laid out as the case says, weights
    scaled by 1/sqrt(fan-in) so the intermediate, the output and the
    gradients are O(1)."""
    layer, dtype, device = case.layer, case.dtype, bench_env.device
    depthwise, pointwise = layer.depthwise, layer.pointwise
    fmt = roofline.LAYOUTS[case.layout]
    shapes = (depthwise.x_shape, depthwise.weight_shape, (layer.c_in,), pointwise.weight_shape, (layer.c_out,),
              pointwise.y_shape)
    set_bytes = sum(math.prod(s) for s in shapes) * dtype.itemsize
    fewest = roofline.separable_traffic(layer, dtype, "fwd")
    count = bench_env.rotation_count(fewest.total, set_bytes, disabled)

    def weight(shape):
        return (torch.randn(shape, dtype=dtype, device=device) * math.prod(shape[1:]) ** -0.5).contiguous(
            memory_format=fmt)

    def make(_):
        x = torch.randn(depthwise.x_shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
        dw_bias = torch.randn(layer.c_in, dtype=dtype, device=device) * 0.1
        pw_bias = torch.randn(layer.c_out, dtype=dtype, device=device) * 0.1
        dy = torch.randn(pointwise.y_shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
        return x, weight(depthwise.weight_shape), dw_bias, weight(pointwise.weight_shape), pw_bias, dy

    return bench_env.inputs(("depthwise_separable_conv2d", layer, dtype, case.layout, count), make, count)


def _torch_separable(layer: roofline.SeparableLayer):
    """The PyTorch layer: nn.Conv2d(groups=C), activation, nn.Conv2d(1x1),
    activation, written functionally so its weights come with each input set."""
    depthwise = layer.depthwise
    mid_activation, out_activation = ACTIVATIONS[layer.mid_activation], ACTIVATIONS[layer.out_activation]

    def separable(x, dw_weight, dw_bias, pw_weight, pw_bias):
        mid = mid_activation(F.conv2d(x, dw_weight, dw_bias, depthwise.stride, depthwise.padding,
                                      depthwise.dilation, depthwise.groups))
        return out_activation(F.conv2d(mid, pw_weight, pw_bias))
    return separable


def _fastseg_separable(layer: roofline.SeparableLayer, backend: str):
    depthwise = layer.depthwise

    def separable(x, dw_weight, dw_bias, pw_weight, pw_bias):
        return fastseg.ops.depthwise_separable_conv2d(
            x, dw_weight, pw_weight, dw_bias, pw_bias, depthwise.stride, depthwise.padding, depthwise.dilation,
            mid_activation=layer.mid_activation, out_activation=layer.out_activation, backend=backend)
    return separable


# --- the benchmark -----------------------------------------------------------------

def test_depthwise_separable_conv2d(benchmark, bench_env, separable_case):
    case = separable_case
    layer, variant = case.layer, case.variant
    bench_env.require_variant(variant)
    benchmark.group = case.group
    data = _sets(bench_env, case, benchmark.disabled)
    eager = _torch_separable(layer)
    if variant.kind == "torch":
        separable = eager
    elif variant.kind == "compile":
        separable = bench_env.compiled(("depthwise_separable_conv2d", layer, case.dtype, case.layout), eager)
    else:
        separable = _fastseg_separable(layer, variant.backend)
    timed = bench_env.timed_mode(case.mode, separable, data.sets)

    if variant.kind != "torch":
        bench_env.check_against_eager(case.id, data, case.mode, eager, timed)

    bench_env.measure(benchmark, timed.fn, timed.sets, roofline.separable_traffic(layer, case.dtype, case.mode),
                      case.info(bench_env.compile_mode),
                      flops=roofline.separable_flops(layer, case.dtype, case.mode), prepare=timed.prepare)
