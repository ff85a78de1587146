"""Whole segmentation models (``fastseg.models``) against the same model on
the reference backend: BENCHMARKING.md's baseline for models, the
architecture built from torch.nn's ops (``set_backend(model, "reference")``,
the ``torch`` records), eager and under ``torch.compile`` (``--fastseg-
compile-mode``, max-autotune by default; CUDA only, as the conv suites).

Inference: eval mode (BatchNorms folded where fastseg fuses them), no
gradients, random weights (speed does not depend on them) and random
images. Every builder ``fastseg.models.list_models()`` names (``MODELS``)
at 512x512, and the Cityscapes models (those evaluated on Cityscapes in
their papers: DeepLab v3 and v3+, PSPNet, Gated-SCNN) also at 1024x2048;
batch 1 for latency, batch 8 for throughput. A group (model, size, batch)
holds the four twins side by side on the same inputs: the reference
backend eager (``torch``) and compiled (``torch.compile``), and fastseg's
default backends eager (``fastseg``) and compiled (``fastseg-compile``).
On a GPU the models run in bfloat16 channels_last, on the CPU in float32
(``CONFIGS``).

Beside the median: images/s, the latency's 50th and 99th percentiles, the
device memory one call needs beyond its weights and input
(``peak_memory_bytes``, CUDA only), and the device, dtype, layout and
shape. Each fastseg result is checked once, outside the timing, against the
eager reference twin's. Nothing asserts on speed; the issue's floor for
DeepLabV3+ (Xception-65 and MobileNetV2): ``fastseg-compile`` at >= 1.3x
the images/s of ``torch.compile`` in the same group, measured on a GPU.

On the CPU (quick shapes, the default there) one small model runs,
DeepLabV3+ MobileNetV2 at 256x256, batch 1, eager, so that
``pytest benchmarks -q --benchmark-disable`` stays fast; ``--fastseg-shapes
full`` runs every case. On a GPU, split the long run by model or batch::

    pytest benchmarks/test_models_perf.py --benchmark-only -k "deeplabv3plus and b8"
"""

import copy
from dataclasses import dataclass, field

import roofline
import torch

import fastseg.models

VOC_SIZE, CITYSCAPES_SIZE, QUICK_SIZE = (512, 512), (1024, 2048), (256, 256)
LATENCY_BATCH, THROUGHPUT_BATCH = 1, 8
# One dtype and layout per device: bfloat16 channels_last is how these models
# are served on a GPU (tensor cores); the CPU has no fast bfloat16 conv.
CONFIGS = {"cuda": (torch.bfloat16, "nhwc"), "cpu": (torch.float32, "nchw")}
# Agreement with the reference twin relative to the largest |logit|: rounding
# through ~100 layers (TF32 in cuDNN's float32 convs, 8 bits in bfloat16). A
# broken kernel is off by the size of the logits.
TOLERANCES = {torch.float32: 1e-2, torch.bfloat16: 1e-1}


@dataclass(frozen=True)
class Model:
    """A builder with its arguments (as sorted pairs, to stay hashable)."""

    id: str
    builder: str
    arguments: tuple = ()
    cityscapes: bool = False
    quick: bool = field(default=False, compare=False)

    def build(self) -> torch.nn.Module:
        return fastseg.models.create(self.builder, **dict(self.arguments))


# Every builder of fastseg.models.list_models() at least once
# (tests/test_benchmark_suite.py checks), with its default arguments but an
# RGB input for the U-Nets (the benchmark's images have three channels).
MODELS = (
    Model("fcn32s_vgg16", "fcn32s_vgg16"),
    Model("fcn16s_vgg16", "fcn16s_vgg16"),
    Model("fcn8s_vgg16", "fcn8s_vgg16"),
    Model("fcn_resnet50", "fcn_resnet50"),
    Model("fcn_resnet101", "fcn_resnet101"),
    Model("segnet", "segnet"),
    Model("unet", "unet", (("in_channels", 3),)),
    Model("unet_padded", "unet_padded", (("in_channels", 3),)),
    Model("deeplabv1_vgg16", "deeplabv1_vgg16"),
    Model("deeplabv2-resnet101", "deeplabv2"),
    Model("deeplabv3_resnet50", "deeplabv3_resnet50"),
    Model("deeplabv3_resnet101", "deeplabv3_resnet101"),
    Model("deeplabv3-resnet101", "deeplabv3", cityscapes=True),
    Model("deeplabv3plus-xception65", "deeplabv3plus", cityscapes=True),
    Model("deeplabv3plus-mobilenet_v2", "deeplabv3plus", (("backbone", "mobilenet_v2"),), cityscapes=True, quick=True),
    Model("pspnet-resnet101", "pspnet", (("backbone", "resnet101"),), cityscapes=True),
    Model("gated_scnn-resnet101", "gated_scnn", (("backbone", "resnet101"),), cityscapes=True),
)
VARIANTS = ("torch", "torch.compile", "fastseg", "fastseg-compile")  # the reference's first: the check's baseline


@dataclass(frozen=True)
class Case:
    model: Model
    size: tuple[int, int]
    batch: int
    variant: str
    dtype: torch.dtype
    layout: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, *self.size)

    @property
    def group(self) -> str:
        return f"model {self.model.id} {self.size[0]}x{self.size[1]} b{self.batch}"

    @property
    def id(self) -> str:
        return f"{self.variant}-{self.model.id}-{self.size[0]}x{self.size[1]}-b{self.batch}"

    @property
    def compiled(self) -> bool:
        return self.variant.endswith("compile")

    @property
    def reference(self) -> bool:
        return self.variant.startswith("torch")

    def info(self, compile_mode: str) -> dict:
        return {"op": "model", "model": self.model.id, "builder": self.model.builder,
                "arguments": dict(self.model.arguments), "mode": "inference",
                "implementation": "fastseg" if not self.reference else self.variant,
                "variant": self.variant, "backend": "reference" if self.reference else "default",
                "dtype": str(self.dtype).removeprefix("torch."),
                "layout": "channels_last" if self.layout == "nhwc" else "contiguous",
                "shape": list(self.shape), "batch": self.batch,
                **({"compile_mode": compile_mode} if self.compiled else {})}


def _cases(device_type: str, full: bool) -> list[Case]:
    dtype, layout = CONFIGS[device_type]
    cases = []
    for model in MODELS:
        if full:
            sizes = (VOC_SIZE, CITYSCAPES_SIZE) if model.cityscapes else (VOC_SIZE,)
            batches = (LATENCY_BATCH, THROUGHPUT_BATCH)
        elif model.quick:
            sizes, batches = (QUICK_SIZE,), (LATENCY_BATCH,)
        else:
            continue
        cases += [Case(model, size, batch, variant, dtype, layout)
                  for size in sizes for batch in batches for variant in VARIANTS]
    return cases


def pytest_generate_tests(metafunc):
    if "model_case" in metafunc.fixturenames:
        config = metafunc.config
        cases = _cases(roofline.resolve_device(config).type, roofline.full_shapes(config))
        metafunc.parametrize("model_case", cases, ids=[c.id for c in cases])


# --- the twins, built once per model ------------------------------------------------

_TWINS: dict = {}


def _twins(model: Model, device: torch.device, dtype: torch.dtype, layout: str) -> dict[str, torch.nn.Module]:
    """{"fastseg": the model on its default backends, "reference": a copy on
    the reference backend}, same weights, in eval mode; only the latest
    model's pair is kept (cases run model by model)."""
    key = (model, device, dtype, layout)
    if key not in _TWINS:
        _TWINS.clear()  # free the previous model first
        torch.manual_seed(0)
        net = model.build().eval().to(device=device, dtype=dtype, memory_format=roofline.LAYOUTS[layout])
        reference = fastseg.models.set_backend(copy.deepcopy(net), "reference")
        _TWINS[key] = {"fastseg": net, "reference": reference}
    return _TWINS[key]


def _check(where: str, got: dict, expected: dict) -> None:
    assert set(got) == set(expected), f"{where}: outputs {sorted(got)}, the reference's {sorted(expected)}"
    for key, value in expected.items():
        tol = TOLERANCES[value.dtype]
        scale = value.detach().float().abs().max().item()
        torch.testing.assert_close(got[key].float(), value.float(), rtol=0, atol=tol * scale,
                                   msg=lambda m, key=key: f"{where}, {key!r}: differs from the reference: {m}")


def test_model(benchmark, bench_env, model_case):
    case = model_case
    if case.compiled:
        bench_env.require_compile()
    benchmark.group = case.group
    device = bench_env.device
    twins = _twins(case.model, device, case.dtype, case.layout)
    net = twins["reference" if case.reference else "fastseg"]
    if case.compiled:
        net = bench_env.compiled((case.model, case.variant, case.shape, case.dtype, case.layout), net)

    def infer(x):
        with torch.no_grad():
            return net(x)

    fmt = roofline.LAYOUTS[case.layout]
    set_bytes = case.batch * 3 * case.size[0] * case.size[1] * case.dtype.itemsize
    count = bench_env.rotation_count(set_bytes, set_bytes, benchmark.disabled)

    def make(_):
        return (torch.randn(case.shape, dtype=case.dtype, device=device).contiguous(memory_format=fmt),)

    data = bench_env.inputs(("model", case.model, case.shape, case.dtype, case.layout, count), make, count)
    if data.baseline is None:
        with torch.no_grad():
            data.baseline = twins["reference"](*data.sets[0])
    if case.variant != "torch":
        _check(case.id, infer(*data.sets[0]), data.baseline)

    bench_env.measure(benchmark, infer, data.sets, None, case.info(bench_env.compile_mode), images=case.batch)
