"""Max-pool with indices, max-unpool, and the pair, at SegNet's shapes.

SegNet (Badrinarayanan et al., 2017, Sec. 3) pools each of VGG16's five
encoder stages 2x2 with stride 2, keeps the argmax indices, and its decoder
unpools with them to the encoder's size. The feature maps entering the pools
are (64, H, W), (128, H/2, W/2), (256, H/4, W/4), (512, H/8, W/8) and
(512, H/16, W/16), sizes floored stage by stage (360 -> 180 -> 90 -> 45 -> 22);
inputs 360x480 (CamVid, as in the paper) and 512x512, batch 1 and 8.

Every group (op, shape, dtype, layout) holds PyTorch's op and each fastseg
backend with flat (int64) and compact (uint8) indices, on the same inputs.
These are benchmarks, not timed tests: nothing asserts on speed; each
fastseg result is checked against PyTorch's once, outside the timing, so a
broken kernel is never timed.
"""

import importlib
import math
from dataclasses import dataclass

import roofline
import torch
import torch.nn.functional as F

import fastseg

KERNEL, STRIDE = 2, 2  # SegNet's pools: 2x2, stride 2, no padding or dilation

SEGNET_INPUTS = ((360, 480), (512, 512))  # CamVid as in the paper; a square input
VGG16_STAGE_CHANNELS = (64, 128, 256, 512, 512)  # channels entering pool1..pool5
BATCHES = (1, 8)  # latency, throughput

POOL_BACKENDS = importlib.import_module("fastseg.ops.max_pool2d").BACKENDS.implemented
UNPOOL_BACKENDS = importlib.import_module("fastseg.ops.max_unpool2d").BACKENDS.implemented
INDEX_DTYPES = {"flat": torch.int64, "compact": torch.uint8}
INDEX_BYTES = {"flat": roofline.FLAT_INDEX_BYTES, "compact": roofline.COMPACT_INDEX_BYTES}
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@dataclass(frozen=True)
class Shape:
    """A feature map entering one of SegNet's pools."""

    n: int
    c: int
    h: int
    w: int
    image: tuple[int, int]
    stage: int  # 1..5: pool1..pool5

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def pooled(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, (self.h - KERNEL) // STRIDE + 1, (self.w - KERNEL) // STRIDE + 1)

    @property
    def id(self) -> str:
        return f"b{self.n}-{self.c}x{self.h}x{self.w}"

    @property
    def segnet(self) -> str:
        return f"SegNet {self.image[0]}x{self.image[1]} pool{self.stage}"


def segnet_shapes(full: bool) -> list[Shape]:
    if not full:  # a CPU run: batch 1, the two deepest stages of the CamVid input
        return [s for s in _all_shapes() if s.n == 1 and s.image == SEGNET_INPUTS[0] and s.stage >= 4]
    return _all_shapes()


def _all_shapes() -> list[Shape]:
    shapes = []
    for image in SEGNET_INPUTS:
        for n in BATCHES:
            h, w = image
            for stage, c in enumerate(VGG16_STAGE_CHANNELS, start=1):
                shapes.append(Shape(n, c, h, w, image, stage))
                h, w = h // STRIDE, w // STRIDE
    return shapes


@dataclass(frozen=True)
class Variant:
    """One contender in a group: PyTorch's op, or fastseg with given backends."""

    backends: tuple[str, ...]  # () for PyTorch; (pool, unpool) for the round trip
    indices: str  # flat or compact

    @property
    def torch(self) -> bool:
        return not self.backends

    @property
    def backend(self) -> str:
        return "torch" if self.torch else "+".join(self.backends)

    @property
    def id(self) -> str:
        return "torch" if self.torch else f"fastseg-{self.backend}-{self.indices}"


@dataclass(frozen=True)
class Case:
    op: str
    shape: Shape
    dtype: torch.dtype
    layout: str
    variant: Variant

    @property
    def group(self) -> str:
        return f"{self.op} {'x'.join(map(str, self.shape.dims))} {DTYPE_IDS[self.dtype]} {self.layout}"

    @property
    def id(self) -> str:
        return f"{self.variant.id}-{self.shape.id}-{DTYPE_IDS[self.dtype]}-{self.layout}"

    def info(self) -> dict:
        return {
            "op": self.op, "implementation": "torch" if self.variant.torch else "fastseg",
            "variant": self.variant.id, "backend": self.variant.backend, "indices": self.variant.indices,
            "dtype": str(self.dtype).removeprefix("torch."),
            "layout": "channels_last" if self.layout == "nhwc" else "contiguous",
            "shape": list(self.shape.dims), "pooled_shape": list(self.shape.pooled),
            "batch": self.shape.n, "segnet": self.shape.segnet,
        }


def _variants(op: str) -> list[Variant]:
    if op == "max_pool2d":
        pairs = [(b,) for b in POOL_BACKENDS]
    elif op == "max_unpool2d":
        pairs = [(b,) for b in UNPOOL_BACKENDS]
    else:  # the round trip: each unpool backend after the pool backend of its kind
        pairs = [(b if b in POOL_BACKENDS else "triton" if b == "cuda" else "reference", b) for b in UNPOOL_BACKENDS]
    return [Variant((), "flat")] + [Variant(p, kind) for p in pairs for kind in INDEX_DTYPES]


def pytest_generate_tests(metafunc):
    """Cases group by group, PyTorch first in each, so that a group's input
    sets are made once and its baseline is computed once."""
    for fixture, op in (("pool_case", "max_pool2d"), ("unpool_case", "max_unpool2d"),
                        ("roundtrip_case", "max_pool2d+max_unpool2d")):
        if fixture in metafunc.fixturenames:
            config = metafunc.config
            cuda = roofline.resolve_device(config).type == "cuda"
            dtypes = (torch.float32, torch.bfloat16) + ((torch.float16,) if cuda else ())
            cases = [Case(op, shape, dtype, layout, variant)
                     for shape in segnet_shapes(roofline.full_shapes(config))
                     for dtype in dtypes for layout in LAYOUTS for variant in _variants(op)]
            metafunc.parametrize(fixture, cases, ids=[c.id for c in cases])


# --- inputs ------------------------------------------------------------------

def _random_input(shape: Shape, dtype: torch.dtype, layout: str, device: torch.device) -> torch.Tensor:
    x = torch.randn(shape.dims, dtype=dtype, device=device)  # random: never time zeros
    return x.contiguous(memory_format=LAYOUTS[layout])


def _window_offsets(flat: torch.Tensor, in_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices [N, C, Ho, Wo] -> (row, col) of each inside its own window."""
    ho, wo = flat.shape[-2:]
    oh = torch.arange(ho, device=flat.device).view(ho, 1)
    ow = torch.arange(wo, device=flat.device).view(1, wo)
    return flat // in_w - oh * STRIDE, flat % in_w - ow * STRIDE


def flat_to_compact(flat: torch.Tensor, in_w: int) -> torch.Tensor:
    rows, cols = _window_offsets(flat, in_w)
    return (rows * KERNEL + cols).to(torch.uint8)


def compact_to_flat(compact: torch.Tensor, in_w: int) -> torch.Tensor:
    ho, wo = compact.shape[-2:]
    pos = compact.long()
    oh = torch.arange(ho, device=compact.device).view(ho, 1)
    ow = torch.arange(wo, device=compact.device).view(1, wo)
    return (oh * STRIDE + pos // KERNEL) * in_w + ow * STRIDE + pos % KERNEL


# --- checks (outside the timing) ----------------------------------------------

def _mismatches(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{int((a != b).sum())} of {a.numel()} elements differ"


def check_pool(case: Case, x: torch.Tensor, got, expected) -> None:
    """fastseg's pool equals F.max_pool2d's: values bit for bit; an index may
    differ only where the window holds the maximum twice (a tie in a
    low-precision dtype) and names that maximum inside its window."""
    values, indices = got
    want_values, want_flat = expected
    where = f"{case.variant.id} on {case.group}"
    assert indices.dtype == INDEX_DTYPES[case.variant.indices], f"{where}: indices are {indices.dtype}"
    assert values.shape == want_values.shape and indices.shape == want_values.shape, \
        f"{where}: shapes {tuple(values.shape)}, {tuple(indices.shape)}; expected {tuple(want_values.shape)}"
    assert torch.equal(values, want_values), f"{where}: values differ from F.max_pool2d ({_mismatches(values, want_values)})"
    in_w = x.shape[-1]
    flat = indices if case.variant.indices == "flat" else compact_to_flat(indices, in_w)
    if torch.equal(flat, want_flat):
        return
    rows, cols = _window_offsets(flat, in_w)
    inside = (rows >= 0) & (rows < KERNEL) & (cols >= 0) & (cols < KERNEL)
    safe = torch.where(inside, flat, want_flat)
    picked = x.flatten(2).gather(2, safe.flatten(2)).view_as(values)
    ties = inside & (picked == want_values)
    assert bool(ties.all()), (f"{where}: indices differ from F.max_pool2d's ({_mismatches(flat, want_flat)}) "
                              f"and {int((~ties).sum())} of them do not name their window's maximum")


def check_unpool(case: Case, got: torch.Tensor, expected: torch.Tensor) -> None:
    where = f"{case.variant.id} on {case.group}"
    assert got.shape == expected.shape, f"{where}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    assert torch.equal(got, expected), f"{where}: output differs from F.max_unpool2d ({_mismatches(got, expected)})"


# --- the benchmarks ------------------------------------------------------------

def _pool_sets(bench_env, case: Case, traffic: roofline.Traffic, disabled: bool):
    shape, device = case.shape, bench_env.device
    set_bytes = math.prod(shape.dims) * case.dtype.itemsize  # a set is one x; outputs are made per call
    count = bench_env.rotation_count(traffic.total, set_bytes, disabled)
    return bench_env.inputs(("x", shape, case.dtype, case.layout, count),
                            lambda _: _random_input(shape, case.dtype, case.layout, device), count)


def test_max_pool2d(benchmark, bench_env, pool_case):
    case, variant = pool_case, pool_case.variant
    bench_env.require(variant.backends)
    benchmark.group = case.group
    shape = case.shape
    traffic = roofline.pool_traffic(shape.dims, shape.pooled, case.dtype, INDEX_BYTES[variant.indices])
    # every variant of the group rotates as many sets as the one moving the fewest bytes needs
    fewest = roofline.pool_traffic(shape.dims, shape.pooled, case.dtype, roofline.COMPACT_INDEX_BYTES)
    data = _pool_sets(bench_env, case, fewest, benchmark.disabled)

    if variant.torch:
        def fn(x):
            return F.max_pool2d(x, KERNEL, STRIDE, return_indices=True)
    else:
        backend, compact = variant.backends[0], variant.indices == "compact"

        def fn(x):
            return fastseg.ops.max_pool2d_with_indices(x, KERNEL, STRIDE, compact=compact, backend=backend)

        x0 = data.sets[0]
        if data.baseline is None:
            data.baseline = F.max_pool2d(x0, KERNEL, STRIDE, return_indices=True)
        check_pool(case, x0, fn(x0), data.baseline)

    bench_env.measure(benchmark, fn, [(x,) for x in data.sets], traffic, case.info())


def test_max_unpool2d(benchmark, bench_env, unpool_case):
    case, variant = unpool_case, unpool_case.variant
    bench_env.require(variant.backends)
    benchmark.group = case.group
    shape, device = case.shape, bench_env.device
    out_hw = (shape.h, shape.w)  # SegNet's decoder unpools to the encoder's size (45, not 44)
    traffic = roofline.unpool_traffic(shape.pooled, shape.dims, case.dtype, INDEX_BYTES[variant.indices])
    fewest = roofline.unpool_traffic(shape.pooled, shape.dims, case.dtype, roofline.COMPACT_INDEX_BYTES)
    set_bytes = math.prod(shape.pooled) * (case.dtype.itemsize + roofline.FLAT_INDEX_BYTES
                                           + roofline.COMPACT_INDEX_BYTES)  # values, flat, compact
    count = bench_env.rotation_count(fewest.total, set_bytes, benchmark.disabled)

    def make(_):
        # real pooling results of a random input: values, flat and compact indices of the same maxima
        x = _random_input(shape, case.dtype, case.layout, device)
        values, flat = F.max_pool2d(x, KERNEL, STRIDE, return_indices=True)
        compact = flat_to_compact(flat, shape.w).contiguous(memory_format=LAYOUTS[case.layout])
        return values, flat, compact

    data = bench_env.inputs(("pooled", shape, case.dtype, case.layout, count), make, count)
    which = 1 if variant.indices == "flat" else 2
    sets = [(s[0], s[which]) for s in data.sets]

    if variant.torch:
        def fn(values, flat):
            return F.max_unpool2d(values, flat, KERNEL, STRIDE, output_size=out_hw)
    else:
        backend = variant.backends[0]

        def fn(values, indices):
            return fastseg.ops.max_unpool2d(values, indices, KERNEL, STRIDE, output_size=out_hw, backend=backend)

        if data.baseline is None:
            values, flat, _ = data.sets[0]
            data.baseline = F.max_unpool2d(values, flat, KERNEL, STRIDE, output_size=out_hw)
        check_unpool(case, fn(*sets[0]), data.baseline)

    bench_env.measure(benchmark, fn, sets, traffic, case.info())


def test_max_pool2d_unpool_roundtrip(benchmark, bench_env, roundtrip_case):
    """A SegNet encoder pool and its decoder unpool, indices kept in between."""
    case, variant = roundtrip_case, roundtrip_case.variant
    bench_env.require(variant.backends)
    benchmark.group = case.group
    shape = case.shape
    out_hw = (shape.h, shape.w)
    traffic = roofline.roundtrip_traffic(shape.dims, shape.pooled, case.dtype, INDEX_BYTES[variant.indices])
    fewest = roofline.roundtrip_traffic(shape.dims, shape.pooled, case.dtype, roofline.COMPACT_INDEX_BYTES)
    data = _pool_sets(bench_env, case, fewest, benchmark.disabled)

    if variant.torch:
        def fn(x):
            values, flat = F.max_pool2d(x, KERNEL, STRIDE, return_indices=True)
            return values, flat, F.max_unpool2d(values, flat, KERNEL, STRIDE, output_size=out_hw)
    else:
        pool_backend, unpool_backend = variant.backends
        compact = variant.indices == "compact"

        def fn(x):
            values, indices = fastseg.ops.max_pool2d_with_indices(x, KERNEL, STRIDE, compact=compact,
                                                                  backend=pool_backend)
            y = fastseg.ops.max_unpool2d(values, indices, KERNEL, STRIDE, output_size=out_hw, backend=unpool_backend)
            return values, indices, y

        x0 = data.sets[0]
        if data.baseline is None:
            data.baseline = F.max_pool2d(x0, KERNEL, STRIDE, return_indices=True)
        values, indices, y = fn(x0)
        check_pool(case, x0, (values, indices), data.baseline)
        flat = indices if not compact else compact_to_flat(indices, shape.w)
        check_unpool(case, y, F.max_unpool2d(values, flat, KERNEL, STRIDE, output_size=out_hw))

    bench_env.measure(benchmark, fn, [(x,) for x in data.sets], traffic, case.info())
