"""Timing a launch-bound call as a CUDA graph replay.

A batch-1 layer of a deep stage runs a few microseconds of kernels; eager,
its time is mostly the host launching them, and a served model captured in
a CUDA graph (``torch.compile(mode="reduce-overhead")``, TensorRT) pays no
launches. For such calls the suite also times the call captured in a CUDA
graph, for the baseline and fastseg alike.

Which groups: a group (op, shape, ...) is timed as graphs or not as a whole,
decided by the first of its records timed in the run (the PyTorch baseline,
which each suite puts first): its warm-up median under ``LAUNCH_BOUND_S``.
A per-record decision could time the baseline as a graph and fastseg not.

How: one graph per input set, each captured on that set's tensors, so the
rotation needs no copies into static buffers; the graphs share one memory
pool and drop their outputs, which no one reads, so together they hold about
one call's memory. Each replay is timed by CUDA events, back to back in the
order of the rotation (the first replay of each graph, which uploads it,
untimed).

A call that cannot be captured (a host synchronization, an op that refuses
capture) or should not be (see ``obstacle``) gets a reason instead of a
time; a benchmark never fails for it.
"""

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# A call whose warm-up median (host clock, synchronized) is below this is
# dominated by launches and synchronization rather than by its kernels.
LAUNCH_BOUND_S = 50e-6

# torch.compile modes whose compiled function replays CUDA graphs of its own
# (CUDA graph trees); those cannot be captured inside another graph.
CUDAGRAPH_COMPILE_MODES = ("max-autotune", "reduce-overhead")


@dataclass
class GroupDecisions:
    """Whether each group is also timed as CUDA graph replays, decided once
    per group by the warm-up median of its first record."""

    threshold_s: float = LAUNCH_BOUND_S
    decided: dict = field(default_factory=dict)  # group -> bool

    def wanted(self, group: str, warmup_median_s: float) -> bool:
        if warmup_median_s <= 0:
            raise ValueError(f"warmup_median_s must be positive, got {warmup_median_s}")
        return self.decided.setdefault(group, warmup_median_s < self.threshold_s)


def tensor_devices(args: Sequence) -> set[str]:
    """The device types of the tensors among ``args``."""
    return {a.device.type for a in args if isinstance(a, torch.Tensor)}


def obstacle(args: Sequence, prepare: Callable | None, compile_mode: str | None) -> str | None:
    """Why ``fn(*args)`` is not timed as a graph replay, or None.

    ``prepare``: a backward-only benchmark makes each call's forward afresh
    (the graph the backward consumes and frees); a replayed backward would
    read a freed forward. ``compile_mode``: the torch.compile mode of a
    compiled baseline, None for eager calls. ``args`` must be on the GPU: a
    call on host tensors (pydensecrf) launches nothing a graph could hold,
    and its replay would time an empty graph."""
    if prepare is not None:
        return ("not captured: a backward-only call needs its forward made afresh before each call, "
                "which a replayed graph cannot do")
    if compile_mode in CUDAGRAPH_COMPILE_MODES:
        return (f"not captured: torch.compile(mode={compile_mode!r}) replays CUDA graphs of its own, which "
                "cannot be captured inside another; its median is a graph replay already")
    devices = tensor_devices(args)
    if devices != {"cuda"}:
        where = ", ".join(sorted(devices)) or "no tensors"
        return f"not captured: inputs on {where}, not all on the GPU: a graph would capture nothing of the call"
    return None


def capture(fn: Callable, sets: Sequence[Sequence]) -> list:
    """One CUDA graph of ``fn(*args)`` per input set, sharing a memory pool.

    Captured on a side stream after a few calls there, as PyTorch's CUDA
    graph guide asks (libraries set up per-stream state on first use, which
    must not happen during capture). ``capture_begin``/``capture_end`` rather
    than ``torch.cuda.graph``: that context manager leaves the side stream
    current when ``capture_end`` raises, and empties the allocator's cache
    before every capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    pool = torch.cuda.graph_pool_handle()
    graphs = []
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn(*sets[0])
            torch.cuda.synchronize()  # as torch.cuda.graph does: nothing uncaptured still runs during capture
            for args in sets:
                graph = torch.cuda.CUDAGraph()
                graph.capture_begin(pool=pool)
                try:
                    fn(*args)  # the output is dropped: its memory serves the next capture
                finally:
                    graph.capture_end()
                graphs.append(graph)
    finally:
        torch.cuda.current_stream().wait_stream(stream)  # also after a failure: what follows runs after it
    return graphs


def replay_spans(graphs: Sequence, rounds: int) -> list[float]:
    """Seconds of each of ``rounds`` replays, cycling through ``graphs``."""
    for graph in graphs:
        graph.replay()  # uploads the graph to the device
    torch.cuda.synchronize()
    events = []
    for graph in itertools.islice(itertools.cycle(graphs), rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else '(no message)'}"


def failure_reason(error: BaseException) -> str:
    """One line: the exception that started a failure, then the one raised
    last when they differ. A failed capture raises again in ``capture_end``
    ("operation failed due to a previous error during capture"), the first
    error being its context."""
    first = error
    while first.__context__ is not None:
        first = first.__context__
    return _first_line(first) + ("" if first is error else f" (then {_first_line(error)})")


def graph_median(fn: Callable, sets: Sequence[Sequence], rounds: int) -> dict:
    """``{"cuda_graph_median_s": seconds}``: the median replay of ``fn``
    captured once per input set; or ``{"cuda_graph_error": reason}`` when
    capturing or replaying it fails."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    try:
        graphs = capture(fn, sets)
        spans = replay_spans(graphs, rounds)
    except Exception as error:  # any failure is recorded, never fatal: the eager timing stands
        return {"cuda_graph_error": f"capture failed: {failure_reason(error)}"}
    return {"cuda_graph_median_s": statistics.median(spans)}
