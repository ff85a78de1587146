"""Shared test configuration.

Without a GPU the Triton kernels run on CPU tensors through Triton's
interpreter. Triton reads ``TRITON_INTERPRET`` when it is imported, so it is
set here: pytest imports this file before any test module, and nothing has
imported triton yet. A CPU build of PyTorch (``torch.version.cuda is None``)
is recognised without touching the driver.

Tests that need a GPU carry the ``cuda`` mark (declared in pyproject.toml)
and are skipped here, at collection, never by a query at test-module import.
"""

import contextlib
import os
import zlib

import pytest
import torch

if torch.version.cuda is None or not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped where there is none")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _skip_cuda_extension_not_built(request):
    """The ``cuda`` backend needs fastseg._C built with CUDA; a GPU machine
    without nvcc at build time has a GPU but not that backend."""
    callspec = getattr(request.node, "callspec", None)
    if request.node.get_closest_marker("cuda") is None or callspec is None or callspec.params.get("backend") != "cuda":
        return
    import fastseg

    status = fastseg.backends()["backends"]["cuda"]["cuda"]
    if not status["available"]:
        pytest.skip(f"cuda backend unavailable: {status['reason']}")


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator seeded from the test's id: fresh inputs for every
    case, the same ones on every run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def thread_count():
    """``torch.set_num_threads``, for the rest of the test: the thread count
    the test began with is restored after it, whatever happens."""
    threads = torch.get_num_threads()
    try:
        yield torch.set_num_threads
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def single_thread(thread_count):
    """PyTorch's CPU max_unpool2d is "last index wins" for duplicate indices
    only when one thread writes a plane (its channels_last kernel splits
    planes across threads)."""
    thread_count(1)


@pytest.fixture
def deterministic_algorithms():
    """A context manager under which ``torch.use_deterministic_algorithms``
    is on; the global flag is restored after the test whatever happens."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()

    def restore():
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)

    @contextlib.contextmanager
    def on():
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            restore()

    try:
        yield on
    finally:
        restore()


@pytest.fixture
def fresh_dynamo():
    """Each compile test starts from an empty Dynamo cache: the test
    functions share code objects, and recompiles would pile up on them."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
