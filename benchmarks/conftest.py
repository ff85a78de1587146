"""Shared machinery of fastseg's pytest-benchmark suite.

Run explicitly (the repository's ``testpaths`` is ``tests``)::

    pytest benchmarks/ --benchmark-only                 # measure
    pytest benchmarks/ --benchmark-disable              # run each case once, as a test
    pytest benchmarks/ --benchmark-only --benchmark-json=benchmarks/results/<gpu>-<date>.json

Options: ``--fastseg-device`` (auto: CUDA when a GPU is visible, else CPU),
``--fastseg-shapes`` (auto: full on CUDA, quick on CPU), ``--fastseg-budget``
(seconds of timed calls per benchmark).

How a benchmark is timed (BENCHMARKING.md): the op runs once outside the
timing, its result is checked against PyTorch's, a few calls warm it up and
estimate how many rounds fit the budget; then pytest-benchmark's pedantic
mode times one call per round, the setup handing it the next of several
input sets (random, never zeros) so that no set is read again before at
least twice the last-level cache (L2 on a GPU) went through; a CUDA call
synchronizes inside the timed function. GB/s from the median and its
fraction of the copy bandwidth measured once per session go into
``benchmark.extra_info`` with the device name and versions.
"""

import itertools
import math
import statistics
import time
from dataclasses import dataclass, field

import pytest
import roofline
import torch

_ENV_KEY = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("fastseg benchmarks")
    group.addoption("--fastseg-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="device to benchmark on (auto: cuda when a GPU is visible, else cpu)")
    group.addoption("--fastseg-shapes", choices=("auto", "full", "quick"), default="auto",
                    help="full: every SegNet shape; quick: two batch-1 shapes (auto: full on cuda, quick on cpu)")
    group.addoption("--fastseg-budget", type=float, default=None,
                    help="seconds of timed calls per benchmark (default 0.15 on cuda, 0.3 on cpu)")


def pytest_configure(config):
    if config.getoption("fastseg_device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--fastseg-device=cuda: no CUDA GPU is visible to PyTorch")


@dataclass
class InputSets:
    """Input sets of one group (op, shape, dtype, layout), shared by all its
    benchmarks so that the baseline and fastseg time the same inputs."""

    sets: list
    baseline: object = None  # PyTorch's result on sets[0], computed once


@dataclass
class BenchEnv:
    """Per-session facts: the device, its caches and bandwidth, versions."""

    device: torch.device
    budget_s: float
    name: str
    cache_bytes: int
    versions: dict
    min_rounds: int
    max_rounds: int
    _copy_bandwidth: float | None = None  # bytes/s, measured on first use
    _report: dict | None = None
    _cache_key: object = None
    _cache: InputSets | None = None
    results: list = field(default_factory=list)  # what the terminal summary prints

    @property
    def copy_bandwidth(self) -> float:
        if self._copy_bandwidth is None:
            self._copy_bandwidth = roofline.measure_copy_bandwidth(self.device)
        return self._copy_bandwidth

    @property
    def report(self) -> dict:
        if self._report is None:
            import fastseg
            self._report = fastseg.backends()
        return self._report

    def require(self, backends) -> None:
        """Skip unless every named fastseg backend runs real kernels here."""
        for name in backends:
            if name == "triton" and (self.device.type != "cuda" or self.versions["triton_interpret"]):
                pytest.skip("triton: needs a CUDA GPU without TRITON_INTERPRET=1 "
                            "(Triton interpreter timings are never recorded)")
            status = self.report["backends"][name][self.device.type]
            if not status["available"]:
                pytest.skip(f"{name} backend on {self.device.type}: {status['reason']}")

    def rotation_count(self, bytes_per_call: int, bytes_per_set: int, disabled: bool) -> int:
        """How many input sets to rotate: enough that at least twice the
        last-level cache goes through between two reads of one set; at least
        2, at most 256, within a quarter of the device memory (2 GiB on CPU)."""
        if disabled:
            return 1
        wanted = math.ceil(2 * self.cache_bytes / max(bytes_per_call, 1)) + 1
        if self.device.type == "cuda":
            memory = torch.cuda.get_device_properties(self.device).total_memory // 4
        else:
            memory = 2 << 30
        return max(2, min(wanted, 256, memory // max(bytes_per_set, 1)))

    def inputs(self, key, make, count: int) -> InputSets:
        """The input sets for ``key``, made by ``make(i)`` for i < count; only
        the latest group's sets are kept (tests run group by group)."""
        if key != self._cache_key:
            self._cache_key, self._cache = None, None  # free the previous group's memory first
            torch.manual_seed(0)
            self._cache = InputSets([make(i) for i in range(count)])
            self._cache_key = key
            roofline.synchronize(self.device)
        return self._cache

    def measure(self, benchmark, fn, sets, traffic: roofline.Traffic, info: dict):
        """Time ``fn(*args)`` for args rotating through ``sets``; record the
        roofline figures in ``benchmark.extra_info``."""
        device = self.device

        def timed(args):
            out = fn(*args)
            roofline.synchronize(device)  # the host clock must see the kernel finish
            return out

        benchmark.extra_info.update(info)
        benchmark.extra_info.update({
            "device": self.name, "device_type": device.type, **self.versions,
            "bytes_moved": traffic.total, "index_bytes": traffic.index_bytes,
            "rotation_sets": len(sets), "last_level_cache_bytes": self.cache_bytes,
        })
        if device.type == "cpu":
            benchmark.extra_info["threads"] = torch.get_num_threads()
        if benchmark.disabled:  # a test run: one call, nothing recorded
            return benchmark.pedantic(timed, args=(sets[0],))

        # Warm-up outside the timing, which also estimates the time per call.
        times = []
        for args in itertools.islice(itertools.cycle(sets), 3):
            start = time.perf_counter()
            timed(args)
            times.append(time.perf_counter() - start)
        rounds = max(self.min_rounds, min(self.max_rounds, math.ceil(self.budget_s / min(times))))
        rotation = itertools.cycle(sets)

        def next_set():
            return (next(rotation),), {}

        benchmark.pedantic(timed, setup=next_set, rounds=rounds, warmup_rounds=1)
        median = benchmark.stats.stats.median
        gbps = traffic.total / median / 1e9
        copy_gbps = self.copy_bandwidth / 1e9
        benchmark.extra_info.update({
            "median_s": median, "gbps": round(gbps, 2), "copy_bandwidth_gbps": round(copy_gbps, 2),
            "pct_of_copy_bandwidth": round(100 * gbps / copy_gbps, 1),
        })
        if device.type == "cuda":
            # The GPU's own span per call (CUDA events), beside the host-clock median
            # above that includes launch and synchronization: for batch-1 deep stages
            # (a few microseconds of kernel) the two differ most.
            spans = []
            for _ in range(min(rounds, 100)):
                args = next(rotation)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                end.record()
                end.synchronize()
                spans.append(start.elapsed_time(end) / 1e3)
            event_median = statistics.median(spans)
            event_gbps = traffic.total / event_median / 1e9
            benchmark.extra_info.update({
                "cuda_event_median_s": event_median, "cuda_event_gbps": round(event_gbps, 2),
                "cuda_event_pct_of_copy_bandwidth": round(100 * event_gbps / copy_gbps, 1),
            })
        self.results.append({"group": benchmark.group, "name": benchmark.name,
                             "stats": {"median": median}, "extra_info": dict(benchmark.extra_info)})


@pytest.fixture(scope="session")
def bench_env(request) -> BenchEnv:
    config = request.config
    device = roofline.resolve_device(config)
    budget = config.getoption("fastseg_budget")
    if budget is None:
        budget = 0.15 if device.type == "cuda" else 0.3
    env = BenchEnv(
        device=device, budget_s=budget, name=roofline.device_name(device),
        cache_bytes=roofline.last_level_cache_bytes(device), versions=roofline.versions(),
        min_rounds=20 if device.type == "cuda" else 5, max_rounds=2000 if device.type == "cuda" else 200,
    )
    config.stash[_ENV_KEY] = env
    return env


def pytest_benchmark_update_machine_info(config, machine_info):
    """Device name, versions and the measured copy bandwidth in the JSON's
    machine_info, next to pytest-benchmark's CPU description."""
    env = config.stash.get(_ENV_KEY, None)
    device = env.device if env else roofline.resolve_device(config)
    machine_info["fastseg"] = {
        "device": env.name if env else roofline.device_name(device),
        "device_type": device.type,
        **(env.versions if env else roofline.versions()),
        "copy_bandwidth_gbps": round(env._copy_bandwidth / 1e9, 2) if env and env._copy_bandwidth else None,
        "last_level_cache_bytes": env.cache_bytes if env else None,
    }


def pytest_terminal_summary(terminalreporter, config):
    env = config.stash.get(_ENV_KEY, None)
    if env is None or not env.results:
        return
    terminalreporter.section("fastseg: bandwidth and speed-up against PyTorch (same run)")
    terminalreporter.write_line(f"device: {env.name}; copy bandwidth "
                                f"{env.copy_bandwidth / 1e9:.1f} GB/s; {env.versions}")
    for line in roofline.summary_lines(env.results):
        terminalreporter.write_line(line)
