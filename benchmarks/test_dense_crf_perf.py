"""Dense-CRF inference (``fastseg.ops.dense_crf``) against pydensecrf.

BENCHMARKING.md's baseline is pydensecrf (``pip install pydensecrf2``), the
wrapper of Krähenbühl's code that production pipelines run, on the CPU,
and fastseg's own reference backend; both sit in every group beside each
fastseg backend, on the same inputs (``crf_scenes``), with pydensecrf's
default parameters. A call is the whole CRF: the unary from probabilities,
both kernels' lattices, the iterations; the batch-32 groups (CUDA only)
refine 32 VOC images per call. dense_crf keeps the spatial kernel's lattice
(of positions alone) for the next call on images of the same size, as it
does for every image of a same-size stream after the first: each call of
the plain variants builds only the bilateral lattice. The ``-fresh``
variants (in the VOC photo's batch-1 groups) empty that store before each
call, so they build both, as a call on an image of a new size does.

Scenes: VOC photo and noise image at 5 and 10 iterations on every run; the
Cityscapes-size photograph, the 128^3 volume (pydensecrf through its
generic ``DenseCRF`` with ``create_pairwise_*`` features) and the batch of
32 with ``--fastseg-shapes full`` (the default on CUDA). On the CPU the
reference backend, whose lattice is plain PyTorch and takes seconds, is
timed on the VOC photo at 5 iterations unless the shapes are full.

Each fastseg result is checked once, outside the timing: its labels agree
with pydensecrf's on at least 97% of a photograph's pixels (90% on the
noise image, where labels are decided by the smallest differences), or,
without pydensecrf, its probabilities with the reference backend's.
Nothing asserts on speed.

Paired rounds (``paired`` says why and how): in a CPU run each fastseg
backend other than the reference (whose calls of seconds would make the
pairs cost more than the rest of the group) is also timed in pairs with
pydensecrf in the batch-1 groups, and its record gets ``paired_speedup``.
Not on a GPU: its timings do not wander as a shared VM's do, and the pairs
of its Cityscapes and volume groups would add minutes of pydensecrf calls
to a command that may run ten.

Bytes per call (the roofline's memory side): per iteration the unary and Q
read and Q written ([B, N, L] float32), and each kernel's lattice read by
its splat and slice (an int32 vertex and a float32 weight per corner, N
(d+1) corners); the blur's traffic depends on the vertex count and is left
out, so the figure is a lower bound.
"""

import importlib
from dataclasses import dataclass

import crf_scenes
import roofline
import skips
import torch

import fastseg
from crf_scenes import SCENES, Scene

BACKENDS = importlib.import_module("fastseg.ops.permutohedral_filter").BACKENDS.implemented
ITERATIONS = (5, 10)
THROUGHPUT_BATCH = 32
PHOTO_AGREEMENT, NOISE_AGREEMENT = 0.97, 0.90


@dataclass(frozen=True)
class Case:
    scene: Scene
    iterations: int
    batch: int
    contender: str  # "pydensecrf" or a fastseg backend
    fresh_lattices: bool = False  # fastseg: no lattice kept from the call before

    @property
    def group(self) -> str:
        return f"dense_crf {self.scene.id} it{self.iterations} b{self.batch}"

    @property
    def id(self) -> str:
        name = self.contender if self.contender == "pydensecrf" else f"fastseg-{self.contender}"
        if self.fresh_lattices:
            name += "-fresh"
        return f"{name}-{self.scene.id}-it{self.iterations}-b{self.batch}"

    def info(self) -> dict:
        return {"op": "dense_crf", "implementation": "pydensecrf" if self.contender == "pydensecrf" else "fastseg",
                "variant": self.id.split(f"-{self.scene.id}")[0], "backend": self.contender,
                "scene": self.scene.name, "shape": list(self.scene.spatial), "labels": self.scene.labels,
                "iterations": self.iterations, "batch": self.batch, "dtype": "float32",
                "fresh_lattices": self.fresh_lattices}


def _cases(device: torch.device, full: bool) -> list[Case]:
    cases = []
    scenes = [SCENES[name] for name in (("photo", "noise", "cityscapes", "volume") if full else ("photo", "noise"))]
    batches = (1, THROUGHPUT_BATCH) if full and device.type == "cuda" else (1,)
    for batch in batches:
        for scene in scenes if batch == 1 else [SCENES["photo"]]:
            for iterations in ITERATIONS:
                contenders = ["pydensecrf"] if batch == 1 else []
                fast = [b for b in BACKENDS if b != "reference"]
                contenders += fast
                if full or (scene.name == "photo" and iterations == ITERATIONS[0]):
                    contenders.append("reference")
                cases += [Case(scene, iterations, batch, c) for c in contenders]
                if scene.name == "photo" and batch == 1:
                    cases += [Case(scene, iterations, batch, c, fresh_lattices=True) for c in fast]
    return cases


def pytest_generate_tests(metafunc):
    if "crf_case" in metafunc.fixturenames:
        config = metafunc.config
        cases = _cases(roofline.resolve_device(config), roofline.full_shapes(config))
        metafunc.parametrize("crf_case", cases, ids=[c.id for c in cases])


def _pydensecrf_inference(probs: torch.Tensor, image: torch.Tensor, iterations: int, params: dict):
    """pydensecrf on probabilities [L, *spatial] and an image [C, *spatial]
    (uint8): DenseCRF2D for RGB photographs, the generic DenseCRF with the
    same features otherwise. Returns Q [L, *spatial] (numpy)."""
    import numpy as np
    dcrf = skips.import_or_skip("pydensecrf.densecrf", skips.PYDENSECRF_INSTALL)
    utils = skips.import_or_skip("pydensecrf.utils", skips.PYDENSECRF_INSTALL)
    labels, *spatial = probs.shape
    unary = utils.unary_from_softmax(probs.numpy())
    if len(spatial) == 2 and image.shape[0] == 3:
        crf = dcrf.DenseCRF2D(spatial[1], spatial[0], labels)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=params["gaussian_sxy"], compat=params["gaussian_compat"])
        crf.addPairwiseBilateral(sxy=params["bilateral_sxy"], srgb=params["bilateral_srgb"],
                                 rgbim=np.ascontiguousarray(image.permute(1, 2, 0).numpy()),
                                 compat=params["bilateral_compat"])
    else:
        crf = dcrf.DenseCRF(int(np.prod(spatial)), labels)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseEnergy(utils.create_pairwise_gaussian((params["gaussian_sxy"],) * len(spatial), spatial),
                              compat=params["gaussian_compat"])
        channels_last = np.moveaxis(image.numpy(), 0, -1)
        crf.addPairwiseEnergy(utils.create_pairwise_bilateral((params["bilateral_sxy"],) * len(spatial),
                                                              (params["bilateral_srgb"],) * image.shape[0],
                                                              channels_last, chdim=len(spatial)),
                              compat=params["bilateral_compat"])
    return np.array(crf.inference(iterations)).reshape(labels, *spatial)


def _traffic(case: Case) -> roofline.Traffic:
    scene, float_bytes = case.scene, torch.float32.itemsize
    rank, channels = len(scene.spatial), 1 if scene.name == "volume" else 3
    corners = scene.pixels * ((rank + 1) + (rank + channels + 1))  # the Gaussian's lattice, the bilateral's
    lattice = 2 * corners * (torch.int32.itemsize + float_bytes)  # splat and slice read each corner
    per_iteration = 3 * scene.pixels * scene.labels * float_bytes + lattice
    return roofline.Traffic(case.batch * case.iterations * per_iteration, case.batch * case.iterations * lattice)


def test_dense_crf(benchmark, bench_env, crf_case):
    case = crf_case
    if case.contender == "pydensecrf":
        skips.import_or_skip("pydensecrf.densecrf", skips.PYDENSECRF_INSTALL)  # before making the inputs
    else:
        bench_env.require((case.contender,))
    benchmark.group = case.group
    scene, device = case.scene, bench_env.device

    def make(index):
        generator = torch.Generator().manual_seed(index)
        images = torch.stack([crf_scenes.image(scene, generator) for _ in range(case.batch)])
        return torch.stack([crf_scenes.probabilities(scene, generator) for _ in range(case.batch)]), images

    traffic = _traffic(case)
    set_bytes = case.batch * scene.pixels * (scene.labels * 4 + 3)
    count = bench_env.rotation_count(traffic.total, set_bytes, benchmark.disabled)
    # The baseline kept with the sets is per iteration count: part of the key.
    data = bench_env.inputs(("crf", scene, case.iterations, case.batch, count), make, count)

    def pydensecrf_fn(probs, images):
        return _pydensecrf_inference(probs[0], images[0], case.iterations, scene.params)

    if case.contender == "pydensecrf":
        fn, sets = pydensecrf_fn, data.sets
    else:
        def fn(probs, images):
            if case.fresh_lattices:
                fastseg.ops.clear_lattice_cache()
            return fastseg.ops.dense_crf(probs, images, case.iterations, probabilities=True,
                                         backend=case.contender, **scene.params)
        sets = [(probs.to(device), images.to(device)) for probs, images in data.sets]
        _check(case, data, fn(*sets[0]).cpu())

    if case.fresh_lattices:  # nothing kept from the check above: the peak memory counts the lattice fn builds
        fastseg.ops.clear_lattice_cache()
    bench_env.measure(benchmark, fn, sets, traffic, case.info(), images=case.batch)
    if _timed_in_pairs(case, device, benchmark.disabled):
        bench_env.time_pairs(benchmark, pydensecrf_fn, fn, data.sets, sets)


def _timed_in_pairs(case: Case, device: torch.device, disabled: bool) -> bool:
    """Whether ``case`` is also timed in pairs with pydensecrf (module
    docstring): on the CPU, a fastseg backend other than the reference, in
    a batch-1 group (which has pydensecrf), pydensecrf importable, timings
    recorded."""
    return (not disabled and device.type == "cpu" and case.batch == 1
            and case.contender not in ("pydensecrf", "reference") and _pydensecrf_installed())


def _pydensecrf_installed() -> bool:
    try:
        importlib.import_module("pydensecrf.densecrf")
    except ImportError:
        return False
    return True


def _check(case: Case, data, got: torch.Tensor) -> None:
    """fastseg's labels against pydensecrf's on the first image; without
    pydensecrf its probabilities against the reference backend's."""
    probs, images = data.sets[0]
    where = f"{case.id}"
    if not _pydensecrf_installed():
        if case.contender == "reference":
            return
        expected = fastseg.ops.dense_crf(probs[:1], images[:1], case.iterations, probabilities=True,
                                         backend="reference", **case.scene.params)[0]
        # float32 lattice sums in another order drift by up to ~2e-3 over 10 iterations on the noise
        # image (the lattice's worst case); a broken kernel is off by tenths.
        torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-2, msg=lambda m: f"{where}: {m}")
        return
    if data.baseline is None:
        data.baseline = torch.from_numpy(_pydensecrf_inference(probs[0], images[0], case.iterations,
                                                               case.scene.params))
    agreement = crf_scenes.label_agreement(got[0], data.baseline)
    wanted = NOISE_AGREEMENT if case.scene.name == "noise" else PHOTO_AGREEMENT
    assert agreement >= wanted, f"{where}: labels agree with pydensecrf's on {agreement:.2%} of pixels (< {wanted:.0%})"
