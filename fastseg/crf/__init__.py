"""pydensecrf's API on fastseg's permutohedral lattice.

pydensecrf wraps Krähenbühl's dense CRF code (Krähenbühl & Koltun,
"Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
NIPS 2011). This module has the same classes, methods, argument names,
constants, array shapes and dtypes, so that migrating takes one line::

    import fastseg.crf as dcrf          # was: import pydensecrf.densecrf as dcrf
    from fastseg.crf import utils       # was: from pydensecrf import utils

    d = dcrf.DenseCRF2D(W, H, M)        # width first, as Krähenbühl's code
    d.setUnaryEnergy(U)                 # float32 [M, W*H], pixel y*W + x
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    Q = d.inference(5)                  # float32 [M, W*H]

Each pairwise term builds its lattice once, when it is added, with the
fastest backend here (``fastseg.ops.permutohedral_lattice``); that of
``addPairwiseGaussian``, of positions alone, is kept for later CRFs of the
same size (``fastseg.ops.clear_lattice_cache``); the iterations
are ``fastseg.reference.dense_crf.mean_field``'s, which ``inference`` runs
in the C++ backend's fused op (``fastseg.ops.dense_crf``'s) where every
kernel is symmetrically normalised (the default). Everything is computed in
float32, as pydensecrf does. Inputs are checked before anything runs: where
pydensecrf asserts, reads out of bounds or computes on NaN, this raises a
``TypeError`` or ``ValueError`` naming the argument (an array of the wrong
dtype: ``ArrayDtypeError``, both at once, as pydensecrf raises a
``ValueError`` there). Arrays need the dtypes pydensecrf needs (float32;
uint8 images) but, unlike there, may have any memory layout. Sizes and
iteration counts may be floats holding whole numbers, as there; a unary
energy may be +inf (a forbidden label).

Kernel types (``CONST_KERNEL``, ``DIAG_KERNEL``, ``FULL_KERNEL``) only say
which kernel parameters Krähenbühl's code would learn; they are accepted
and make no difference to inference, there or here.
"""

import enum
import math
from numbers import Integral

import numpy as np
import torch

from .._checks import is_number, positive_numbers
from ..ops.dense_crf import MAX_ITERATIONS, check_compat_scale, compat_magnitude, fused_mean_field
from ..ops._kept_lattices import kept_lattices
from ..ops.permutohedral_filter import Lattice, lattice_backend, permutohedral_lattice
from ..reference.dense_crf import Filter, mean_field, mean_field_energy, symmetric_compat
from ..reference.dense_crf import normalization as symmetric_normalization
from ..reference.permutohedral_filter import lattice_scale
from . import utils


class KernelType(enum.IntEnum):
    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = KernelType
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = NormalizationType


class ArrayDtypeError(TypeError, ValueError):
    """An array of the wrong dtype: a TypeError, as fastseg raises for one,
    and a ValueError, as pydensecrf (Cython's buffer check) raises, so that
    code written against either catches it."""


def _check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    """An int in [minimum, maximum], or a float holding one (pydensecrf
    takes 5.0 where it wants 5): as an int."""
    whole = isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not (isinstance(value, Integral) or whole) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return int(value)


def _check_array(value, name: str, dtype, shape: tuple[int | None, ...], what: str, finite: bool = True) -> None:
    """A numpy array of ``dtype`` and ``shape`` (None: any size >= 1 on
    that axis), with finite values unless ``finite`` is False."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array {what}, got {type(value).__name__}")
    if value.dtype != dtype:
        raise ArrayDtypeError(f"{name} must have dtype {np.dtype(dtype)}, got {value.dtype}")
    if value.ndim != len(shape) or any(want not in (None, got) or got < 1 for want, got in zip(shape, value.shape)):
        raise ValueError(f"{name} must be {what}, got shape {value.shape}")
    if finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError(f"{name} must be finite; it holds {int((~np.isfinite(value)).sum())} NaN or Inf entries")


def _check_unary(energy: np.ndarray) -> None:
    """A unary energy [M, N]: finite or +inf (a forbidden label), with a
    label left to every variable; pydensecrf's output turns NaN otherwise."""
    if np.isnan(energy).any() or np.isneginf(energy).any():
        bad = int(np.isnan(energy).sum() + np.isneginf(energy).sum())
        raise ValueError(f"u: the unary energy must be finite or +inf (a forbidden label); it holds {bad} NaN or "
                         "-inf entries")
    impossible = np.isposinf(energy).all(axis=0)
    if impossible.any():
        raise ValueError(f"u: the unary energy is +inf for every label at {int(impossible.sum())} variable(s), "
                         f"the first {int(impossible.argmax())}: each needs a label it allows")


def _enum_member(value, enum_type, name: str):
    if isinstance(value, bool) or not isinstance(value, Integral) or value not in set(enum_type):
        raise ValueError(f"{name} must be one of {', '.join(member.name for member in enum_type)}, got {value!r}")
    return enum_type(value)


def _compat_matrix(compat, labels: int) -> torch.Tensor:
    """[M, M] symmetric float32: the energy labels l and l' of similar
    pixels add, as Krähenbühl's label compatibilities define it. A number
    w is his Potts model, whose message is -w K Q: the matrix -w I. A 1-D
    array is a diagonal compatibility, a 2-D one a full matrix (of which
    his code takes the symmetric part)."""
    if is_number(compat):
        if not math.isfinite(compat):
            raise ValueError(f"compat must be finite, got {compat!r}")
        return -float(compat) * torch.eye(labels)
    if not isinstance(compat, np.ndarray) or compat.ndim not in (1, 2):
        raise TypeError(f"compat must be a number (Potts), a float32 array of {labels} (diagonal) or a "
                        f"{labels} x {labels} float32 array (matrix), got {type(compat).__name__}"
                        + (f" of shape {compat.shape}" if isinstance(compat, np.ndarray) else ""))
    _check_array(compat, "compat", np.float32, (labels,) * compat.ndim,
                 f"of shape ({labels},) or ({labels}, {labels}) for {labels} labels")
    matrix = torch.from_numpy(compat.copy())
    return torch.diag(matrix) if compat.ndim == 1 else symmetric_compat(matrix, torch.float32, "cpu")


def _fused_compat(compat: torch.Tensor) -> torch.Tensor | float:
    """The compatibility as the fused op takes it: Krähenbühl's Potts
    matrix -w I as the weight w (the cheaper path there), any other matrix
    as it is."""
    diagonal = compat.diagonal()
    if torch.equal(compat, torch.diag(diagonal)) and bool((diagonal == diagonal[0]).all()):
        return -float(diagonal[0])
    return compat


def _krahenbuhl_scale(d: int) -> float:
    """Krähenbühl's unnormalised lattice filter over fastseg's. Both
    splat, blur and slice alike; his blur is [1/2 1 1/2] along each of the
    d+1 directions (twice the mass-preserving [1/4 1/2 1/4]) and his slice
    multiplies by 1 / (1 + 2^-d) (permutohedral.cpp), where fastseg scales
    to the exact Gaussian sum (``lattice_scale``). Only unnormalised
    kernels see the difference."""
    return 2.0 ** (d + 1) / (1.0 + 2.0**-d) / lattice_scale(d)


def _kernel_filter(lattice: Lattice, d: int, pixels: int, kind: NormalizationType) -> Filter:
    """The filter of [1, N, M] values of one kernel with its normalisation
    n (pairwise.cpp's DenseKernel::filter)."""
    if kind == NO_NORMALIZATION:
        # His code computes a mean normaliser here but never applies it.
        scale = _krahenbuhl_scale(d)
        return lambda q: scale * lattice.apply_flat(q)
    norm = symmetric_normalization(lattice.apply_flat, torch.ones(1, pixels, 1))  # (K 1 + 1e-20)^-1/2
    if kind == NORMALIZE_SYMMETRIC:
        # n K n, n folded into the lattice's splat and slice weights.
        return lattice.reweighted(norm).apply_flat
    inverse = norm.square()  # 1 / (K 1 + 1e-20)
    if kind == NORMALIZE_BEFORE:
        return lambda q: lattice.apply_flat(inverse * q)
    return lambda q: inverse * lattice.apply_flat(q)


class Unary:
    """A unary energy for ``DenseCRF.setUnary``: float32 [M, N] in ``energy``."""

    energy: np.ndarray


class ConstUnary(Unary):
    """The unary energy ``u`` [M, N] as it is (``setUnaryEnergy(u)``); +inf
    forbids a label (a hard constraint, or -log 0 of a probability)."""

    def __init__(self, u):
        _check_array(u, "u", np.float32, (None, None), "of shape (nlabels, nvar)", finite=False)
        self.energy = np.ascontiguousarray(u)


class LogisticUnary(Unary):
    """The unary energy L f: label weights ``L`` [M, D] times per-pixel
    features ``f`` [D, N] (``setUnaryEnergy(L, f)``; Krähenbühl's
    LogisticUnaryEnergy, whose weights his code learns)."""

    def __init__(self, L, f):
        _check_array(L, "L", np.float32, (None, None), "of shape (nlabels, D)")
        _check_array(f, "f", np.float32, (L.shape[1], None), f"of shape (D, nvar) with D = {L.shape[1]} (L's columns)")
        self.energy = L @ f


class DenseCRF:
    """A fully connected CRF over ``nvar`` variables with ``nlabels`` labels;
    pairwise terms come from feature vectors (``addPairwiseEnergy``)."""

    def __init__(self, nvar, nlabels):
        self._nvar, self._nlabels = _check_int(nvar, "nvar", 1), _check_int(nlabels, "nlabels", 1)
        self._unary = torch.zeros(1, self._nvar, self._nlabels)  # [1, N, M]: none set is a zero energy
        # (lattice, feature count, normalisation, [M, M] compat) of every kernel added
        self._pairwise: list[tuple[Lattice, int, NormalizationType, torch.Tensor]] = []
        self._filters: list[tuple[Filter, torch.Tensor]] = []  # made from _pairwise when first needed
        # (lattice, compat) as fused_mean_field takes them while every kernel can go there, else None.
        self._fused_kernels: list[tuple[Lattice, torch.Tensor | float]] | None = []

    def setUnaryEnergy(self, u, f=None):
        """The unary energy (-log p): float32 ``u`` [nlabels, nvar]; with
        ``f`` [D, nvar], ``u`` [nlabels, D] are label weights and the energy
        is u f (``LogisticUnary``)."""
        self.setUnary(ConstUnary(u) if f is None else LogisticUnary(u, f))

    def setUnary(self, u):
        """The unary energy of a ``ConstUnary`` or ``LogisticUnary``."""
        if not isinstance(u, Unary):
            raise TypeError(f"u must be a ConstUnary or LogisticUnary, got {type(u).__name__}")
        wanted = (self._nlabels, self._nvar)
        if u.energy.shape != wanted:
            raise ValueError(f"u: the unary energy must have shape (nlabels, nvar) = {wanted}, got {u.energy.shape}")
        _check_unary(u.energy)
        self._unary = torch.from_numpy(u.energy.T.copy()).unsqueeze(0)

    def addPairwiseEnergy(self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """A Gaussian kernel over float32 ``features`` [D, nvar] (each
        already divided by its standard deviation) with label
        compatibility ``compat``: a number w (Potts: similar pixels pay w
        for differing labels), a float32 array of nlabels (diagonal) or an
        nlabels x nlabels float32 array (full matrix, symmetrised)."""
        _check_array(features, "features", np.float32, (None, self._nvar), f"of shape (D, nvar) = (D, {self._nvar})")
        self._add_kernel(features, compat, kernel, normalization, of_positions=False)

    def _add_kernel(self, features: np.ndarray, compat, kernel, normalization, of_positions: bool) -> None:
        """addPairwiseEnergy of checked features; those of positions alone
        (of_positions) get a lattice kept for later CRFs of this size, as
        fastseg.ops.dense_crf's spatial kernel does."""
        compat = _compat_matrix(compat, self._nlabels)
        check_compat_scale(compat_magnitude(compat), "compat", features.shape[0], torch.float32)
        _enum_member(kernel, KernelType, "kernel")
        kind = _enum_member(normalization, NormalizationType, "normalization")
        tensor = torch.from_numpy(np.ascontiguousarray(features)).unsqueeze(0)
        if of_positions:
            backend = lattice_backend(tensor)
            lattice = kept_lattices().lattice(tensor, (self._nvar,), backend,
                                              lambda: permutohedral_lattice(tensor, backend=backend))
        else:
            lattice = permutohedral_lattice(tensor)
        self._pairwise.append((lattice, features.shape[0], kind, compat))
        if self._fused_kernels is not None and kind == NORMALIZE_SYMMETRIC and lattice.backend == "cpp":
            self._fused_kernels.append((lattice, _fused_compat(compat)))
        else:
            self._fused_kernels = None

    def inference(self, niter):
        """Q [nlabels, nvar] float32 after ``niter`` mean-field iterations."""
        niter = _check_int(niter, "niter", 0, MAX_ITERATIONS)
        if self._fused_kernels is not None:
            return _to_numpy(fused_mean_field(self._unary, "unary", self._fused_kernels, niter))
        return _to_numpy(mean_field(self._unary, self._kernels, niter))

    def startInference(self):
        """(Q, tmp1, tmp2): Q [nlabels, nvar] = softmax(-unary), to advance
        with ``stepInference``. tmp1 and tmp2 stand for pydensecrf's scratch
        matrices (empty, as there); fastseg needs none."""
        scratch = np.empty((0, 0), np.float32)
        return _to_numpy(torch.softmax(-self._unary, dim=-1)), scratch, scratch.copy()

    def stepInference(self, Q, tmp1, tmp2):
        """One mean-field iteration on ``Q`` [nlabels, nvar], in place."""
        self._check_marginals(Q)
        if not Q.flags.writeable:
            raise ValueError("Q must be writeable: stepInference updates it in place")
        Q[...] = _to_numpy(torch.softmax(-self._energy(_from_numpy(Q)), dim=-1))

    def klDivergence(self, Q):
        """Krähenbühl's KL-divergence of the marginals ``Q`` [nlabels,
        nvar] from the CRF's distribution (up to its log-partition):
        sum Q log Q + sum Q (unary + pairwise messages)."""
        self._check_marginals(Q)
        q = _from_numpy(Q)
        # 1e-20 keeps 0 log 0 at 0, as his code does; a forbidden label (+inf
        # energy, Q at most the float floor there) adds nothing (his code: NaN).
        energy = self._energy(q)
        terms = torch.where(torch.isposinf(energy), 0, q * (torch.log(q.clamp(min=1e-20)) + energy))
        return float(terms.double().sum())

    @property
    def _kernels(self) -> list[tuple[Filter, torch.Tensor]]:
        """(normalised filter, compat) of every kernel: made on first use,
        since ``inference`` of symmetrically normalised kernels runs in the
        fused op, which normalises them itself (the filter of ones each
        normalisation costs is then not needed)."""
        for lattice, d, kind, compat in self._pairwise[len(self._filters):]:
            self._filters.append((_kernel_filter(lattice, d, self._nvar, kind), compat))
        return self._filters

    def _energy(self, q: torch.Tensor) -> torch.Tensor:
        return mean_field_energy(self._unary, self._kernels, q)

    def _check_marginals(self, Q) -> None:
        _check_array(Q, "Q", np.float32, (self._nlabels, self._nvar),
                     f"of shape (nlabels, nvar) = {(self._nlabels, self._nvar)}")


class DenseCRF2D(DenseCRF):
    """A dense CRF over the pixels of a ``w`` x ``h`` image (width first);
    pixel (x, y) is variable y * w + x."""

    def __init__(self, w, h, nlabels):
        self._w, self._h = _check_int(w, "w", 1), _check_int(h, "h", 1)
        super().__init__(self._w * self._h, nlabels)

    def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """A smoothness kernel over positions: features (x / sx, y / sy),
        ``sxy`` one number or (sx, sy). pydensecrf's README uses sxy=3,
        compat=3."""
        sx, sy = positive_numbers(sxy, "sxy", 2)
        features = utils.create_pairwise_gaussian((sy, sx), (self._h, self._w))
        self._add_kernel(_x_first(features), compat, kernel, normalization, of_positions=True)

    def addPairwiseBilateral(self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """An appearance kernel over positions and colours: features
        (x / sx, y / sy, r / sr, g / sg, b / sb) of ``rgbim``, a uint8 image
        [h, w, 3]; ``sxy`` one number or (sx, sy), ``srgb`` one number or
        (sr, sg, sb). pydensecrf's README uses sxy=80, srgb=13, compat=10.
        Other images (any channels, any dtype): ``utils.create_pairwise_bilateral``
        and ``addPairwiseEnergy``."""
        sx, sy = positive_numbers(sxy, "sxy", 2)
        colour = positive_numbers(srgb, "srgb", 3)
        _check_array(rgbim, "rgbim", np.uint8, (self._h, self._w, 3), f"of shape (h, w, 3) = {(self._h, self._w, 3)}")
        features = utils.create_pairwise_bilateral((sy, sx), colour, rgbim, chdim=2)
        self.addPairwiseEnergy(_x_first(features), compat, kernel, normalization)


def _x_first(features: np.ndarray) -> np.ndarray:
    """utils' features start (y, x), in array axis order; Krähenbühl's 2-D
    ones (x, y). The Gaussian is the same, but the lattice's cells depend
    on the order: in his, the lattice rounds as pydensecrf's does."""
    return features[[1, 0, *range(2, features.shape[0])]]


def _from_numpy(Q: np.ndarray) -> torch.Tensor:
    """[M, N] numpy -> [1, N, M], the layout the lattice filters labels in."""
    return torch.from_numpy(Q).T.unsqueeze(0).contiguous()


def _to_numpy(q: torch.Tensor) -> np.ndarray:
    """[1, N, M] -> [M, N] float32 C-contiguous numpy."""
    return q[0].T.contiguous().numpy()


__all__ = ["ArrayDtypeError", "CONST_KERNEL", "ConstUnary", "DIAG_KERNEL", "DenseCRF", "DenseCRF2D", "FULL_KERNEL",
           "KernelType", "LogisticUnary", "NORMALIZE_AFTER", "NORMALIZE_BEFORE", "NORMALIZE_SYMMETRIC", "NO_NORMALIZATION",
           "NormalizationType", "Unary", "utils"]
