"""fastseg.ops.max_unpool2d / MaxUnpool2d against PyTorch's max-unpool, on
every backend, with flat (PyTorch's int64) and compact (uint8) indices; and
the pool -> unpool pair under torch.compile and torch.export.

Indices come from F.max_pool2d on random inputs; compact ones are converted
from them with the window geometry written out in pool_helpers. Unpool only
moves values, so every result must be identical to PyTorch's.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastseg
from fastseg.ops import MaxPool2d, MaxUnpool2d, max_pool2d_with_indices, max_unpool2d
from pool_helpers import (ASYMMETRIC, DTYPES, GEOMETRIES, GEOMETRY_IDS, K3S1_DIL2, K3S2_CEIL, PLAIN_K2,
                          UNPOOL_BACKENDS, Geometry, assert_identical, assert_layout, dtype_id,
                          make_input, on_devices, random_values, relayout, unpool_expected, values_at_targets)

BACKENDS = on_devices(UNPOOL_BACKENDS)
CPU_BACKENDS = UNPOOL_BACKENDS["cpu"]

# (layout of the values, layout of the indices)
LAYOUTS = {
    "nchw": ("nchw", "nchw"),
    "channels_last": ("channels_last", "channels_last"),
    "permuted": ("permuted", "permuted"),
    "strided": ("strided", "strided"),
    "mixed": ("channels_last", "nchw"),
    "mixed_reverse": ("nchw", "channels_last"),
    "nchw_strided": ("nchw", "strided"),
}


def pool_indices(geometry: Geometry, device: str, gen: torch.Generator):
    """A random pool input and PyTorch's flat indices of its max-pool, with
    the same maxima as compact indices."""
    x = make_input(geometry.shape, device=device, gen=gen)
    _, flat = F.max_pool2d(x, **geometry.pool_args, return_indices=True)
    return x, flat, geometry.flat_to_compact(flat, x.shape[-1])


def expected_unpool(values, indices, geometry: Geometry, out_hw):
    """PyTorch's unpool of ``values`` at ``indices`` (flat, or compact turned
    into flat for planes of ``out_hw``); None where some index names no
    output pixel, for which fastseg must raise."""
    if indices.dtype == torch.uint8:
        rows, cols = geometry.compact_targets(indices)
        if ((rows < 0) | (rows >= out_hw[0]) | (cols < 0) | (cols >= out_hw[1])).any():
            return None
        indices = rows * out_hw[1] + cols
    return unpool_expected(values, indices, out_hw)


def check_unpool(values, flat, compact, geometry: Geometry, backend: str, output_sizes, indices_layout="nchw"):
    """Flat and compact unpools of ``values`` for each output size against
    PyTorch's; the inputs are left unchanged."""
    before = values.clone()
    default_hw = geometry.default_unpooled_hw(values.shape[-2:])
    for output_size in output_sizes:
        out_hw = default_hw if output_size is None else tuple(output_size[-2:])
        for indices in (flat, compact):
            indices = relayout(indices, indices_layout)
            indices_before = indices.clone()
            expected = expected_unpool(values, indices, geometry, out_hw)
            if expected is None:
                with pytest.raises(ValueError, match=r"indices: \d+ of \d+ entries are invalid"):
                    max_unpool2d(values, indices, **geometry.unpool_args, output_size=output_size, backend=backend)
            else:
                out = max_unpool2d(values, indices, **geometry.unpool_args, output_size=output_size, backend=backend)
                assert_identical(out, expected)
                assert_layout(out, values)
            assert torch.equal(indices, indices_before)
    assert_identical(values, before)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_torch(device, backend, geometry, layout, gen):
    """Output sizes: the default, the pool input's (H, W) and its full
    torch.Size. The values agree where indices repeat, so which duplicate
    wins does not matter here (see test_duplicate_indices_last_one_wins)."""
    x, flat, compact = pool_indices(geometry, device, gen)
    values = values_at_targets(torch.randn(x.shape, generator=gen).to(device), flat)
    values_layout, indices_layout = LAYOUTS[layout]
    check_unpool(relayout(values, values_layout), flat, compact, geometry, backend,
                 output_sizes=(None, x.shape[-2:], x.shape), indices_layout=indices_layout)


# Windows that tile the output (kernel == stride): the CPU kernel's own path
# for compact indices, in every dtype (its words are 2, 4 or 8 bytes). With
# ceil_mode on odd sizes, x's own size is one short of the last window: the
# general path; kernel 2 with dilation 2 never tiles; kernel 1 always does.
TILED = (PLAIN_K2, Geometry((1, 4, 10, 14), (2, 3)), Geometry((2, 3, 9, 11), 2, ceil_mode=True),
         Geometry((1, 2, 9, 9), 2, 2, 0, 2), Geometry((1, 2, 7, 9), 1, 1, 0, 2))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("geometry", [K3S2_CEIL, ASYMMETRIC, *TILED], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_torch_dtypes(device, backend, geometry, dtype, layout, gen):
    x, flat, compact = pool_indices(geometry, device, gen)
    table = random_values(x.shape, dtype, "nonfinite", gen).to(device)
    values = relayout(values_at_targets(table, flat), layout)
    check_unpool(values, flat, compact, geometry, backend, output_sizes=(None, x.shape[-2:]), indices_layout=layout)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("geometry", [K3S2_CEIL, K3S1_DIL2], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_duplicate_indices_last_one_wins(backend, geometry, layout, gen, single_thread):
    """Overlapping windows repeat indices; with differing values PyTorch's
    CPU kernel keeps the last in row-major input order, and so must every
    CPU backend, flat or compact (compact: the window with the largest
    (oh, ow) among those whose max a pixel is)."""
    x, flat, compact = pool_indices(geometry, "cpu", gen)
    planes = flat.reshape(-1, flat.shape[-2] * flat.shape[-1])
    assert any(p.unique().numel() < p.numel() for p in planes), "the case has no repeated index"
    values = relayout(torch.randn(flat.shape, generator=gen), layout)
    expected = torch.ops.aten.max_unpool2d(values, relayout(flat, layout), list(x.shape[-2:]))
    for indices in (flat, compact):
        out = max_unpool2d(values, relayout(indices, layout), **geometry.unpool_args, output_size=x.shape[-2:],
                           backend=backend)
        assert_identical(out, expected)
    assert_identical(fastseg.reference.max_unpool2d(values, compact, **geometry.unpool_args,
                                                    output_size=x.shape[-2:]), expected)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_reference_function_matches_torch(geometry, gen):
    """fastseg.reference.max_unpool2d, the public ground truth (4-D input)."""
    x, flat, compact = pool_indices(geometry, "cpu", gen)
    values = values_at_targets(torch.randn(x.shape, generator=gen), flat)
    expected = torch.ops.aten.max_unpool2d(values, flat, list(x.shape[-2:]))
    for indices in (flat, compact):
        out = fastseg.reference.max_unpool2d(values, indices, **geometry.unpool_args, output_size=x.shape[-2:])
        assert_identical(out, expected)
    bad = flat.clone()
    bad[0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"indices: 1 entries do not name a position of the output plane"):
        fastseg.reference.max_unpool2d(values, bad, **geometry.unpool_args, output_size=x.shape[-2:])


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_unbatched_input(device, backend, gen):
    # Even sizes: the default output size is the pool input's.
    x, flat, compact = pool_indices(Geometry((1, 3, 8, 10), 2), device, gen)
    values = torch.randn(flat.shape, generator=gen).to(device)
    for output_size in (None, x.shape[-2:]):
        expected = F.max_unpool2d(values[0], flat[0], 2, output_size=output_size)
        for indices in (flat, compact):
            out = max_unpool2d(values[0], indices[0], 2, output_size=output_size, backend=backend)
            assert_identical(out, expected)


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_module_is_a_drop_in_for_nn(device, backend, gen):
    ours, theirs = MaxUnpool2d(3, 2, 1, backend=backend), nn.MaxUnpool2d(3, 2, 1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, flat, compact = pool_indices(K3S2_CEIL, device, gen)
    values = values_at_targets(torch.randn(x.shape, generator=gen).to(device), flat)
    expected = theirs(values, flat, output_size=x.shape)
    assert_identical(ours(values, flat, output_size=x.shape), expected)
    assert_identical(ours(values, compact, output_size=x.shape), expected)


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("device, backend", on_devices(UNPOOL_BACKENDS))
def test_empty_batch(device, backend, compact):
    values = torch.empty((0, 3, 4, 5), device=device)
    indices = torch.zeros(values.shape, dtype=torch.uint8 if compact else torch.int64, device=device)
    out = max_unpool2d(values, indices, 2, output_size=(9, 11), backend=backend)
    assert out.shape == (0, 3, 9, 11) and out.dtype == values.dtype


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("device, backend", on_devices(UNPOOL_BACKENDS))
def test_empty_batch_backward(device, backend, compact):
    """Called as the registered op: the forward of the reference fails first."""
    grad_output = torch.empty((0, 3, 9, 11), device=device)
    indices = torch.zeros((0, 3, 4, 5), dtype=torch.uint8 if compact else torch.int64, device=device)
    grad = torch.ops.fastseg.max_unpool2d_backward(grad_output, indices, [2, 2], [2, 2], [0, 0], [1, 1], backend)
    assert grad.shape == indices.shape and grad.dtype == grad_output.dtype


# --- gradients -----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("geometry", [PLAIN_K2, K3S2_CEIL, ASYMMETRIC], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_backward_matches_torch(device, backend, geometry, dtype, layout, gen):
    """Unpool's gradient is a gather of the output gradient at each index
    (PyTorch's, repeated indices included): exact in every dtype."""
    x, flat, compact = pool_indices(geometry, device, gen)
    out_hw = tuple(x.shape[-2:])
    grad = relayout(random_values((*flat.shape[:2], *out_hw), dtype, "randn", gen).to(device), layout)
    values64 = torch.zeros(flat.shape, dtype=torch.float64, device=device, requires_grad=True)
    torch.ops.aten.max_unpool2d(values64, flat, list(out_hw)).backward(grad.double())
    expected = values64.grad.to(dtype)
    for indices in (flat, compact):
        values = relayout(random_values(flat.shape, dtype, "randn", gen).to(device), layout).requires_grad_()
        out = max_unpool2d(values, relayout(indices, layout), **geometry.unpool_args, output_size=out_hw,
                           backend=backend)
        out.backward(grad)
        assert_identical(values.grad, expected)


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_backward_of_a_broadcast_gradient(device, backend, compact, gen):
    """``out.sum()`` hands the backward an expanded (all-zero-stride) gradient:
    every value whose index is valid gets 1."""
    x, flat, compact_indices = pool_indices(K3S1_DIL2, device, gen)
    values = torch.randn(flat.shape, generator=gen).to(device).requires_grad_()
    max_unpool2d(values, compact_indices if compact else flat, **K3S1_DIL2.unpool_args, output_size=x.shape[-2:],
                 backend=backend).sum().backward()
    assert_identical(values.grad, torch.ones_like(values))


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("geometry", [Geometry((1, 2, 4, 5), 2), Geometry((1, 2, 5, 7), (2, 3), 3, 1)], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradcheck(device, backend, geometry, compact, gen):
    """Windows that do not overlap, so no index repeats: with repeats
    PyTorch's gradient (and ours, which follows it) is not the derivative."""
    x, flat, compact_indices = pool_indices(geometry, device, gen)
    indices = compact_indices if compact else flat
    values = torch.randn(flat.shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    def unpool(v):
        return max_unpool2d(v, indices, **geometry.unpool_args, output_size=x.shape[-2:], backend=backend)

    assert torch.autograd.gradcheck(unpool, (values,))


# --- determinism -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compact_unpool_runs_under_deterministic_algorithms(backend, gen, deterministic_algorithms):
    geometry = K3S2_CEIL
    x, flat, compact = pool_indices(geometry, "cpu", gen)
    values = torch.randn(flat.shape, generator=gen).requires_grad_()
    grad = torch.randn(x.shape, generator=gen)
    expected = torch.ops.aten.max_unpool2d(values.detach(), flat, list(x.shape[-2:]))
    values64 = values.detach().double().requires_grad_()
    torch.ops.aten.max_unpool2d(values64, flat, list(x.shape[-2:])).backward(grad.double())
    with deterministic_algorithms():
        with pytest.raises(RuntimeError, match=r"max_unpool.* does not have a deterministic implementation"):
            F.max_unpool2d(values, flat, 3, 2, 1, output_size=x.shape[-2:])
        for indices in (compact, flat):  # flat too: the CPU backends scatter each plane in order
            values.grad = None
            out = max_unpool2d(values, indices, **geometry.unpool_args, output_size=x.shape[-2:], backend=backend)
            out.backward(grad)
            assert_identical(out, expected)
            assert_identical(values.grad, values64.grad.float())


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_flat_unpool_on_cuda_alerts_under_deterministic_algorithms(backend, gen, deterministic_algorithms):
    x, flat, compact = pool_indices(K3S2_CEIL, "cuda", gen)
    values = torch.randn(flat.shape, generator=gen).cuda()
    with deterministic_algorithms():
        with pytest.raises(RuntimeError, match=r"compact \(uint8\) indices are deterministic"):
            max_unpool2d(values, flat, **K3S2_CEIL.unpool_args, output_size=x.shape[-2:], backend=backend)
        out = max_unpool2d(values, compact, **K3S2_CEIL.unpool_args, output_size=x.shape[-2:], backend=backend)
    reference = max_unpool2d(values, compact, **K3S2_CEIL.unpool_args, output_size=x.shape[-2:],
                             backend="reference")
    assert_identical(out, reference)


# --- validation ----------------------------------------------------------------------------

PLAIN_K2_SMALL = Geometry((1, 2, 6, 6), 2)


def _case(gen):
    """Unpool arguments from a 2x2 pool of a 1x2x6x6 input: values and
    indices 1x2x3x3, flat indices in [0, 36)."""
    x, flat, compact = pool_indices(PLAIN_K2_SMALL, "cpu", gen)
    return torch.randn(flat.shape, generator=gen), flat, compact


def _edited(kind: str, position, value):
    """The case's ``kind`` ("flat"/"compact") indices with one entry set to ``value``."""
    def make(values, flat, compact):
        indices = (flat if kind == "flat" else compact).clone()
        indices[position] = value
        return indices
    return make


# Each entry overrides arguments of _case's call: with a value, or with a
# function of (values, flat indices, compact indices).
ERRORS = [
    pytest.param(dict(input=lambda v, f, c: v[0, 0], indices=lambda v, f, c: f[0, 0]), ValueError,
                 r"input must be 3-D or 4-D", id="rank-2"),
    pytest.param(dict(indices=lambda v, f, c: f[0, 0]), ValueError, r"indices must be 3-D or 4-D",
                 id="indices-rank-2"),
    pytest.param(dict(indices=lambda v, f, c: f[0]), ValueError, r"indices must have the shape of input",
                 id="indices-rank-3"),
    pytest.param(dict(input=lambda v, f, c: v.int()), TypeError, r"input must have dtype .*got int32",
                 id="int-input"),
    pytest.param(dict(indices=lambda v, f, c: f.float()), TypeError,
                 r"indices must have dtype int64, uint8; got float32", id="float-indices"),
    pytest.param(dict(indices=lambda v, f, c: f.int()), TypeError, r"indices must have dtype int64, uint8; got int32",
                 id="int32-indices"),
    pytest.param(dict(indices=lambda v, f, c: f[..., :2]), ValueError, r"indices must have the shape of input",
                 id="indices-shape"),
    pytest.param(dict(input=lambda v, f, c: v[..., :0], indices=lambda v, f, c: f[..., :0]), ValueError,
                 r"input must have non-zero channels, height and width", id="zero-width"),
    pytest.param(dict(indices=_edited("flat", (0, 0, 0, 0), -1)), ValueError,
                 r"1 of 18 entries are invalid; flat indices must lie in \[0, H_out \* W_out\) = \[0, 36\), got -1",
                 id="flat-negative"),
    pytest.param(dict(indices=_edited("flat", (0, 1, 2, 1), 36)), ValueError,
                 r"1 of 18 entries are invalid; flat indices must lie in .*, got 36 at \(0, 1, 2, 1\)",
                 id="flat-too-large"),
    pytest.param(dict(indices=_edited("flat", (0, 1, 2, 1), 2**40)), ValueError,
                 r"flat indices must lie in .*, got 1099511627776", id="flat-huge"),
    pytest.param(dict(indices=_edited("compact", (0, 1, 2, 1), 4)), ValueError,
                 r"1 of 18 entries are invalid; compact indices must name a tap of their window \(< 4\).*got 4",
                 id="compact-tap-4-of-2x2"),
    pytest.param(dict(indices=_edited("compact", (0, 0, 0, 0), 255)), ValueError,
                 r"compact indices must name a tap of their window \(< 4\).*got 255", id="compact-255"),
    pytest.param(dict(indices=lambda v, f, c: c, output_size=(8, 8)), ValueError,
                 r"output_size \(8, 8\) does not pool to the indices' size \(3, 3\)", id="compact-output-size"),
    pytest.param(dict(indices=lambda v, f, c: c, output_size=(6, 9)), ValueError,
                 r"output_size \(6, 9\) does not pool to the indices' size", id="compact-output-width"),
    pytest.param(dict(output_size=(8, 6)), ValueError, r"output_size \(8, 6\) must lie strictly between",
                 id="flat-output-size-too-large"),
    pytest.param(dict(output_size=(6, 4)), ValueError, r"output_size \(6, 4\) must lie strictly between",
                 id="flat-output-size-too-small"),
    pytest.param(dict(output_size=6), TypeError, r"output_size must be a sequence of ints", id="output-size-int"),
    pytest.param(dict(output_size=(6,)), TypeError, r"output_size must be \(H, W\), \(C, H, W\) or \(N, C, H, W\)",
                 id="output-size-1-tuple"),
    pytest.param(dict(output_size=(6.0, 6.0)), TypeError, r"output_size must be \(H, W\)", id="output-size-floats"),
    pytest.param(dict(kernel_size=0), ValueError, r"kernel_size must be >= 1", id="kernel-0"),
    pytest.param(dict(kernel_size=-2), ValueError, r"kernel_size must be >= 1", id="kernel-negative"),
    pytest.param(dict(kernel_size=2.5), TypeError, r"kernel_size must be an int or a pair", id="kernel-float"),
    pytest.param(dict(stride=0), ValueError, r"stride must be >= 1", id="stride-0"),
    pytest.param(dict(dilation=0), ValueError, r"dilation must be >= 1", id="dilation-0"),
    pytest.param(dict(padding=2), ValueError, r"padding must be at most half of kernel_size", id="padding-over-half"),
    pytest.param(dict(indices=lambda v, f, c: c, kernel_size=17, stride=2), ValueError,
                 r"compact indices need a window of at most 256 taps", id="compact-17x17"),
]


@pytest.mark.parametrize("kwargs, error, match", ERRORS)
@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_invalid_arguments_raise_naming_them(backend, kwargs, error, match, gen):
    values, flat, compact = _case(gen)
    args = dict(input=values, indices=flat, kernel_size=2)
    args |= {k: (v(values, flat, compact) if callable(v) else v) for k, v in kwargs.items()}
    inputs_before = [t.clone() for t in (args["input"], args["indices"])]
    with pytest.raises(error, match=match):
        max_unpool2d(**args, backend=backend)
    for t, before in zip((args["input"], args["indices"]), inputs_before, strict=True):
        assert torch.equal(t, before)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "mixed", "mixed_reverse"])
@pytest.mark.parametrize("geometry", TILED[:2], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compact_index_naming_no_tap_is_invalid(backend, geometry, layout, gen):
    """Where the windows tile the output, an index is invalid iff it names
    no tap of its window, in any layout and kernel width."""
    x, flat, compact = pool_indices(geometry, "cpu", gen)
    values_layout, indices_layout = LAYOUTS[layout]
    values = relayout(torch.randn(flat.shape, generator=gen), values_layout)
    taps = math.prod(geometry.kernel if isinstance(geometry.kernel, tuple) else (geometry.kernel,) * 2)
    for bad_tap in (taps, 255):
        bad = compact.clone()
        bad[-1, -1, -1, 0] = bad_tap
        with pytest.raises(ValueError, match=rf"1 of \d+ entries are invalid; compact indices must name a tap of "
                                             rf"their window \(< {taps}\).*got {bad_tap}"):
            max_unpool2d(values, relayout(bad, indices_layout), **geometry.unpool_args, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compact_index_naming_a_padded_pixel_is_invalid(backend, gen):
    """Tap 0 of window (0, 0) of a pool with padding 1 is pixel (-1, -1)."""
    geometry = K3S2_CEIL
    x, flat, compact = pool_indices(geometry, "cpu", gen)
    values = torch.randn(flat.shape, generator=gen)
    bad = compact.clone()
    bad[0, 0, 0, 0] = 0
    with pytest.raises(ValueError, match=r"1 of \d+ entries are invalid; compact indices must name a tap of their "
                                         r"window \(< 9\) inside the output \(9, 11\), got 0 at \(0, 0, 0, 0\)"):
        max_unpool2d(values, bad, **geometry.unpool_args, output_size=x.shape[-2:], backend=backend)


@pytest.mark.parametrize("device, backend", on_devices(UNPOOL_BACKENDS))
def test_compact_indices_of_windows_off_the_output_are_invalid(device, backend, gen):
    """kernel 2, padding 1, dilation 3 on 2 rows: the one row of windows has
    taps on rows -1 and 2, neither in the output, so no index of it can be
    valid (PyTorch itself returns out-of-plane flat indices for such a pool).
    fastseg refuses that output_size: no pool of it has these windows."""
    values = torch.randn((1, 2, 1, 4), generator=gen).to(device)
    indices = torch.zeros(values.shape, dtype=torch.uint8, device=device)
    with pytest.raises(ValueError, match=r"output_size \(2, 5\) does not pool to the indices' size \(1, 4\)"):
        max_unpool2d(values, indices, 2, 1, 1, output_size=(2, 5), dilation=3, backend=backend)


@pytest.mark.cuda
def test_indices_on_another_device_raise(gen):
    values, flat, _ = _case(gen)
    with pytest.raises(ValueError, match=r"indices must be on input's device"):
        max_unpool2d(values.cuda(), flat, 2)


# --- torch.library, torch.compile, torch.export ---------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_opcheck(device, backend, compact, layout, gen):
    geometry = ASYMMETRIC
    x, flat, compact_indices = pool_indices(geometry, device, gen)
    indices = relayout(compact_indices if compact else flat, layout)
    values = relayout(values_at_targets(torch.randn(x.shape, generator=gen).to(device), flat), layout)
    torch.library.opcheck(torch.ops.fastseg.max_unpool2d.default,
                          (values.requires_grad_(), indices, list(x.shape[-2:]), *geometry.schema_lists, backend))
    grad_output = relayout(torch.randn(x.shape, generator=gen).to(device), layout)
    torch.library.opcheck(torch.ops.fastseg.max_unpool2d_backward.default,
                          (grad_output, indices, *geometry.schema_lists, backend))


COMPILED_PAIRS = [
    pytest.param("reference", "reference", id="reference-reference"),
    pytest.param("reference", "cpp", id="reference-cpp"),
    pytest.param("triton", "triton", id="triton-triton"),
]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("pool_backend, unpool_backend", COMPILED_PAIRS)
def test_compile_fullgraph_matches_eager(pool_backend, unpool_backend, compact, dynamic, gen, fresh_dynamo):
    """A SegNet step, pool -> scale -> unpool, compiles without graph
    breaks; forward and backward equal eager (the same kernels run; the
    scale by 2 is exact, so Inductor's code for it cannot differ)."""
    def segnet_step(x):
        values, indices = max_pool2d_with_indices(x, 3, 2, 1, compact=compact, backend=pool_backend)
        return max_unpool2d(2 * values, indices, 3, 2, 1, output_size=x.shape[-2:], backend=unpool_backend)

    compiled = torch.compile(segnet_step, fullgraph=True, dynamic=dynamic)
    for shape in [(2, 3, 9, 11), (1, 2, 8, 7)][: 2 if dynamic else 1]:
        x = torch.randn(shape, generator=gen).requires_grad_()
        grad = torch.randn(shape, generator=gen)
        out = compiled(x)
        (x_grad,) = torch.autograd.grad(out, x, grad)
        expected = segnet_step(x)
        (expected_grad,) = torch.autograd.grad(expected, x, grad)
        assert_identical(out, expected)
        assert_identical(x_grad, expected_grad)


class _PoolUnpool(nn.Module):
    def __init__(self, compact: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = MaxPool2d(3, 2, 1, return_indices=True, compact_indices=compact)
        self.unpool = MaxUnpool2d(3, 2, 1)

    def forward(self, x):
        values, indices = self.pool(self.conv(x))
        return self.unpool(torch.relu(values), indices, output_size=x.shape[-2:])


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
def test_export(compact, gen):
    model = _PoolUnpool(compact).eval()
    x = torch.randn((2, 3, 9, 11), generator=gen)
    program = torch.export.export(model, (x,))
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert torch.ops.fastseg.max_pool2d_with_indices.default in targets
    assert torch.ops.fastseg.max_unpool2d.default in targets
    fresh = torch.randn((2, 3, 9, 11), generator=gen)
    with torch.no_grad():
        assert_identical(program.module()(fresh), model(fresh))
