"""Convolution (``fastseg.ops.conv2d``) at the shapes of DeepLabV3+'s layers.

Dense convs (groups=1, ``test_conv2d_dense``): ASPP's dilated 3x3 convs,
2048 -> 256 channels, at rates 6/12/18 (and DeepLab-LargeFOV's 24) on the
32x32 map of a 512x512 input at output stride 16 and at 12/24/36 on the
64x64 map at output stride 8 (Chen et al., 2017, "Rethinking Atrous
Convolution", Sec. 3.3), its 1x1 branch, the 3x3 convs of dilated
ResNet-101's stages 3 and 4 (dilation 2 and 4 at output stride 8) and
DeepLabV3+'s first decoder conv. Depthwise convs (groups=channels,
``test_conv2d_depthwise``): MobileNetV2's inverted residuals (Sandler et
al., 2018) at stride 1 and 2 and dilated at output stride 16, the aligned
Xception-65's middle and exit flows (Chen et al., 2018, DeepLabV3+, Sec.
3.2), the separable ASPP's, and ConvNeXt's 7x7 (Liu et al., 2022). Batch 1
and 16; on the CPU the quick subset at batch 1 (``roofline.py`` holds the
tables).

A group (op, mode, layer) holds PyTorch eager in float16 NCHW, bfloat16
NCHW (PyTorch's own depthwise kernel) and bfloat16 channels_last (cuDNN,
``cudnn.benchmark`` on), ``torch.compile`` of the same layer (bfloat16
channels_last, ``--fastseg-compile-mode``, max-autotune by default), and
fastseg in each of those dtypes and layouts, all on the same inputs; on the
CPU float16 and bfloat16 channels_last give way to float32
(``roofline.CONV_CONFIGS`` says why) and torch.compile is skipped. Modes: ``fwd``
(inference), ``fwd+bwd`` (the forward, then the gradients of input, weight
and bias) and, for the depthwise convs, whose weight gradient is a
reduction over every pixel of the batch, ``bwd``: the input and weight
gradients alone. Every result other than PyTorch eager's is checked
against PyTorch eager's in the same dtype and layout once, outside the
timing. Nothing asserts on speed.

On a GPU the full matrix is long (torch.compile with max-autotune compiles
and autotunes each layer and mode); split it by test, mode or batch, keeping
the ``torch`` cases selected::

    pytest benchmarks/test_conv2d_perf.py::test_conv2d_dense --benchmark-only -k "not compile"
    pytest benchmarks/test_conv2d_perf.py::test_conv2d_depthwise --benchmark-only -k "b16- and -fwd-"
"""

import importlib
import math

import pytest
import roofline
import torch
import torch.nn.functional as F

import fastseg

BACKENDS = importlib.import_module("fastseg.ops.conv2d").BACKENDS
DENSE_MODES = ("fwd", "fwd+bwd")
DEPTHWISE_MODES = ("fwd", "fwd+bwd", "bwd")

pytestmark = pytest.mark.usefixtures("cudnn_benchmark")


class Case(roofline.ConvCase):
    OP = "conv2d"

    def layer_info(self) -> dict:
        layer = self.layer
        return {"shape": list(layer.x_shape), "weight_shape": list(layer.weight_shape),
                "out_shape": list(layer.y_shape), "kernel": layer.kernel, "stride": layer.stride,
                "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups,
                "depthwise": layer.depthwise}


def pytest_generate_tests(metafunc):
    """Cases layer by layer, then dtype and layout, then mode, PyTorch
    first: a layer's input sets are made once per dtype and layout and
    serve every mode, and PyTorch's results are at hand for the checks."""
    for fixture, layers, modes in (("dense_case", roofline.DENSE_CONV_LAYERS, DENSE_MODES),
                                   ("depthwise_case", roofline.DEPTHWISE_CONV_LAYERS, DEPTHWISE_MODES)):
        if fixture in metafunc.fixturenames:
            config = metafunc.config
            device_type = roofline.resolve_device(config).type
            cases = [Case(layer, mode, dtype, layout, variant)
                     for layer in roofline.layer_cases(layers, roofline.full_shapes(config))
                     for dtype, layout in roofline.CONV_CONFIGS[device_type]
                     for mode in modes
                     for variant in roofline.conv_variants(BACKENDS, device_type, (dtype, layout))]
            metafunc.parametrize(fixture, cases, ids=[c.id for c in cases])


# --- inputs and layers -----------------------------------------------------------

def _sets(bench_env, case: Case, disabled: bool):
    """Input sets ``(x, weight, bias, dy)``, random and laid out as the case
    says (weights too: ``model.to(memory_format=torch.channels_last)``
    converts them). Weights scaled by 1/sqrt(fan-in) so outputs and
    gradients are O(1). Every mode rotates as many sets as the forward, the
    one moving the fewest bytes, needs."""
    layer, dtype, device = case.layer, case.dtype, bench_env.device
    fmt = roofline.LAYOUTS[case.layout]
    shapes = (layer.x_shape, layer.weight_shape, (layer.c_out,), layer.y_shape)
    set_bytes = sum(math.prod(s) for s in shapes) * dtype.itemsize
    fewest = roofline.conv_traffic(layer, dtype, "fwd")
    count = bench_env.rotation_count(fewest.total, set_bytes, disabled)
    fan_in = math.prod(layer.weight_shape[1:])

    def make(_):
        x = torch.randn(layer.x_shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
        weight = (torch.randn(layer.weight_shape, dtype=dtype, device=device) * fan_in ** -0.5).contiguous(
            memory_format=fmt)
        bias = torch.randn(layer.c_out, dtype=dtype, device=device) * 0.1
        dy = torch.randn(layer.y_shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
        return x, weight, bias, dy

    return bench_env.inputs(("conv2d", layer, dtype, case.layout, count), make, count)


def _torch_conv(layer: roofline.ConvLayer):
    def conv(x, weight, bias):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return conv


def _fastseg_conv(layer: roofline.ConvLayer, backend: str):
    def conv(x, weight, bias):
        return fastseg.ops.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups,
                                  backend=backend)
    return conv


# --- the benchmarks ----------------------------------------------------------------

def _benchmark(benchmark, bench_env, case: Case):
    layer, variant = case.layer, case.variant
    bench_env.require_variant(variant)
    benchmark.group = case.group
    data = _sets(bench_env, case, benchmark.disabled)
    eager = _torch_conv(layer)
    if variant.kind == "torch":
        conv = eager
    elif variant.kind == "compile":
        conv = bench_env.compiled(("conv2d", layer, case.dtype, case.layout), eager)
    else:
        conv = _fastseg_conv(layer, variant.backend)
    timed = bench_env.timed_mode(case.mode, conv, data.sets)

    if variant.kind != "torch":
        bench_env.check_against_eager(case.id, data, case.mode, eager, timed)

    bench_env.measure(benchmark, timed.fn, timed.sets, roofline.conv_traffic(layer, case.dtype, case.mode),
                      case.info(bench_env.compile_mode), flops=roofline.conv_flops(layer, case.dtype, case.mode),
                      prepare=timed.prepare)


def test_conv2d_dense(benchmark, bench_env, dense_case):
    _benchmark(benchmark, bench_env, dense_case)


def test_conv2d_depthwise(benchmark, bench_env, depthwise_case):
    _benchmark(benchmark, bench_env, depthwise_case)
