"""fastseg.crf against pydensecrf itself: the same API (classes, arguments,
constants, shapes and dtypes) and the same results, so that
``import fastseg.crf as dcrf`` replaces ``import pydensecrf.densecrf as dcrf``.

fastseg.crf builds Krähenbühl's lattice (Adams et al. 2010) over the same
features, so marginals agree to float rounding (about 1e-5; 1e-3 asserted)
and labels on photographs to >= 97% (all of them, in practice).

The comparisons need pydensecrf (``pip install pydensecrf2``) and skip
without it; the errors, the kernel types, stepInference against inference
and the comparison with fastseg.reference.dense_crf run everywhere.
"""

import numpy as np
import pytest
import torch

import fastseg.crf as fd
from fastseg.crf import utils as fu
from fastseg.reference.dense_crf import dense_crf as reference_dense_crf
from fastseg.reference.dense_crf import kernel_features


@pytest.fixture(scope="module")
def pd():
    return pytest.importorskip("pydensecrf.densecrf")


@pytest.fixture(scope="module")
def pu():
    return pytest.importorskip("pydensecrf.utils")


H, W, M = 30, 44, 4  # small images: odd, non-square, W != H catches a swapped width


def _image(rng, shape=(H, W, 3)) -> np.ndarray:
    """Two halves of different brightness (an edge for the bilateral
    kernel), colours not starting at 0 (shifting the features towards 0
    would change the lattice's rounding, and the results)."""
    image = rng.integers(0, 200, shape, dtype=np.uint8)
    image[:, shape[1] // 2:] //= 3
    return image + np.uint8(17)


def _softmax_unary(rng, labels=M, shape=(H, W)) -> np.ndarray:
    probabilities = rng.dirichlet(np.ones(labels), size=shape).astype(np.float32)
    return fu.unary_from_softmax(np.moveaxis(probabilities, -1, 0).copy())


def _both(pd, build):
    """build(module) -> a CRF of that module; its inference(5) for
    pydensecrf and fastseg.crf, as numpy arrays."""
    return np.array(build(pd).inference(5)), build(fd).inference(5)


def _assert_close(expected: np.ndarray, actual: np.ndarray, atol: float = 1e-3) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)
    assert (actual.argmax(0) == expected.argmax(0)).mean() >= 0.99


# --- utils --------------------------------------------------------------------------------------------------------


def _assert_equal_arrays(expected, actual) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("zero_unsure", [True, False])
@pytest.mark.parametrize("gt_prob", [0.5, 0.9])
def test_unary_from_labels(zero_unsure, gt_prob, pu):
    labels = np.random.default_rng(0).integers(0, 4, (7, 9))  # 0 is "unsure" or label 0
    n_labels = 3 if zero_unsure else 4
    _assert_equal_arrays(pu.unary_from_labels(labels, n_labels, gt_prob, zero_unsure),
                         fu.unary_from_labels(labels, n_labels, gt_prob, zero_unsure))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale, clip", [(None, 1e-5), (0.7, 1e-5), (None, None), (1, 0.01)])
def test_unary_from_softmax(dtype, scale, clip, pu):
    rng = np.random.default_rng(1)
    probabilities = np.moveaxis(rng.dirichlet(np.full(5, 0.3), size=(6, 8)), -1, 0).astype(dtype)
    probabilities[0, 0, 0] = 0  # clipped, or -log 0 = inf as pydensecrf gives
    with np.errstate(divide="ignore"):
        _assert_equal_arrays(pu.unary_from_softmax(probabilities, scale, clip),
                             fu.unary_from_softmax(probabilities, scale, clip))


def test_deprecated_unaries(pu):
    labels = np.random.default_rng(2).integers(0, 3, (5, 6))
    probabilities = np.random.default_rng(3).dirichlet(np.ones(3), size=(5, 6)).transpose(2, 0, 1)
    with pytest.warns(DeprecationWarning, match="use unary_from_labels"):
        _assert_equal_arrays(pu.compute_unary(labels, 2), fu.compute_unary(labels, 2))
    for gt_prob in (1, 0.8):
        with pytest.warns(DeprecationWarning, match="use unary_from_softmax"):
            _assert_equal_arrays(pu.softmax_to_unary(probabilities, gt_prob),
                                 fu.softmax_to_unary(probabilities, gt_prob))


@pytest.mark.parametrize("sdims, shape", [((3, 3), (5, 7)), ((2.5, 4), (6, 3)), ((1, 2, 3), (3, 4, 5))])
def test_create_pairwise_gaussian(sdims, shape, pu):
    _assert_equal_arrays(pu.create_pairwise_gaussian(sdims, shape), fu.create_pairwise_gaussian(sdims, shape))


@pytest.mark.parametrize("image_shape, chdim, schan", [
    ((5, 7, 3), 2, 13),  # RGB
    ((5, 7, 3), 2, (10, 13, 7.5)),
    ((5, 7), -1, 9),  # grey, no channel axis
    ((4, 5, 7), 0, (1, 2, 3, 4)),  # channels first, 4 of them
])
def test_create_pairwise_bilateral(image_shape, chdim, schan, pu):
    image = np.random.default_rng(4).integers(0, 256, image_shape, dtype=np.uint8)
    _assert_equal_arrays(pu.create_pairwise_bilateral((3, 80), schan, image, chdim),
                         fu.create_pairwise_bilateral((3, 80), schan, image, chdim))


# --- the API ------------------------------------------------------------------------------------------------------


def test_constants_equal_pydensecrfs(pd):
    names = ["CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL", "NO_NORMALIZATION", "NORMALIZE_BEFORE",
             "NORMALIZE_AFTER", "NORMALIZE_SYMMETRIC"]
    assert {name: int(getattr(fd, name)) for name in names} == {name: int(getattr(pd, name)) for name in names}
    assert {m.name: int(m) for m in fd.KernelType} == {m.name: int(m) for m in pd.KernelType}
    assert {m.name: int(m) for m in fd.NormalizationType} == {m.name: int(m) for m in pd.NormalizationType}


def test_shapes_and_dtypes_equal_pydensecrfs(pd):
    rng = np.random.default_rng(5)
    unary, image = _softmax_unary(rng), _image(rng)
    results = {}
    for module in (pd, fd):
        crf = module.DenseCRF2D(W, H, M)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        q, tmp1, tmp2 = crf.startInference()
        results[module] = [np.array(crf.inference(2)), np.array(q), np.array(tmp1), np.array(tmp2)]
        crf.stepInference(q, tmp1, tmp2)
        results[module] += [np.array(q), crf.klDivergence(q)]
    for expected, actual in zip(results[pd], results[fd]):
        assert type(np.asarray(actual)) is np.ndarray
        assert np.shape(actual) == np.shape(expected) and np.asarray(actual).dtype == np.asarray(expected).dtype
    assert type(results[fd][-1]) is float


@pytest.mark.parametrize("normalization", list(fd.NormalizationType), ids=lambda n: n.name)
@pytest.mark.parametrize("compat_kind", ["potts", "diagonal", "matrix"])
def test_compat_and_normalization_match_pydensecrf(compat_kind, normalization, pd):
    rng = np.random.default_rng(6)
    unary, image = _softmax_unary(rng), _image(rng)
    compat = {"potts": 3.0,
              "diagonal": np.array([1.0, 2.5, -1.0, 4.0], np.float32),
              "matrix": rng.normal(0, 3, (M, M)).astype(np.float32)}[compat_kind]  # not symmetric: both symmetrise

    def build(module):
        crf = module.DenseCRF2D(W, H, M)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=(3, 2), compat=compat, normalization=normalization)
        crf.addPairwiseBilateral(sxy=20, srgb=(13, 10, 15), rgbim=image, compat=compat, normalization=normalization)
        return crf

    expected, actual = _both(pd, build)
    assert (expected.argmax(0) != unary.argmin(0)).mean() > 0.05  # the pairwise terms changed the labels
    _assert_close(expected, actual)


@pytest.mark.parametrize("kernel", list(fd.KernelType), ids=lambda k: k.name)
def test_kernel_type_leaves_inference_unchanged(kernel):
    rng = np.random.default_rng(7)
    unary, image = _softmax_unary(rng), _image(rng)

    def build(module, kernel_type):
        crf = module.DenseCRF2D(W, H, M)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseBilateral(sxy=20, srgb=13, rgbim=image, compat=10, kernel=kernel_type)
        return crf

    np.testing.assert_array_equal(build(fd, kernel).inference(5), build(fd, fd.DIAG_KERNEL).inference(5))


def test_dense_crf_with_logistic_unary_matches_pydensecrf(pd):
    """DenseCRF (not 2-D) over any features, and the unary L f.
    pydensecrf's setUnaryEnergy(L, f) wants L of shape (nlabels, nvar),
    which leaves it unusable; its setUnary(LogisticUnary(L, f)) works."""
    rng = np.random.default_rng(8)
    nvar, features = 300, rng.normal(0, 2, (3, 300)).astype(np.float32)
    weights, unary_features = rng.normal(size=(M, 5)).astype(np.float32), rng.random((5, nvar), np.float32)

    def build(module, set_unary):
        crf = module.DenseCRF(nvar, M)
        set_unary(crf)
        crf.addPairwiseEnergy(features, compat=5)
        return crf.inference(5)

    expected = np.array(build(pd, lambda crf: crf.setUnary(pd.LogisticUnary(weights, unary_features))))
    _assert_close(expected, build(fd, lambda crf: crf.setUnary(fd.LogisticUnary(weights, unary_features))))
    _assert_close(expected, build(fd, lambda crf: crf.setUnaryEnergy(weights, unary_features)))
    _assert_close(expected, build(fd, lambda crf: crf.setUnary(fd.ConstUnary(weights @ unary_features))))


@pytest.mark.parametrize("channels", [1, 4])
def test_any_number_of_image_channels(channels, pd):
    """addPairwiseBilateral takes RGB only; utils' bilateral features of a
    1- or 4-channel image go through addPairwiseEnergy, in pydensecrf too."""
    rng = np.random.default_rng(9)
    unary, image = _softmax_unary(rng), _image(rng, (H, W, channels))[..., :channels]
    features = fu.create_pairwise_bilateral((20, 20), 13, image.squeeze(-1) if channels == 1 else image,
                                            chdim=-1 if channels == 1 else 2)

    def build(module):
        crf = module.DenseCRF2D(W, H, M)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(3, 3)
        crf.addPairwiseEnergy(features, 10)
        return crf

    _assert_close(*_both(pd, build))


def _forbidding_unary(rng) -> np.ndarray:
    """-log p of probabilities that are exactly 0 off label 2 in the top
    left corner: +inf energies there (a hard constraint)."""
    probabilities = rng.dirichlet(np.ones(M), size=(H, W)).astype(np.float32)
    probabilities[:10, :10] = np.eye(M, dtype=np.float32)[2]
    with np.errstate(divide="ignore"):
        return fu.unary_from_softmax(np.moveaxis(probabilities, -1, 0).copy(), clip=None)


def test_forbidden_labels_match_pydensecrf(pd):
    unary, image = _forbidding_unary(np.random.default_rng(11)), _image(np.random.default_rng(12))
    assert np.isposinf(unary).sum() == 100 * (M - 1)

    def build(module):
        crf = module.DenseCRF2D(W, H, M)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        return crf

    _assert_close(*_both(pd, build))


@pytest.mark.parametrize("normalization", [fd.NORMALIZE_SYMMETRIC, fd.NORMALIZE_BEFORE], ids=lambda n: n.name)
def test_forbidden_labels_get_no_mass(normalization):
    """Q is 0 on every label a +inf energy forbids, through the fused op
    (symmetric normalisation; at most exp(-87), below the least normal
    float, where its vectorised exp stops) and the composed filters
    (exactly) alike, and the KL divergence stays finite (pydensecrf's turns
    NaN: 0 * inf)."""
    unary = _forbidding_unary(np.random.default_rng(13))
    crf = fd.DenseCRF2D(W, H, M)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=3, compat=3, normalization=normalization)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=_image(np.random.default_rng(14)), compat=10,
                             normalization=normalization)
    forbidden = np.isposinf(unary)
    q = crf.inference(5)
    floor = 0 if normalization == fd.NORMALIZE_BEFORE else np.exp(np.float32(-87))
    assert np.isfinite(q).all() and (q[forbidden] <= floor).all() and (q[:, forbidden.any(0)].argmax(0) == 2).all()
    stepped, tmp1, tmp2 = crf.startInference()
    crf.stepInference(stepped, tmp1, tmp2)
    assert (stepped[forbidden] == 0).all()
    assert np.isfinite(crf.klDivergence(q))


def test_sixteen_bit_image_features_match_pydensecrf(pd, pu):
    """Bilateral features of a 16-bit image with a small schan reach ~3e4
    standard deviations, beyond where float32 resolves the lattice:
    fastseg builds that lattice in float64, pydensecrf computes on in
    float32. Labels agree (all of them, measured)."""
    rng = np.random.default_rng(15)
    columns = np.arange(W)[None, :].repeat(H, 0)
    image = (30000 + 20000 * (columns > W // 2) + rng.normal(0, 300, (H, W))).astype(np.uint16)
    unary = _softmax_unary(rng)

    def build(module, utils):
        crf = module.DenseCRF2D(W, H, M)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseEnergy(utils.create_pairwise_gaussian((3, 3), (H, W)), compat=3)
        crf.addPairwiseEnergy(utils.create_pairwise_bilateral((10, 10), 2.0, image), compat=10)
        return crf

    assert fu.create_pairwise_bilateral((10, 10), 2.0, image).max() > 2.5e4
    expected, actual = np.array(build(pd, pu).inference(5)), build(fd, fu).inference(5)
    assert (actual.argmax(0) == expected.argmax(0)).mean() >= 0.97


def test_four_channel_image_matches_reference_dense_crf():
    """addPairwiseEnergy with the reference's own features of a 4-channel
    image: the CRF of fastseg.reference.dense_crf. (Features equal to the
    bit: on a pixel grid, an ulp moves points across simplex faces, which
    adds or drops lattice vertices and changes the blur.)"""
    rng = np.random.default_rng(10)
    logits, image = rng.normal(0, 2, (1, M, H, W)).astype(np.float32), _image(rng, (H, W, 4))
    image_tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    srgb = (13.0, 10.0, 20.0, 8.0)
    crf = fd.DenseCRF2D(W, H, M)
    crf.setUnaryEnergy(-torch.log_softmax(torch.from_numpy(logits[0]), 0).reshape(M, -1).numpy())
    for sxy, colour, compat in ((3, None, 3), (20, srgb, 10)):
        features = kernel_features(image_tensor, (H, W), 1, 1.0, sxy, colour, torch.float32, "cpu")  # [1, N, d]
        crf.addPairwiseEnergy(features[0].T.contiguous().numpy(), compat)
    expected = reference_dense_crf(torch.from_numpy(logits), image_tensor, 5, gaussian_sxy=3, gaussian_compat=3,
                                   bilateral_sxy=20, bilateral_srgb=srgb, bilateral_compat=10)
    _assert_close(expected[0].reshape(M, -1).numpy(), crf.inference(5))


def test_any_memory_layout_and_plain_int_constants(pd):
    """pydensecrf wants C-contiguous arrays; fastseg.crf takes any layout
    (same values, same results). Both take the constants as plain ints."""
    rng = np.random.default_rng(13)
    unary, image = _softmax_unary(rng), _image(rng)

    def build(module, unary, image):
        crf = module.DenseCRF2D(W, H, M)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseBilateral(20, 13, image, 10, kernel=2, normalization=1)
        return crf.inference(5)

    expected = np.array(build(pd, unary, image))
    strided_image = np.zeros((H, 2 * W, 3), np.uint8)[:, ::2]
    strided_image[...] = image
    _assert_close(expected, build(fd, np.asfortranarray(unary), strided_image))


def _crf_with_matrix_compat(module, seed: int):
    rng = np.random.default_rng(seed)
    crf = module.DenseCRF2D(W, H, M)
    crf.setUnaryEnergy(_softmax_unary(rng))
    crf.addPairwiseGaussian(3, 3)
    compat = np.array([[0, 4, 8, 8], [4, 0, 8, 8], [8, 8, 0, 2], [8, 8, 2, 0]], np.float32)  # two groups of two
    crf.addPairwiseBilateral(20, 13, _image(rng), compat)
    return crf


def test_step_inference_equals_inference():
    """inference runs the C++ backend's fused op, stepInference PyTorch
    ops: the same iteration, rounded differently (an ulp of Q at first)."""
    crf = _crf_with_matrix_compat(fd, 11)
    q, tmp1, tmp2 = crf.startInference()
    np.testing.assert_allclose(q, crf.inference(0), rtol=0, atol=3e-7)
    for iteration in range(1, 4):
        crf.stepInference(q, tmp1, tmp2)
        np.testing.assert_allclose(q, crf.inference(iteration), rtol=0, atol=1e-5)


def test_kernels_added_after_a_step_take_part_in_the_next():
    """A kernel added after stepInference or klDivergence (which made the
    filters of the kernels added so far) enters the next ones, as in a CRF
    given every kernel from the start."""
    rng = np.random.default_rng(13)
    unary, image = _softmax_unary(rng), _image(rng)
    grown = fd.DenseCRF2D(W, H, M)
    grown.setUnaryEnergy(unary)
    grown.addPairwiseGaussian(3, 3)
    q, tmp1, tmp2 = grown.startInference()
    gaussian_only = grown.klDivergence(q)
    grown.addPairwiseBilateral(20, 13, image, 10)
    whole = fd.DenseCRF2D(W, H, M)
    whole.setUnaryEnergy(unary)
    whole.addPairwiseGaussian(3, 3)
    whole.addPairwiseBilateral(20, 13, image, 10)
    assert grown.klDivergence(q) == whole.klDivergence(q) != gaussian_only
    expected = q.copy()
    whole.stepInference(expected, tmp1, tmp2)
    grown.stepInference(q, tmp1, tmp2)
    np.testing.assert_array_equal(q, expected)


def test_step_inference_and_kl_divergence_match_pydensecrf(pd):
    crfs = {module: _crf_with_matrix_compat(module, 12) for module in (pd, fd)}
    expected, *expected_scratch = crfs[pd].startInference()
    actual, *scratch = crfs[fd].startInference()
    for _ in range(3):
        crfs[pd].stepInference(expected, *expected_scratch)
        crfs[fd].stepInference(actual, *scratch)
        _assert_close(np.array(expected), actual)
        assert crfs[fd].klDivergence(actual) == pytest.approx(crfs[pd].klDivergence(expected), rel=1e-4)


def test_inference_without_unary_is_uniform_like_pydensecrfs(pd):
    def build(module):
        crf = module.DenseCRF2D(W, H, M)
        crf.addPairwiseGaussian(3, 3)
        return crf

    expected, actual = _both(pd, build)
    _assert_close(expected, actual, atol=1e-6)
    np.testing.assert_allclose(actual, 1 / M, rtol=1e-6)


# --- photographs --------------------------------------------------------------------------------------------------


def _photo(name: str) -> np.ndarray:
    """A VOC-sized (at most 375 x 500) crop of one of scikit-image's photographs."""
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(getattr(skimage_data, name)()[:375, :500])


def _rough_labels(image: np.ndarray, labels: int, rng) -> np.ndarray:
    """Each pixel's nearest of ``labels`` colours picked from the image:
    a segmentation of sorts, to be blurred into a network's coarse output."""
    palette = image.reshape(-1, 3)[rng.choice(image.shape[0] * image.shape[1], labels, replace=False)]
    distance = np.linalg.norm(image[:, :, None, :].astype(np.float32) - palette.astype(np.float32), axis=-1)
    return distance.argmin(-1)


def _coarse_softmax(label_map: np.ndarray, labels: int, rng, stride: int = 16) -> np.ndarray:
    """[labels, H, W] probabilities as a segmentation network's output
    upsampled from stride 16: one-hot labels averaged over 16 x 16 cells,
    noisy logits, bilinear upsampling, softmax."""
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(label_map), labels).permute(2, 0, 1)[None].float()
    coarse = torch.nn.functional.avg_pool2d(one_hot, stride, ceil_mode=True)
    logits = 4 * coarse + torch.from_numpy(rng.normal(0, 0.5, coarse.shape).astype(np.float32))
    upsampled = torch.nn.functional.interpolate(logits, size=label_map.shape, mode="bilinear", align_corners=False)
    return torch.softmax(upsampled[0], 0).numpy()


def _assert_photo_labels_agree(pd, image: np.ndarray, unary: np.ndarray) -> None:
    height, width = image.shape[:2]

    def build(module):
        crf = module.DenseCRF2D(width, height, unary.shape[0])
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        return crf

    expected, actual = _both(pd, build)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert (expected.argmax(0) != unary.argmin(0)).mean() > 0.02  # the CRF did move labels
    assert (actual.argmax(0) == expected.argmax(0)).mean() >= 0.97


def test_photo_with_coarse_network_output(pd):
    rng = np.random.default_rng(12)
    image, labels = _photo("chelsea"), 21  # VOC's 21 classes, most of them absent
    probabilities = _coarse_softmax(_rough_labels(image, 8, rng), labels, rng)
    _assert_photo_labels_agree(pd, image, fu.unary_from_softmax(probabilities))


def test_photo_with_unary_from_rough_labels(pd):
    rng = np.random.default_rng(13)
    image, labels = _photo("astronaut"), 5
    rough = _coarse_softmax(_rough_labels(image, labels, rng), labels, rng).argmax(0) + 1
    rough[::7] = 0  # unsure rows
    _assert_photo_labels_agree(pd, image, fu.unary_from_labels(rough, labels, gt_prob=0.7))


# --- errors -------------------------------------------------------------------------------------------------------


def _crf() -> "fd.DenseCRF2D":
    return fd.DenseCRF2D(6, 5, 3)


U = np.zeros((3, 30), np.float32)
IMAGE = np.zeros((5, 6, 3), np.uint8)
FEATURES = np.zeros((2, 30), np.float32)


def _with_nan(array: np.ndarray, value=np.nan) -> np.ndarray:
    array = array.copy()
    array.flat[4] = value
    return array


def _forbid_all(unary: np.ndarray, variable: int) -> np.ndarray:
    unary = unary.copy()
    unary[:, variable] = np.inf
    return unary


def _read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array


BAD_CALLS = {
    "w zero": (lambda: fd.DenseCRF2D(0, 5, 3), ValueError, "w must be an int >= 1"),
    "h fraction": (lambda: fd.DenseCRF2D(6, 5.5, 3), ValueError, "h must be an int >= 1, got 5.5"),
    "zero labels": (lambda: fd.DenseCRF2D(6, 5, 0), ValueError, "nlabels must be an int >= 1, got 0"),
    "nvar negative": (lambda: fd.DenseCRF(-3, 2), ValueError, "nvar must be an int >= 1"),
    "unary float64": (lambda: _crf().setUnaryEnergy(U.astype(np.float64)), TypeError,
                      "u must have dtype float32, got float64"),
    "unary list": (lambda: _crf().setUnaryEnergy(U.tolist()), TypeError, "u must be a numpy array"),
    "unary 1-D": (lambda: _crf().setUnaryEnergy(U.ravel()), ValueError, r"u must be of shape \(nlabels, nvar\)"),
    "unary too many pixels": (lambda: _crf().setUnaryEnergy(np.zeros((3, 31), np.float32)), ValueError,
                              r"u: the unary energy must have shape \(nlabels, nvar\) = \(3, 30\), got \(3, 31\)"),
    "unary transposed": (lambda: _crf().setUnaryEnergy(np.zeros((30, 3), np.float32)), ValueError,
                         r"must have shape \(nlabels, nvar\) = \(3, 30\), got \(30, 3\)"),
    "unary NaN": (lambda: _crf().setUnaryEnergy(_with_nan(U)), ValueError,
                  r"u: the unary energy must be finite or \+inf \(a forbidden label\); it holds 1 NaN or -inf"),
    "unary -Inf": (lambda: _crf().setUnaryEnergy(_with_nan(U, -np.inf)), ValueError,
                   "it holds 1 NaN or -inf entries"),
    "unary all +Inf": (lambda: _crf().setUnaryEnergy(_forbid_all(U, 7)), ValueError,
                       r"u: the unary energy is \+inf for every label at 1 variable\(s\), the first 7"),
    "logistic f rows": (lambda: _crf().setUnaryEnergy(np.zeros((3, 2), np.float32), np.zeros((4, 30), np.float32)),
                        ValueError, r"f must be of shape \(D, nvar\) with D = 2"),
    "setUnary array": (lambda: _crf().setUnary(U), TypeError, "u must be a ConstUnary or LogisticUnary"),
    "sxy zero": (lambda: _crf().addPairwiseGaussian(0, 3), ValueError, "sxy must be positive and finite"),
    "sxy three": (lambda: _crf().addPairwiseGaussian((1, 2, 3), 3), ValueError,
                  r"sxy must be one positive number or 2 of them, got \(1, 2, 3\)"),
    "sxy one": (lambda: _crf().addPairwiseGaussian((3,), 3), ValueError, "sxy must be one positive number or 2 of them"),
    "sxy huge": (lambda: _crf().addPairwiseGaussian(10**400, 3), ValueError, "sxy must be positive and finite"),
    "sxy string": (lambda: _crf().addPairwiseGaussian("3", 3), TypeError,
                   "sxy must be a positive number or a sequence of 2, got '3'"),
    "sxy tiny": (lambda: _crf().addPairwiseGaussian(1e-12, 3), ValueError, "features reach"),
    "compat NaN": (lambda: _crf().addPairwiseGaussian(3, float("nan")), ValueError, "compat must be finite"),
    "compat string": (lambda: _crf().addPairwiseGaussian(3, "3"), TypeError, "compat must be a number"),
    "compat overflows": (lambda: _crf().addPairwiseGaussian(3, 1e38), ValueError,
                         r"compat: a compatibility of 1e\+38 times the lattice's scale at d=2 .* overflows float32"),
    "compat 3-D": (lambda: _crf().addPairwiseGaussian(3, np.ones((3, 3, 3), np.float32)), TypeError,
                   r"compat must be a number.*got ndarray of shape \(3, 3, 3\)"),
    "compat float64": (lambda: _crf().addPairwiseGaussian(3, np.ones(3)), TypeError,
                       "compat must have dtype float32, got float64"),
    "compat wrong labels": (lambda: _crf().addPairwiseGaussian(3, np.ones(4, np.float32)), ValueError,
                            r"compat must be of shape \(3,\) or \(3, 3\) for 3 labels, got shape \(4,\)"),
    "compat matrix NaN": (lambda: _crf().addPairwiseGaussian(3, _with_nan(np.ones((3, 3), np.float32))), ValueError,
                          "compat must be finite"),
    "kernel": (lambda: _crf().addPairwiseGaussian(3, 3, kernel=7), ValueError,
               "kernel must be one of CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL, got 7"),
    "normalization": (lambda: _crf().addPairwiseGaussian(3, 3, normalization=fd.DIAG_KERNEL + 8), ValueError,
                      "normalization must be one of NO_NORMALIZATION"),
    "image float": (lambda: _crf().addPairwiseBilateral(80, 13, IMAGE.astype(np.float32), 10), TypeError,
                    "rgbim must have dtype uint8, got float32"),
    "image grey": (lambda: _crf().addPairwiseBilateral(80, 13, IMAGE[..., 0], 10), ValueError,
                   r"rgbim must be of shape \(h, w, 3\) = \(5, 6, 3\), got shape \(5, 6\)"),
    "image width first": (lambda: _crf().addPairwiseBilateral(80, 13, np.zeros((6, 5, 3), np.uint8), 10), ValueError,
                          r"rgbim must be of shape \(h, w, 3\) = \(5, 6, 3\), got shape \(6, 5, 3\)"),
    "image RGBA": (lambda: _crf().addPairwiseBilateral(80, 13, np.zeros((5, 6, 4), np.uint8), 10), ValueError,
                   r"rgbim must be of shape \(h, w, 3\)"),
    "image torch": (lambda: _crf().addPairwiseBilateral(80, 13, torch.zeros(5, 6, 3, dtype=torch.uint8), 10),
                    TypeError, "rgbim must be a numpy array"),
    "srgb two": (lambda: _crf().addPairwiseBilateral(80, (13, 13), IMAGE, 10), ValueError,
                 "srgb must be one positive number or 3 of them"),
    "srgb array": (lambda: _crf().addPairwiseBilateral(80, np.array([13.0, 0.0, 13.0]), IMAGE, 10), ValueError,
                   "srgb must be positive and finite"),
    "srgb negative": (lambda: _crf().addPairwiseBilateral(80, -13, IMAGE, 10), ValueError,
                      "srgb must be positive and finite"),
    "features pixels": (lambda: _crf().addPairwiseEnergy(np.zeros((2, 31), np.float32), 3), ValueError,
                        r"features must be of shape \(D, nvar\) = \(D, 30\), got shape \(2, 31\)"),
    "features none": (lambda: _crf().addPairwiseEnergy(np.zeros((0, 30), np.float32), 3), ValueError,
                      r"features must be of shape \(D, nvar\)"),
    "features float64": (lambda: _crf().addPairwiseEnergy(FEATURES.astype(np.float64), 3), TypeError,
                         "features must have dtype float32"),
    "features Inf": (lambda: _crf().addPairwiseEnergy(_with_nan(FEATURES, -np.inf), 3), ValueError,
                     "features must be finite"),
    "niter negative": (lambda: _crf().inference(-1), ValueError, r"niter must be an int in \[0, 1000\], got -1"),
    "niter fraction": (lambda: _crf().inference(5.5), ValueError, r"niter must be an int in \[0, 1000\]"),
    "niter a hang": (lambda: _crf().inference(10**9), ValueError, r"niter must be an int in \[0, 1000\]"),
    "Q shape": (lambda: _crf().stepInference(U[:, :29].copy(), None, None), ValueError,
                r"Q must be of shape \(nlabels, nvar\) = \(3, 30\)"),
    "Q read-only": (lambda: _crf().stepInference(_read_only(U), None, None), ValueError, "Q must be writeable"),
    "kl Q float64": (lambda: _crf().klDivergence(U.astype(np.float64)), TypeError, "Q must have dtype float32"),
    "kl Q NaN": (lambda: _crf().klDivergence(_with_nan(U)), ValueError, "Q must be finite"),
    "gt_prob": (lambda: fu.unary_from_labels(np.ones((2, 2), int), 3, 1.0), ValueError,
                r"gt_prob must lie in \(0, 1\)"),
    "labels range": (lambda: fu.unary_from_labels(np.full((2, 2), 4), 3, 0.5), ValueError,
                     r"labels must lie in 1..3 \(0: unsure\)"),
    "labels range zero sure": (lambda: fu.unary_from_labels(np.full((2, 2), 3), 3, 0.5, zero_unsure=False),
                               ValueError, r"labels must lie in 0..2"),
    "softmax scale": (lambda: fu.unary_from_softmax(np.ones((2, 3)) / 2, scale=0), ValueError,
                      r"scale must lie in \(0, 1\]"),
    "sdims": (lambda: fu.create_pairwise_gaussian((3,), (4, 5)), ValueError,
              "sdims must hold one standard deviation per axis"),
}


@pytest.mark.parametrize("call, error, message", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("call", [lambda: _crf().setUnaryEnergy(U.astype(np.float64)),
                                  lambda: _crf().addPairwiseEnergy(FEATURES.astype(np.float64), 3),
                                  lambda: _crf().addPairwiseBilateral(80, 13, IMAGE.astype(np.float32), 10),
                                  lambda: _crf().addPairwiseGaussian(3, np.ones(3))],
                         ids=["unary", "features", "image", "compat"])
def test_a_wrong_dtype_is_a_value_error_too(call):
    """pydensecrf (Cython's buffer check) raises ValueError for a wrong
    dtype, fastseg TypeError: ArrayDtypeError is both, for code written
    against either."""
    with pytest.raises(ValueError, match="must have dtype float32|must have dtype uint8") as raised:
        call()
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, fd.ArrayDtypeError)


def test_whole_floats_count_as_ints():
    """pydensecrf takes DenseCRF2D(53.0, 37.0, 5) and inference(5.0)."""
    unary = _softmax_unary(np.random.default_rng(16), labels=3, shape=(5, 6))

    def run(w, h, labels, niter):
        crf = fd.DenseCRF2D(w, h, labels)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(3, 3)
        return crf.inference(niter)

    np.testing.assert_array_equal(run(6.0, 5.0, 3.0, 4.0), run(6, 5, 3, 4))
