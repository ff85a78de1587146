"""Compile fastseg._C as a CUDA build does, on a machine without a CUDA
build of PyTorch: every object torch's build would compile, with its own
ninja file and flags, then stop short of the link (the CUDA libraries of
PyTorch, libc10_cuda and libtorch_cuda, are not here to link against).

GPU machines are lent rarely and briefly; a CUDA build that fails there
(as every one would have before 77e1bfd: two sources compiled to one object
file, which ninja refuses)
costs a whole session. Only the pieces a CPU build of PyTorch lacks are
stood in: CUDA_HOME (found from nvcc) and the CUDA library headers
(.ci/cuda-stubs). The objects go to a temporary folder; the package's own
build is left alone.

    python3 .ci/cuda_build_check.py
"""

import os
import runpy
import shutil
import subprocess
import sys
import tempfile

import torch.utils.cpp_extension as cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fastseg import _sources  # noqa: E402  (after the path is set)


def cuda_home() -> str:
    """The toolkit nvcc belongs to (nvcc may be a wrapper script on PATH)."""
    out = subprocess.run(["nvcc", "-E", "-v", "-x", "cu", os.devnull], capture_output=True, text=True,
                         check=True).stderr
    top = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("#$ TOP="))
    return os.path.normpath(top.strip().strip('"'))


def main() -> int:
    home = cuda_home()
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = home
    stubs = os.path.join(ROOT, ".ci", "cuda-stubs")
    make_extension = cpp_extension.CUDAExtension

    def with_stubs(name, sources, *args, **kwargs):
        kwargs.setdefault("include_dirs", []).append(stubs)
        return make_extension(name, sources, *args, **kwargs)

    cpp_extension.CUDAExtension = with_stubs
    os.environ["FORCE_CUDA"] = "1"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    build = tempfile.mkdtemp(prefix="fastseg-cuda-build-")
    temp = os.path.join(build, "temp")
    sys.argv = ["setup.py", "build_ext", "--build-temp", temp, "--build-lib", os.path.join(build, "lib")]
    os.chdir(ROOT)
    try:
        try:
            runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
        except SystemExit as exit:  # the link, expected to fail
            print(f"setup.py exited: {exit}")
        sources = _sources.extension_sources(ROOT, with_cuda=True)
        missing = [path for path in sources
                   if not os.path.exists(os.path.join(temp, os.path.splitext(os.path.relpath(path, ROOT))[0] + ".o"))]
        for path in missing:
            print(f"not compiled: {os.path.relpath(path, ROOT)}", file=sys.stderr)
        print(f"{len(sources) - len(missing)} of {len(sources)} sources of the CUDA build compiled (CUDA_HOME={home})")
        return 1 if missing else 0
    finally:
        shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
