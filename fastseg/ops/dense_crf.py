"""Dense CRF: ``fastseg.ops.dense_crf`` and ``fastseg.ops.DenseCRF``.

Mean-field inference of the fully connected CRF of Krähenbühl & Koltun
(2011) with the kernels and parameters pydensecrf users know: a spatial
Gaussian (``gaussian_sxy``, ``gaussian_compat``) and a bilateral kernel of
position and colour (``bilateral_sxy``, ``bilateral_srgb``,
``bilateral_compat``), Potts weights or full label-compatibility matrices,
symmetric normalisation; see ``fastseg.reference.dense_crf`` for the
iteration. Each kernel's lattice is built once per call and filters every
label at every iteration; the spatial kernel's, of positions alone, is built
for one image and repeated for the others of a batch, and kept for later
calls on images of that size (``fastseg.ops.clear_lattice_cache``, and
``_kept_lattices`` for the bounds).

Batched: logits [B, L, *spatial] with an image [B, C, *spatial] of any
number of channels, 2-D images and 3-D volumes (with a physical ``spacing``
per axis). ``DenseCRF`` holds the compatibilities as learnable [L, L]
parameters (CRF-as-RNN): gradients flow to them and to the logits.

Where no gradient is wanted, the ``cpp`` backend runs every iteration in one
op, ``fastseg::dense_crf_mean_field`` (registered here, with a fake): its
splat, blur, slice, compatibility and softmax share buffers and passes that
the differentiable composition of ``permutohedral_apply`` and PyTorch ops
cannot. Its results equal that composition's up to float rounding.
"""

import importlib
import math

import torch
from torch import Tensor, nn

from .. import _backend, _compiled_ops
from .._checks import FLOAT_DTYPES, as_float, is_number, positive_numbers
from ..reference.permutohedral_filter import lattice_scale
from ._kept_lattices import keepable, kept_lattices
from .permutohedral_filter import BACKENDS as FILTER_BACKENDS
from .permutohedral_filter import Lattice, build_lattice, check_corner_count, check_finite, uncovered

_reference = importlib.import_module("fastseg.reference.dense_crf")  # the module, not its function

IMAGE_DTYPES = (torch.uint8, *FLOAT_DTYPES)

# The fused op runs every iteration in C++, where Ctrl-C cannot stop it; mean
# field settles in tens of iterations, so more than this is a mistake that
# would look like a hang.
MAX_ITERATIONS = 1000


def _count_of(value) -> int:
    """How many numbers a number or a sequence holds; 1 for anything else
    (which positive_numbers refuses)."""
    try:
        return 1 if is_number(value) else max(len(value), 1)
    except TypeError:
        return 1


def _check_scale(numerators: list[float], deviations: list[float], what: str, dtype: torch.dtype) -> None:
    """The features are numerators / deviations per axis or channel (spacing
    / sxy, 1 / srgb) times positions or colours, in the compute dtype: a
    deviation below its smallest normal number, or a factor beyond its
    largest, turns them Inf or NaN."""
    info = torch.finfo(dtype)
    factors = [n / d for n, d in zip(numerators, deviations)]
    if min(deviations) < info.tiny or max(factors) > info.max:
        raise ValueError(f"{what} = {', '.join(f'{f:.4g}' for f in factors)} is beyond "
                         f"{str(dtype).removeprefix('torch.')}; use larger standard deviations")


def compat_magnitude(compat) -> float | None:
    """The largest |compatibility| of a Potts weight or a matrix (NaN where
    the matrix holds one: max propagates it); None for a matrix under
    torch.compile, where the check would be data-dependent (check_finite)."""
    if not isinstance(compat, Tensor):
        return abs(as_float(compat))
    if torch.compiler.is_compiling():
        return None
    return float(compat.detach().abs().max())


def _check_compat(compat, name: str, labels: int) -> float | None:
    """Returns compat_magnitude(compat), for check_compat_scale."""
    if isinstance(compat, Tensor):
        if compat.shape != (labels, labels):
            raise ValueError(f"{name} must be a number or an [L, L] = [{labels}, {labels}] matrix, "
                             f"got shape {tuple(compat.shape)}")
        if compat.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must hold float16, bfloat16, float32 or float64 values, got {compat.dtype}")
        if compat.device.type == "meta":
            raise ValueError(f"{name} must be on a CPU or CUDA device, got meta")
        largest = compat_magnitude(compat)
        if largest is not None and not math.isfinite(largest):
            raise ValueError(f"{name} must hold finite floating-point values")
        return largest
    if not is_number(compat):
        raise TypeError(f"{name} must be a finite number (Potts weight) or an [L, L] tensor, got {compat!r}")
    if not math.isfinite(as_float(compat)):
        raise ValueError(f"{name} must be a finite number (Potts weight) or an [L, L] tensor, got {compat!r}")
    return compat_magnitude(compat)


def check_compat_scale(largest: float | None, name: str, d: int, dtype: torch.dtype) -> None:
    """A kernel's messages are its compatibility times the filter, which
    scales the lattice's blur by lattice_scale(d) (the fused op folds the
    two together): their product must stay within the compute dtype.
    largest: compat_magnitude of the compatibility (None: not checked)."""
    if largest is None:
        return
    limit = torch.finfo(dtype).max / lattice_scale(d)
    if largest > limit:
        raise ValueError(f"{name}: a compatibility of {largest:.4g} times the lattice's scale at d={d} "
                         f"({lattice_scale(d):.4g}) overflows {str(dtype).removeprefix('torch.')}; keep it within "
                         f"{limit:.4g}")


def _check_iterations(iterations) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an int in [0, {MAX_ITERATIONS}], got {iterations!r}")


def _check_inputs(logits, image, iterations, probabilities, kernel_params, spacing) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.device.type == "meta":  # the lattice depends on the values
        raise ValueError("logits must be on a CPU or CUDA device, got meta")
    if logits.dim() < 3:
        raise ValueError(f"logits must be [B, L, *spatial] with at least one spatial dimension, "
                         f"got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    batch, labels, *spatial = logits.shape
    if labels < 1:
        raise ValueError(f"logits must have at least one label, got shape {tuple(logits.shape)}")
    if math.prod(spatial) == 0:
        raise ValueError(f"logits must have at least one pixel per image, got shape {tuple(logits.shape)}")
    if not isinstance(probabilities, bool):
        raise TypeError(f"probabilities must be a bool, got {probabilities!r}")
    extremes = check_finite(logits, "logits")
    if probabilities and extremes is not None and (extremes[0] < 0 or extremes[1] > 1):
        raise ValueError("logits: with probabilities=True they must lie in [0, 1], got values in "
                         f"[{extremes[0]:.4g}, {extremes[1]:.4g}]")
    _check_iterations(iterations)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32  # the features'
    steps = positive_numbers(spacing, "spacing", len(spatial), one_for_all=True)
    if image is not None:
        _check_image(image, logits)
    names = (("gaussian_sxy", None, "gaussian_compat"), ("bilateral_sxy", "bilateral_srgb", "bilateral_compat"))
    most_features = 0  # of the kernels left in: the largest lattice
    for (sxy, srgb, compat), (sxy_name, srgb_name, compat_name) in zip(kernel_params, names):
        largest = _check_compat(compat, compat_name, labels)
        deviations = positive_numbers(sxy, sxy_name, len(spatial), one_for_all=True)
        _check_scale(steps, deviations, f"spacing / {sxy_name}", dtype)
        if not isinstance(compat, Tensor) and compat == 0:  # left out
            continue
        features = len(spatial)
        if srgb_name is not None:
            if image is None:
                raise ValueError("image is None, but the bilateral kernel needs it (set bilateral_compat=0 to "
                                 "leave the kernel out)")
            channels = image.shape[1]
            deviations = positive_numbers(srgb, srgb_name, channels, one_for_all=True)
            _check_scale([1.0] * channels, deviations, f"1 / {srgb_name}", dtype)
            features += channels
        check_compat_scale(largest, compat_name, features, dtype)
        most_features = max(most_features, features)
    if most_features:  # before any feature is made: at this size they take gigabytes
        check_corner_count(batch, math.prod(spatial), most_features, "logits and image")


def _check_image(image, logits: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype not in IMAGE_DTYPES:
        raise TypeError(f"image must be uint8, float16, bfloat16, float32 or float64, got {image.dtype}")
    if image.dim() != logits.dim() or image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:]:
        raise ValueError(f"image must be [B, C, *spatial] with the batch and spatial size of logits "
                         f"{(logits.shape[0], *logits.shape[2:])}, got shape {tuple(image.shape)}")
    if image.shape[1] < 1:
        raise ValueError(f"image must have at least one channel, got shape {tuple(image.shape)}")
    if image.device != logits.device:
        raise ValueError(f"image must be on the device of logits {logits.device}, got {image.device}")
    if image.requires_grad and torch.is_grad_enabled():
        raise ValueError("image: gradients with respect to the image are not supported; pass image.detach() "
                         "(gradients flow to the logits and the compatibilities)")
    if image.is_floating_point():
        check_finite(image, "image")


@torch.library.custom_op("fastseg::dense_crf_mean_field", mutates_args=())
def _mean_field_op(scores: Tensor, scores_are: str, vertex_of: list[Tensor], barycentric: list[Tensor],
                   neighbors: list[Tensor], splat_order: list[Tensor], vertex_start: list[Tensor],
                   compat: list[Tensor], iterations: int) -> Tensor:
    return _compiled_ops.dense_crf_mean_field(scores, scores_are, vertex_of, barycentric, neighbors, splat_order,
                                              vertex_start, compat, iterations)


@_mean_field_op.register_fake
def _(scores, scores_are, vertex_of, barycentric, neighbors, splat_order, vertex_start, compat, iterations):
    batch, pixels, labels = scores.shape
    return scores.new_empty((batch, labels, pixels)).transpose(1, 2)  # the op writes Q label-major


def _normalized_filter(lattice: Lattice, like: Tensor):
    # n K n, with n folded into the lattice's weights: splatting and
    # slicing with n_i w_i instead of w_i normalises for free.
    return lattice.reweighted(_reference.normalization(lattice.apply_flat, like)).apply_flat


def _mean_field(scores: Tensor, scores_are: str, kernels: list[tuple[Lattice, Tensor | float]], iterations: int,
                backend: str) -> Tensor:
    """``fastseg.reference.dense_crf.solve_mean_field`` for kernels given as
    (lattice, compatibility): in one op on the ``cpp`` and ``cuda`` backends
    where no gradient is wanted (it makes the unary and normalises the
    lattices itself), through the differentiable normalised filters
    otherwise."""
    compats = [compat for _, compat in kernels]
    wants_grad = torch.is_grad_enabled() and (
        scores.requires_grad or any(isinstance(c, Tensor) and c.requires_grad for c in compats))
    if backend not in ("cpp", "cuda") or wants_grad:
        filters = [(_normalized_filter(lattice, scores), compat) for lattice, compat in kernels]
        return _reference.solve_mean_field(scores, scores_are, filters, iterations)
    return fused_mean_field(scores, scores_are, kernels, iterations)


def fused_mean_field(scores: Tensor, scores_are: str, kernels: list[tuple[Lattice, Tensor | float]],
                     iterations: int) -> Tensor:
    """``fastseg::dense_crf_mean_field``: ``solve_mean_field`` (of the
    symmetrically normalised kernels) in one op, on CPU tensors and lattices
    of the ``cpp`` backend or CUDA ones of the ``cuda`` backend, without
    gradients. Q [B, N, L] is a view of [B, L, N] memory."""
    fields = [list(field) for field in zip(*(lattice.tensors for lattice, _ in kernels))] or [[]] * 5
    # A Potts weight goes as a CPU scalar, which the CUDA op reads without a
    # synchronisation; a matrix is already on the scores' device.
    compat_tensors = [torch.as_tensor(c, dtype=scores.dtype).contiguous() for _, c in kernels]
    q = _mean_field_op(scores, scores_are, *fields, compat_tensors, iterations)
    if torch.compiler.is_compiling():
        # A compiled graph skips the eager checks, and the op's softmax would
        # turn NaN scores into finite probabilities: let them reach the
        # output instead, as through the reference (+inf is a unary's
        # forbidden label).
        usable = ~torch.isnan(scores) & (scores != -math.inf if scores_are == "unary" else torch.isfinite(scores))
        q = torch.where(usable.all(), q, math.nan)
    return q


def dense_crf(logits: Tensor, image: Tensor | None, iterations: int = 5, *, probabilities: bool = False,
              gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
              bilateral_compat=10.0, spacing=1.0, backend: str | None = None) -> Tensor:
    """Mean-field inference of a dense CRF; returns the label
    probabilities [B, L, *spatial] in the dtype of ``logits``.

    - ``logits`` [B, L, *spatial]: the network's scores (the unary is
      -log softmax), or probabilities with ``probabilities=True``
      (unary -log max(p, 1e-5), as pydensecrf's ``unary_from_softmax``).
    - ``image`` [B, C, *spatial], uint8 or float, any number of channels:
      the bilateral kernel's colour features (C / ``bilateral_srgb``).
    - ``*_sxy``: standard deviation of positions, in units of ``spacing``
      (one number, or one per spatial axis in tensor order: (H, W) or
      (D, H, W)); ``bilateral_srgb``: one number or one per image channel.
    - ``*_compat``: a Potts weight, or an [L, L] compatibility matrix (the
      energy of labels l, l' on similar pixels; its symmetric part is used).
      A weight of 0 leaves the kernel out.
    - ``spacing``: the physical size of a step along each spatial axis
      (anisotropic volumes).

    Computed in float32 (float64 for float64 logits); differentiable with
    respect to the logits and tensor compatibilities.
    """
    kernel_params = ((gaussian_sxy, None, gaussian_compat), (bilateral_sxy, bilateral_srgb, bilateral_compat))
    _check_inputs(logits, image, iterations, probabilities, kernel_params, spacing)
    # The bilateral kernel has the most features: positions and colours.
    features = logits.dim() - 2 + (image.shape[1] if image is not None else 0)
    name = _backend.resolve_backend(FILTER_BACKENDS, backend, logits, uncovered=uncovered(features))
    spatial = tuple(logits.shape[2:])
    if logits.shape[0] == 0:  # only the batch may be empty, as in PyTorch
        return torch.empty_like(logits)

    def lattice_filter(features: Tensor, copies: int, of_positions: bool) -> Lattice:
        def build() -> Lattice:
            return build_lattice(features, spatial, name)

        keep = of_positions and keepable(features)
        lattice = kept_lattices().lattice(features, spatial, name, build) if keep else build()
        return lattice.repeated(copies)

    def solve(scores: Tensor, scores_are: str, kernels, iterations: int) -> Tensor:
        return _mean_field(scores, scores_are, kernels, iterations, name)

    return _reference.run_dense_crf(logits, image, iterations, probabilities, kernel_params, spacing,
                                    lattice_filter, solve)


def _initial_matrix(compat, labels: int) -> Tensor:
    """A learnable compatibility's first value: a Potts weight w as the
    matrix w (1 - I), a matrix as given (a copy, in float32 unless it is
    float64)."""
    if isinstance(compat, Tensor):
        return compat.detach().to(torch.float64 if compat.dtype == torch.float64 else torch.float32, copy=True)
    return compat * (1.0 - torch.eye(labels))


class DenseCRF(nn.Module):
    """A dense CRF layer (CRF-as-RNN): ``forward(logits, image)`` returns
    label probabilities. Its two [L, L] compatibility matrices are
    learnable parameters, initialised to ``gaussian_compat`` and
    ``bilateral_compat``: a Potts weight w as w (1 - I), a matrix as given;
    the other arguments are ``dense_crf``'s."""

    def __init__(self, num_labels: int, iterations: int = 5, *, gaussian_sxy=3.0, gaussian_compat: float = 3.0,
                 bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat: float = 10.0, spacing=1.0,
                 probabilities: bool = False, backend: str | None = None):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
        _check_iterations(iterations)
        if not isinstance(probabilities, bool):
            raise TypeError(f"probabilities must be a bool, got {probabilities!r}")
        for name, weight in (("gaussian_compat", gaussian_compat), ("bilateral_compat", bilateral_compat)):
            _check_compat(weight, name, num_labels)
        # Their counts (per axis, per channel) are checked against the inputs when called.
        for name, value in (("gaussian_sxy", gaussian_sxy), ("bilateral_sxy", bilateral_sxy),
                            ("bilateral_srgb", bilateral_srgb), ("spacing", spacing)):
            positive_numbers(value, name, _count_of(value), one_for_all=True)
        self.gaussian_compat = nn.Parameter(_initial_matrix(gaussian_compat, num_labels))
        self.bilateral_compat = nn.Parameter(_initial_matrix(bilateral_compat, num_labels))
        self.num_labels, self.iterations, self.probabilities, self.backend = (num_labels, iterations,
                                                                              probabilities, backend)
        self.gaussian_sxy, self.bilateral_sxy, self.bilateral_srgb, self.spacing = (gaussian_sxy, bilateral_sxy,
                                                                                    bilateral_srgb, spacing)

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        if isinstance(logits, Tensor) and logits.dim() >= 2 and logits.shape[1] != self.num_labels:
            raise ValueError(f"logits must have num_labels={self.num_labels} channels, got shape "
                             f"{tuple(logits.shape)}")
        return dense_crf(logits, image, self.iterations, probabilities=self.probabilities,
                         gaussian_sxy=self.gaussian_sxy, gaussian_compat=self.gaussian_compat,
                         bilateral_sxy=self.bilateral_sxy, bilateral_srgb=self.bilateral_srgb,
                         bilateral_compat=self.bilateral_compat, spacing=self.spacing, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"num_labels={self.num_labels}, iterations={self.iterations}, gaussian_sxy={self.gaussian_sxy}, "
                f"bilateral_sxy={self.bilateral_sxy}, bilateral_srgb={self.bilateral_srgb}, "
                f"spacing={self.spacing}")
