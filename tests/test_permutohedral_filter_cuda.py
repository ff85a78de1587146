"""The cuda backend of the permutohedral lattice (csrc/cuda/permutohedral_filter.cu)
against the cpp backend and the reference.

The CUDA lattice numbers its vertices as the CPU one does (by first
appearance in flat corner order) and rounds every product as it does (no
fused multiply-adds), so on an x86-64 host the two build the same lattice
tensors, bit for bit, and filter to the same outputs; the filter is also
compared with the reference within float tolerance. Every test needs a GPU
and the extension built with CUDA.
"""

import pytest
import torch

import fastseg
from fastseg.ops import dense_crf, permutohedral_filter, permutohedral_lattice
from fastseg.ops.permutohedral_filter import flat_features
from fastseg.reference.permutohedral_filter import LatticeTensors

pytestmark = pytest.mark.cuda

DIMS = (1, 2, 3, 5, 16)
BATCHES = (1, 3)
CHANNELS = (1, 21)
DTYPES = (torch.float32, torch.float64)
# Largest error relative to the largest output: the lattice's rounding
# differs between the reference (a matmul lift) and the compiled kernels.
REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
HEIGHT, WIDTH = 13, 11  # odd, N = 143 pixels per image


@pytest.fixture(autouse=True)
def _cuda_backend_built():
    status = fastseg.backends()["backends"]["cuda"]["cuda"]
    if not status["available"]:
        pytest.skip(f"cuda backend unavailable: {status['reason']}")


def random_features(batch, d, dtype, gen, scale=4.0):
    """[B, d, H, W]: features spread over a few lattice cells per axis."""
    return (torch.rand(batch, d, HEIGHT, WIDTH, generator=gen, dtype=torch.float64) * scale).to(dtype)


def image_features(batch, d, dtype, gen):
    """[B, d, H, W] (d >= 2) as a bilateral CRF kernel sees them: positions
    / sxy, then piecewise-constant colours / srgb, so that neighbouring
    pixels often share a simplex (the build's shortcut for repeated
    simplices)."""
    ys, xs = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    positions = torch.stack([ys, xs]).double().div(5).expand(batch, 2, HEIGHT, WIDTH)
    blocks = torch.rand(batch, max(d - 2, 0), 4, 3, generator=gen, dtype=torch.float64) * 4
    colours = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3)[..., :HEIGHT, :WIDTH]
    return torch.cat([positions, colours], 1)[:, :d].to(dtype).contiguous()


def random_values(batch, channels, dtype, gen):
    return torch.randn(batch, channels, HEIGHT, WIDTH, generator=gen, dtype=torch.float64).to(dtype)


def lattice_of(features: torch.Tensor, device: str) -> LatticeTensors:
    """The lattice tensors of features [B, d, *spatial] from the compiled
    op on ``device``, laid out and shifted as the public API does."""
    flat = flat_features(features, features.dtype).to(device)
    return LatticeTensors(*torch.ops.fastseg_C.permutohedral_lattice(flat))


def apply(values_flat: torch.Tensor, lattice: LatticeTensors, reverse: bool = False) -> torch.Tensor:
    return torch.ops.fastseg_C.permutohedral_apply(values_flat, *lattice, reverse)


def flat(values: torch.Tensor) -> torch.Tensor:
    """[B, C, *spatial] -> [B, N, C], contiguous."""
    return values.reshape(*values.shape[:2], -1).transpose(1, 2).contiguous()


def assert_lattices_equal(got: LatticeTensors, expected: LatticeTensors) -> None:
    for name, a, b in zip(LatticeTensors._fields, got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, a.shape, b.dtype, b.shape)
        assert torch.equal(a.cpu(), b.cpu()), f"{name}: {int((a.cpu() != b.cpu()).sum())} entries differ"


def assert_close_rel(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    got, expected = got.cpu().double(), expected.cpu().double()
    scale = max(float(expected.abs().max()), 1e-30)
    torch.testing.assert_close(got, expected, rtol=0, atol=REL_TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("kind, d", [("random", d) for d in DIMS] + [("image", d) for d in DIMS if d >= 2])
def test_lattice_identical_to_cpu(kind, d, batch, dtype, gen):
    """Same vertex numbering, neighbours, CSR list and weights as the CPU."""
    features = (random_features if kind == "random" else image_features)(batch, d, dtype, gen)
    expected = lattice_of(features, "cpu")
    got = lattice_of(features, "cuda")
    assert all(t.is_cuda for t in got)
    assert_lattices_equal(got, expected)


@pytest.mark.parametrize("d", (17, 33, 64))
def test_lattice_identical_to_cpu_many_features(d, gen):
    """Every per-thread array size the kernels are compiled for (d <= 8, 16,
    32, 64)."""
    features = random_features(2, d, torch.float32, gen)
    assert_lattices_equal(lattice_of(features, "cuda"), lattice_of(features, "cpu"))


def test_lattice_rejects_too_many_features():
    features = torch.rand(1, 4, 65, device="cuda")
    with pytest.raises(RuntimeError, match="at most 64 features"):
        torch.ops.fastseg_C.permutohedral_lattice(features)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 5), (2, 7, 3)], ids=str)
def test_lattice_minimal(shape, gen):
    """One pixel, and several identical pixels (one simplex per image)."""
    features = torch.rand(shape[0], 1, shape[2], generator=gen).expand(shape).contiguous()
    expected = LatticeTensors(*torch.ops.fastseg_C.permutohedral_lattice(features))
    got = LatticeTensors(*torch.ops.fastseg_C.permutohedral_lattice(features.cuda()))
    assert_lattices_equal(got, expected)
    values = torch.randn(shape[0], shape[1], 3, generator=gen)
    assert torch.equal(apply(values.cuda(), got).cpu(), apply(values, expected))


def test_lattice_empty():
    got = torch.ops.fastseg_C.permutohedral_lattice(torch.empty(0, 5, 3, device="cuda"))
    expected = torch.ops.fastseg_C.permutohedral_lattice(torch.empty(0, 5, 3))
    assert_lattices_equal(LatticeTensors(*got), LatticeTensors(*expected))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("d", DIMS)
def test_apply_matches_cpu(d, batch, channels, dtype, reverse, gen):
    """One lattice, applied by both backends."""
    lattice = lattice_of(random_features(batch, d, dtype, gen), "cpu")
    values = flat(random_values(batch, channels, dtype, gen))
    expected = apply(values, lattice, reverse)
    got = apply(values.cuda(), LatticeTensors(*(t.cuda() for t in lattice)), reverse)
    assert got.is_cuda and got.dtype == dtype and got.shape == expected.shape
    assert_close_rel(got, expected, dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", DIMS)
def test_apply_bitwise_equal_to_cpu(d, dtype, reverse, gen):
    """The kernels sum in the CPU's order and never fuse products into FMAs,
    so on an x86-64 host (whose baseline has no FMA) the outputs are the
    CPU's bit for bit."""
    lattice = lattice_of((image_features if d >= 2 else random_features)(2, d, dtype, gen), "cpu")
    values = flat(random_values(2, 21, dtype, gen))
    expected = apply(values, lattice, reverse)
    got = apply(values.cuda(), LatticeTensors(*(t.cuda() for t in lattice)), reverse).cpu()
    assert torch.equal(got, expected), f"max difference {float((got - expected).abs().max()):.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_apply_heavy_vertices(dtype, gen):
    """Vertices with more corners than one thread sums alone (HEAVY_CORNERS
    in the .cu), as a flat region under a wide bilateral kernel makes, here
    beside light ones: a block sums each in a fixed tree, the same on every
    run and equal to the CPU's sequential sum within rounding."""
    flat_region = 1e-3 * torch.rand(1, 2, 40, 25, generator=gen, dtype=torch.float64)  # ~1000 pixels per vertex
    spread = 20 * torch.rand(1, 2, 40, 25, generator=gen, dtype=torch.float64)
    lattice = lattice_of(torch.cat([flat_region, spread], 3).to(dtype), "cpu")
    corners_per_vertex = lattice.vertex_start.diff()
    assert corners_per_vertex.max() > 256 and corners_per_vertex.min() < 256
    values = flat(torch.randn(1, 21, 40, 50, generator=gen, dtype=torch.float64).to(dtype))
    on_gpu = LatticeTensors(*(t.cuda() for t in lattice))
    assert_lattices_equal(lattice_of(torch.cat([flat_region, spread], 3).to(dtype), "cuda"), lattice)
    got = apply(values.cuda(), on_gpu)
    assert torch.equal(got, apply(values.cuda(), on_gpu))
    assert_close_rel(got, apply(values, lattice), dtype)


def test_apply_empty_channels(gen):
    lattice = lattice_of(random_features(2, 3, torch.float32, gen), "cuda")
    out = apply(torch.empty(2, HEIGHT * WIDTH, 0, device="cuda"), lattice)
    assert out.shape == (2, HEIGHT * WIDTH, 0) and out.is_cuda


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("d", DIMS)
def test_filter_matches_cpp_and_reference(d, batch, channels, dtype, gen):
    features = random_features(batch, d, dtype, gen)
    values = random_values(batch, channels, dtype, gen)
    got = permutohedral_filter(values.cuda(), features.cuda(), backend="cuda")
    assert got.is_cuda and got.dtype == dtype and got.shape == values.shape
    assert_close_rel(got, permutohedral_filter(values, features, backend="cpp"), dtype)
    assert_close_rel(got, permutohedral_filter(values, features, backend="reference"), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_filter_low_precision_inputs(dtype, gen):
    """16-bit inputs are filtered in float32, as by the cpp backend."""
    features = random_features(2, 5, torch.float32, gen).to(dtype)
    values = random_values(2, 4, torch.float32, gen).to(dtype)
    got = permutohedral_filter(values.cuda(), features.cuda(), backend="cuda")
    expected = permutohedral_filter(values, features, backend="cpp")
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu(), expected)


def test_filter_channels_last_and_permuted(gen):
    features = random_features(2, 5, torch.float32, gen)
    values = random_values(2, 6, torch.float32, gen)
    expected = permutohedral_filter(values, features, backend="cpp")
    for v in (values.cuda().contiguous(memory_format=torch.channels_last),
              values.cuda().transpose(2, 3).contiguous().transpose(2, 3)):
        got = permutohedral_filter(v, features.cuda(), backend="cuda")
        assert_close_rel(got, expected, torch.float32)


def test_lattice_object_on_cuda(gen):
    """permutohedral_lattice(backend="cuda") once, applied to several values."""
    features = image_features(2, 5, torch.float32, gen)
    lattice = permutohedral_lattice(features.cuda(), backend="cuda")
    reference = permutohedral_lattice(features, backend="cpp")
    assert lattice.backend == "cuda" and lattice.vertices == reference.vertices
    for channels in (1, 21):
        values = random_values(2, channels, torch.float32, gen)
        assert_close_rel(lattice(values.cuda()), reference(values), torch.float32)


@pytest.mark.parametrize("d", (2, 5, 16))
def test_deterministic(d, gen):
    """Build and filter three times: bitwise the same every run."""
    features = image_features(3, d, torch.float32, gen).cuda()
    values = random_values(3, 21, torch.float32, gen).cuda()
    first_lattice = lattice_of(features, "cuda")
    first_out = permutohedral_filter(values, features, backend="cuda")
    for _ in range(2):
        assert_lattices_equal(lattice_of(features, "cuda"), first_lattice)
        assert torch.equal(permutohedral_filter(values, features, backend="cuda"), first_out)


def test_current_stream(gen):
    """Kernels run on the current stream, in order with the work around them."""
    features = random_features(2, 5, torch.float32, gen)
    values = random_values(2, 8, torch.float32, gen)
    expected = permutohedral_filter(values, features, backend="cpp")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = permutohedral_filter(values.cuda(non_blocking=True) * 1.0, features.cuda(), backend="cuda")
    stream.synchronize()
    assert_close_rel(got, expected, torch.float32)


@pytest.mark.parametrize("d", DIMS)
def test_adjoint_identity(d, gen):
    """<K v, u> = <v, K^T u>, K^T the filter with the directions reversed."""
    lattice = lattice_of(random_features(2, d, torch.float64, gen), "cuda")
    v = flat(random_values(2, 3, torch.float64, gen)).cuda()
    u = flat(random_values(2, 3, torch.float64, gen)).cuda()
    forward = (apply(v, lattice) * u).sum()
    adjoint = (v * apply(u, lattice, reverse=True)).sum()
    torch.testing.assert_close(forward, adjoint, rtol=1e-12, atol=0)


def test_gradient(gen):
    features = random_features(2, 3, torch.float64, gen).cuda()
    values = random_values(2, 2, torch.float64, gen).cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: permutohedral_filter(v, features, backend="cuda"), (values,))


def test_opcheck(gen):
    features = flat_features(random_features(2, 3, torch.float64, gen), torch.float64).cuda()
    torch.library.opcheck(torch.ops.fastseg.permutohedral_lattice.default, (features, "cuda"))
    lattice = torch.ops.fastseg.permutohedral_lattice(features, "cuda")
    values = flat(random_values(2, 4, torch.float64, gen)).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.fastseg.permutohedral_apply.default, (values, *lattice, False, "cuda"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", BATCHES)
def test_dense_crf_matches_cpu(batch, dtype, gen):
    logits = torch.randn(batch, 5, HEIGHT, WIDTH, generator=gen, dtype=torch.float64).to(dtype)
    image = torch.randint(0, 256, (batch, 3, HEIGHT, WIDTH), generator=gen, dtype=torch.uint8)
    expected = dense_crf(logits, image, backend="cpp")
    got = dense_crf(logits.cuda(), image.cuda(), backend="cuda")
    assert got.is_cuda and got.dtype == dtype
    assert_close_rel(got, expected, dtype)
