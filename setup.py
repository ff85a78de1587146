"""Build fastseg: the Python package, its Triton kernels (installed as
``fastseg.kernels``) and the extension ``fastseg._C``.

The extension is built the way torchvision builds its own: the C++ CPU part
always, the CUDA part when PyTorch has CUDA and nvcc is found (or
``FORCE_CUDA=1``). Switches read from the environment:

- ``FASTSEG_SKIP_EXTENSION=1``: install without compiling; the extension is
  then JIT-compiled on first use (see ``fastseg/_extension.py``).
- ``FORCE_CUDA=1``: build the CUDA part even where no GPU is visible.
- ``DEBUG=1``: ``-O0 -g`` instead of ``-O3``.
- ``MAX_JOBS`` and ``TORCH_CUDA_ARCH_LIST`` are honoured by torch's builder.

Build with ``pip install --no-build-isolation -e .`` so that the torch already
installed is the one compiled against (an isolated build would fetch another).
"""

import os
import sys

from setuptools import setup

# The one list of extension sources, shared with the JIT loader; loaded by
# path because the package itself imports torch.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastseg"))
import _sources  # noqa: E402

sys.path.pop(0)


def _extension_modules():
    if os.environ.get("FASTSEG_SKIP_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    root = os.path.dirname(os.path.abspath(__file__))
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (
        torch.version.cuda is not None and CUDA_HOME is not None
    )
    # setuptools wants source paths relative to setup.py
    sources = [os.path.relpath(path, root) for path in _sources.extension_sources(root, with_cuda)]
    flags = _sources.compile_flags(root, with_cuda, debug=os.environ.get("DEBUG") == "1")
    compile_args = {tool: flags[tool] for tool in ("cxx", "nvcc") if tool in flags}
    extension = CUDAExtension if with_cuda else CppExtension
    ext = extension("fastseg._C", sources, extra_compile_args=compile_args, extra_link_args=flags["ld"])
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extension_modules()

setup(
    packages=["fastseg", "fastseg._bench", "fastseg.crf", "fastseg.models", "fastseg.ops", "fastseg.reference", "fastseg.kernels"],
    package_dir={"fastseg.kernels": "kernels"},
    # The embedded shapes model's checkpoint (fastseg/shapes_model.py), loaded by `python -m fastseg demo`.
    package_data={"fastseg": ["data/*.pt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
