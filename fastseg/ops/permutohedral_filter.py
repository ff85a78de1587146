"""Gaussian filtering in feature space on a permutohedral lattice:
``fastseg.ops.permutohedral_filter`` and ``fastseg.ops.permutohedral_lattice``.

``permutohedral_filter(values, features)`` returns, for every pixel i,
approximately ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` over the pixels j of the
same image (i included), for features already divided by their standard
deviations: a bilateral filter for features (x/sxy, y/sxy, r/srgb, ...), any
number of feature channels d >= 1, any number of value channels, 2-D images,
3-D volumes or any other spatial rank. The lattice (Adams, Baek & Davis
2010; see ``fastseg.reference.permutohedral_filter``) is exact enough that
the normalised filter ``K v / K 1`` of image-like values is within about
45-50 dB PSNR of the exact one at d = 2..5; its absolute scale matches the
exact sum where pixels are dense in feature space (many per lattice cell)
and falls below it where they are sparse.

``permutohedral_lattice(features)`` builds the lattice once and returns a
``Lattice`` that filters any values with it, as often as needed: a dense CRF
filters every label at every iteration with one lattice per kernel.

The lattice is a set of tensors shared by every backend (a lattice built by
one can be applied by another). For B images of N pixels, d features, M
vertices over the whole batch:

- ``vertex_of`` int32 [B, N, d+1]: the vertex of each corner of each pixel's simplex;
- ``barycentric`` float [B, N, d+1]: the corner weights, summing to 1 per pixel;
- ``neighbors`` int32 [d+1, M, 2]: per lattice direction, each vertex's two neighbours, -1 where absent;
- ``splat_order`` int32 [B*N*(d+1)]: flat corner indices sorted by vertex, stably;
- ``vertex_start`` int32 [M+1]: vertex v's corners are ``splat_order[vertex_start[v]:vertex_start[v+1]]``.

Every step of applying it is then a gather, so the results are the same on
every run. The gradient with respect to the values is the adjoint filter
(the blur directions in reverse order); features get no gradient.

Registered as ``fastseg::permutohedral_lattice`` and
``fastseg::permutohedral_apply`` with fakes and autograd.
"""

import importlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _backend, _compiled_ops
from .._checks import FLOAT_DTYPES, check_tensor
from .._layout import memory_format_of
from ..reference.permutohedral_filter import LatticeTensors

_reference = importlib.import_module("fastseg.reference.permutohedral_filter")  # the module, not its function

BACKENDS = _backend.register("permutohedral_filter", {"cuda": ("cuda",), "cpu": ("cpp",)})

# The lift scales feature vectors by sqrt(2/3) (d+1). Lattice cells are d+1
# wide there, so float32 keeps the barycentric weights to about 1% up to
# 2^16; float64 goes as far as the int32 keys do.
_MAX_LIFTED_FLOAT32, _MAX_LIFTED = 2.0**16, 2.0**30


# csrc/cuda/permutohedral_filter.cuh: its per-thread arrays are compiled up to this d.
CUDA_MAX_D = 64


def uncovered(d: int) -> tuple[tuple[str, str], ...]:
    """The backends that cannot build a lattice of d features, with why."""
    return (("cuda", f"the CUDA lattice takes at most {CUDA_MAX_D} features, got d={d}"),) if d > CUDA_MAX_D else ()


def _implementation(backend: str):
    if backend in ("cpp", "cuda"):
        return _compiled_ops
    return _reference


@torch.library.custom_op("fastseg::permutohedral_lattice", mutates_args=())
def _lattice_op(features: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # Decided here, where the values are at hand also inside a compiled graph.
    lattice = _implementation(backend).build_lattice(features.to(lattice_dtype(features)))
    return tuple(lattice._replace(barycentric=lattice.barycentric.to(features.dtype)))


@_lattice_op.register_fake
def _(features, backend):
    batch, pixels, d = features.shape
    vertices = torch.library.get_ctx().new_dynamic_size()
    index = dict(dtype=torch.int32, device=features.device)
    return (features.new_empty((batch, pixels, d + 1), **index), features.new_empty((batch, pixels, d + 1)),
            features.new_empty((d + 1, vertices, 2), **index), features.new_empty((batch * pixels * (d + 1),), **index),
            features.new_empty((vertices + 1,), **index))


@torch.library.custom_op("fastseg::permutohedral_apply", mutates_args=())
def _apply_op(values: Tensor, vertex_of: Tensor, barycentric: Tensor, neighbors: Tensor, splat_order: Tensor,
              vertex_start: Tensor, reverse: bool, backend: str) -> Tensor:
    lattice = LatticeTensors(vertex_of, barycentric, neighbors, splat_order, vertex_start)
    return _implementation(backend).apply_lattice(values, lattice, reverse)


@_apply_op.register_fake
def _(values, vertex_of, barycentric, neighbors, splat_order, vertex_start, reverse, backend):
    return torch.empty_like(values, memory_format=torch.contiguous_format)


def _apply_setup_context(ctx, inputs, output):
    _, *lattice, reverse, backend = inputs
    ctx.save_for_backward(*lattice)
    ctx.reverse, ctx.backend = reverse, backend


def _apply_backward(ctx, grad_output):
    # The filter is splat, blur along directions 0..d, slice; its adjoint is
    # the same with the directions reversed (each direction is symmetric).
    grad_values = _apply_op(grad_output.contiguous(), *ctx.saved_tensors, not ctx.reverse, ctx.backend)
    return grad_values, None, None, None, None, None, None, None


_apply_op.register_autograd(_apply_backward, setup_context=_apply_setup_context)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 where any input is, float32 otherwise (16-bit inputs are
    filtered in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@dataclass(frozen=True)
class Lattice:
    """The permutohedral lattice of a batch of feature maps, ready to filter
    values of the same batch and spatial shape any number of times."""

    tensors: LatticeTensors
    spatial_shape: tuple[int, ...]
    backend: str

    @property
    def batch(self) -> int:
        return self.tensors.vertex_of.shape[0]

    @property
    def vertices(self) -> int:
        return self.tensors.neighbors.shape[1]

    def repeated(self, copies: int) -> "Lattice":
        """The lattice of ``copies`` batches of the same features, one after
        another (``repeat_lattice``), equal to the one built from them."""
        check_corner_count(self.batch * copies, self.tensors.vertex_of.shape[1], self.tensors.vertex_of.shape[2] - 1)
        return Lattice(_reference.repeat_lattice(self.tensors, copies), self.spatial_shape, self.backend)

    def reweighted(self, pixel_weights: Tensor) -> "Lattice":
        """The lattice of ``diag(n) K diag(n)`` for pixel weights n [B, N, 1]:
        each pixel splats and slices with its barycentric weights times n."""
        return Lattice(self.tensors._replace(barycentric=self.tensors.barycentric * pixel_weights),
                       self.spatial_shape, self.backend)

    def apply_flat(self, values: Tensor, reverse: bool = False) -> Tensor:
        """Filter values laid out [B, N, C] (pixels flattened, channels
        last), in the lattice's dtype; no checks. The layout the CRF keeps
        its labels in between iterations."""
        return _apply_op(values, *self.tensors, reverse, self.backend)

    def __call__(self, values: Tensor) -> Tensor:
        """Filter values [B, C, *spatial] -> [B, C, *spatial] (the dtype and
        memory format of ``values``), computed in the lattice's dtype."""
        check_tensor(values, "values", (len(self.spatial_shape) + 2,), FLOAT_DTYPES)
        expected = (self.batch, *self.spatial_shape)
        if (values.shape[0], *values.shape[2:]) != expected:
            raise ValueError(f"values must be [B, C, *spatial] with B and spatial {expected} of the lattice's "
                             f"features, got shape {tuple(values.shape)}")
        if values.device != self.tensors.vertex_of.device:
            raise ValueError(f"values must be on the lattice's device {self.tensors.vertex_of.device}, "
                             f"got {values.device}")
        check_finite(values, "values")
        flat = values.reshape(*values.shape[:2], -1).transpose(1, 2)
        out = self.apply_flat(flat.to(self.tensors.barycentric.dtype).contiguous())
        # [B, N, C] is already channels-last memory: as [B, C, *spatial] it
        # needs a copy only when the input was not laid out so.
        out = out.view(self.batch, *self.spatial_shape, -1).movedim(-1, 1).to(values.dtype)
        return out.contiguous(memory_format=memory_format_of(values))


def _extremes(t: Tensor) -> tuple[float, float]:
    """t's (min, max), in one copy to the host: one synchronisation on a GPU,
    where a float() of each would make two."""
    lowest, highest = torch.stack(torch.aminmax(t.detach())).tolist()
    return lowest, highest


def check_finite(t: Tensor, name: str) -> tuple[float, float] | None:
    """A data-dependent check: made in eager mode; a compiled graph lets NaN
    and Inf through (they reach the output) rather than break the graph.
    Returns t's (min, max) where it checked: one pass over t finds both and
    the NaN and Inf, which propagate to the extremes (isfinite().all()
    would cost a pass of its own, and ten times the time)."""
    if torch.compiler.is_compiling() or t.numel() == 0:
        return None
    lowest, highest = _extremes(t)
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise ValueError(f"{name} must be finite; it holds {int((~torch.isfinite(t)).sum())} NaN or Inf entries")
    return lowest, highest


def lattice_dtype(flat: Tensor) -> torch.dtype:
    """The dtype the lattice of features [B, N, d] is built in: theirs, or
    float64 for float32 features beyond where float32 resolves the lattice
    (its weights come back in float32). Features beyond where float64 does
    (where the int32 keys end) are refused.

    They are never shifted towards 0: the Gaussian would not see it, but
    the lattice is a fixed grid in feature space, and Krähenbühl's code
    (so pydensecrf) rounds the features as they are."""
    if flat.numel() == 0:
        return flat.dtype
    d = flat.shape[-1]
    reach = math.sqrt(2.0 / 3.0) * (d + 1)
    within = _MAX_LIFTED_FLOAT32 if flat.dtype == torch.float32 else _MAX_LIFTED
    # No feature vector is longer than sqrt(d) times the largest |feature|:
    # one reduction without temporaries, a tenth of the exact norm's time,
    # settles every realistic input; the exact norm decides the rest.
    lowest, highest = _extremes(flat)
    if not (math.isfinite(lowest) and math.isfinite(highest)):  # made from finite inputs that overflowed
        raise ValueError(f"features are not finite in {str(flat.dtype).removeprefix('torch.')} (values over "
                         "standard deviations overflowed); use larger standard deviations")
    if reach * math.sqrt(d) * max(-lowest, highest) <= within:
        return flat.dtype
    longest = float(flat.double().square().sum(-1).max().sqrt())
    if reach * longest <= within:
        return flat.dtype
    if reach * longest > _MAX_LIFTED:
        raise ValueError(f"features reach {longest:.4g} standard deviations from 0, beyond the "
                         f"{_MAX_LIFTED / reach:.4g} that the lattice's int32 keys resolve at d={d}; use larger "
                         "standard deviations or features closer to 0")
    return torch.float64


def flat_features(features: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, d, *spatial] -> [B, N, d] in ``dtype``, the layout the lattice takes."""
    return features.reshape(*features.shape[:2], -1).transpose(1, 2).to(dtype).contiguous()


def check_features(features: Tensor, batch: int | None = None, spatial_shape: tuple[int, ...] | None = None) -> None:
    """features [B, d, *spatial]: a float tensor with d >= 1 finite channels,
    at least one pixel per image, no gradient wanted."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() < 3:
        raise ValueError(f"features must be [B, d, *spatial] with at least one spatial dimension, "
                         f"got shape {tuple(features.shape)}")
    check_tensor(features, "features", (features.dim(),), FLOAT_DTYPES)
    if batch is not None and features.shape[0] != batch:
        raise ValueError(f"features must have the batch size {batch}, got shape {tuple(features.shape)}")
    if features.shape[1] < 1:
        raise ValueError(f"features need at least one channel (d >= 1), got shape {tuple(features.shape)}")
    if spatial_shape is not None and tuple(features.shape[2:]) != tuple(spatial_shape):
        raise ValueError(f"features must have the spatial shape {tuple(spatial_shape)}, got shape "
                         f"{tuple(features.shape)}")
    if math.prod(features.shape[2:]) == 0:
        raise ValueError(f"features must have at least one pixel per image, got shape {tuple(features.shape)}")
    if features.requires_grad and torch.is_grad_enabled():
        raise ValueError("features: gradients with respect to the features are not supported; pass "
                         "features.detach() (gradients flow to the values)")
    if features.device.type == "meta":  # the lattice depends on the values
        raise ValueError("features must be on a CPU or CUDA device, got meta")
    check_corner_count(features.shape[0], math.prod(features.shape[2:]), features.shape[1])  # before any copy
    check_finite(features, "features")


def permutohedral_lattice(features: Tensor, *, backend: str | None = None) -> Lattice:
    """The lattice of features [B, d, *spatial], to filter values of that
    batch and spatial shape with ``lattice(values)``. Built in float64 when
    the features are float64, float32 otherwise."""
    check_features(features)
    return build_lattice(flat_features(features, compute_dtype(features)), tuple(features.shape[2:]),
                         lattice_backend(features, backend))


def lattice_backend(features: Tensor, backend: str | None = None) -> str:
    """The backend that builds the lattice of features [B, d, *spatial]:
    ``backend``, checked, or the fastest for them."""
    return _backend.resolve_backend(BACKENDS, backend, features, uncovered=uncovered(features.shape[1]))


def check_corner_count(images: int, pixels: int, d: int, name: str = "features") -> None:
    """A lattice of this many images of N pixels and d features numbers its
    B * N * (d+1) corners in int32; ``name``: what the user gave."""
    corners = images * pixels * (d + 1)
    if corners >= 2**31:
        raise ValueError(f"{name}: B * N * (d+1) = {corners} corners exceed the lattice's int32 indices; "
                         "filter fewer images or pixels at a time")


def build_lattice(flat: Tensor, spatial_shape: tuple[int, ...], backend: str) -> Lattice:
    """The lattice of checked features already laid out [B, N, d] by
    ``flat_features``."""
    check_corner_count(*flat.shape)
    return Lattice(LatticeTensors(*_lattice_op(flat, backend)), spatial_shape, backend)


def permutohedral_filter(values: Tensor, features: Tensor, *, backend: str | None = None) -> Tensor:
    """``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` per image, on the lattice.

    values [B, C, *spatial] and features [B, d, *spatial] (float16, bfloat16,
    float32 or float64; computed in float32, or float64 where either input
    is) -> [B, C, *spatial] in the dtype and memory format of ``values``.
    Differentiable with respect to ``values``.
    """
    check_tensor(values, "values", tuple(range(3, 9)), FLOAT_DTYPES)
    if values.shape[1] == 0:
        raise ValueError(f"values must have at least one channel, got shape {tuple(values.shape)}")
    if isinstance(features, Tensor) and features.device != values.device:
        raise ValueError(f"features must be on the device of values {values.device}, got {features.device}")
    check_features(features, values.shape[0], tuple(values.shape[2:]))
    if values.shape[0] == 0:  # only the batch may be empty, as in PyTorch
        return torch.empty_like(values)
    name = _backend.resolve_backend(BACKENDS, backend, values, features, uncovered=uncovered(features.shape[1]))
    lattice = build_lattice(flat_features(features, compute_dtype(values, features)), tuple(values.shape[2:]), name)
    return lattice(values)
