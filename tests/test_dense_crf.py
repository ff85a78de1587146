"""fastseg.ops.dense_crf / DenseCRF against a plainly written mean-field.

The mean-field here is Krähenbühl & Koltun's algorithm 1 with the
symmetric normalisation of their code, written out with dense N x N kernel
matrices on tiny images: with the exact Gaussian kernels it is the CRF the
lattice approximates (compared within the lattice's error), and with the
matrices of the very lattice the op builds (the filter of the identity) it
is the op's own computation done another way (compared to rounding). The
backends must agree with fastseg.reference.dense_crf to float32 rounding.
"""

import importlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastseg
from crf_helpers import DTYPES, OUTPUT_TOL, assert_close_scaled, coloured_regions, dtype_id, positions
from fastseg import _compiled_ops
from fastseg.ops import DenseCRF, Lattice, dense_crf, permutohedral_lattice
from pool_helpers import on_devices

# The module, not fastseg.reference's dense_crf function.
reference_crf = importlib.import_module("fastseg.reference.dense_crf")
LatticeTensors = importlib.import_module("fastseg.reference.permutohedral_filter").LatticeTensors

CRF_BACKENDS = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "reference")}
BACKENDS = on_devices(CRF_BACKENDS)
CPU_BACKENDS = CRF_BACKENDS["cpu"]
# The backends whose dense_crf runs the fused op where no gradient is wanted.
FUSED = on_devices({"cpu": ("cpp",), "cuda": ("cuda",)})
SCORE_KINDS = ("logits", "probabilities", "unary")

DEFAULTS = dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0,
                spacing=1.0)


# --- the plain mean-field --------------------------------------------------------------------

def per_axis(value, count: int) -> list[float]:
    values = [value] if isinstance(value, (int, float)) else list(value)
    return [float(v) for v in (values * count if len(values) == 1 else values)]


def kernel_features(image, spatial, spacing, sxy, srgb) -> torch.Tensor:
    """[d, *spatial] float64 features of one image's kernel: the position
    along each axis (index * spacing / sxy), last axis first (x, y, ...) as
    in Krähenbühl's DenseCRF2D, then the colours / srgb."""
    scale = [s / sigma for s, sigma in zip(per_axis(spacing, len(spatial)), per_axis(sxy, len(spatial)))]
    features = positions(spatial, scale).flip(0)
    if srgb is None:
        return features
    colour = torch.tensor(per_axis(srgb, image.shape[0]), dtype=torch.float64).view(-1, *[1] * len(spatial))
    return torch.cat([features, image.double() / colour])


def exact_kernel(features: torch.Tensor) -> torch.Tensor:
    """[N, N]: exp(-|f_i - f_j|^2 / 2)."""
    flat = features.reshape(features.shape[0], -1).T
    return torch.exp(-0.5 * torch.cdist(flat, flat).square())


def lattice_kernel(backend: str):
    """[N, N]: the matrix of the lattice filter that ``backend`` builds for
    these features (column j: the filter of pixel j's indicator)."""
    def kernel(features: torch.Tensor) -> torch.Tensor:
        lattice = permutohedral_lattice(features[None], backend=backend)
        pixels = features[0].numel()
        return lattice.apply_flat(torch.eye(pixels, dtype=torch.float64)[None])[0]  # [pixel, column]
    return kernel


def compat_matrix(compat, labels: int) -> torch.Tensor:
    """mu [L, L]: w (1 - I) for a Potts weight, the symmetric part of a matrix."""
    if isinstance(compat, torch.Tensor):
        compat = compat.detach().double()
        return 0.5 * (compat + compat.T)
    return compat * (1 - torch.eye(labels, dtype=torch.float64))


def plain_mean_field(logits, image, iterations, *, kernel=exact_kernel, probabilities=False, **params):
    """Q [B, L, *spatial] in float64, one image at a time:

        Q_0 = softmax(-U);  Q <- softmax(-U - sum_k (n_k * K_k (n_k * Q)) mu_k)

    with U = -log softmax(logits) (-log max(p, 1e-5) for probabilities),
    K_k the [N, N] matrix of kernel k, n_k = (K_k 1)^(-1/2)."""
    params = DEFAULTS | params
    batch, labels, *spatial = logits.shape
    kernels = (
        (params["gaussian_sxy"], None, params["gaussian_compat"]),
        (params["bilateral_sxy"], params["bilateral_srgb"], params["bilateral_compat"]),
    )
    out = []
    for b in range(batch):
        scores = logits[b].detach().double().reshape(labels, -1).T  # [N, L]
        unary = -torch.log(scores.clamp(min=1e-5)) if probabilities else -torch.log_softmax(scores, -1)
        messages = []
        for sxy, srgb, compat in kernels:
            if not isinstance(compat, torch.Tensor) and compat == 0:
                continue
            matrix = kernel(kernel_features(None if image is None else image[b], spatial, params["spacing"], sxy,
                                            srgb))
            norm = matrix.sum(1, keepdim=True).rsqrt()  # (K 1)^(-1/2), [N, 1]
            messages.append((norm * matrix * norm.T, compat_matrix(compat, labels)))
        q = torch.softmax(-unary, -1)
        for _ in range(iterations):
            energy = unary + sum(normalised @ q @ mu for normalised, mu in messages)
            q = torch.softmax(-energy, -1)
        out.append(q.T.reshape(labels, *spatial))
    return torch.stack(out)


def label_nll(q: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean -log Q of the true labels (written out: F.nll_loss's backward
    wants a contiguous input, see test_output_layout_follows_the_logits)."""
    return -q.clamp(min=1e-6).log().gather(1, labels.unsqueeze(1)).mean()


def noisy_case(gen, shape=(6, 7), labels=3, batch=1, channels=3, noise=1.0, dtype=torch.float32):
    """logits [B, L, *shape] (one-hot of the true labels plus Gaussian noise)
    and an image [B, channels, *shape] uint8 of coloured regions."""
    truths, images, logits = [], [], []
    for _ in range(batch):
        label, image = coloured_regions(gen, shape, labels, channels)
        one_hot = F.one_hot(label, labels).movedim(-1, 0).double()
        truths.append(label)
        images.append(image)
        logits.append(2 * one_hot + noise * torch.randn(one_hot.shape, generator=gen, dtype=torch.float64))
    return torch.stack(logits).to(dtype), torch.stack(images), torch.stack(truths)


# --- against the plain mean-field ---------------------------------------------------------------

PLAIN_CASES = {
    "2d-potts": dict(shape=(6, 7), params={}),
    "2d-matrix": dict(shape=(5, 8), params=dict(gaussian_compat="matrix", bilateral_compat="matrix")),
    "2d-anisotropic": dict(shape=(7, 5), params=dict(gaussian_sxy=(2.0, 4.0), bilateral_sxy=(5.0, 9.0),
                                                     bilateral_srgb=(20.0, 10.0, 30.0), spacing=(1.5, 1.0))),
    "2d-probabilities": dict(shape=(6, 7), params={}, probabilities=True),
    "3d": dict(shape=(3, 4, 5), params=dict(spacing=(2.0, 1.0, 1.0), gaussian_sxy=2.0, bilateral_sxy=6.0)),
    "1-channel": dict(shape=(6, 6), params=dict(bilateral_srgb=20.0), channels=1),
    "4-channel": dict(shape=(5, 6), params=dict(bilateral_srgb=(13.0, 13.0, 13.0, 40.0)), channels=4),
}


def resolve(params: dict, labels: int, gen) -> dict:
    """``"matrix"`` entries become random [L, L] float64 compatibilities."""
    return {k: (torch.randn(labels, labels, generator=gen, dtype=torch.float64) if v == "matrix" else v)
            for k, v in params.items()}


@pytest.mark.parametrize("case", PLAIN_CASES)
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_plain_mean_field_on_the_same_lattice(device, backend, case, gen):
    """float64 logits: the op's result equals the plain mean-field with the
    matrices of the lattice it builds, to rounding."""
    spec = PLAIN_CASES[case]
    logits, image, _ = noisy_case(gen, spec["shape"], channels=spec.get("channels", 3), batch=2,
                                  dtype=torch.float64)
    probabilities = spec.get("probabilities", False)
    if probabilities:
        logits = torch.softmax(logits, 1)
    params = resolve(spec["params"], 3, gen)
    out = dense_crf(logits.to(device), image.to(device), 4, probabilities=probabilities, backend=backend,
                    **{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in params.items()})
    expected = plain_mean_field(logits, image, 4, kernel=lattice_kernel("reference"), probabilities=probabilities,
                                **params)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-9, atol=1e-9)


# Mean |Q_lattice - Q_exact| over the mean change the CRF makes (|softmax - Q_exact|),
# measured over 60 random 6x7 images of coloured regions (5 iterations):
# at most 0.046 (compat 1 and 1; max |difference| 0.033), 0.073 (local kernels),
# 0.084 (pydensecrf's defaults, compat 3 and 10, bistable on some pixels).
# Leaving the Gaussian kernel out scores 0.13, the bilateral one 0.75.
EXACT_CASES = {
    "mild": (dict(gaussian_compat=1.0, bilateral_compat=1.0), 0.1, 0.1),
    "local": (dict(gaussian_sxy=2.0, gaussian_compat=1.0, bilateral_sxy=5.0, bilateral_srgb=40.0,
                   bilateral_compat=2.0), 0.15, None),
    "defaults": ({}, 0.15, None),
}


@pytest.mark.parametrize("case", EXACT_CASES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_close_to_the_crf_with_exact_kernels(backend, case, gen):
    params, mean_ratio, max_error = EXACT_CASES[case]
    logits, image, _ = noisy_case(gen, (6, 7), batch=2, dtype=torch.float64)
    expected = plain_mean_field(logits, image, 5, **params)
    out = dense_crf(logits, image, 5, backend=backend, **params)
    error, change = (out - expected).abs(), (torch.softmax(logits, 1) - expected).abs()
    assert error.mean() <= mean_ratio * change.mean(), (error.mean().item(), change.mean().item())
    if max_error is not None:
        assert error.max() <= max_error


# --- backends against the reference ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(7, 9), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_reference(device, backend, shape, dtype, gen):
    """Probabilities in the logits' dtype and shape, within rounding of
    fastseg.reference.dense_crf (float32 for 16-bit logits, float64 for
    float64 ones); float32 measured within 2e-7."""
    logits, image, _ = noisy_case(gen, shape, labels=4, batch=2, dtype=dtype)
    matrix = torch.randn(4, 4, generator=gen)
    params = dict(gaussian_compat=matrix, bilateral_sxy=7.0, bilateral_srgb=(13.0, 20.0, 30.0))
    out = dense_crf(logits.to(device), image.to(device), 3, backend=backend,
                    **(params | dict(gaussian_compat=matrix.to(device))))
    assert out.dtype == dtype and out.shape == logits.shape and out.device.type == device
    expected = fastseg.reference.dense_crf(logits, image, 3, **params)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=OUTPUT_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_outputs_are_probabilities(backend, dtype, gen):
    logits, image, _ = noisy_case(gen, (6, 7), labels=5, batch=2, noise=3.0, dtype=dtype)
    for probabilities in (False, True):
        scores = torch.softmax(logits.float(), 1).to(dtype) if probabilities else logits
        q = dense_crf(scores, image, 5, probabilities=probabilities, backend=backend).double()
        assert ((q >= 0) & (q <= 1)).all()
        torch.testing.assert_close(q.sum(1), torch.ones_like(q[:, 0]), rtol=0, atol=4 * OUTPUT_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_iterations(backend, dtype, gen):
    """softmax(logits); with probabilities=True the probabilities clipped
    to 1e-5 and renormalised (softmax of their log)."""
    logits, image, _ = noisy_case(gen, (5, 6), labels=4, dtype=dtype)
    expected = torch.softmax(logits.double(), 1)
    torch.testing.assert_close(dense_crf(logits, image, 0, backend=backend).double(), expected, rtol=0,
                               atol=OUTPUT_TOL[dtype])
    probs = torch.softmax(4 * logits.double(), 1).to(dtype)
    assert (probs < 1e-5).any()  # some below the clip
    clipped = probs.double().clamp(min=1e-5)
    out = dense_crf(probs, image, 0, probabilities=True, backend=backend)
    torch.testing.assert_close(out.double(), clipped / clipped.sum(1, keepdim=True), rtol=0, atol=OUTPUT_TOL[dtype])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_probabilities_input_is_the_log_of_them(backend, gen):
    """probabilities=True with p is logits=True with log p where p >= 1e-5."""
    logits, image, _ = noisy_case(gen, (5, 6), dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    assert probs.min() > 1e-5
    torch.testing.assert_close(dense_crf(probs, image, 3, probabilities=True, backend=backend),
                               dense_crf(probs.log(), image, 3, backend=backend), rtol=1e-10, atol=1e-12)


# --- compatibilities ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_potts_equals_its_matrices(backend, gen):
    """A Potts weight w, the matrix w (1 - I) and -w I give the same Q (they
    differ by a constant per pixel, which softmax ignores)."""
    logits, image, _ = noisy_case(gen, (6, 5), labels=4, dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    potts = dense_crf(logits, image, 4, gaussian_compat=2.5, bilateral_compat=6.0, backend=backend)
    for gaussian, bilateral in (((1 - eye) * 2.5, (1 - eye) * 6.0), (-2.5 * eye, -6.0 * eye)):
        torch.testing.assert_close(dense_crf(logits, image, 4, gaussian_compat=gaussian, bilateral_compat=bilateral,
                                             backend=backend), potts, rtol=1e-10, atol=1e-12)
    assert (potts - torch.softmax(logits, 1)).abs().max() > 0.05  # the kernels did something


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_asymmetric_compat_is_symmetrised(backend, gen):
    logits, image, _ = noisy_case(gen, (6, 5), dtype=torch.float64)
    matrix = 2 * torch.randn(3, 3, generator=gen, dtype=torch.float64)
    symmetric = 0.5 * (matrix + matrix.T)
    for kernel in ("gaussian_compat", "bilateral_compat"):
        out = dense_crf(logits, image, 3, **{kernel: matrix}, backend=backend)
        torch.testing.assert_close(out, dense_crf(logits, image, 3, **{kernel: symmetric}, backend=backend),
                                   rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(out, dense_crf(logits, image, 3, **{kernel: matrix.T}, backend=backend),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_compat_leaves_a_kernel_out(backend, gen):
    """A weight of 0 is the same as a zero matrix (the kernel adds nothing);
    with the bilateral kernel left out no image is needed; with both left
    out Q is the softmax at every iteration."""
    logits, image, _ = noisy_case(gen, (6, 5), dtype=torch.float64)
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    torch.testing.assert_close(dense_crf(logits, image, 3, gaussian_compat=0, backend=backend),
                               dense_crf(logits, image, 3, gaussian_compat=zeros, backend=backend), rtol=0, atol=1e-14)
    without = dense_crf(logits, None, 3, bilateral_compat=0, backend=backend)
    torch.testing.assert_close(without, dense_crf(logits, image, 3, bilateral_compat=zeros, backend=backend),
                               rtol=0, atol=1e-14)
    torch.testing.assert_close(without, plain_mean_field(logits, None, 3, bilateral_compat=0,
                                                         kernel=lattice_kernel("reference")), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dense_crf(logits, None, 3, gaussian_compat=0.0, bilateral_compat=0, backend=backend),
                               torch.softmax(logits, 1), rtol=0, atol=1e-15)


# --- behaviour ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_improves_a_noisy_labelling(backend, gen):
    """Regions of random colours, logits one-hot (weight 1) + N(0, 1.2^2)
    noise: about 60% of the argmax labels are right before, 99-100% after
    (measured on five draws)."""
    label, image = coloured_regions(gen, (24, 29), 3)
    one_hot = F.one_hot(label, 3).movedim(-1, 0).float()
    logits = (one_hot + 1.2 * torch.randn(one_hot.shape, generator=gen))[None]
    before = (logits[0].argmax(0) == label).float().mean().item()
    q = dense_crf(logits, image[None], 5, backend=backend)
    after = (q[0].argmax(0) == label).float().mean().item()
    assert after >= before + 0.2 and after >= 0.9, (before, after)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sixteen_bit_image_with_a_small_srgb(backend, gen):
    """A 16-bit grey image (microscopy, CT) with srgb=0.5: its features
    reach ~1.3e5 standard deviations, beyond where float32 resolves the
    lattice, so float32 logits get a lattice built in float64: the float64
    computation's result, rounded."""
    label, image = coloured_regions(gen, (17, 23), 3, channels=1)
    image = image.float() * 257  # 0..65535
    logits = (F.one_hot(label, 3).movedim(-1, 0).double() + torch.randn(3, 17, 23, generator=gen, dtype=torch.float64))
    params = dict(bilateral_srgb=0.5, bilateral_sxy=5.0)
    q = dense_crf(logits[None].float(), image[None], 5, backend=backend, **params)
    expected = dense_crf(logits[None], image[None].double(), 5, backend=backend, **params)
    assert_close_scaled(q, expected, 1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_anisotropic_spacing_scales_positions(backend, gen):
    """A 3-D volume with spacing (2, 1, 1) is the same CRF as spacing 1 with
    every sxy divided by the spacing per axis; spacing changes the result."""
    logits, image, _ = noisy_case(gen, (4, 5, 6), channels=1, dtype=torch.float64)
    spaced = dense_crf(logits, image, 3, spacing=(2.0, 1.0, 1.0), gaussian_sxy=3.0, bilateral_sxy=(8.0, 6.0, 6.0),
                       bilateral_srgb=20.0, backend=backend)
    scaled = dense_crf(logits, image, 3, gaussian_sxy=(1.5, 3.0, 3.0), bilateral_sxy=(4.0, 6.0, 6.0),
                       bilateral_srgb=20.0, backend=backend)
    torch.testing.assert_close(spaced, scaled, rtol=1e-9, atol=1e-9)
    isotropic = dense_crf(logits, image, 3, gaussian_sxy=3.0, bilateral_sxy=(8.0, 6.0, 6.0), bilateral_srgb=20.0,
                          backend=backend)
    assert (isotropic - spaced).abs().max() > 1e-3


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_uint8_and_float_images_agree(backend, gen):
    logits, image, _ = noisy_case(gen, (6, 7), batch=2)
    expected = dense_crf(logits, image, 3, backend=backend)
    for dtype in (torch.float32, torch.float64, torch.float16):
        torch.testing.assert_close(dense_crf(logits, image.to(dtype), 3, backend=backend), expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_images_of_a_batch_are_independent(backend, gen):
    logits, image, _ = noisy_case(gen, (6, 7), batch=3)
    matrix = torch.randn(3, 3, generator=gen)
    batched = dense_crf(logits, image, 4, bilateral_compat=matrix, backend=backend)
    for b in range(3):
        alone = dense_crf(logits[b:b + 1], image[b:b + 1], 4, bilateral_compat=matrix, backend=backend)
        torch.testing.assert_close(batched[b:b + 1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inputs_are_not_modified(backend, gen):
    logits, image, _ = noisy_case(gen, (6, 7), batch=2)
    matrix = torch.randn(3, 3, generator=gen)
    before = logits.clone(), image.clone(), matrix.clone()
    dense_crf(logits, image, 3, bilateral_compat=matrix, backend=backend)
    for t, b in zip((logits, image, matrix), before, strict=True):
        assert torch.equal(t, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_single_label(backend, gen):
    """One label: Q is 1 everywhere, whatever the iterations."""
    logits, image, _ = noisy_case(gen, (4, 5), labels=1)
    assert torch.equal(dense_crf(logits, image, 3, backend=backend), torch.ones_like(logits))


# --- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("device, backend", BACKENDS)
def test_gradcheck(device, backend, gen):
    """float64, w.r.t. the logits and a matrix compatibility (the
    other kernel's too, as a Potts weight)."""
    logits, image, _ = noisy_case(gen, (3, 4), dtype=torch.float64)
    logits = logits.to(device).requires_grad_()
    matrix = torch.randn(3, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    def crf(scores, compat):
        return dense_crf(scores, image.to(device), 2, gaussian_compat=1.5, bilateral_compat=compat, backend=backend)

    assert torch.autograd.gradcheck(crf, (logits, matrix), fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_match_autograd_through_the_reference(backend, gen):
    """float32 gradients of a loss on Q w.r.t. the logits and both
    matrices equal those of plain autograd through the reference."""
    logits, image, truth = noisy_case(gen, (5, 6), batch=2)
    gaussian, bilateral = torch.randn(3, 3, generator=gen), torch.randn(3, 3, generator=gen)

    def grads(fn):
        inputs = [t.clone().requires_grad_() for t in (logits, gaussian, bilateral)]
        q = fn(inputs[0], image, 3, gaussian_compat=inputs[1], bilateral_compat=inputs[2])
        label_nll(q, truth).backward()
        return [t.grad for t in inputs]

    ours = grads(lambda *a, **k: dense_crf(*a, **k, backend=backend))
    for got, expected in zip(ours, grads(fastseg.reference.dense_crf), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


# --- DenseCRF ------------------------------------------------------------------------------------

def test_module_parameters():
    crf = DenseCRF(4, 3, gaussian_compat=2.0, bilateral_compat=7.0)
    params = dict(crf.named_parameters())
    assert set(params) == {"gaussian_compat", "bilateral_compat"}
    potts = 1 - torch.eye(4)
    torch.testing.assert_close(params["gaussian_compat"].data, 2.0 * potts, rtol=0, atol=0)
    torch.testing.assert_close(params["bilateral_compat"].data, 7.0 * potts, rtol=0, atol=0)
    assert all(p.requires_grad for p in params.values())
    fresh = DenseCRF(4, 3)
    fresh.load_state_dict(crf.state_dict(), strict=True)
    torch.testing.assert_close(fresh.bilateral_compat.data, 7.0 * potts, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_module_forward_is_dense_crf(backend, gen):
    logits, image, _ = noisy_case(gen, (6, 7), labels=4, batch=2)
    params = dict(gaussian_sxy=2.0, bilateral_sxy=9.0, bilateral_srgb=20.0)
    crf = DenseCRF(4, 3, gaussian_compat=2.0, bilateral_compat=5.0, backend=backend, **params)
    with torch.no_grad():
        crf.bilateral_compat.add_(0.3 * torch.randn(4, 4, generator=gen))
    expected = dense_crf(logits, image, 3, gaussian_compat=crf.gaussian_compat.detach(),
                         bilateral_compat=crf.bilateral_compat.detach(), backend=backend, **params)
    # The module's parameters want gradients: it takes the differentiable
    # path, and the functional call (no gradient wanted) the fused one on cpp,
    # equal up to float rounding; without gradients both take the same path.
    torch.testing.assert_close(crf(logits, image), expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(crf(logits, image), expected, rtol=0, atol=0)
    # Potts initial values: the same as dense_crf with the weights.
    fresh = DenseCRF(4, 3, gaussian_compat=2.0, bilateral_compat=5.0, backend=backend, **params)
    torch.testing.assert_close(fresh(logits, image), dense_crf(logits, image, 3, gaussian_compat=2.0,
                                                               bilateral_compat=5.0, backend=backend, **params),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_module_learns(backend, gen):
    """A few Adam steps on the compatibilities lower the NLL of the true
    labels of a noisy toy problem, and the gradients reach both matrices."""
    logits, image, truth = noisy_case(gen, (8, 9), batch=2, noise=1.5)
    crf = DenseCRF(3, 3, gaussian_compat=0.5, bilateral_compat=0.5, backend=backend)
    optimiser = torch.optim.Adam(crf.parameters(), lr=0.3)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        loss = label_nll(crf(logits, image), truth)
        loss.backward()
        assert crf.gaussian_compat.grad.abs().sum() > 0 and crf.bilateral_compat.grad.abs().sum() > 0
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


# --- bad arguments ----------------------------------------------------------------------------

def _set(index, value):
    """A function of (logits, image) returning logits with one entry set."""
    def edit(logits, image):
        logits = logits.clone()
        logits[index] = value
        return logits
    return edit


# Each entry overrides arguments of a valid call (logits [2, 3, 6, 7] float32,
# image [2, 3, 6, 7] uint8): with a value, or a function of (logits, image).
ERRORS = [
    pytest.param(dict(logits=_set((0, 1, 2, 3), float("nan"))), ValueError,
                 r"logits must be finite; it holds 1 NaN or Inf entries", id="logits-nan"),
    pytest.param(dict(logits=_set((1, 0, 0, 0), float("inf"))), ValueError, r"logits must be finite; it holds 1 NaN",
                 id="logits-inf"),
    pytest.param(dict(logits=lambda x, im: torch.softmax(x, 1).index_put((torch.tensor(0),),
                                                                         torch.tensor(float("nan"))),
                      probabilities=True), ValueError,
                 r"logits must be finite; it holds 126 NaN or Inf entries", id="probabilities-nan"),
    pytest.param(dict(probabilities=True), ValueError,
                 r"logits: with probabilities=True they must lie in \[0, 1\], got values in",
                 id="probabilities-logits"),
    pytest.param(dict(logits=lambda x, im: torch.softmax(x, 1) - 0.01, probabilities=True), ValueError,
                 r"logits: with probabilities=True they must lie in \[0, 1\]", id="probabilities-negative"),
    pytest.param(dict(logits=lambda x, im: torch.softmax(x, 1) * 1.5, probabilities=True), ValueError,
                 r"logits: with probabilities=True they must lie in \[0, 1\]", id="probabilities-above-1"),
    pytest.param(dict(logits=[1.0]), TypeError, r"logits must be a torch.Tensor, got list", id="logits-list"),
    pytest.param(dict(logits=lambda x, im: x[0, 0]), ValueError,
                 r"logits must be \[B, L, \*spatial\] with at least one spatial dimension, got shape \(6, 7\)",
                 id="logits-rank-2"),
    pytest.param(dict(logits=lambda x, im: x.long()), TypeError,
                 r"logits must be float16, bfloat16, float32 or float64, got torch.int64", id="logits-int"),
    pytest.param(dict(logits=lambda x, im: x.to(torch.complex64)), TypeError,
                 r"logits must be float16, bfloat16, float32 or float64, got torch.complex64", id="logits-complex"),
    pytest.param(dict(logits=lambda x, im: x[:, :0]), ValueError,
                 r"logits must have at least one label, got shape \(2, 0, 6, 7\)", id="zero-labels"),
    pytest.param(dict(logits=lambda x, im: x[..., :0], image=lambda x, im: im[..., :0]), ValueError,
                 r"logits must have at least one pixel per image, got shape \(2, 3, 6, 0\)", id="empty-image"),
    pytest.param(dict(image=lambda x, im: im[..., :5]), ValueError,
                 r"image must be \[B, C, \*spatial\] with the batch and spatial size of logits \(2, 6, 7\), "
                 r"got shape \(2, 3, 6, 5\)", id="image-size"),
    pytest.param(dict(image=lambda x, im: im[:1]), ValueError,
                 r"image must be .* of logits \(2, 6, 7\), got shape \(1, 3, 6, 7\)", id="image-batch"),
    pytest.param(dict(image=lambda x, im: im[:, :, None]), ValueError,
                 r"image must be .*got shape \(2, 3, 1, 6, 7\)", id="image-rank"),
    pytest.param(dict(image=lambda x, im: im[:, :0]), ValueError,
                 r"image must have at least one channel, got shape \(2, 0, 6, 7\)", id="image-no-channel"),
    pytest.param(dict(image=lambda x, im: im.int()), TypeError,
                 r"image must be uint8, float16, bfloat16, float32 or float64, got torch.int32", id="image-int32"),
    pytest.param(dict(image=lambda x, im: im > 100), TypeError, r"image must be uint8, .*got torch.bool",
                 id="image-bool"),
    pytest.param(dict(image=[[1]]), TypeError, r"image must be a torch.Tensor, got list", id="image-list"),
    pytest.param(dict(image=lambda x, im: im.float().index_put((torch.tensor(1),), torch.tensor(float("nan")))),
                 ValueError, r"image must be finite", id="image-nan"),
    pytest.param(dict(image=None), ValueError,
                 r"image is None, but the bilateral kernel needs it \(set bilateral_compat=0", id="image-none"),
    pytest.param(dict(image=None, bilateral_compat=torch.zeros(3, 3)), ValueError, r"image is None",
                 id="image-none-zero-matrix"),
    pytest.param(dict(image=lambda x, im: im.to("meta")), ValueError,
                 r"image must be on the device of logits cpu, got meta", id="image-device"),
    pytest.param(dict(iterations=-1), ValueError, r"iterations must be an int in \[0, 1000\], got -1",
                 id="iterations-negative"),
    pytest.param(dict(iterations=2.0), ValueError, r"iterations must be an int in \[0, 1000\], got 2.0",
                 id="iterations-float"),
    pytest.param(dict(iterations=True), ValueError, r"iterations must be an int in \[0, 1000\], got True",
                 id="iterations-bool"),
    pytest.param(dict(iterations=10**9), ValueError, r"iterations must be an int in \[0, 1000\], got 1000000000",
                 id="iterations-a-hang"),
    pytest.param(dict(probabilities="False"), TypeError, r"probabilities must be a bool, got 'False'",
                 id="probabilities-string"),
    pytest.param(dict(logits=lambda x, im: x.to("meta"), image=lambda x, im: im.to("meta")), ValueError,
                 r"logits must be on a CPU or CUDA device, got meta", id="logits-meta"),
    pytest.param(dict(image=lambda x, im: im.float().requires_grad_()), ValueError,
                 r"image: gradients with respect to the image are not supported; pass image.detach\(\)",
                 id="image-requires-grad"),
    pytest.param(dict(image="image", bilateral_compat=0), TypeError, r"image must be a torch.Tensor, got str",
                 id="image-string-kernel-off"),
    pytest.param(dict(gaussian_sxy=1e-39), ValueError,
                 r"spacing / gaussian_sxy = 1e\+39, 1e\+39 is beyond float32; use larger standard deviations",
                 id="sxy-below-float32"),
    pytest.param(dict(spacing=1e300, gaussian_sxy=1e-300), ValueError,
                 r"spacing / gaussian_sxy = inf, inf is beyond float32", id="spacing-over-sxy-overflows"),
    pytest.param(dict(bilateral_srgb=(13.0, 1e-39, 13.0)), ValueError,
                 r"1 / bilateral_srgb = 0.07692, 1e\+39, 0.07692 is beyond float32", id="srgb-below-float32"),
    pytest.param(dict(gaussian_sxy=10**400), ValueError, r"gaussian_sxy must be positive and finite",
                 id="sxy-beyond-float"),
    pytest.param(dict(gaussian_sxy=(1.0, 2.0, 3.0)), ValueError,
                 r"gaussian_sxy must be one positive number or 2 of them, got \(1.0, 2.0, 3.0\)", id="sxy-3-of-2"),
    pytest.param(dict(gaussian_sxy=-1.0), ValueError, r"gaussian_sxy must be positive and finite, got -1.0",
                 id="sxy-negative"),
    pytest.param(dict(bilateral_sxy=0), ValueError, r"bilateral_sxy must be positive and finite, got 0",
                 id="sxy-zero"),
    pytest.param(dict(bilateral_sxy=float("inf")), ValueError, r"bilateral_sxy must be positive and finite",
                 id="sxy-inf"),
    pytest.param(dict(bilateral_sxy="3"), TypeError,
                 r"bilateral_sxy must be a positive number or a sequence of 2, got '3'", id="sxy-string"),
    pytest.param(dict(bilateral_srgb=(13.0, 13.0)), ValueError,
                 r"bilateral_srgb must be one positive number or 3 of them, got \(13.0, 13.0\)", id="srgb-2-of-3"),
    pytest.param(dict(bilateral_srgb=0.0), ValueError, r"bilateral_srgb must be positive and finite, got 0.0",
                 id="srgb-zero"),
    pytest.param(dict(bilateral_srgb=None), TypeError, r"bilateral_srgb must be a positive number", id="srgb-none"),
    pytest.param(dict(spacing=(1.0, 1.0, 1.0)), ValueError,
                 r"spacing must be one positive number or 2 of them, got \(1.0, 1.0, 1.0\)", id="spacing-3-of-2"),
    pytest.param(dict(spacing=0), ValueError, r"spacing must be positive and finite, got 0", id="spacing-zero"),
    pytest.param(dict(spacing=(1.0, -2.0)), ValueError, r"spacing must be positive and finite", id="spacing-negative"),
    pytest.param(dict(gaussian_compat=torch.ones(2, 2)), ValueError,
                 r"gaussian_compat must be a number or an \[L, L\] = \[3, 3\] matrix, got shape \(2, 2\)",
                 id="compat-2x2"),
    pytest.param(dict(bilateral_compat=torch.ones(3)), ValueError,
                 r"bilateral_compat must be a number or an \[L, L\] = \[3, 3\] matrix, got shape \(3,\)",
                 id="compat-vector"),
    pytest.param(dict(bilateral_compat=torch.ones(3, 3, dtype=torch.long)), TypeError,
                 r"bilateral_compat must hold float16, bfloat16, float32 or float64 values, got torch.int64",
                 id="compat-int-matrix"),
    pytest.param(dict(bilateral_compat=torch.ones(3, 3, device="meta")), ValueError,
                 r"bilateral_compat must be on a CPU or CUDA device, got meta", id="compat-meta"),
    pytest.param(dict(gaussian_compat=torch.full((3, 3), float("nan"))), ValueError,
                 r"gaussian_compat must hold finite floating-point values", id="compat-nan-matrix"),
    pytest.param(dict(bilateral_compat=float("nan")), ValueError,
                 r"bilateral_compat must be a finite number \(Potts weight\) or an \[L, L\] tensor, got nan",
                 id="compat-nan"),
    pytest.param(dict(gaussian_compat=10**400), ValueError, r"gaussian_compat must be a finite number",
                 id="compat-beyond-float"),
    pytest.param(dict(gaussian_compat=1e38), ValueError,
                 r"gaussian_compat: a compatibility of 1e\+38 times the lattice's scale at d=2 \(7.255\) overflows "
                 r"float32; keep it within 4.69e\+37", id="compat-overflows-with-the-scale"),
    pytest.param(dict(bilateral_compat=torch.full((3, 3), -1e37)), ValueError,
                 r"bilateral_compat: a compatibility of 1e\+37 times the lattice's scale at d=5 \(87.96\) overflows",
                 id="compat-matrix-overflows-with-the-scale"),
    pytest.param(dict(gaussian_compat="3"), TypeError, r"gaussian_compat must be a finite number", id="compat-string"),
    pytest.param(dict(bilateral_srgb=1e-8), ValueError,
                 r"features reach .* standard deviations from 0, beyond the .* that the lattice's int32 keys resolve "
                 r"at d=5; use larger standard deviations", id="srgb-too-small"),
    pytest.param(dict(backend="triton"), fastseg.BackendUnavailable, r"has no 'triton' backend", id="backend-triton"),
    pytest.param(dict(backend="cuda"), fastseg.BackendUnavailable,
                 r"backend 'cuda' \(asked for by backend\) cannot run on cpu tensors here", id="backend-cuda-on-cpu"),
]


@pytest.mark.parametrize("kwargs, error, match", ERRORS)
@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_invalid_arguments_raise_naming_them(backend, kwargs, error, match, gen):
    logits, image, _ = noisy_case(gen, (6, 7), batch=2)
    args = dict(logits=logits, image=image, backend=backend)
    args |= {k: (v(logits, image) if callable(v) else v) for k, v in kwargs.items()}
    before = logits.clone(), image.clone()
    with pytest.raises(error, match=match):
        dense_crf(args.pop("logits"), args.pop("image"), **args)
    assert torch.equal(logits, before[0]) and torch.equal(image, before[1])


def test_module_invalid_arguments(gen):
    logits, image, _ = noisy_case(gen, (6, 7))
    with pytest.raises(ValueError, match=r"num_labels must be an int >= 1, got 0"):
        DenseCRF(0)
    with pytest.raises(ValueError, match=r"num_labels must be an int >= 1, got 2.0"):
        DenseCRF(2.0)
    with pytest.raises(ValueError, match=r"iterations must be an int in \[0, 1000\], got -1"):
        DenseCRF(3, -1)
    with pytest.raises(ValueError, match=r"bilateral_compat must be a finite number"):
        DenseCRF(3, bilateral_compat=math.inf)
    with pytest.raises(TypeError, match=r"probabilities must be a bool, got 1"):
        DenseCRF(3, probabilities=1)
    with pytest.raises(ValueError, match=r"bilateral_srgb must be positive and finite, got \(13, 0, 13\)"):
        DenseCRF(3, bilateral_srgb=(13, 0, 13))
    with pytest.raises(TypeError, match=r"spacing must be a positive number or a sequence of 1, got '1'"):
        DenseCRF(3, spacing="1")
    with pytest.raises(ValueError, match=r"logits must have num_labels=4 channels, got shape \(1, 3, 6, 7\)"):
        DenseCRF(4)(logits, image)

    with pytest.raises(ValueError, match=r"spacing must be positive and finite, got array\(\[ 1., -2.\]\)"):
        DenseCRF(3, spacing=np.array([1.0, -2.0]))


def test_deviations_as_numpy_and_size(gen):
    """Standard deviations and spacings from a numpy array or a torch.Size
    act as the tuple of the same numbers."""
    logits, image, _ = noisy_case(gen, (6, 7))
    expected = dense_crf(logits, image, 2, bilateral_srgb=(13.0, 11.0, 9.0), spacing=(1.0, 2.0))
    got = dense_crf(logits, image, 2, bilateral_srgb=np.array([13.0, 11.0, 9.0]), spacing=torch.Size([1, 2]))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    module = DenseCRF(logits.shape[1], 2, bilateral_srgb=np.array([13.0, 11.0, 9.0]), spacing=np.array([1.0, 2.0]))
    torch.testing.assert_close(module(logits, image), expected)  # a learnable matrix: the unfused path

def test_module_keeps_a_compat_matrix_as_given(gen):
    """A matrix starts the learnable compatibility as it is (a copy); a
    Potts weight w as w (1 - I)."""
    logits, image, _ = noisy_case(gen, (6, 7), labels=4)
    matrix = torch.randn(4, 4, generator=gen)
    crf = DenseCRF(4, 3, gaussian_compat=matrix, bilateral_compat=2.0)
    assert torch.equal(crf.gaussian_compat.detach(), matrix) and crf.gaussian_compat.data_ptr() != matrix.data_ptr()
    assert torch.equal(crf.bilateral_compat.detach(), 2.0 * (1 - torch.eye(4)))
    with torch.no_grad():
        expected = dense_crf(logits, image, 3, gaussian_compat=matrix, bilateral_compat=2.0 * (1 - torch.eye(4)))
        assert torch.equal(crf(logits, image), expected)


def test_too_many_corners_are_refused_before_the_features_are_made():
    """B * N * (d+1) = 6 N >= 2^31 for a 2-D RGB image of N pixels: refused
    from the shapes, before gigabytes of features (the inputs are
    expanded: they take no memory)."""
    height, width = 2**15, 2**31 // 6 // 2**15 + 1
    logits = torch.zeros(1, 1, 1, 1).expand(1, 1, height, width)
    image = torch.zeros(1, 3, 1, 1, dtype=torch.uint8).expand(1, 3, height, width)
    with pytest.raises(ValueError, match=r"logits and image: B \* N \* \(d\+1\) = \d+ corners exceed the lattice's"):
        dense_crf(logits, image, 1, backend="cpp")


# --- the fused mean-field: cpp and cuda where no gradient is wanted -------------------------------

def fused_case(gen, labels: int, compat: str, dtype, shape=(9, 11), device="cpu"):
    logits, image, _ = noisy_case(gen, shape, labels=labels, batch=2, dtype=dtype)
    params = dict(gaussian_compat=2.0, bilateral_compat=5.0, bilateral_sxy=6.0)
    if compat == "matrix":
        params |= {name: torch.randn(labels, labels, generator=gen, dtype=torch.float64).to(dtype).to(device)
                   for name in ("gaussian_compat", "bilateral_compat")}
    return logits.to(device), image.to(device), params


# Labels: rows of one SIMD vector (1, 4), of a few (21), longer than a block of four (37).
@pytest.mark.parametrize("labels", [1, 4, 21, 37])
@pytest.mark.parametrize("compat", ["potts", "matrix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("device, backend", FUSED)
def test_fused_mean_field_matches_the_differentiable_path(device, backend, labels, compat, dtype, gen):
    """Without gradients, cpp and cuda run every iteration in one op
    (fastseg::dense_crf_mean_field); with them, through permutohedral_apply
    and PyTorch ops. The two agree to rounding."""
    logits, image, params = fused_case(gen, labels, compat, dtype, device=device)
    for iterations in (0, 1, 3):
        fused = dense_crf(logits, image, iterations, backend=backend, **params)
        differentiable = dense_crf(logits.clone().requires_grad_(), image, iterations, backend=backend, **params)
        assert fused.device == logits.device
        torch.testing.assert_close(fused, differentiable.detach(), rtol=0, atol=OUTPUT_TOL[dtype])


@pytest.mark.cuda
def test_fused_mean_field_on_cuda_is_deterministic_and_the_cpus(gen):
    """The same on every run, and the CPU op's result within rounding, on
    an image large enough for the bilateral lattice's crowded vertices (over
    256 corners: a block splats each)."""
    if not fastseg.backends()["backends"]["cuda"]["cuda"]["available"]:
        pytest.skip("cuda backend unavailable")
    logits, image, params = fused_case(gen, 5, "potts", torch.float32, shape=(64, 96))
    image = image // 64 * 64  # four levels per channel: flat regions
    params |= dict(bilateral_sxy=80.0)
    first = dense_crf(logits.cuda(), image.cuda(), 5, backend="cuda", **params)
    assert torch.equal(dense_crf(logits.cuda(), image.cuda(), 5, backend="cuda", **params), first)
    cpu = dense_crf(logits, image, 5, backend="cpp", **params)
    torch.testing.assert_close(first.cpu(), cpu, rtol=0, atol=OUTPUT_TOL[torch.float32])


def test_fused_mean_field_is_deterministic(gen, thread_count):
    """Bitwise the same on every run and for every thread count (an image
    large enough for the work to be split)."""
    logits, image, params = fused_case(gen, 5, "potts", torch.float32, shape=(64, 96))
    first = dense_crf(logits, image, 3, backend="cpp", **params)
    for count in (1, max(2, torch.get_num_threads()), 3):
        thread_count(count)
        assert torch.equal(dense_crf(logits, image, 3, backend="cpp", **params), first)


def mean_field_op_inputs(gen, labels=4, scores_are="logits", device="cpu"):
    """The fused op's arguments: scores [B, N, L] (a view of [B, L, N]
    memory, as dense_crf passes them), lattices, compatibilities (a Potts
    weight as a CPU scalar, as dense_crf passes it, and a matrix)."""
    logits, image, params = fused_case(gen, labels, "matrix", torch.float32)
    scores = {"logits": logits, "probabilities": torch.softmax(8 * logits, 1),
              "unary": -torch.log_softmax(logits, 1)}[scores_are].reshape(2, labels, -1).transpose(1, 2)
    features = torch.cat([positions(image.shape[2:], (0.3, 0.3)).float().expand(2, -1, -1, -1),
                          image.float() / 20], 1)
    lattices = [permutohedral_lattice(f, backend="cpp").tensors for f in (features[:, :2], features)]
    fields = [[t.to(device) for t in field] for field in zip(*lattices)]
    return scores.to(device), scores_are, fields, [torch.tensor(2.0), params["bilateral_compat"].to(device)]


@pytest.mark.parametrize("scores_are", SCORE_KINDS)
@pytest.mark.parametrize("device, backend", FUSED)
def test_opcheck_fused_mean_field(device, backend, scores_are, gen):
    scores, _, fields, compat = mean_field_op_inputs(gen, scores_are=scores_are, device=device)
    op = torch.ops.fastseg.dense_crf_mean_field.default
    torch.library.opcheck(op, (scores.contiguous(), scores_are, *fields, compat, 3))
    torch.library.opcheck(op, (scores, scores_are, *fields, compat, 0))


@pytest.mark.parametrize("layout", ["label-major", "pixel-major", "strided"])
@pytest.mark.parametrize("scores_are", SCORE_KINDS)
@pytest.mark.parametrize("labels", [1, 4, 21, 37])
@pytest.mark.parametrize("device, backend", FUSED)
def test_fused_op_makes_the_unary_as_the_reference(device, backend, labels, scores_are, layout, gen):
    """The op computes the unary from scores of each kind (probabilities
    below pydensecrf's clip included) in any memory layout, with its own
    log and exp; Q matches the reference iteration's on the op's own
    lattices (0 iterations: Q_0 = softmax(-unary) alone)."""
    scores, _, fields, compat = mean_field_op_inputs(gen, labels, scores_are, device)
    if scores_are == "probabilities" and labels > 1:
        assert (scores < reference_crf.PROBABILITY_CLIP).any()
    scores = {"label-major": scores, "pixel-major": scores.contiguous(),
              "strided": scores.repeat(1, 1, 2)[..., ::2]}[layout]
    lattices = [Lattice(LatticeTensors(*tensors), (9, 11), backend) for tensors in zip(*fields)]
    filters = [(reference_crf.normalized_filter(lattice.apply_flat, scores), c) for lattice, c in zip(lattices, compat)]
    for iterations in (0, 2):
        expected = reference_crf.solve_mean_field(scores, scores_are, [(f, c if c.dim() else float(c)) for f, c in filters],
                                    iterations)
        got = _compiled_ops.dense_crf_mean_field(scores, scores_are, *fields, compat, iterations)
        torch.testing.assert_close(got, expected, rtol=0, atol=OUTPUT_TOL[torch.float32])


def test_fused_op_rejects_an_unknown_score_kind(gen):
    scores, _, fields, compat = mean_field_op_inputs(gen)
    with pytest.raises(RuntimeError, match="scores_are must be 'unary', 'logits' or 'probabilities', got 'energy'"):
        _compiled_ops.dense_crf_mean_field(scores, "energy", *fields, compat, 1)


@pytest.mark.parametrize("compat", ["potts", "matrix"])
def test_compile_fullgraph_traces_the_fused_op(compat, gen, fresh_dynamo):
    """torch.compile(fullgraph=True) goes through the fused op (its fake
    says the result is a label-major view) and matches eager mode; the
    compatibility matrices' checks do not break the graph."""
    logits, image, params = fused_case(gen, 5, compat, torch.float32)
    eager = dense_crf(logits, image, 3, backend="cpp", **params)
    compiled = torch.compile(lambda l, i: dense_crf(l, i, 3, backend="cpp", **params), fullgraph=True)
    torch.testing.assert_close(compiled(logits, image), eager, rtol=0, atol=OUTPUT_TOL[torch.float32])


@pytest.mark.parametrize("probabilities", [False, True], ids=["logits", "probabilities"])
def test_compiled_fused_op_lets_nan_reach_the_output(probabilities, gen, fresh_dynamo):
    """A compiled graph skips the finiteness checks (a data-dependent
    branch), so NaN scores must reach the output, as in the reference,
    not turn into finite probabilities."""
    logits, image, params = fused_case(gen, 3, "potts", torch.float32)
    scores = torch.softmax(logits, 1) if probabilities else logits.clone()
    scores[0, 1, 4, 5] = float("nan")
    compiled = torch.compile(lambda s, i: dense_crf(s, i, 2, probabilities=probabilities, backend="cpp", **params),
                             fullgraph=True)
    assert torch.isnan(compiled(scores, image)[0, :, 4, 5]).all()


def test_portable_kernels_match_the_vector_ones(gen, tmp_path):
    """ATEN_CPU_CAPABILITY=default runs the op's 16-byte-vector kernels
    (those of CPUs without AVX2); they agree with the ones picked here."""
    inputs = [mean_field_op_inputs(gen, labels=21, scores_are=kind) for kind in SCORE_KINDS]
    torch.save(inputs, tmp_path / "inputs.pt")
    script = ("import sys, torch, fastseg; from fastseg import _compiled_ops\n"
              "inputs = torch.load(sys.argv[1])\n"
              "torch.save([_compiled_ops.dense_crf_mean_field(scores, kind, *fields, compat, 4)\n"
              "            for scores, kind, fields, compat in inputs], sys.argv[2])\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run([sys.executable, "-c", script, tmp_path / "inputs.pt", tmp_path / "portable.pt"], env=env,
                   check=True)
    for (scores, kind, fields, compat), portable in zip(inputs, torch.load(tmp_path / "portable.pt")):
        here = _compiled_ops.dense_crf_mean_field(scores, kind, *fields, compat, 4)
        torch.testing.assert_close(portable, here, rtol=0, atol=OUTPUT_TOL[torch.float32], msg=kind)


# --- edge cases: empty batches, the layout of the result -------------------------------------------

@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_empty_batch(backend):
    """No image: an empty result of the logits' shape, as for PyTorch's ops."""
    logits, image = torch.empty(0, 3, 6, 7), torch.empty(0, 3, 6, 7, dtype=torch.uint8)
    q = dense_crf(logits, image, 3, backend=backend)
    assert q.shape == logits.shape and q.dtype == logits.dtype


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_output_layout_follows_the_logits(backend, gen):
    """Contiguous logits give contiguous probabilities (channels-last ones
    channels-last), as every fastseg op; a strided result breaks, e.g.,
    F.nll_loss's backward ("grad_input must be contiguous")."""
    logits, image, truth = noisy_case(gen, (6, 7), batch=2)
    q = dense_crf(logits, image, 2, backend=backend)
    assert q.is_contiguous(), q.stride()
    q = dense_crf(logits.contiguous(memory_format=torch.channels_last), image, 2, backend=backend)
    assert q.is_contiguous(memory_format=torch.channels_last), q.stride()
    crf = DenseCRF(3, 2, backend=backend)
    F.nll_loss(crf(logits, image).clamp(min=1e-6).log(), truth).backward()
    assert crf.bilateral_compat.grad is not None
