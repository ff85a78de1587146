"""The spatial kernel's lattice that dense_crf keeps between calls
(fastseg/ops/_kept_lattices.py): reused only for equal features, with the
result of a call that builds it afresh, and bounded."""

import importlib
import threading

import pytest
import torch

import fastseg.crf as dcrf
import fastseg.ops
from crf_helpers import coloured_regions
from fastseg.ops import dense_crf

kept_module = importlib.import_module("fastseg.ops._kept_lattices")
crf_module = importlib.import_module("fastseg.ops.dense_crf")
filter_module = importlib.import_module("fastseg.ops.permutohedral_filter")

BACKENDS = ("cpp", "reference")


@pytest.fixture
def builds(monkeypatch):
    """The feature counts d of the lattices dense_crf builds, in order; the
    store starts empty and is emptied again after the test."""
    built = []
    real = crf_module.build_lattice

    def counting(flat, spatial, backend):
        built.append(flat.shape[-1])
        return real(flat, spatial, backend)

    monkeypatch.setattr(crf_module, "build_lattice", counting)
    fastseg.ops.clear_lattice_cache()
    yield built
    fastseg.ops.clear_lattice_cache()


def crf_inputs(gen, batch, shape, labels=5, channels=3):
    logits = torch.randn(batch, labels, *shape, generator=gen) * 3
    image = torch.stack([coloured_regions(gen, shape, labels, channels)[1] for _ in range(batch)])
    return logits, image


def fresh(*args, **kwargs):
    """dense_crf with nothing kept from before, keeping nothing after."""
    fastseg.ops.clear_lattice_cache()
    try:
        return dense_crf(*args, **kwargs)
    finally:
        fastseg.ops.clear_lattice_cache()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_image_of_the_size_reuses_the_spatial_lattice(backend, builds, gen):
    first, second = crf_inputs(gen, 2, (13, 17)), crf_inputs(gen, 2, (13, 17))
    dense_crf(*first, 3, backend=backend)
    out = dense_crf(*second, 3, backend=backend)
    # the first call builds both kernels' lattices, the second only the bilateral one (2 + 3 features)
    assert builds == [2, 5, 5]
    torch.testing.assert_close(out, fresh(*second, 3, backend=backend), rtol=0, atol=0)


@pytest.mark.parametrize("change", ["shape", "gaussian_sxy", "spacing", "dtype"])
def test_other_positions_get_their_own_lattice(change, builds, gen):
    logits, image = crf_inputs(gen, 1, (11, 9))
    dense_crf(logits, image, 2, backend="cpp")
    kwargs = {}
    if change == "shape":
        logits, image = crf_inputs(gen, 1, (9, 11))
    elif change == "dtype":
        logits = logits.double()
    else:
        kwargs[change] = (2.5, 3.0) if change == "gaussian_sxy" else (1.0, 1.25)
    out = dense_crf(logits, image, 2, backend="cpp", **kwargs)
    assert builds == [2, 5, 2, 5]
    assert len(kept_module.kept_lattices()) == 2
    torch.testing.assert_close(out, fresh(logits, image, 2, backend="cpp", **kwargs), rtol=0, atol=0)


def test_a_kept_lattice_serves_every_image_of_a_batch(builds, gen):
    dense_crf(*crf_inputs(gen, 1, (8, 12)), 1, backend="cpp")
    logits, image = crf_inputs(gen, 4, (8, 12))
    out = dense_crf(logits, image, 2, backend="cpp")
    assert builds == [2, 5, 5]
    torch.testing.assert_close(out, fresh(logits, image, 2, backend="cpp"), rtol=0, atol=0)


def test_only_the_spatial_kernel_is_kept(builds, gen):
    logits, image = crf_inputs(gen, 1, (10, 10))
    for _ in range(3):  # the same image again: its bilateral lattice is built each time
        dense_crf(logits, image, 1, backend="cpp")
    assert builds == [2, 5, 5, 5]
    dense_crf(logits, image, 1, backend="cpp", gaussian_compat=0)  # no spatial kernel
    assert builds == [2, 5, 5, 5, 5]
    assert len(kept_module.kept_lattices()) == 1


def test_gradients_through_a_kept_lattice(builds, gen):
    """With gradients the composed path filters with the kept lattice as
    well; its gradient is the fresh lattice's."""
    logits, image = crf_inputs(gen, 1, (7, 9))
    dense_crf(logits, image, 1, backend="cpp")
    wanted = logits.clone().requires_grad_()
    dense_crf(wanted, image, 2, backend="cpp").square().sum().backward()
    assert builds == [2, 5, 5]
    again = logits.clone().requires_grad_()
    fastseg.ops.clear_lattice_cache()
    dense_crf(again, image, 2, backend="cpp").square().sum().backward()
    torch.testing.assert_close(wanted.grad, again.grad, rtol=0, atol=0)


def test_a_lattice_kept_in_inference_mode_is_not_saved_for_backward(builds, gen):
    logits, image = crf_inputs(gen, 1, (9, 11))
    with torch.inference_mode():
        dense_crf(logits, image, 2, backend="cpp")
        dense_crf(logits, image, 2, backend="cpp")
    assert builds == [2, 5, 5]
    wanted = logits.clone().requires_grad_()
    dense_crf(wanted, image, 2, backend="cpp").sum().backward()  # would raise with an inference tensor
    assert builds == [2, 5, 5, 2, 5] and torch.isfinite(wanted.grad).all()
    with torch.inference_mode():
        dense_crf(logits, image, 2, backend="cpp")
    assert builds == [2, 5, 5, 2, 5, 5]


def lattice_of(n: int, d: int = 2):
    features = torch.arange(n * d, dtype=torch.float32).view(1, n, d) / 7
    return features, filter_module.build_lattice(features, (n,), "cpp")


def ask(store, features, build, backend="cpp", spatial_shape=None):
    """store.lattice for features [1, n, d] of an image of n pixels."""
    return store.lattice(features, spatial_shape or (features.shape[1],), backend, build)


def test_the_least_recently_used_goes_first():
    store = kept_module.KeptLattices(max_bytes=1 << 30, max_entries=2)
    made = {n: lattice_of(n) for n in (5, 6, 7)}
    for n in (5, 6):
        ask(store, made[n][0], lambda n=n: made[n][1])
    ask(store, made[5][0].clone(), pytest.fail)  # a hit: 5 becomes the most recent
    ask(store, made[7][0], lambda: made[7][1])  # drops 6
    assert len(store) == 2
    assert ask(store, made[5][0], pytest.fail) is made[5][1]
    rebuilt = []
    ask(store, made[6][0], lambda: rebuilt.append(6) or made[6][1])
    assert rebuilt == [6]


def test_the_bytes_bound_the_store():
    features, lattice = lattice_of(40)
    other, other_lattice = lattice_of(41)
    size, other_size = (kept_module._bytes_of(f, *x.tensors) for f, x in ((features, lattice), (other, other_lattice)))
    store = kept_module.KeptLattices(max_bytes=size - 1)
    ask(store, features, lambda: lattice)
    assert len(store) == 0  # larger than the whole store: not kept
    store = kept_module.KeptLattices(max_bytes=max(size, other_size) + 10)
    ask(store, features, lambda: lattice)
    assert len(store) == 1 and store.nbytes == size
    ask(store, other, lambda: other_lattice)  # both do not fit: the older goes
    assert len(store) == 1 and ask(store, other, pytest.fail) is other_lattice


def test_a_lattice_too_large_to_keep_leaves_the_others():
    small, small_lattice = lattice_of(8)
    big, big_lattice = lattice_of(400)
    store = kept_module.KeptLattices(max_bytes=kept_module._bytes_of(small, *small_lattice.tensors) + 100)
    ask(store, small, lambda: small_lattice)
    assert ask(store, big, lambda: big_lattice) is big_lattice
    assert len(store) == 1 and ask(store, small, pytest.fail) is small_lattice


def test_equal_values_only():
    features, lattice = lattice_of(9)
    store = kept_module.KeptLattices(max_bytes=1 << 30)
    ask(store, features, lambda: lattice)
    nudged = features.clone()
    nudged[0, 4, 1] = torch.nextafter(nudged[0, 4, 1], torch.tensor(1e9))
    rebuilt = []
    ask(store, nudged, lambda: rebuilt.append("values") or lattice)
    ask(store, features.double(), lambda: rebuilt.append("dtype") or lattice)
    ask(store, features, lambda: rebuilt.append("backend") or lattice, backend="reference")
    ask(store, features, lambda: rebuilt.append("shape") or lattice, spatial_shape=(3, 3))
    assert rebuilt == ["values", "dtype", "backend", "shape"]
    assert ask(store, features.clone(), pytest.fail) is lattice


def test_threads_that_build_at_once_keep_one():
    """Every thread misses and builds before any keeps (a barrier inside
    the build): one lattice is kept, and every thread gets it but the ones
    that kept nothing get their own build, equal to it."""
    store = kept_module.KeptLattices(max_bytes=1 << 30)
    features, _ = lattice_of(20)
    count = 4
    barrier = threading.Barrier(count)
    got = [None] * count

    def build():
        barrier.wait(timeout=30)
        return filter_module.build_lattice(features, (20,), "cpp")

    def run(i):
        got[i] = ask(store, features.clone(), build)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 1
    kept = ask(store, features, pytest.fail)
    assert sum(g is kept for g in got) >= 1
    for lattice in got:
        for a, b in zip(lattice.tensors, kept.tensors):
            assert torch.equal(a, b)


def test_calls_from_threads_agree(builds, gen):
    inputs = [crf_inputs(gen, 1, (12, 10)) for _ in range(4)]
    expected = [fresh(*x, 2, backend="cpp") for x in inputs]
    results = [None] * len(inputs)

    def run(i):
        results[i] = dense_crf(*inputs[i], 2, backend="cpp")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert len(kept_module.kept_lattices()) == 1


def test_the_environment_sets_the_bytes(monkeypatch):
    for text, megabytes in (("3", 3), (" 12 ", 12), ("0", 0), ("", 256)):
        monkeypatch.setenv("FASTSEG_LATTICE_CACHE_MB", text)
        assert kept_module._megabytes_from_environment() == megabytes
    monkeypatch.delenv("FASTSEG_LATTICE_CACHE_MB")
    assert kept_module._megabytes_from_environment() == 256
    for bad in ("lots", "-1", "1.5", "3_0", "\u0663", "1e3"):
        monkeypatch.setenv("FASTSEG_LATTICE_CACHE_MB", bad)
        with pytest.raises(ValueError, match="FASTSEG_LATTICE_CACHE_MB must be a whole number"):
            kept_module._megabytes_from_environment()


def test_clearing_makes_no_store(monkeypatch):
    """clear_lattice_cache before any CRF neither makes the store nor reads
    the environment (a bad value there is reported by the first CRF)."""
    monkeypatch.setattr(kept_module, "_store", None)
    monkeypatch.setenv("FASTSEG_LATTICE_CACHE_MB", "lots")
    fastseg.ops.clear_lattice_cache()
    assert kept_module._store is None
    with pytest.raises(ValueError, match="FASTSEG_LATTICE_CACHE_MB"):
        dense_crf(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3), 1)


def test_zero_bytes_keep_nothing():
    features, lattice = lattice_of(9)
    store = kept_module.KeptLattices(max_bytes=0)
    calls = []
    for _ in range(2):
        ask(store, features, lambda: calls.append(1) or lattice)
    assert calls == [1, 1] and len(store) == 0


def test_nothing_is_kept_inside_torch_func(builds, gen):
    """Inside torch.func.grad the features and lattices are the transform's
    wrappers: built and used, never kept."""
    logits, image = crf_inputs(gen, 1, (8, 9))

    def weighted(scale):
        return scale.square() * dense_crf(logits, image, 2, backend="cpp").sum()

    grad = torch.func.grad(weighted)(torch.tensor(2.0))
    assert len(kept_module.kept_lattices()) == 0 and builds == [2, 5]
    expected = 4.0 * fresh(logits, image, 2, backend="cpp").sum()
    torch.testing.assert_close(grad, expected)


@pytest.mark.cuda
def test_a_lattice_serves_only_its_stream(builds, gen):
    logits, image = (t.cuda() for t in crf_inputs(gen, 1, (13, 15)))
    first = dense_crf(logits, image, 2, backend="cuda")
    other = torch.cuda.Stream()
    with torch.cuda.stream(other):
        second = dense_crf(logits, image, 2, backend="cuda")
    other.synchronize()
    assert builds == [2, 5, 2, 5]
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    dense_crf(logits, image, 2, backend="cuda")
    assert builds == [2, 5, 2, 5, 5]


def test_densecrf2d_keeps_its_gaussian_lattice(monkeypatch, gen):
    made = []
    real = dcrf.permutohedral_lattice

    def counting(features, **kwargs):
        made.append(features.shape[1])
        return real(features, **kwargs)

    monkeypatch.setattr(dcrf, "permutohedral_lattice", counting)

    def refine(image, unary, sxy=3):
        crf = dcrf.DenseCRF2D(image.shape[1], image.shape[0], unary.shape[0])
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=sxy, compat=3)
        crf.addPairwiseBilateral(sxy=20, srgb=13, rgbim=image, compat=10)
        return crf.inference(3)

    images = [coloured_regions(gen, (9, 14), 4)[1].permute(1, 2, 0).contiguous().numpy() for _ in range(2)]
    unaries = [torch.rand(4, 9 * 14, generator=gen).add(0.1).log().neg().numpy() for _ in range(2)]
    fastseg.ops.clear_lattice_cache()
    try:
        refine(images[0], unaries[0])
        second = refine(images[1], unaries[1])
        assert made == [2, 5, 5]
        refine(images[1], unaries[1], sxy=(3, 4))  # other positions
        assert made == [2, 5, 5, 2, 5]
        fastseg.ops.clear_lattice_cache()
        assert (second == refine(images[1], unaries[1])).all()
    finally:
        fastseg.ops.clear_lattice_cache()
