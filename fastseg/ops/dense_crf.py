"""Dense CRF: ``fastseg.ops.dense_crf`` and ``fastseg.ops.DenseCRF``.

Mean-field inference of the fully connected CRF of Krähenbühl & Koltun
(2011) with the kernels and parameters pydensecrf users know: a spatial
Gaussian (``gaussian_sxy``, ``gaussian_compat``) and a bilateral kernel of
position and colour (``bilateral_sxy``, ``bilateral_srgb``,
``bilateral_compat``), Potts weights or full label-compatibility matrices,
symmetric normalisation; see ``fastseg.reference.dense_crf`` for the
iteration. Each kernel's lattice is built once per call and filters every
label at every iteration; the spatial kernel's, of positions alone, is built
for one image and repeated for the others of a batch.

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
from .._checks import FLOAT_DTYPES, is_number
from .permutohedral_filter import BACKENDS as FILTER_BACKENDS
from .permutohedral_filter import Lattice, build_lattice, check_finite, uncovered

_reference = importlib.import_module("fastseg.reference.dense_crf")  # the module, not its function

IMAGE_DTYPES = (torch.uint8, *FLOAT_DTYPES)


def _check_positive(value, name: str, count: int) -> None:
    """A positive number, or ``count`` of them."""
    values = [value] if is_number(value) else value
    if not isinstance(values, (list, tuple, torch.Size)) or not all(is_number(v) for v in values):
        raise TypeError(f"{name} must be a positive number or a sequence of {count}, got {value!r}")
    if len(values) not in (1, count):
        raise ValueError(f"{name} must be one positive number or {count} of them, got {value!r}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


def _check_compat(compat, name: str, labels: int) -> None:
    if isinstance(compat, Tensor):
        if compat.shape != (labels, labels):
            raise ValueError(f"{name} must be a number or an [L, L] = [{labels}, {labels}] matrix, "
                             f"got shape {tuple(compat.shape)}")
        if not compat.is_floating_point() or not torch.isfinite(compat).all():
            raise ValueError(f"{name} must hold finite floating-point values")
    elif not is_number(compat) or not math.isfinite(compat):
        raise TypeError(f"{name} must be a finite number (Potts weight) or an [L, L] tensor, got {compat!r}")


def _check_inputs(logits, image, iterations, probabilities, kernel_params, spacing) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
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
    extremes = check_finite(logits, "logits")
    if probabilities and extremes is not None and (extremes[0] < 0 or extremes[1] > 1):
        raise ValueError("logits: with probabilities=True they must lie in [0, 1], got values in "
                         f"[{extremes[0]:.4g}, {extremes[1]:.4g}]")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    _check_positive(spacing, "spacing", len(spatial))
    names = (("gaussian_sxy", None, "gaussian_compat"), ("bilateral_sxy", "bilateral_srgb", "bilateral_compat"))
    for (sxy, srgb, compat), (sxy_name, srgb_name, compat_name) in zip(kernel_params, names):
        _check_compat(compat, compat_name, labels)
        _check_positive(sxy, sxy_name, len(spatial))
        if srgb_name is None or (not isinstance(compat, Tensor) and compat == 0):
            continue
        if image is None:
            raise ValueError("image is None, but the bilateral kernel needs it (set bilateral_compat=0 to leave "
                             "the kernel out)")
        _check_image(image, logits)
        _check_positive(srgb, srgb_name, image.shape[1])


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
    (lattice, compatibility): in one op on the ``cpp`` backend where no
    gradient is wanted (it makes the unary and normalises the lattices
    itself), through the differentiable normalised filters otherwise."""
    compats = [compat for _, compat in kernels]
    wants_grad = torch.is_grad_enabled() and (
        scores.requires_grad or any(isinstance(c, Tensor) and c.requires_grad for c in compats))
    if backend != "cpp" or wants_grad:
        filters = [(_normalized_filter(lattice, scores), compat) for lattice, compat in kernels]
        return _reference.solve_mean_field(scores, scores_are, filters, iterations)
    return fused_mean_field(scores, scores_are, kernels, iterations)


def fused_mean_field(scores: Tensor, scores_are: str, kernels: list[tuple[Lattice, Tensor | float]],
                     iterations: int) -> Tensor:
    """``fastseg::dense_crf_mean_field``: ``solve_mean_field`` (of the
    symmetrically normalised kernels) in one op, on CPU tensors and lattices
    of the ``cpp`` backend, without gradients. Q [B, N, L] is a view of
    [B, L, N] memory."""
    fields = [list(field) for field in zip(*(lattice.tensors for lattice, _ in kernels))] or [[]] * 5
    compat_tensors = [torch.as_tensor(c, dtype=scores.dtype).contiguous() for _, c in kernels]
    return _mean_field_op(scores, scores_are, *fields, compat_tensors, iterations)


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

    def lattice_filter(features: Tensor, copies: int) -> Lattice:
        return build_lattice(features, spatial, name).repeated(copies)

    def solve(scores: Tensor, scores_are: str, kernels, iterations: int) -> Tensor:
        return _mean_field(scores, scores_are, kernels, iterations, name)

    return _reference.run_dense_crf(logits, image, iterations, probabilities, kernel_params, spacing,
                                    lattice_filter, solve)


class DenseCRF(nn.Module):
    """A dense CRF layer (CRF-as-RNN): ``forward(logits, image)`` returns
    label probabilities. Its two [L, L] compatibility matrices are
    learnable parameters, initialised to the Potts weights
    ``gaussian_compat`` and ``bilateral_compat`` (w (1 - I)); the other
    arguments are ``dense_crf``'s."""

    def __init__(self, num_labels: int, iterations: int = 5, *, gaussian_sxy=3.0, gaussian_compat: float = 3.0,
                 bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat: float = 10.0, spacing=1.0,
                 probabilities: bool = False, backend: str | None = None):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
        for name, weight in (("gaussian_compat", gaussian_compat), ("bilateral_compat", bilateral_compat)):
            _check_compat(weight, name, num_labels)
        potts = 1.0 - torch.eye(num_labels)
        self.gaussian_compat = nn.Parameter(gaussian_compat * potts)
        self.bilateral_compat = nn.Parameter(bilateral_compat * potts)
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
