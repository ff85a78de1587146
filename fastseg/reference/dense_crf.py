"""Reference mean-field inference of the fully connected CRF.

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with
Gaussian Edge Potentials", NIPS 2011, algorithm 1, with the symmetric
normalisation of Krähenbühl's released code (the one pydensecrf wraps):

    Q_0 = softmax(-U)
    repeat: Q <- softmax(-U - sum_k mu_k (n_k * K_k (n_k * Q)))

over labels per pixel, where K_k is the Gaussian filter of kernel k
(``fastseg.reference.permutohedral_filter``), n_k = (K_k 1)^(-1/2) its
symmetric normalisation and mu_k its label compatibility: a Potts weight w
(mu = w (1 - I), which softmax sees as -w I) or a symmetrised L x L matrix.

Every tensor between iterations is laid out [B, N, L]: pixels flattened,
labels last, the layout the lattice filters in.
"""

from collections.abc import Callable, Sequence
from numbers import Real

import torch

from .._layout import memory_format_of

from .permutohedral_filter import apply_lattice, build_lattice, repeat_lattice

# pydensecrf's unary_from_softmax clips probabilities here before the log.
PROBABILITY_CLIP = 1e-5

# A filter of [B, N, L] values with one kernel's features.
Filter = Callable[[torch.Tensor], torch.Tensor]


def unary_energy(scores: torch.Tensor, scores_are: str) -> torch.Tensor:
    """The unary -log p [B, N, L] from scores [B, N, L] (labels last) that
    are the unary already, logits, or probabilities (clipped to
    PROBABILITY_CLIP first, as pydensecrf does)."""
    if scores_are == "unary":
        return scores
    if scores_are == "probabilities":
        return torch.log(scores.clamp(min=PROBABILITY_CLIP)).neg_()
    return torch.logsumexp(scores, dim=-1, keepdim=True) - scores  # -log_softmax


def symmetric_compat(compat, dtype, device):
    """A Potts weight as it is, the symmetric part of an [L, L] matrix (as
    Krähenbühl's code takes it)."""
    if isinstance(compat, torch.Tensor):
        compat = compat.to(dtype=dtype, device=device)
        return 0.5 * (compat + compat.T)
    return float(compat)


def normalization(filter_values: Filter, like: torch.Tensor) -> torch.Tensor:
    """n = (K 1)^(-1/2) [B, N, 1], for pixels laid out as ``like`` [B, N, *]."""
    return torch.rsqrt(filter_values(torch.ones_like(like[..., :1])) + 1e-20)


def normalized_filter(filter_values: Filter, like: torch.Tensor) -> Filter:
    """n * K(n * Q), n computed once."""
    norm = normalization(filter_values, like)
    return lambda q: norm * filter_values(norm * q)


def mean_field_energy(unary: torch.Tensor, kernels: Sequence[tuple[Filter, torch.Tensor | float]],
                      q: torch.Tensor) -> torch.Tensor:
    """The energy [B, N, L] whose softmax(-energy) is the next Q: the unary
    plus each kernel's message through its compatibility, a Potts weight or
    a symmetric [L, L] matrix."""
    energy = unary
    for filter_values, compat in kernels:
        message = filter_values(q)
        if isinstance(compat, torch.Tensor):
            energy = energy + message @ compat  # compat is symmetric: Q mu^T = Q mu
        else:
            # Potts: mu = w (1 - I) adds w * sum_l' message_l' - w * message_l;
            # the sum is the same for every label, which softmax ignores.
            energy = energy - compat * message
    return energy


def mean_field(unary: torch.Tensor, kernels: Sequence[tuple[Filter, torch.Tensor | float]],
               iterations: int) -> torch.Tensor:
    """unary [B, N, L]; kernels: (normalised filter, compatibility) pairs
    as ``mean_field_energy`` takes them -> Q [B, N, L]."""
    q = torch.softmax(-unary, dim=-1)
    for _ in range(iterations):
        q = torch.softmax(-mean_field_energy(unary, kernels, q), dim=-1)
    return q


def solve_mean_field(scores: torch.Tensor, scores_are: str, kernels: Sequence[tuple[Filter, torch.Tensor | float]],
                     iterations: int) -> torch.Tensor:
    """``mean_field`` from scores as ``unary_energy`` takes them."""
    return mean_field(unary_energy(scores, scores_are), kernels, iterations)


def per_axis(value, rank: int) -> list[float]:
    """A number for every axis from one number (or a sequence of one), or
    one per axis already."""
    values = [value] if isinstance(value, Real) else list(value)
    return [float(v) for v in (values * rank if len(values) == 1 else values)]


def kernel_features(image: torch.Tensor | None, spatial: Sequence[int], batch: int, spacing, sxy, srgb,
                    dtype, device) -> torch.Tensor:
    """[B, N, d] features of one kernel: positions (index * spacing / sxy
    per axis), then the image's channels / srgb for a bilateral kernel
    (srgb not None).

    The positions go last axis first (x, y, ...) and nothing is shifted, as
    in Krähenbühl's DenseCRF2D: the lattice is a fixed grid in feature
    space, so its rounding, and with it the labels where they hang on the
    smallest differences, follows pydensecrf's only for the same features."""
    rank = len(spatial)
    scale = [s / sigma for s, sigma in zip(per_axis(spacing, rank), per_axis(sxy, rank))]
    channels = image.shape[1] if srgb is not None else 0
    # Written in place into the layout the lattice takes, where a stack, a
    # flip, a concatenation and a transposed copy each made a tensor of
    # their own (at Cityscapes size 40 MB each, and its page faults).
    features = torch.empty(batch, *spatial, rank + channels, dtype=dtype, device=device)
    for feature, axis in enumerate(reversed(range(rank))):
        along = [1] * rank
        along[axis] = spatial[axis]
        features[..., feature] = (torch.arange(spatial[axis], dtype=dtype, device=device) * scale[axis]).view(along)
    if srgb is not None:
        colour_scale = torch.tensor(per_axis(srgb, channels), dtype=dtype, device=device)
        features[..., rank:] = image.movedim(1, -1).to(dtype) / colour_scale
    return features.view(batch, -1, rank + channels)


def run_dense_crf(logits: torch.Tensor, image: torch.Tensor | None, iterations: int, probabilities: bool,
                  kernel_params, spacing, lattice_filter: Callable[[torch.Tensor, int, bool], Filter],
                  solve=solve_mean_field) -> torch.Tensor:
    """The mean-field of ``dense_crf`` with the normalised Gaussian filters
    that ``lattice_filter(features, copies, of_positions)`` makes from
    [B', N, d] features for the batch of B = B' * copies images: the
    reference's own lattice here, a faster backend's in
    ``fastseg.ops.dense_crf``. A kernel of positions alone (of_positions)
    has the same features in every image, so it passes one image's
    (B' = 1, copies = B), whose lattice serves them all, and every image of
    that size and spacing, which a backend may keep for later calls.
    ``solve`` runs the iterations, with ``solve_mean_field``'s signature; a
    backend may pass its own, which takes whatever its ``lattice_filter``
    makes.

    kernel_params: (sxy, srgb or None, compat) per kernel; a kernel whose
    compatibility is the number 0 is left out."""
    batch, labels, *spatial = logits.shape
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    scores = logits.reshape(batch, labels, -1).to(dtype).transpose(1, 2)  # [B, N, L], a view where it can be
    kernels = []
    for sxy, srgb, compat in kernel_params:
        if not isinstance(compat, torch.Tensor) and compat == 0:
            continue
        images = batch if srgb is not None else 1
        features = kernel_features(image, spatial, images, spacing, sxy, srgb, dtype, logits.device)
        kernels.append((lattice_filter(features, batch // images, srgb is None),
                        symmetric_compat(compat, dtype, logits.device)))
    scores_are = "probabilities" if probabilities else "logits"
    q = solve(scores, scores_are, kernels, iterations)  # [B, N, L], in the memory layout solve chose
    q = q.reshape(batch, *spatial, labels).movedim(-1, 1).to(logits.dtype)
    return q.contiguous(memory_format=memory_format_of(logits))


def _reference_filter(features: torch.Tensor, copies: int, of_positions: bool) -> Filter:
    # Built afresh every call, of positions or not: the reference keeps nothing.
    lattice = repeat_lattice(build_lattice(features), copies)
    like = features.expand(features.shape[0] * copies, -1, -1)  # the shape of the whole batch's features
    return normalized_filter(lambda values: apply_lattice(values, lattice), like)


def dense_crf(logits: torch.Tensor, image: torch.Tensor | None, iterations: int = 5, *, probabilities: bool = False,
              gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
              bilateral_compat=10.0, spacing=1.0) -> torch.Tensor:
    """Same signature as ``fastseg.ops.dense_crf`` (without ``backend``);
    no argument checks."""
    kernel_params = ((gaussian_sxy, None, gaussian_compat), (bilateral_sxy, bilateral_srgb, bilateral_compat))
    return run_dense_crf(logits, image, iterations, probabilities, kernel_params, spacing, _reference_filter)
