"""Every Triton kernel, in every launch configuration autotuning may
pick, compiles for an H100 (sm_90) with Triton's own compiler and ptxas,
fits an SM's shared memory, and runs its GEMMs on the tensor cores.

The interpreter runs the kernels' arithmetic on the CPU but never lowers
them; this catches what only the GPU compiler would reject. The compiles
run in a subprocess (``triton_sm90_compile.py``) because TRITON_INTERPRET=1,
set for the other tests, replaces the compiler in this process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

H100_SHARED_BYTES = 227 * 1024  # the most one block may use on sm_90
SCRIPT = Path(__file__).with_name("triton_sm90_compile.py")
GEMM_FAMILIES = {"conv2d", "depthwise_separable_conv2d"}


@pytest.mark.parametrize("family", ["max_pool2d", "conv2d", "depthwise_conv2d", "depthwise_separable_conv2d"])
def test_compiles_for_sm90(family):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, stated to silence its warning
    run = subprocess.run([sys.executable, str(SCRIPT), family], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert results, f"no cases compiled:\n{run.stderr[-4000:]}"
    failures = [f"{r['name']}: {r['error']}" for r in results if not r["compiled"]]
    assert not failures, "\n".join(failures)
    too_big = [f"{r['name']}: {r['shared_bytes']} B" for r in results if r["shared_bytes"] > H100_SHARED_BYTES]
    assert not too_big, "more shared memory than an H100 SM has:\n" + "\n".join(too_big)
    if family in GEMM_FAMILIES:
        scalar = [r["name"] for r in results if not r["tensor_cores"]]
        assert not scalar, "GEMM kernels lowered without tensor-core instructions:\n" + "\n".join(scalar)
