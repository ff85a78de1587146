""".ci/gpu-checks, the checks CI cannot make: what it says where it cannot
run them. Its steps themselves need a GPU machine (see the script)."""

import os
import pathlib
import subprocess

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / ".ci" / "gpu-checks"


def run_script(*steps: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *steps], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OUT": str(tmp_path)})


def test_an_unknown_step_is_named_and_nothing_runs(tmp_path):
    result = run_script("tests", "benchmarks", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "unknown step 'benchmarks'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # not even the tests step ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_refuses_at_once(tmp_path):
    result = run_script(tmp_path=tmp_path)
    assert result.returncode == 1
    assert "no CUDA GPU visible" in result.stderr
    assert list(tmp_path.iterdir()) == []
