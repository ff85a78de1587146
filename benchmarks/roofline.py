"""The rooflines fastseg's benchmarks report against, and the layer shapes
of the conv suites.

Memory: max-pool with indices and max-unpool do no arithmetic worth
counting, depthwise convs little: their limit is the memory system. The
bytes an op must move at least are its inputs read once and its outputs
written once, indices included (BENCHMARKING.md); dividing them by the
measured time gives GB/s, and dividing that by the copy bandwidth measured
on the same device in the same session gives the fraction of the roofline.
Indices are counted separately (``index_bytes``) because int64 indices are
most of the traffic a SegNet decoder reads, and what compact (uint8)
indices save.

Compute: dense and 1x1 convs are matrix multiplications (implicit GEMMs);
their FLOPs over a large matmul's rate in the same dtype, measured once per
session, bound their time from below. A benchmark with FLOPs reports the
fraction of the tighter of the two bounds (``pct_of_roofline``, ``bound``).

Nothing here queries the GPU at import time.
"""

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

FLAT_INDEX_BYTES = torch.int64.itemsize    # PyTorch's flat indices
COMPACT_INDEX_BYTES = torch.uint8.itemsize  # fastseg's window positions


@dataclass(frozen=True)
class Traffic:
    """Bytes an op must move: ``total`` includes ``index_bytes``."""

    total: int
    index_bytes: int


def _numel(shape) -> int:
    return math.prod(shape)


def pool_traffic(in_shape, out_shape, dtype: torch.dtype, index_bytes_each: int) -> Traffic:
    """Max-pool: read x [N, C, H, W]; write values and indices [N, C, Ho, Wo]."""
    es = dtype.itemsize
    n_in, n_out = _numel(in_shape), _numel(out_shape)
    index_bytes = n_out * index_bytes_each
    return Traffic(n_in * es + n_out * es + index_bytes, index_bytes)


def unpool_traffic(in_shape, out_shape, dtype: torch.dtype, index_bytes_each: int) -> Traffic:
    """Max-unpool: read values and indices [N, C, Ho, Wo]; write y [N, C, H, W]
    (every element of y: the zeros are part of the output)."""
    es = dtype.itemsize
    n_in, n_out = _numel(in_shape), _numel(out_shape)
    index_bytes = n_in * index_bytes_each
    return Traffic(n_in * es + index_bytes + n_out * es, index_bytes)


def roundtrip_traffic(x_shape, pooled_shape, dtype: torch.dtype, index_bytes_each: int) -> Traffic:
    """Pool then unpool (a SegNet encoder/decoder pair): the pool's traffic
    plus the unpool's; values and indices cross memory twice (written, read)."""
    pool = pool_traffic(x_shape, pooled_shape, dtype, index_bytes_each)
    unpool = unpool_traffic(pooled_shape, x_shape, dtype, index_bytes_each)
    return Traffic(pool.total + unpool.total, pool.index_bytes + unpool.index_bytes)


# --- convolutions: DeepLabV3+'s layers, their FLOPs and bytes ----------------

# Passes over a conv's products per mode: the forward; its input gradient and
# its weight gradient each form the same products again (transposed).
MODE_PASSES = {"fwd": 1, "fwd+bwd": 3, "bwd": 2}


@dataclass(frozen=True)
class ConvLayer:
    """One conv of a real network at the size it runs there: ``c_in`` x
    ``hw`` in, ``c_out`` out, a ``kernel`` x ``kernel`` window with
    ``stride`` and ``dilation``, padded to keep the size at stride 1 (as
    these networks pad); ``depthwise`` means groups = c_in = c_out.
    ``quick`` marks the layers of the CPU subset."""

    where: str
    c_in: int
    c_out: int
    hw: tuple[int, int]
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    depthwise: bool = False
    n: int = 1
    quick: bool = field(default=False, compare=False)

    def __post_init__(self):
        if self.depthwise and self.c_out != self.c_in:
            raise ValueError(f"{self.where}: a depthwise conv keeps its channels ({self.c_in} -> {self.c_out})")

    @property
    def groups(self) -> int:
        return self.c_in if self.depthwise else 1

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel - 1) // 2

    @property
    def out_hw(self) -> tuple[int, int]:
        span = self.dilation * (self.kernel - 1) + 1
        return tuple((size + 2 * self.padding - span) // self.stride + 1 for size in self.hw)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_in, *self.hw)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_out, *self.out_hw)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.c_out, self.c_in // self.groups, self.kernel, self.kernel)

    def _window(self) -> str:
        return (f"{'dw' if self.depthwise else ''}{self.kernel}x{self.kernel}"
                + (f"s{self.stride}" if self.stride > 1 else "") + (f"d{self.dilation}" if self.dilation > 1 else ""))

    @property
    def describe(self) -> str:
        """``16x2048x32x32 3x3 dilation 12 -> 256``, for tables."""
        return (f"{'x'.join(map(str, self.x_shape))} {'depthwise ' if self.depthwise else ''}"
                f"{self.kernel}x{self.kernel}" + (f" stride {self.stride}" if self.stride > 1 else "")
                + (f" dilation {self.dilation}" if self.dilation > 1 else "") + f" -> {self.c_out}")

    @property
    def id(self) -> str:
        """``b16-2048x32x32-3x3d12-256``, ``b1-144x128x128-dw3x3s2``."""
        return (f"b{self.n}-{self.c_in}x{self.hw[0]}x{self.hw[1]}-{self._window()}"
                + ("" if self.depthwise else f"-{self.c_out}"))


@dataclass(frozen=True)
class SeparableLayer:
    """A depthwise ``kernel`` x ``kernel`` conv of ``c_in`` channels, then a
    1x1 conv to ``c_out``, with the activations the network puts after each
    (their BatchNorms folded into the weights, as in inference)."""

    where: str
    c_in: int
    c_out: int
    hw: tuple[int, int]
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    mid_activation: str | None = None
    out_activation: str | None = None
    n: int = 1
    quick: bool = field(default=False, compare=False)

    @property
    def depthwise(self) -> ConvLayer:
        return ConvLayer(self.where, self.c_in, self.c_in, self.hw, self.kernel, self.stride, self.dilation,
                         depthwise=True, n=self.n)

    @property
    def pointwise(self) -> ConvLayer:
        return ConvLayer(self.where, self.c_in, self.c_out, self.depthwise.out_hw, 1, n=self.n)

    @property
    def id(self) -> str:
        return f"{self.depthwise.id}-{self.c_out}"

    @property
    def describe(self) -> str:
        return f"{self.depthwise.describe} + 1x1 -> {self.c_out}"


def _live_taps(size: int, out: int, layer: ConvLayer) -> int:
    """Sum over the window's taps along one axis of the outputs whose input
    under that tap lies inside the image (not in the padding)."""
    return sum(1 for tap in range(layer.kernel) for o in range(out)
               if 0 <= o * layer.stride - layer.padding + tap * layer.dilation < size)


def conv_macs(layer: ConvLayer) -> tuple[int, int]:
    """Multiply-adds of one forward: (those on real inputs, the dense count
    over every tap). Taps in the padding multiply zeros: at ASPP's rates on
    a 32x32 map most of them do, and a kernel that skips them has less to do
    than the dense count says."""
    per_pixel_pair = layer.n * layer.c_out * (layer.c_in // layer.groups)
    live = _live_taps(layer.hw[0], layer.out_hw[0], layer) * _live_taps(layer.hw[1], layer.out_hw[1], layer)
    nominal = _numel(layer.out_hw) * layer.kernel * layer.kernel
    return per_pixel_pair * live, per_pixel_pair * nominal


@dataclass(frozen=True)
class Flops:
    """FLOPs an op must do (a multiply-add counts 2): ``total`` counts the
    products on real inputs, ``nominal`` every tap (what FLOP counters
    report), ``gemm`` the share that is matrix multiplication (dense and 1x1
    convs: the tensor-core work the matmul rate of ``dtype`` bounds;
    depthwise products run on the vector units, and memory bounds them)."""

    total: int
    nominal: int
    gemm: int
    dtype: torch.dtype


def conv_flops(layer: ConvLayer, dtype: torch.dtype, mode: str) -> Flops:
    live, nominal = conv_macs(layer)
    passes = 2 * MODE_PASSES[mode]
    return Flops(passes * live, passes * nominal, 0 if layer.depthwise else passes * live, dtype)


def separable_flops(layer: SeparableLayer, dtype: torch.dtype, mode: str) -> Flops:
    """Both convs' FLOPs; the 1x1's are the GEMM share."""
    depthwise, pointwise = conv_flops(layer.depthwise, dtype, mode), conv_flops(layer.pointwise, dtype, mode)
    return Flops(depthwise.total + pointwise.total, depthwise.nominal + pointwise.nominal, pointwise.gemm, dtype)


def _conv_bytes(mode: str, x: int, params: int, y: int) -> int:
    """Bytes a conv-like layer must move: the forward reads x and the
    parameters once and writes y; the backward (input and weight gradients)
    reads dy, x and the weights again and writes dx and the parameter
    gradients. Nothing else has to cross memory (a fused separable conv's
    intermediate never does)."""
    forward, backward = x + params + y, y + x + params + x + params
    return {"fwd": forward, "fwd+bwd": forward + backward, "bwd": backward}[mode]


def conv_traffic(layer: ConvLayer, dtype: torch.dtype, mode: str) -> Traffic:
    """A conv with bias; ``bwd`` (input and weight gradients alone) leaves
    the bias out."""
    params = _numel(layer.weight_shape) + (0 if mode == "bwd" else layer.c_out)
    return Traffic(dtype.itemsize * _conv_bytes(mode, _numel(layer.x_shape), params, _numel(layer.y_shape)), 0)


def separable_traffic(layer: SeparableLayer, dtype: torch.dtype, mode: str) -> Traffic:
    """Read x once, write y once, both convs' weights and biases once
    (BENCHMARKING.md); the backward as in ``_conv_bytes``."""
    dw, pw = layer.depthwise, layer.pointwise
    params = _numel(dw.weight_shape) + dw.c_out + _numel(pw.weight_shape) + pw.c_out
    return Traffic(dtype.itemsize * _conv_bytes(mode, _numel(dw.x_shape), params, _numel(pw.y_shape)), 0)


# DeepLabV3+ and its backbones at a 512x512 input (the feature map sizes
# below follow from it), batch 1 (latency) and 16 (training/throughput).
# Xception-65 and MobileNetV2 as DeepLabV3+ aligns them (Chen et al., 2018,
# Sec. 3.2 and 4): output stride 16, the last downsampling replaced by
# dilation. Every conv has a BatchNorm after it, folded into weights and
# bias in inference.
CONV_BATCHES = (1, 16)
QUICK_BATCH = 1

DENSE_CONV_LAYERS = (
    *(ConvLayer(f"DeepLabV3 ASPP 3x3 rate {r} (OS16)", 2048, 256, (32, 32), dilation=r, quick=r == 12)
      for r in (6, 12, 18)),
    ConvLayer("DeepLab-LargeFOV/ASPP-L 3x3 rate 24 (OS16)", 2048, 256, (32, 32), dilation=24),
    *(ConvLayer(f"DeepLabV3 ASPP 3x3 rate {r} (OS8)", 2048, 256, (64, 64), dilation=r) for r in (12, 24, 36)),
    ConvLayer("DeepLabV3 ASPP 1x1 branch (OS16)", 2048, 256, (32, 32), kernel=1),
    ConvLayer("dilated ResNet-101 layer3 3x3 (OS8)", 256, 256, (64, 64), dilation=2, quick=True),
    ConvLayer("dilated ResNet-101 layer4 3x3 (OS8)", 512, 512, (64, 64), dilation=4),
    ConvLayer("DeepLabV3+ decoder 3x3 (256 ASPP + 48 low-level)", 304, 256, (128, 128)),
)

DEPTHWISE_CONV_LAYERS = (
    ConvLayer("MobileNetV2 block 3 depthwise", 144, 144, (128, 128), depthwise=True),
    ConvLayer("MobileNetV2 block 4 depthwise (stride 2)", 144, 144, (128, 128), stride=2, depthwise=True,
              quick=True),
    ConvLayer("MobileNetV2 blocks 5-6 depthwise", 192, 192, (64, 64), depthwise=True),
    ConvLayer("MobileNetV2 block 7 depthwise (stride 2)", 192, 192, (64, 64), stride=2, depthwise=True),
    ConvLayer("MobileNetV2 blocks 8-11 depthwise", 384, 384, (32, 32), depthwise=True),
    ConvLayer("MobileNetV2 blocks 12-13 depthwise", 576, 576, (32, 32), depthwise=True),
    ConvLayer("MobileNetV2 block 14 depthwise (stride 2, OS32)", 576, 576, (32, 32), stride=2, depthwise=True),
    ConvLayer("MobileNetV2 blocks 15-17 depthwise (OS32)", 960, 960, (16, 16), depthwise=True),
    ConvLayer("MobileNetV2 blocks 15-17 depthwise, dilated (OS16)", 960, 960, (32, 32), dilation=2,
              depthwise=True, quick=True),
    ConvLayer("Xception-65 middle flow depthwise", 728, 728, (32, 32), depthwise=True),
    ConvLayer("Xception-65 exit flow depthwise, dilated (OS16)", 1536, 1536, (32, 32), dilation=2,
              depthwise=True),
    ConvLayer("DeepLabV3+ separable ASPP depthwise rate 12 (OS16)", 2048, 2048, (32, 32), dilation=12,
              depthwise=True),
    ConvLayer("ConvNeXt-T stage 1 depthwise 7x7", 96, 96, (128, 128), kernel=7, depthwise=True),
    ConvLayer("ConvNeXt-T stage 2 depthwise 7x7", 192, 192, (64, 64), kernel=7, depthwise=True),
    ConvLayer("ConvNeXt-T stage 3 depthwise 7x7", 384, 384, (32, 32), kernel=7, depthwise=True, quick=True),
)


def _xception(where, c_in, c_out, hw, dilation=1, quick=False) -> SeparableLayer:
    # DeepLabV3+'s Xception: BatchNorm and ReLU after the depthwise and after the pointwise conv
    return SeparableLayer(f"Xception-65 {where}", c_in, c_out, hw, dilation=dilation, mid_activation="relu",
                          out_activation="relu", quick=quick)


def _mobilenet(where, c_in, c_out, hw, stride=1, dilation=1, quick=False) -> SeparableLayer:
    # MobileNetV2's inverted residual: depthwise, BatchNorm, ReLU6, then the linear 1x1 projection
    return SeparableLayer(f"MobileNetV2 {where} depthwise + projection", c_in, c_out, hw, stride=stride,
                          dilation=dilation, mid_activation="relu6", quick=quick)


SEPARABLE_CONV_LAYERS = (
    _xception("entry flow block 3 sepconv 1", 256, 728, (64, 64)),
    _xception("middle flow sepconv", 728, 728, (32, 32), quick=True),
    _xception("exit flow block 1 sepconv 2", 728, 1024, (32, 32)),
    _xception("exit flow block 2 sepconv 1 (OS16)", 1024, 1536, (32, 32), dilation=2),
    _xception("exit flow block 2 sepconv 2 (OS16)", 1536, 1536, (32, 32), dilation=2),
    _xception("exit flow block 2 sepconv 3 (OS16)", 1536, 2048, (32, 32), dilation=2),
    *(SeparableLayer(f"DeepLabV3+ separable ASPP rate {r} (OS16)", 2048, 256, (32, 32), dilation=r,
                     mid_activation="relu", out_activation="relu") for r in (6, 12, 18)),
    SeparableLayer("DeepLabV3+ separable decoder conv 1", 304, 256, (128, 128), mid_activation="relu",
                   out_activation="relu"),
    SeparableLayer("DeepLabV3+ separable decoder conv 2", 256, 256, (128, 128), mid_activation="relu",
                   out_activation="relu"),
    _mobilenet("block 3", 144, 24, (128, 128)),
    _mobilenet("block 4 (stride 2)", 144, 32, (128, 128), stride=2, quick=True),
    _mobilenet("blocks 5-6", 192, 32, (64, 64)),
    _mobilenet("block 7 (stride 2)", 192, 64, (64, 64), stride=2),
    _mobilenet("blocks 8-10", 384, 64, (32, 32)),
    _mobilenet("blocks 12-13", 576, 96, (32, 32)),
    _mobilenet("block 14 (stride 2, OS32)", 576, 160, (32, 32), stride=2),
    _mobilenet("blocks 15-16 (OS32)", 960, 160, (16, 16)),
    _mobilenet("blocks 15-16, dilated (OS16)", 960, 160, (32, 32), dilation=2, quick=True),
)


def layer_cases(layers, full: bool) -> list:
    """Every layer at batch 1 and 16 (full), or the quick ones at batch 1."""
    if not full:
        return [replace(layer, n=QUICK_BATCH) for layer in layers if layer.quick]
    return [replace(layer, n=n) for layer in layers for n in CONV_BATCHES]


# What the conv suites compare, per device: the PyTorch baselines of the
# issue (float16 and bfloat16 NCHW: PyTorch's native depthwise kernel;
# bfloat16 channels_last: cuDNN) and fastseg in the same dtype and layout;
# torch.compile runs the layer in the last config only (it is the most
# expensive case to set up, and Inductor picks its own layout anyway). On the
# CPU, float32 replaces float16 (PyTorch has no fast CPU float16 conv) and
# channels_last runs in float32: torch 2.13's CPU bfloat16 channels_last
# depthwise conv is slow, and its weight gradient with dilation 2 at
# 1x960x32x32 is wrong (relative error 1.5 against float64) and changes from
# call to call under load.
CONV_CONFIGS = {
    "cuda": ((torch.float16, "nchw"), (torch.bfloat16, "nchw"), (torch.bfloat16, "nhwc")),
    "cpu": ((torch.float32, "nchw"), (torch.bfloat16, "nchw"), (torch.float32, "nhwc")),
}
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@dataclass(frozen=True)
class Variant:
    """One contender of a conv group: PyTorch eager (``torch``), PyTorch
    under torch.compile (``compile``), or fastseg with ``backend``."""

    kind: str
    backend: str | None = None

    @property
    def id(self) -> str:
        return f"fastseg-{self.backend}" if self.kind == "fastseg" else self.kind

    @property
    def implementation(self) -> str:
        return {"torch": "torch", "compile": "torch.compile", "fastseg": "fastseg"}[self.kind]


@dataclass(frozen=True)
class ConvCase:
    """One benchmark of a conv suite: a contender (``variant``) on ``layer``
    in ``mode``, ``dtype`` and ``layout``. ``OP`` names the op; a suite
    adds its layer's fields to ``info`` with ``layer_info``."""

    OP: ClassVar[str]
    layer: object
    mode: str
    dtype: torch.dtype
    layout: str
    variant: Variant

    @property
    def group(self) -> str:
        return f"{self.OP} {self.mode} {self.layer.id}"

    @property
    def config(self) -> str:
        return f"{DTYPE_IDS[self.dtype]}-{self.layout}"

    @property
    def id(self) -> str:
        return f"{self.variant.id}-{self.mode}-{self.layer.id}-{self.config}"

    def layer_info(self) -> dict:
        raise NotImplementedError

    def info(self, compile_mode: str) -> dict:
        variant = self.variant
        backend = {"torch": "torch", "compile": f"torch.compile({compile_mode})"}.get(variant.kind, variant.backend)
        return {
            "op": self.OP, "mode": self.mode, "implementation": variant.implementation,
            "variant": f"{variant.id}-{self.config}", "backend": backend,
            "dtype": str(self.dtype).removeprefix("torch."),
            "layout": "channels_last" if self.layout == "nhwc" else "contiguous",
            **self.layer_info(),
            "batch": self.layer.n, "layer": self.layer.where, "conv": self.layer.describe,
            **({"compile_mode": compile_mode} if variant.kind == "compile" else {}),
        }


def conv_variants(op_backends, device_type: str, config) -> list[Variant]:
    """PyTorch first (its results are what the others are checked against),
    then torch.compile in the device's last config, then fastseg: every fast
    backend the op implements, and ``reference`` where no fast one is the
    default (on the CPU fastseg runs PyTorch's own conv; on a GPU that is
    the ``torch`` case already)."""
    fast = [b for b in op_backends.implemented if b != "reference"]
    fastseg = fast + ([] if op_backends.fastest_first.get(device_type) else ["reference"])
    compiled = config == CONV_CONFIGS[device_type][-1]
    return ([Variant("torch")] + ([Variant("compile")] if compiled else [])
            + [Variant("fastseg", b) for b in fastseg])


def resolve_device(config) -> torch.device:
    """The device ``--fastseg-device`` names (auto: CUDA when PyTorch sees a GPU)."""
    option = config.getoption("fastseg_device")
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(option)


def full_shapes(config) -> bool:
    """``--fastseg-shapes``: every shape (auto: on CUDA) or the quick CPU set."""
    option = config.getoption("fastseg_shapes")
    return resolve_device(config).type == "cuda" if option == "auto" else option == "full"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def last_level_cache_bytes(device: torch.device) -> int:
    """L2 on a GPU (50 MB on an H100); on a CPU the largest cache sysfs lists
    (32 MiB assumed where it lists none). Inputs are rotated so that a set is
    not read again before at least twice this many bytes went through."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    largest = 0
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            largest = max(largest, int(text.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        pass
    return largest or 32 << 20


def measure_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large same-device copy (read + write counted), the
    attainable memory bandwidth the ops are compared with. CUDA: 1 GiB
    device-to-device, CUDA events, median of 20 after warm-up. CPU: 256 MiB
    ``copy_``, host clock, median of 7."""
    nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    if device.type == "cuda":
        nbytes = min(nbytes, torch.cuda.mem_get_info(device)[0] // 4)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()  # not zeros
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    times = []
    if device.type == "cuda":
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(7):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def measure_matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in ``dtype`` (tensor cores for the
    16-bit dtypes on a GPU; float32 with TF32 exactly when cuDNN's convs use
    it), the attainable compute rate dense convs are compared with. CUDA:
    8192^3, CUDA events, median of 20 after warm-up. CPU: 2048^3, host
    clock, median of 5."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, dtype=dtype, device=device)  # random: never multiply zeros
    b = torch.randn(size, size, dtype=dtype, device=device)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        for _ in range(3 if device.type == "cuda" else 1):
            torch.mm(a, b)
        synchronize(device)
        times = []
        for _ in range(20 if device.type == "cuda" else 5):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.mm(a, b)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                times.append(time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return 2 * size ** 3 / statistics.median(times)


def peak_memory_bytes(fn, args, device: torch.device) -> int:
    """Device memory one call of ``fn(*args)`` allocates at its peak beyond
    what was allocated before it (its inputs, a model's weights, the other
    input sets): the call's intermediates, workspaces and outputs. CUDA
    only, from the caching allocator's statistics (which cuDNN's and
    cuBLAS's workspaces go through); the host has no such account of what
    one call allocates. An untimed call; run it after the warm-up, so that
    cuDNN's autotuning of a new shape is not counted."""
    if device.type != "cuda":
        raise ValueError(f"device: peak memory is measured on CUDA only, got {device}")
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(*args)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def roofline_figures(seconds: float, traffic: Traffic, flops: Flops | None, copy_bandwidth: float,
                     matmul_rate: float | None, prefix: str = "") -> dict:
    """Throughput at ``seconds`` per call and its fraction of the limits:
    ``gbps`` over the copy bandwidth, ``tflops`` (the GEMM share) over the
    matmul rate, and ``pct_of_roofline``: the time the tighter of the two
    bounds allows over ``seconds``. Without FLOPs the memory bound is the
    roofline. ``prefix`` names the timing the figures are of
    (``cuda_event_``, ``cuda_graph_``), prepended to every key."""
    figures = {"gbps": round(traffic.total / seconds / 1e9, 2),
               "pct_of_copy_bandwidth": round(100 * traffic.total / seconds / copy_bandwidth, 1)}
    memory_s, compute_s = traffic.total / copy_bandwidth, 0.0
    if flops is not None:
        compute_s = flops.gemm / matmul_rate
        figures.update({"tflops": round(flops.total / seconds / 1e12, 4),
                        "pct_of_matmul_rate": round(100 * flops.gemm / seconds / matmul_rate, 1)})
    figures["pct_of_roofline"] = round(100 * max(memory_s, compute_s) / seconds, 1)
    return {prefix + key: value for key, value in figures.items()}


def roofline_bound(traffic: Traffic, flops: Flops | None, copy_bandwidth: float, matmul_rate: float | None) -> dict:
    """The lower bound on the time and which limit sets it."""
    memory_s = traffic.total / copy_bandwidth
    compute_s = 0.0 if flops is None else flops.gemm / matmul_rate
    return {"roofline_s": max(memory_s, compute_s), "bound": "compute" if compute_s > memory_s else "memory"}


def versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import fastseg
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastseg": fastseg.__version__,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
