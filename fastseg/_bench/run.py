"""Running the benchmark suite of a clone: where it is, the pytest command,
and the name a run's files get in the results folder."""

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

import fastseg

# --quick: the suites' quick shapes and a small timing budget per benchmark,
# a check that the suite runs and a rough ratio, not a result to record.
QUICK_BUDGET_S = 0.05
PLUGIN = "fastseg._bench.plugin"


class SuiteMissing(RuntimeError):
    """The benchmark suite is not beside the fastseg package."""


def repository_root() -> Path:
    """The clone fastseg is imported from (the folder above the package)."""
    return Path(fastseg.__file__).resolve().parent.parent


def require_suite(root: Path) -> Path:
    """``root``/benchmarks, or SuiteMissing saying to run from a clone."""
    suite = root / "benchmarks"
    if not (suite / "conftest.py").is_file():
        raise SuiteMissing(f"no benchmark suite at {suite}: `python -m fastseg bench` runs the repository's "
                           "benchmarks/, which the installed package does not include. Run it from a clone "
                           "(git clone the fastseg repository, pip install --no-build-isolation -e . there); "
                           "--report and --compare work on recorded JSON without one")
    return suite


def device_slug(machine: dict) -> str:
    """The device's name for file names: lower-cased, runs of other
    characters made '-'; a CPU's name without the thread count the suite
    appends to it ("AMD EPYC (2 threads)" -> "amd-epyc")."""
    name = re.sub(r"\s*\(\d+ threads?\)$", "", machine.get("device") or "unknown-device")
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def unique_stem(directory: Path, slug: str, day: datetime.date) -> Path:
    """``directory``/<slug>-<date>, or -2, -3... for a later run of the day:
    a stem none of whose .json, .md or .png exists (never overwrite)."""
    base = f"{slug}-{day.isoformat()}"
    number = 1
    while True:
        stem = directory / (base if number == 1 else f"{base}-{number}")
        if not any(stem.with_name(stem.name + suffix).exists() for suffix in (".json", ".md", ".png")):
            return stem
        number += 1


def pytest_command(json_path: Path, quick: bool, keyword: str | None, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", f"--benchmark-json={json_path}",
               "--benchmark-quiet", "-p", PLUGIN, "-q", "-rs"]
    if quick:
        command += ["--fastseg-shapes", "quick", "--fastseg-budget", str(QUICK_BUDGET_S)]
    if keyword:
        command += ["-k", keyword]
    return command + extra


def run_suite(root: Path, command: list[str], log: Path) -> int:
    """pytest's exit code; its output goes to ``log``, the progress bar to
    this process's stderr (inherited). TRITON_INTERPRET is left out of the
    suite's environment: the reports drop every record of a run under the
    interpreter (its timings are never reported), not only Triton's."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    with log.open("w") as out:
        return subprocess.run(command, cwd=root, stdout=out, env=env).returncode
