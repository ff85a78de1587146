"""fastseg.ops.max_pool2d_with_indices / MaxPool2d against PyTorch's
F.max_pool2d(return_indices=True), on every backend.

Max is exact in every dtype, so values and indices must be identical to
PyTorch's, ties and NaNs included (first max wins, a NaN always wins).
Compact (uint8) indices must name the same pixel as PyTorch's flat ones.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastseg
from fastseg.ops import MaxPool2d, max_pool2d_with_indices
from pool_helpers import (ASYMMETRIC, DTYPES, GEOMETRIES, GEOMETRY_IDS, GRAD_TOL, K3S1_DIL2, K3S2_CEIL, LAYOUTS,
                          PLAIN_K2, POOL_BACKENDS, VALUE_KINDS, Geometry, assert_identical, assert_layout, dtype_id,
                          make_input, on_devices, random_values, relayout)

BACKENDS = on_devices(POOL_BACKENDS)


def check_pool(x: torch.Tensor, geometry: Geometry, backend: str) -> None:
    """Flat and compact pools of ``x`` against PyTorch's, ``x`` unchanged."""
    before = x.clone()
    expected_values, expected_flat = F.max_pool2d(x, **geometry.pool_args, return_indices=True)

    values, flat = max_pool2d_with_indices(x, **geometry.pool_args, backend=backend)
    assert_identical(values, expected_values)
    assert flat.dtype == torch.int64
    assert torch.equal(flat, expected_flat)

    values_c, compact = max_pool2d_with_indices(x, **geometry.pool_args, compact=True, backend=backend)
    assert_identical(values_c, expected_values)
    assert compact.dtype == torch.uint8
    assert compact.shape == expected_flat.shape
    assert (compact.long() < geometry.area).all()
    assert torch.equal(geometry.compact_to_flat(compact, x.shape[-1]), expected_flat)

    for out in (values, flat, values_c, compact):
        assert_layout(out, x)
    assert_identical(x, before)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_torch(device, backend, geometry, layout, gen):
    x = make_input(geometry.shape, layout=layout, device=device, gen=gen)
    check_pool(x, geometry, backend)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("values", VALUE_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("geometry", [K3S2_CEIL, ASYMMETRIC], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_torch_dtypes_ties_and_nonfinite(device, backend, geometry, dtype, values, layout, gen):
    x = make_input(geometry.shape, dtype=dtype, values=values, layout=layout, device=device, gen=gen)
    check_pool(x, geometry, backend)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_reference_function_matches_torch(geometry, gen):
    """fastseg.reference.max_pool2d_with_indices, the public ground truth."""
    x = make_input(geometry.shape, values="ties", gen=gen)
    expected_values, expected_flat = F.max_pool2d(x, **geometry.pool_args, return_indices=True)
    values, flat = fastseg.reference.max_pool2d_with_indices(x, **geometry.pool_args)
    assert_identical(values, expected_values)
    assert torch.equal(flat, expected_flat)
    values, compact = fastseg.reference.max_pool2d_with_indices(x, **geometry.pool_args, compact=True)
    assert_identical(values, expected_values)
    assert compact.dtype == torch.uint8
    assert torch.equal(geometry.compact_to_flat(compact, x.shape[-1]), expected_flat)


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_unbatched_input(device, backend, gen):
    x = make_input((1, 3, 9, 11), values="ties", device=device, gen=gen)[0]
    check_pool(x, K3S2_CEIL, backend)


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_compact_index_of_the_largest_window(device, backend, gen):
    """16x16 = 256 taps, the most a uint8 can name: the last tap is 255."""
    geometry = Geometry((1, 2, 16, 16), 16)
    x = make_input(geometry.shape, device=device, gen=gen)
    x[:, :, 15, 15] = 100.0
    _, compact = max_pool2d_with_indices(x, **geometry.pool_args, compact=True, backend=backend)
    assert compact.flatten().tolist() == [255, 255]
    check_pool(x, geometry, backend)


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("return_indices", [False, True], ids=["values", "with_indices"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_module_is_a_drop_in_for_nn(device, backend, return_indices, compact, gen):
    args = dict(kernel_size=3, stride=2, padding=1, dilation=1, return_indices=return_indices, ceil_mode=True)
    ours = MaxPool2d(**args, compact_indices=compact, backend=backend)
    theirs = nn.MaxPool2d(**args)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = make_input((2, 3, 9, 11), device=device, gen=gen)
    out, expected = ours(x), theirs(x)
    if not return_indices:
        assert_identical(out, expected)
        return
    (values, indices), (expected_values, expected_flat) = out, expected
    assert_identical(values, expected_values)
    flat = K3S2_CEIL.compact_to_flat(indices, x.shape[-1]) if compact else indices
    assert indices.dtype == (torch.uint8 if compact else torch.int64)
    assert torch.equal(flat, expected_flat)


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (0, 3, 5, 7)], ids=["0x3x8x8", "0x3x5x7"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_empty_batch(device, backend, shape, compact):
    x = torch.empty(shape, device=device)
    values, indices = max_pool2d_with_indices(x, 2, ceil_mode=True, compact=compact, backend=backend)
    expected = F.max_pool2d(x, 2, ceil_mode=True)
    assert values.shape == indices.shape == expected.shape
    assert values.dtype == x.dtype
    assert indices.dtype == (torch.uint8 if compact else torch.int64)


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("device, backend", on_devices(POOL_BACKENDS))
def test_empty_batch_backward(device, backend, compact):
    x = torch.empty((0, 3, 8, 8), device=device, requires_grad=True)
    values, _ = max_pool2d_with_indices(x, 2, compact=compact, backend=backend)
    values.sum().backward()
    assert x.grad.shape == x.shape


# --- gradients -------------------------------------------------------------------

GRAD_DTYPES = [pytest.param(d, id=dtype_id(d)) for d in DTYPES]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("dtype", GRAD_DTYPES)
@pytest.mark.parametrize("geometry", [PLAIN_K2, K3S2_CEIL, K3S1_DIL2, ASYMMETRIC], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_backward_matches_torch(device, backend, geometry, dtype, compact, layout, gen):
    """Each window's gradient lands on its max; overlapping windows that
    share a max add up. Ties make the choice of max matter."""
    x = make_input(geometry.shape, dtype=dtype, values="ties", layout=layout, device=device, gen=gen)
    x.requires_grad_()
    values, _ = max_pool2d_with_indices(x, **geometry.pool_args, compact=compact, backend=backend)
    grad = relayout(random_values(values.shape, dtype, "randn", gen).to(device), layout)
    values.backward(grad)

    x64 = x.detach().double().requires_grad_()
    F.max_pool2d(x64, **geometry.pool_args).backward(grad.double())
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), x64.grad, **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", GRAD_DTYPES)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_backward_op_on_torch_indices(device, backend, dtype, gen):
    """fastseg::max_pool2d_backward alone, on PyTorch's indices (flat, and
    converted to compact): checks the backward also where the forward
    cannot be (bfloat16 under Triton's interpreter)."""
    geometry = K3S1_DIL2
    x = make_input(geometry.shape, dtype=dtype, values="ties", device=device, gen=gen)
    x64 = x.double().requires_grad_()
    values64, flat = F.max_pool2d(x64, **geometry.pool_args, return_indices=True)
    grad = random_values(values64.shape, dtype, "randn", gen).to(device)
    values64.backward(grad.double())
    window = [list(geometry.kernel2), list(geometry.stride2), list(geometry.padding2), list(geometry.dilation2)]
    for indices in (flat, geometry.flat_to_compact(flat, x.shape[-1])):
        grad_x = torch.ops.fastseg.max_pool2d_backward(grad, indices, list(x.shape[-2:]), *window, backend)
        assert grad_x.dtype == dtype
        torch.testing.assert_close(grad_x.double(), x64.grad, **GRAD_TOL[dtype])


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_backward_of_a_broadcast_gradient(device, backend, compact, gen):
    """``values.sum()`` hands the backward an expanded (all-zero-stride) gradient."""
    x = make_input(K3S1_DIL2.shape, device=device, gen=gen).requires_grad_()
    max_pool2d_with_indices(x, **K3S1_DIL2.pool_args, compact=compact, backend=backend)[0].sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    F.max_pool2d(x_ref, **K3S1_DIL2.pool_args).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("geometry", [Geometry((1, 2, 5, 6), 3, 1, 1),
                                      Geometry((1, 2, 5, 6), (2, 3), 2, 1, (2, 1), ceil_mode=True)], ids=str)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradcheck(device, backend, geometry, compact, gen):
    # Distinct values an integer apart: the finite differences never move a max.
    x = torch.randperm(torch.Size(geometry.shape).numel(), generator=gen).double().view(geometry.shape)
    x = x.to(device).requires_grad_()

    def pool(t):
        return max_pool2d_with_indices(t, **geometry.pool_args, compact=compact, backend=backend)[0]

    assert torch.autograd.gradcheck(pool, (x,))


# --- validation --------------------------------------------------------------------

def _input(shape=(1, 2, 6, 6)):
    return torch.zeros(shape)


ERRORS = [
    pytest.param(dict(input=_input((6, 6))), ValueError, r"input must be 3-D or 4-D", id="rank-2"),
    pytest.param(dict(input=_input((1, 1, 2, 6, 6))), ValueError, r"input must be 3-D or 4-D", id="rank-5"),
    pytest.param(dict(input=_input().int()), TypeError, r"input must have dtype .*got int32", id="int-input"),
    pytest.param(dict(input=[[0.0, 1.0]]), TypeError, r"input must be a torch.Tensor", id="list-input"),
    pytest.param(dict(input=_input((1, 2, 0, 6))), ValueError, r"input must have non-zero channels, height and width",
                 id="zero-height"),
    pytest.param(dict(input=_input((1, 0, 6, 6))), ValueError, r"input must have non-zero channels, height and width",
                 id="zero-channels"),
    pytest.param(dict(kernel_size=0), ValueError, r"kernel_size must be >= 1", id="kernel-0"),
    pytest.param(dict(kernel_size=-2), ValueError, r"kernel_size must be >= 1", id="kernel-negative"),
    pytest.param(dict(kernel_size=(2, 0)), ValueError, r"kernel_size must be >= 1", id="kernel-pair-0"),
    pytest.param(dict(kernel_size=2.0), TypeError, r"kernel_size must be an int or a pair", id="kernel-float"),
    pytest.param(dict(kernel_size=True), TypeError, r"kernel_size must be an int or a pair", id="kernel-bool"),
    pytest.param(dict(kernel_size=(2,)), TypeError, r"kernel_size must be an int or a pair", id="kernel-1-tuple"),
    pytest.param(dict(kernel_size=(2, 2, 2)), TypeError, r"kernel_size must be an int or a pair",
                 id="kernel-3-tuple"),
    pytest.param(dict(stride=0), ValueError, r"stride must be >= 1", id="stride-0"),
    pytest.param(dict(stride=1.5), TypeError, r"stride must be an int or a pair", id="stride-float"),
    pytest.param(dict(padding=-1), ValueError, r"padding must be >= 0", id="padding-negative"),
    pytest.param(dict(kernel_size=3, padding=2), ValueError, r"padding must be at most half of kernel_size",
                 id="padding-over-half-kernel"),
    pytest.param(dict(kernel_size=(3, 2), padding=(1, 2)), ValueError, r"padding must be at most half of kernel_size",
                 id="padding-over-half-kernel-width"),
    pytest.param(dict(dilation=0), ValueError, r"dilation must be >= 1", id="dilation-0"),
    pytest.param(dict(kernel_size=7), ValueError, r"input: the pooling window .* larger than the padded input",
                 id="window-larger-than-input"),
    pytest.param(dict(kernel_size=3, dilation=3), ValueError,
                 r"input: the pooling window .* larger than the padded input", id="dilated-window-larger"),
    pytest.param(dict(input=_input((1, 1, 2, 5)), kernel_size=2, stride=1, padding=1, dilation=3), ValueError,
                 r"input: .* some pooling window on an input of size \(2, 5\) holds padding only",
                 id="dilated-window-straddles-input"),
    pytest.param(dict(input=_input((1, 1, 17, 17)), kernel_size=17, compact=True), ValueError,
                 r"compact indices need a window of at most 256 taps", id="compact-17x17"),
    pytest.param(dict(input=_input((1, 1, 16, 17)), kernel_size=(16, 17), compact=True), ValueError,
                 r"compact indices need a window of at most 256 taps", id="compact-16x17"),
]


@pytest.mark.parametrize("kwargs, error, match", ERRORS)
@pytest.mark.parametrize("backend", [None, *POOL_BACKENDS["cpu"]])
def test_invalid_arguments_raise_naming_them(backend, kwargs, error, match):
    args = dict(input=_input(), kernel_size=2) | kwargs
    original = args["input"].clone() if isinstance(args["input"], torch.Tensor) else None
    with pytest.raises(error, match=match):
        max_pool2d_with_indices(**args, backend=backend)
    if original is not None:
        assert torch.equal(args["input"], original)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1"),
    (dict(kernel_size=3, padding=2), ValueError, r"padding must be at most half of kernel_size"),
    (dict(kernel_size="3"), TypeError, r"kernel_size must be an int or a pair"),
], ids=["kernel-0", "padding-over-half-kernel", "kernel-str"])
def test_module_rejects_bad_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        MaxPool2d(**kwargs)


# --- torch.library registration ----------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("compact", [False, True], ids=["flat", "compact"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_opcheck(device, backend, compact, layout, gen):
    """Schema, fake (shapes, dtypes and strides), autograd registration and
    AOT dispatch of both ops."""
    geometry = ASYMMETRIC
    x = make_input(geometry.shape, layout=layout, device=device, gen=gen).requires_grad_()
    args = (*geometry.schema_lists, geometry.ceil_mode, compact, backend)
    torch.library.opcheck(torch.ops.fastseg.max_pool2d_with_indices.default, (x, *args))

    values, indices = torch.ops.fastseg.max_pool2d_with_indices(x.detach(), *args)
    grad = relayout(random_values(values.shape, x.dtype, "randn", gen).to(device), layout)
    torch.library.opcheck(torch.ops.fastseg.max_pool2d_backward.default,
                          (grad, indices, list(x.shape[-2:]), *geometry.schema_lists, backend))
