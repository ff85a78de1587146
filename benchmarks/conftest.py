"""Shared machinery of fastseg's pytest-benchmark suite.

Run explicitly (the repository's ``testpaths`` is ``tests``)::

    pytest benchmarks/ --benchmark-only                 # measure
    pytest benchmarks/ --benchmark-disable              # run each case once, as a test
    pytest benchmarks/ --benchmark-only --benchmark-json=benchmarks/results/<gpu>-<date>.json

Options: ``--fastseg-device`` (auto: CUDA when a GPU is visible, else CPU),
``--fastseg-shapes`` (auto: full on CUDA, quick on CPU), ``--fastseg-budget``
(seconds of timed calls per benchmark), ``--fastseg-compile-mode`` (the
torch.compile mode of the conv suites' compiled baseline). A case that
cannot run here (no GPU, a backend or an optional baseline missing) is
skipped with a one-line reason (``skips``).

How a benchmark is timed (BENCHMARKING.md): the op runs once outside the
timing, its result is checked against PyTorch's, a few calls warm it up and
estimate how many rounds fit the budget; then pytest-benchmark's pedantic
mode times one call per round, the setup handing it the next of several
input sets (random, never zeros) so that no set is read again before at
least twice the last-level cache (L2 on a GPU) went through; a CUDA call
synchronizes inside the timed function. GB/s from the median and its
fraction of the copy bandwidth measured once per session go into
``benchmark.extra_info`` with the device name and versions; for the convs
also TFLOP/s, its fraction of a matmul's rate in the same dtype (measured
once per session and dtype) and the fraction of the tighter of the two
limits (``pct_of_roofline``).

Beside the timing (one untimed call after the warm-up):
``peak_memory_bytes``, the device memory the call allocates at its peak
beyond what was allocated before it (its inputs, a model's weights, the
other input sets), so what the op itself needs: intermediates,
workspaces, outputs (``roofline.peak_memory_bytes``). CUDA only: None on
the CPU, for calls on host tensors and for torch.compile with CUDA graphs
(``BenchEnv.peak_memory`` says why).

Launch-bound calls on CUDA (``cuda_graphs``): a group whose first record's
warm-up median is under 50 µs (batch-1 deep-stage layers) is also timed as
CUDA graph replays, one graph per input set, for every contender alike:
``cuda_graph_median_s`` and its ``cuda_graph_*`` roofline figures, or
``cuda_graph_error`` with the reason when a call was not or could not be
captured; a failed capture never fails the benchmark.

Paired rounds (``BenchEnv.time_pairs``; why and how: ``paired``): after
fastseg's own rounds, pairs of a baseline call and a fastseg call on the
same input set, next to each other, for a baseline timed on a shared VM
where a slow spell can fall on one contender's block of rounds and not the
other's (the dense CRF against pydensecrf in a CPU run). The figures
(``paired_speedup``, its quartiles, each side's median) join fastseg's
record; both records keep their own block's statistics as well.

Modes of a layer (``BenchEnv.timed_mode``): the forward alone (inference),
forward and backward, or the backward alone, its forward run between the
rounds (pytest-benchmark's setup, outside the timing) and finished before
the timed call starts.
"""

import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cuda_graphs
import paired
import pytest
import roofline
import skips
import torch

from fastseg._bench.tables import summary_lines

_ENV_KEY = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("fastseg benchmarks")
    group.addoption("--fastseg-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="device to benchmark on (auto: cuda when a GPU is visible, else cpu)")
    group.addoption("--fastseg-shapes", choices=("auto", "full", "quick"), default="auto",
                    help="full: every shape of each suite (SegNet's pools, DeepLabV3+'s convs); quick: a few batch-1 "
                         "shapes (auto: full on cuda, quick on cpu)")
    group.addoption("--fastseg-budget", type=float, default=None,
                    help="seconds of timed calls per benchmark (default 0.15 on cuda, 0.3 on cpu)")
    group.addoption("--fastseg-compile-mode", default="max-autotune",
                    choices=("max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead", "default"),
                    help="torch.compile mode of the conv suites' compiled PyTorch baseline (default max-autotune; "
                         "its CUDA graphs copy each call's fresh inputs into their static buffers, "
                         "max-autotune-no-cudagraphs times the kernels alone)")


def pytest_configure(config):
    if config.getoption("fastseg_device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--fastseg-device=cuda: no CUDA GPU is visible to PyTorch")


@dataclass
class InputSets:
    """Input sets of one group (op, shape, dtype, layout), shared by all its
    benchmarks so that the baseline and fastseg time the same inputs."""

    sets: list
    baseline: object = None  # PyTorch's result on sets[0], computed once (a dict by mode in the conv suites)


# Agreement with PyTorch in the same dtype, relative to the largest expected
# magnitude (atol) and elementwise (rtol): a few units in the last place of
# float16 (2^-10) and bfloat16 (2^-7), which differently ordered float32
# sums and a fused intermediate kept in float32 stay within; float32 leaves
# room for TF32, which cuDNN's convs use by default. A broken kernel is off
# by the size of the values.
TOLERANCES = {torch.float32: 2e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class TimedMode:
    """What one benchmark of a layer times: ``fn(*args)`` for args from
    ``sets``, each first passed through ``prepare`` (outside the timing)
    when there is one."""

    fn: Callable
    sets: list
    prepare: Callable | None = None

    def args(self, index: int) -> tuple:
        return self.prepare(*self.sets[index]) if self.prepare else self.sets[index]

    def once(self):
        """The result on the first set (for checking, outside the timing)."""
        return self.fn(*self.args(0))


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
    compile_mode: str = "max-autotune"
    _copy_bandwidth: float | None = None  # bytes/s, measured on first use
    matmul_rates: dict = field(default_factory=dict)  # dtype -> FLOP/s, each measured on first use
    _report: dict | None = None
    _cache_key: object = None
    _cache: InputSets | None = None
    _compiled_key: object = None
    _compiled: Callable | None = None
    _scratch: torch.Tensor | None = None
    graph_groups: cuda_graphs.GroupDecisions = field(default_factory=cuda_graphs.GroupDecisions)
    results: list = field(default_factory=list)  # what the terminal summary prints

    @property
    def copy_bandwidth(self) -> float:
        if self._copy_bandwidth is None:
            self._copy_bandwidth = roofline.measure_copy_bandwidth(self.device)
        return self._copy_bandwidth

    def matmul_rate(self, dtype: torch.dtype) -> float:
        """FLOP/s of a large matmul in ``dtype`` here, measured once per session."""
        if dtype not in self.matmul_rates:
            self.matmul_rates[dtype] = roofline.measure_matmul_rate(self.device, dtype)
        return self.matmul_rates[dtype]

    @property
    def report(self) -> dict:
        if self._report is None:
            import fastseg
            self._report = fastseg.backends()
        return self._report

    def require(self, backends) -> None:
        """Skip unless every named fastseg backend runs real kernels here."""
        for name in backends:
            reason = skips.backend_reason(name, self.device.type, self.versions["triton_interpret"],
                                          self.report["backends"][name][self.device.type])
            if reason is not None:
                pytest.skip(reason)

    def flush_cache(self) -> None:
        """Write twice the last-level cache's size through it, so that what
        was read last is no longer there."""
        if self._scratch is None:
            self._scratch = torch.empty(2 * self.cache_bytes, dtype=torch.uint8, device=self.device)
        self._scratch.fill_(1)

    def go_idle(self) -> None:
        """Flush the cache and wait for the device: the next timed call
        starts cold, on an idle device."""
        self.flush_cache()
        roofline.synchronize(self.device)

    def finish(self) -> None:
        """Wait for the device: the host clock must see the kernels finish."""
        roofline.synchronize(self.device)

    def require_variant(self, variant: roofline.Variant) -> None:
        """Skip a conv suite's contender that cannot be measured here."""
        if variant.kind == "compile":
            self.require_compile()
        elif variant.kind == "fastseg":
            self.require((variant.backend,))

    def require_compile(self) -> None:
        """Skip a torch.compile baseline where it is not measured."""
        reason = skips.compile_reason(self.device.type, self.versions["triton"], self.compile_mode)
        if reason is not None:
            pytest.skip(reason)

    def compiled(self, key, fn: Callable) -> Callable:
        """``torch.compile(fn)`` in the session's mode, compiled afresh when
        ``key`` (op, layer, dtype, layout) changes and kept for the modes of
        one key. Dynamo's caches are reset on a new key: it caches per code
        object, one shared by the closures of every layer, and past its
        recompile limit it would run the layer eagerly without a word."""
        if key != self._compiled_key:
            self._compiled_key, self._compiled = None, None
            torch._dynamo.reset()
            self._compiled = torch.compile(fn, mode=self.compile_mode, fullgraph=True, dynamic=False)
            self._compiled_key = key
        return self._compiled

    @staticmethod
    def timed_mode(mode: str, layer: Callable, sets: list) -> TimedMode:
        """What a benchmark of ``mode`` times for ``layer(*inputs)`` on sets
        ``(*inputs, dy)``, the inputs being (x, weight, ...): ``fwd`` the layer
        under ``no_grad`` (inference); ``fwd+bwd`` the layer and the
        gradients of every input; ``bwd`` the gradients of x and the weight
        alone, after a forward made by ``prepare``. Gradients come from
        ``torch.autograd.grad`` (nothing accumulates into ``.grad``), on
        aliases of the inputs that require grad: only those whose gradient
        is timed, since a custom op's backward computes every gradient its
        inputs require."""
        if mode == "fwd":
            def forward(*inputs):
                with torch.no_grad():
                    return layer(*inputs)
            return TimedMode(forward, [s[:-1] for s in sets])
        wanted = len(sets[0]) - 1 if mode == "fwd+bwd" else 2
        leaves = [tuple(t.detach().requires_grad_(i < wanted) for i, t in enumerate(s[:-1])) + (s[-1],)
                  for s in sets]
        if mode == "fwd+bwd":
            def step(*args):
                *inputs, dy = args
                return torch.autograd.grad(layer(*inputs), inputs, dy)
            return TimedMode(step, leaves)
        if mode != "bwd":
            raise ValueError(f"mode must be fwd, fwd+bwd or bwd, got {mode!r}")

        def forward_graph(*args):
            *inputs, dy = args
            return layer(*inputs), tuple(inputs[:wanted]), dy

        def backward(y, inputs, dy):
            return torch.autograd.grad(y, inputs, dy)
        return TimedMode(backward, leaves, forward_graph)

    def check_against_eager(self, where: str, data: InputSets, mode: str, eager: Callable,
                            timed: TimedMode) -> None:
        """``timed``'s result on the first set agrees with PyTorch eager's
        (``eager`` in the same mode), which is computed once per mode and
        kept in ``data.baseline`` for the group's other contenders."""
        if data.baseline is None:
            data.baseline = {}
        if mode not in data.baseline:
            data.baseline[mode] = self.timed_mode(mode, eager, data.sets[:1]).once()
        self.check_close(where, timed.once(), data.baseline[mode])

    @staticmethod
    def check_close(where: str, got, expected) -> None:
        """``got`` (a tensor or a tuple of them) agrees with PyTorch's
        ``expected`` within TOLERANCES of the expected dtype."""
        got = (got,) if isinstance(got, torch.Tensor) else tuple(got)
        expected = (expected,) if isinstance(expected, torch.Tensor) else tuple(expected)
        assert len(got) == len(expected), f"{where}: {len(got)} results, PyTorch gives {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            label = where if len(got) == 1 else f"{where}, result {i}"
            assert g.shape == e.shape, f"{label}: shape {tuple(g.shape)}, PyTorch's {tuple(e.shape)}"
            assert g.dtype == e.dtype, f"{label}: dtype {g.dtype}, PyTorch's {e.dtype}"
            tol = TOLERANCES[e.dtype]
            scale = max(e.detach().float().abs().max().item(), 1e-30) if e.numel() else 1.0
            torch.testing.assert_close(g.detach().float(), e.detach().float(), rtol=tol, atol=tol * scale,
                                       msg=lambda m, label=label: f"{label}: differs from PyTorch: {m}")

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

    def measure(self, benchmark, fn, sets, traffic: roofline.Traffic | None, info: dict, *,
                flops: roofline.Flops | None = None, prepare: Callable | None = None, images: int | None = None):
        """Time ``fn(*args)`` for args rotating through ``sets``; record the
        roofline figures in ``benchmark.extra_info`` (none without
        ``traffic``: a whole model has no single roofline), the latency's
        median, 50th and 99th percentiles, and images/s when a call
        processes ``images`` images. ``prepare(*set)``, when
        given, makes each call's args outside the timing (the forward of a
        backward-only benchmark), then the cache is flushed, so that the
        call reads what ``prepare`` read from memory as a training step's
        backward does, and the device finishes before the call. Also
        records ``peak_memory_bytes``, and on CUDA the CUDA-event span and,
        for a launch-bound group, the CUDA graph replay (module docstring)."""
        device = self.device

        def timed(args):
            out = fn(*args)
            self.finish()
            return out

        def ready(args):
            if prepare is None:
                return args
            args = prepare(*args)
            self.go_idle()
            return args

        benchmark.extra_info.update(info)
        benchmark.extra_info.update({
            "device": self.name, "device_type": device.type, **self.versions,
            "rotation_sets": len(sets), "last_level_cache_bytes": self.cache_bytes,
        })
        if traffic is not None:
            benchmark.extra_info.update({"bytes_moved": traffic.total, "index_bytes": traffic.index_bytes})
        if flops is not None:
            benchmark.extra_info.update({"flops": flops.total, "nominal_flops": flops.nominal,
                                         "gemm_flops": flops.gemm})
        if device.type == "cpu":
            benchmark.extra_info["threads"] = torch.get_num_threads()
        if benchmark.disabled:  # a test run: one call, nothing recorded
            return benchmark.pedantic(timed, args=(ready(sets[0]),))

        # Warm-up outside the timing, which also estimates the time per call.
        times = []
        for args in itertools.islice(itertools.cycle(sets), 3):
            args = ready(args)
            start = time.perf_counter()
            timed(args)
            times.append(time.perf_counter() - start)
        rounds = max(self.min_rounds, min(self.max_rounds, math.ceil(self.budget_s / min(times))))
        benchmark.extra_info["peak_memory_bytes"] = self.peak_memory(fn, sets[0], ready, info)
        rotation = itertools.cycle(sets)

        def next_set():
            return (ready(next(rotation)),), {}

        benchmark.pedantic(timed, setup=next_set, rounds=rounds, warmup_rounds=1)
        median = benchmark.stats.stats.median
        benchmark.extra_info.update({"median_s": median, **latency_percentiles(benchmark.stats.stats.data)})
        if images is not None:
            benchmark.extra_info["images_per_s"] = round(images / median, 3)
        copy = matmul = None
        if traffic is not None:
            copy = self.copy_bandwidth
            matmul = None if flops is None else self.matmul_rate(flops.dtype)
            benchmark.extra_info.update({"copy_bandwidth_gbps": round(copy / 1e9, 2),
                                         **roofline.roofline_figures(median, traffic, flops, copy, matmul),
                                         **roofline.roofline_bound(traffic, flops, copy, matmul)})
        if matmul is not None:
            benchmark.extra_info["matmul_tflops"] = round(matmul / 1e12, 3)
        if device.type == "cuda":
            # The GPU's own span per call (CUDA events), beside the host-clock median
            # above that includes launch and synchronization: for batch-1 deep stages
            # (a few microseconds of kernel) the two differ most.
            spans = []
            for _ in range(min(rounds, 100)):
                args = ready(next(rotation))
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                end.record()
                end.synchronize()
                spans.append(start.elapsed_time(end) / 1e3)
            event_median = statistics.median(spans)
            benchmark.extra_info["cuda_event_median_s"] = event_median
            if traffic is not None:
                benchmark.extra_info.update(
                    roofline.roofline_figures(event_median, traffic, flops, copy, matmul, prefix="cuda_event_"))
            if self.graph_groups.wanted(benchmark.group, statistics.median(times)):
                graph = self.graph_timing(fn, sets, prepare, info, rounds)
                benchmark.extra_info.update(graph)
                if traffic is not None and "cuda_graph_median_s" in graph:
                    benchmark.extra_info.update(roofline.roofline_figures(
                        graph["cuda_graph_median_s"], traffic, flops, copy, matmul, prefix="cuda_graph_"))
        # The record's own extra_info, so that what time_pairs adds later shows in the summary too.
        self.results.append({"group": benchmark.group, "name": benchmark.name,
                             "stats": {"median": median}, "extra_info": benchmark.extra_info})

    def time_pairs(self, benchmark, baseline: Callable, fn: Callable, baseline_sets: list, sets: list) -> None:
        """After ``measure`` timed ``fn`` for ``benchmark``: time pairs of a
        ``baseline`` call and an ``fn`` call next to each other on matching
        sets (``paired.paired_times``: ABBA order, the sets rotating, the
        cache flushed before and the device synchronized inside each timed
        call), and add ``paired.paired_figures`` to the record. The count: as many pairs as fit the
        budget at fastseg's median and one warm-up call of the baseline on
        the first set (outside the pairs), at least 6, at most 200, even."""
        self.go_idle()
        start = time.perf_counter()
        baseline(*baseline_sets[0])
        self.finish()
        baseline_s = time.perf_counter() - start
        count = paired.pair_count(self.budget_s, baseline_s, benchmark.stats.stats.median)
        figures = paired.paired_figures(paired.paired_times(baseline, fn, baseline_sets, sets, count,
                                                            before=self.go_idle, after=self.finish))
        benchmark.extra_info.update(figures)  # the terminal summary's record shares this dict (measure)

    def peak_memory(self, fn, inputs, ready: Callable, info: dict) -> int | None:
        """``roofline.peak_memory_bytes`` of one call on the args ``ready``
        makes of ``inputs``, or None (not measured) where there is no honest figure: on the CPU
        (no allocator statistics, and pydensecrf's and the C++ kernels'
        buffers bypass PyTorch's allocator), for a call on host tensors
        (pydensecrf on a GPU run), and for torch.compile in a mode with CUDA
        graphs, which keeps its memory in the graphs' private pool from the
        recording on, so that a call allocates next to nothing new."""
        if (self.device.type != "cuda" or cuda_graphs.tensor_devices(inputs) != {"cuda"}
                or info.get("compile_mode") in cuda_graphs.CUDAGRAPH_COMPILE_MODES):
            return None
        return roofline.peak_memory_bytes(fn, ready(inputs), self.device)

    @staticmethod
    def graph_timing(fn, sets, prepare: Callable | None, info: dict, rounds: int) -> dict:
        """``cuda_graph_median_s`` of ``fn`` replayed as CUDA graphs, or
        ``cuda_graph_error`` saying why it was not (``cuda_graphs``)."""
        reason = cuda_graphs.obstacle(sets[0], prepare, info.get("compile_mode"))
        if reason is not None:
            return {"cuda_graph_error": reason}
        return cuda_graphs.graph_median(fn, sets, rounds)


def latency_percentiles(times) -> dict:
    """The 50th and 99th percentiles (nearest rank) of per-call ``times``
    (seconds): the median and the tail a latency budget must cover."""
    ordered = sorted(times)
    return {f"latency_p{p}_s": ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] for p in (50, 99)}


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
        compile_mode=config.getoption("fastseg_compile_mode"),
    )
    config.stash[_ENV_KEY] = env
    return env


@pytest.fixture(scope="module")
def cudnn_benchmark():
    """``torch.backends.cudnn.benchmark = True`` for a module (the conv
    suites): cuDNN times its algorithms on each new shape (during the
    untimed first calls) and keeps the fastest, as a tuned PyTorch run does."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = previous


def pytest_benchmark_update_machine_info(config, machine_info):
    """Device name, versions, the measured copy bandwidth and the warm-up
    time under which a group is also timed as CUDA graphs in the JSON's
    machine_info, next to pytest-benchmark's CPU description."""
    env = config.stash.get(_ENV_KEY, None)
    device = env.device if env else roofline.resolve_device(config)
    machine_info["fastseg"] = {
        "device": env.name if env else roofline.device_name(device),
        "device_type": device.type,
        **(env.versions if env else roofline.versions()),
        "copy_bandwidth_gbps": round(env._copy_bandwidth / 1e9, 2) if env and env._copy_bandwidth else None,
        "matmul_tflops": ({str(dtype).removeprefix("torch."): round(rate / 1e12, 3)
                           for dtype, rate in env.matmul_rates.items()} if env else {}),
        "last_level_cache_bytes": env.cache_bytes if env else None,
        "compile_mode": env.compile_mode if env else config.getoption("fastseg_compile_mode"),
        "cuda_graph_launch_bound_s": cuda_graphs.LAUNCH_BOUND_S,
    }


def pytest_terminal_summary(terminalreporter, config):
    env = config.stash.get(_ENV_KEY, None)
    if env is None or not env.results:
        return
    terminalreporter.section("fastseg: bandwidth and speed-up against PyTorch (same run)")
    matmul = "".join(f"; {str(dtype).removeprefix('torch.')} matmul {rate / 1e12:.2f} TFLOP/s"
                     for dtype, rate in env.matmul_rates.items())
    terminalreporter.write_line(f"device: {env.name}; copy bandwidth "
                                f"{env.copy_bandwidth / 1e9:.1f} GB/s{matmul}; {env.versions}")
    for line in summary_lines(env.results):
        terminalreporter.write_line(line)
