"""Backend selection: fastseg.backends(), the default per device, the
FASTSEG_BACKEND override, and the errors for backends that cannot run."""

import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastseg
from fastseg import BackendUnavailable, _sources
from fastseg.ops import max_pool2d_with_indices, max_unpool2d

# fastseg.ops.max_unpool2d is the function; the modules hold the BACKENDS tables.
POOL = importlib.import_module("fastseg.ops.max_pool2d").BACKENDS
UNPOOL = importlib.import_module("fastseg.ops.max_unpool2d").BACKENDS
REFERENCE_UNPOOL = importlib.import_module("fastseg.reference.max_unpool2d")


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("FASTSEG_BACKEND", raising=False)


def _pool_args(gen):
    return torch.randn((1, 2, 6, 6), generator=gen), 2


def _unpool_args(gen):
    x = torch.randn((1, 2, 6, 6), generator=gen)
    values, indices = max_pool2d_with_indices(x, 2, compact=True, backend="reference")
    return values, indices, 2


def _call(op: str, gen, **kwargs):
    """Run ``op`` ("pool" or "unpool") on small random inputs."""
    if op == "pool":
        return max_pool2d_with_indices(*_pool_args(gen), **kwargs)
    return max_unpool2d(*_unpool_args(gen), **kwargs)


def test_report_lists_every_backend_and_op():
    report = fastseg.backends()
    assert {"python", "torch", "triton", "triton_interpret", "cuda_runtime", "gpu", "extension", "backends",
            "ops"} <= report.keys()
    assert report["torch"] == torch.__version__
    assert set(report["extension"]) == {"origin", "with_cuda", "error"}
    assert set(report["backends"]) == {"triton", "cuda", "cpp", "reference"}
    for name, per_device in report["backends"].items():
        assert set(per_device) == {"cpu", "cuda"}, name
        for status in per_device.values():
            assert isinstance(status["available"], bool) and status["reason"], name
    assert report["backends"]["reference"]["cpu"]["available"]
    assert report["ops"]["max_pool2d_with_indices"]["implemented"] == ["triton", "reference"]
    assert report["ops"]["max_unpool2d"]["implemented"] == ["triton", "cuda", "cpp", "reference"]


def test_report_explains_unavailable_backends():
    report = fastseg.backends()
    assert not report["backends"]["cuda"]["cpu"]["available"]
    assert "CUDA tensors" in report["backends"]["cuda"]["cpu"]["reason"]
    assert not report["backends"]["cpp"]["cuda"]["available"]
    if not torch.cuda.is_available():
        assert report["gpu"] is None
        assert report["triton_interpret"] is True  # set by conftest
        assert report["backends"]["triton"]["cpu"]["available"]
        assert not report["backends"]["triton"]["cuda"]["available"]
        assert "no CUDA GPU" in report["backends"]["triton"]["cuda"]["reason"]


@pytest.mark.parametrize("op", ["pool", "unpool"])
def test_reference_runs_on_every_device(op, device, gen, no_backend_env):
    assert fastseg.backends()["backends"]["reference"][device]["available"]
    x = torch.randn((1, 2, 6, 6), generator=gen).to(device)
    values, indices = max_pool2d_with_indices(x, 2, compact=True, backend="reference" if op == "pool" else None)
    out = max_unpool2d(values, indices, 2, backend="reference" if op == "unpool" else None)
    assert torch.equal(out, F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2))


def test_cpu_defaults(no_backend_env):
    """PyTorch's own pooling is the fastest CPU pool (Triton's interpreter is
    never a default); the C++ unpool is the CPU default where it is built."""
    report = fastseg.backends()
    assert POOL.resolve(None, "cpu") == "reference"
    assert report["ops"]["max_pool2d_with_indices"]["default"]["cpu"] == "reference"
    cpp_built = report["backends"]["cpp"]["cpu"]["available"]
    assert UNPOOL.resolve(None, "cpu") == ("cpp" if cpp_built else "reference")
    assert report["ops"]["max_unpool2d"]["default"]["cpu"] == UNPOOL.resolve(None, "cpu")


def test_cpp_extension_is_built_here():
    """The C++ CPU code is built and tested everywhere (DESIGN)."""
    status = fastseg.backends()["backends"]["cpp"]["cpu"]
    assert status["available"], status["reason"]


def test_cuda_build_names_every_object_apart():
    """The CUDA build (sources in csrc/cuda too) gives every source an object
    file of its own under both of torch's naming schemes; CI builds only the
    CPU sources, so a clash would otherwise first fail on a GPU machine."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = _sources.extension_sources(root, with_cuda=True)
    assert any(path.endswith(".cu") for path in sources)


@pytest.mark.parametrize("names, build", [(["cuda/a.cpp", "cuda/a.cu"], "setup.py"),
                                          (["cpu/a.cpp", "cuda/a.cpp"], "JIT")])
def test_object_name_clash_is_refused(names, build, tmp_path):
    sources = [str(tmp_path / name) for name in names]
    with pytest.raises(RuntimeError, match=f"{names[0]} and {names[1]} would both compile to .* in the {build} build"):
        _sources.check_object_names(str(tmp_path), sources)


@pytest.mark.cuda
def test_cuda_defaults(no_backend_env):
    assert POOL.resolve(None, "cuda") == "triton"
    assert UNPOOL.resolve(None, "cuda") in ("triton", "cuda")


def test_env_var_replaces_the_default(monkeypatch):
    monkeypatch.setenv("FASTSEG_BACKEND", "reference")
    assert UNPOOL.resolve(None, "cpu") == "reference"
    assert POOL.resolve(None, "cpu") == "reference"
    assert fastseg.backends()["ops"]["max_unpool2d"]["default"]["cpu"] == "reference"
    # An explicit backend= still wins over the environment.
    assert UNPOOL.resolve("cpp", "cpu") == "cpp"
    assert UNPOOL.resolve("triton", "cpu") == "triton"


@pytest.mark.parametrize("env, ran_reference", [(None, False), ("reference", True)], ids=["default", "env"])
def test_env_var_routes_calls(env, ran_reference, monkeypatch, gen):
    """The op itself obeys FASTSEG_BACKEND: with it set to ``reference`` the
    reference unpool runs; by default (C++ built) it does not."""
    if not fastseg.backends()["backends"]["cpp"]["cpu"]["available"]:
        pytest.skip("without the C++ extension the CPU default is the reference anyway")
    if env is None:
        monkeypatch.delenv("FASTSEG_BACKEND", raising=False)
    else:
        monkeypatch.setenv("FASTSEG_BACKEND", env)
    calls = []
    real = REFERENCE_UNPOOL.unpool_forward

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(REFERENCE_UNPOOL, "unpool_forward", spy)
    values, indices, k = _unpool_args(gen)
    max_unpool2d(values, indices, k)
    assert bool(calls) == ran_reference


@pytest.mark.parametrize("op", ["pool", "unpool"])
def test_env_var_with_an_unknown_name_raises(op, monkeypatch, gen):
    monkeypatch.setenv("FASTSEG_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"FASTSEG_BACKEND must be one of .* got 'bogus'"):
        _call(op, gen)


def test_env_var_naming_a_backend_the_op_lacks_raises(monkeypatch, gen):
    """No silent fallback: the pool has no C++ backend, and the error says
    who asked for it."""
    monkeypatch.setenv("FASTSEG_BACKEND", "cpp")
    with pytest.raises(BackendUnavailable, match=r"max_pool2d_with_indices has no 'cpp' backend .*FASTSEG_BACKEND"):
        max_pool2d_with_indices(*_pool_args(gen))


@pytest.mark.parametrize("op", ["pool", "unpool"])
def test_unknown_backend_name_raises(op, gen, no_backend_env):
    with pytest.raises(ValueError, match=r"backend must be one of \('triton', 'cuda', 'cpp', 'reference'\) or None, "
                                         r"got 'fast'"):
        _call(op, gen, backend="fast")


@pytest.mark.parametrize("op, backend, match", [
    ("pool", "cpp", r"max_pool2d_with_indices has no 'cpp' backend \(it has triton, reference"),
    ("pool", "cuda", r"max_pool2d_with_indices has no 'cuda' backend"),
    ("unpool", "cuda", r"max_unpool2d: backend 'cuda' .* cannot run on cpu tensors here: "
                       r"the cuda backend takes CUDA tensors"),
], ids=["pool-cpp", "pool-cuda", "unpool-cuda-on-cpu"])
def test_backend_that_cannot_run_raises_why(op, backend, match, gen, no_backend_env):
    assert issubclass(BackendUnavailable, RuntimeError)
    with pytest.raises(BackendUnavailable, match=match):
        _call(op, gen, backend=backend)


@pytest.mark.parametrize("op", ["pool", "unpool"])
def test_triton_on_cpu_needs_the_interpreter(op, monkeypatch, gen, no_backend_env):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' .* Triton runs on CPU tensors only under "
                                                 r"TRITON_INTERPRET=1"):
        _call(op, gen, backend="triton")


def test_import_without_triton():
    """Importing fastseg never fails for want of Triton; the reference and
    C++ backends keep working and the report says why Triton is out."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, fastseg\n"
        "r = fastseg.backends()\n"
        "assert r['triton'] is None, r['triton']\n"
        "assert not r['backends']['triton']['cpu']['available']\n"
        "assert 'not installed' in r['backends']['triton']['cpu']['reason']\n"
        "x = torch.randn(1, 2, 6, 6)\n"
        "v, i = fastseg.ops.max_pool2d_with_indices(x, 2, compact=True)\n"
        "y = fastseg.ops.max_unpool2d(v, i, 2)\n"
        "assert y.shape == x.shape\n"
        "try:\n"
        "    fastseg.ops.max_pool2d_with_indices(x, 2, backend='triton')\n"
        "except fastseg.BackendUnavailable as e:\n"
        "    assert 'Triton is not installed' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTSEG_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
