"""The benchmark suite's own logic (``benchmarks/``): which calls are timed
as CUDA graph replays and the fallback when capture fails, peak memory,
skip reasons, the baselines every suite compares against, the paired
rounds of the dense CRF against pydensecrf, and the fields a timed CPU run
records. What needs a GPU carries the ``cuda`` mark."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the suite's modules import each other by name, as pytest's rootdir does

import cuda_graphs  # noqa: E402
import paired  # noqa: E402
import roofline  # noqa: E402
import skips  # noqa: E402
import test_dense_crf_perf  # noqa: E402
import test_models_perf  # noqa: E402

import fastseg.models  # noqa: E402


# --- CUDA graphs: which groups, which calls ---------------------------------------

def test_graph_decision_is_made_once_per_group_by_its_first_record():
    decisions = cuda_graphs.GroupDecisions()
    assert decisions.wanted("pool b1", 20e-6)
    assert decisions.wanted("pool b1", 5e-3), "a later, slower contender of the group must follow the first"
    assert not decisions.wanted("pool b8", 2e-3)
    assert not decisions.wanted("pool b8", 1e-6), "a later, faster contender of the group must follow the first"
    assert decisions.wanted("conv", cuda_graphs.LAUNCH_BOUND_S / 2)
    assert not decisions.wanted("conv2", cuda_graphs.LAUNCH_BOUND_S)


def test_graph_decision_rejects_a_non_positive_time():
    with pytest.raises(ValueError, match="warmup_median_s"):
        cuda_graphs.GroupDecisions().wanted("g", 0.0)


@pytest.mark.parametrize("mode", cuda_graphs.CUDAGRAPH_COMPILE_MODES)
def test_no_capture_of_torch_compile_with_its_own_graphs(mode):
    assert f"mode={mode!r}" in cuda_graphs.obstacle((torch.ones(1),), None, mode)


def test_no_capture_of_a_backward_made_per_call():
    assert "backward-only" in cuda_graphs.obstacle((torch.ones(1),), lambda *a: a, None)


@pytest.mark.parametrize("args, where", [((torch.ones(1), 3), "cpu"), ((3,), "no tensors")])
def test_no_capture_of_a_call_on_the_host(args, where):
    assert f"inputs on {where}" in cuda_graphs.obstacle(args, None, "default")


def test_failure_reason_names_the_first_error_of_a_chain():
    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors ...")
        except RuntimeError:
            raise RuntimeError("operation failed due to a previous error during capture")
    except RuntimeError as error:
        assert cuda_graphs.failure_reason(error) == (
            "RuntimeError: operation not permitted when stream is capturing "
            "(then RuntimeError: operation failed due to a previous error during capture)")
    assert cuda_graphs.failure_reason(ValueError()) == "ValueError: (no message)"


def test_a_failed_capture_is_recorded_not_raised():
    """Without a GPU the capture fails creating its stream, with one the call
    itself fails: either way a reason comes back instead of an exception."""
    def broken(x):
        raise RuntimeError("cannot be captured")

    result = cuda_graphs.graph_median(broken, [(torch.ones(1),)], rounds=3)
    assert set(result) == {"cuda_graph_error"}
    assert result["cuda_graph_error"].startswith("capture failed: ")


def test_graph_median_rejects_no_rounds():
    with pytest.raises(ValueError, match="rounds"):
        cuda_graphs.graph_median(lambda x: x, [(torch.ones(1),)], rounds=0)


@pytest.mark.cuda
def test_graph_median_times_a_captured_call():
    sets = [(torch.randn(1 << 16, device="cuda"),) for _ in range(3)]
    result = cuda_graphs.graph_median(lambda x: x * 2 + 1, sets, rounds=20)
    assert set(result) == {"cuda_graph_median_s"} and 0 < result["cuda_graph_median_s"] < 0.1


@pytest.mark.cuda
def test_an_uncapturable_call_leaves_the_device_usable():
    stream = torch.cuda.current_stream()
    x = torch.randn(1024, device="cuda")
    result = cuda_graphs.graph_median(lambda t: t.sum().item(), [(x,)], rounds=5)  # .item() syncs the host
    assert "capture failed" in result["cuda_graph_error"]
    assert torch.cuda.current_stream() == stream
    torch.testing.assert_close((x * 2).sum(), 2 * x.sum())
    torch.cuda.synchronize()


# --- peak memory and roofline figures ----------------------------------------------

def test_peak_memory_is_cuda_only():
    with pytest.raises(ValueError, match="device"):
        roofline.peak_memory_bytes(lambda x: x * 2, (torch.ones(4),), torch.device("cpu"))


@pytest.mark.cuda
def test_peak_memory_counts_the_call_not_its_inputs():
    x = torch.randn(1 << 18, device="cuda")  # 1 MiB, allocated before the call
    assert roofline.peak_memory_bytes(lambda t: t * 2, (x,), x.device) == x.nbytes  # the output alone


def test_roofline_figures_prefix_names_the_timing():
    traffic = roofline.Traffic(2_000_000, 0)
    plain = roofline.roofline_figures(1e-3, traffic, None, 4e9, None)
    graphed = roofline.roofline_figures(1e-3, traffic, None, 4e9, None, prefix="cuda_graph_")
    assert graphed == {f"cuda_graph_{key}": value for key, value in plain.items()}
    assert plain["gbps"] == 2.0 and plain["pct_of_copy_bandwidth"] == 50.0


# --- skip reasons --------------------------------------------------------------------

AVAILABLE = {"available": True, "reason": "fine"}


@pytest.mark.parametrize("device_type, interpret, status, expected", [
    ("cpu", True, AVAILABLE, "triton on cpu: benchmarked on CUDA only"),
    ("cuda", True, AVAILABLE, "TRITON_INTERPRET=1"),
    ("cuda", False, {"available": False, "reason": "Triton is not installed (pip install triton)"},
     "triton backend on cuda: Triton is not installed (pip install triton)"),
    ("cuda", False, AVAILABLE, None),
])
def test_triton_skip_reasons(device_type, interpret, status, expected):
    reason = skips.backend_reason("triton", device_type, interpret, status)
    assert reason is None if expected is None else expected in reason and "\n" not in reason


def test_unavailable_backend_skip_reason_is_the_report_s():
    status = {"available": False, "reason": "no CUDA GPU is visible to PyTorch"}
    assert skips.backend_reason("cuda", "cuda", False, status) == \
        "cuda backend on cuda: no CUDA GPU is visible to PyTorch"
    assert skips.backend_reason("cpp", "cpu", False, AVAILABLE) is None


def test_compile_skip_reasons():
    assert "CUDA only" in skips.compile_reason("cpu", "3.0", "max-autotune")
    assert "pip install triton" in skips.compile_reason("cuda", None, "max-autotune")
    assert skips.compile_reason("cuda", "3.0", "max-autotune") is None


def test_a_missing_optional_baseline_skips_with_how_to_install_it():
    with pytest.raises(pytest.skip.Exception, match="pip install pydensecrf2") as skipped:
        skips.import_or_skip("fastseg_no_such_module", skips.PYDENSECRF_INSTALL)
    assert "ModuleNotFoundError" in str(skipped.value) and "\n" not in str(skipped.value)
    assert skips.import_or_skip("json", "") is json


# --- what the suites compare ---------------------------------------------------------

def test_every_registered_model_is_benchmarked():
    benchmarked = {model.builder for model in test_models_perf.MODELS}
    assert set(fastseg.models.list_models()) <= benchmarked, \
        f"add to benchmarks/test_models_perf.py MODELS: {sorted(set(fastseg.models.list_models()) - benchmarked)}"


def test_every_model_has_latency_and_throughput_cases_on_cuda():
    cases = test_models_perf._cases("cuda", full=True)
    for model in test_models_perf.MODELS:
        mine = [c for c in cases if c.model == model]
        assert {c.batch for c in mine} >= {1} and max(c.batch for c in mine) >= 8, model.id
        assert {c.variant for c in mine} == set(test_models_perf.VARIANTS), model.id


def test_conv_suites_compare_against_the_issue_s_baselines_on_cuda():
    assert set(roofline.CONV_CONFIGS["cuda"]) == {(torch.float16, "nchw"), (torch.bfloat16, "nchw"),
                                                  (torch.bfloat16, "nhwc")}
    for op in ("conv2d", "depthwise_separable_conv2d"):
        backends = importlib.import_module(f"fastseg.ops.{op}").BACKENDS
        compiled = [config for config in roofline.CONV_CONFIGS["cuda"]
                    if any(v.kind == "compile" for v in roofline.conv_variants(backends, "cuda", config))]
        assert compiled == [(torch.bfloat16, "nhwc")], op


# --- paired rounds: a baseline call and a fastseg call next to each other ------------

class FakeClock:
    """A clock that moves only when told: each fake call advances it by its cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recording(log: list, side: str, clock: FakeClock, cost):
    """A fake contender: logs (side, its argument) and takes ``cost(argument)`` seconds."""
    def call(tag):
        log.append((side, tag))
        clock.now += cost(tag)
    return call


def test_pairs_alternate_abba_with_each_set_in_both_orders():
    """Pairs alternate which side goes first, and each set is run in both
    orders (with two sets and the set rotating every pair, one set would
    always run the baseline first)."""
    log, clock = [], FakeClock()
    baseline = recording(log, "baseline", clock, lambda tag: 1.0)
    fastseg = recording(log, "fastseg", clock, lambda tag: 1.0)
    host, device = [("host 0",), ("host 1",)], [("device 0",), ("device 1",)]
    times = paired.paired_times(baseline, fastseg, host, device, 6, clock=clock)
    assert log == [("baseline", "host 0"), ("fastseg", "device 0"),   # A B
                   ("fastseg", "device 0"), ("baseline", "host 0"),   # B A
                   ("baseline", "host 1"), ("fastseg", "device 1"),
                   ("fastseg", "device 1"), ("baseline", "host 1"),
                   ("baseline", "host 0"), ("fastseg", "device 0"),
                   ("fastseg", "device 0"), ("baseline", "host 0")]
    assert len(times) == 6


def test_pair_times_count_the_call_and_after_not_before():
    """``before`` (the cache flush) is outside each timed call, ``after``
    (the synchronization) inside it; each pair's times are (baseline, fastseg)
    whichever went first."""
    log, clock = [], FakeClock()
    baseline = recording(log, "baseline", clock, lambda tag: 4.0 * tag)
    fastseg = recording(log, "fastseg", clock, lambda tag: 1.0 * tag)

    def before():
        log.append("before")
        clock.now += 100.0

    def after():
        log.append("after")
        clock.now += 0.5

    sets = [(1,), (2,), (3,)]
    times = paired.paired_times(baseline, fastseg, sets, sets, 4, before=before, after=after, clock=clock)
    assert times == [(4.5, 1.5), (4.5, 1.5), (8.5, 2.5), (8.5, 2.5)]
    assert log[:6] == ["before", ("baseline", 1), "after", "before", ("fastseg", 1), "after"]


def test_paired_figures_take_the_median_of_the_ratios():
    # ratios 4, 6, 3, 1, 15: median 4, not the ratio of the medians (6 / 2 = 3)
    times = [(4.0, 1.0), (6.0, 1.0), (9.0, 3.0), (2.0, 2.0), (30.0, 2.0)]
    assert paired.paired_figures(times) == {"paired_rounds": 5, "paired_baseline_median_s": 6.0,
                                            "paired_median_s": 2.0, "paired_speedup": 4.0,
                                            "paired_speedup_p25": 3.0, "paired_speedup_p75": 6.0}
    one = paired.paired_figures([(3.0, 1.0)])  # one pair: its ratio is every quartile
    assert (one["paired_speedup_p25"], one["paired_speedup"], one["paired_speedup_p75"]) == (3.0, 3.0, 3.0)


def test_pair_count_follows_the_budget_within_bounds():
    assert paired.pair_count(0.3, 0.32, 0.07) == 6  # the CPU default budget: the floor, made even
    assert paired.pair_count(30.0, 0.32, 0.07) == 78  # 77 fit, one more for as many pairs in each order
    assert paired.pair_count(29.0, 0.32, 0.07) == 76
    assert paired.pair_count(1000.0, 0.32, 0.07) == 200
    with pytest.raises(ValueError, match="positive"):
        paired.pair_count(0.3, 0.0, 0.07)


def test_paired_times_reject_no_pairs_and_unmatched_sets():
    with pytest.raises(ValueError, match="pairs"):
        paired.paired_times(print, print, [()], [()], 0)
    with pytest.raises(ValueError, match="one set per side"):
        paired.paired_times(print, print, [(), ()], [()], 3)


def test_which_crf_cases_are_paired():
    """On the CPU, every fastseg backend but the reference in a batch-1 group
    (the groups with pydensecrf); never in a run with timings disabled, nor
    on a GPU."""
    pytest.importorskip("pydensecrf.densecrf", reason="pip install pydensecrf2")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cases = test_dense_crf_perf._cases(cpu, full=True)
    chosen = {(c.contender, c.batch) for c in cases if test_dense_crf_perf._timed_in_pairs(c, cpu, disabled=False)}
    assert chosen == {(b, 1) for b in test_dense_crf_perf.BACKENDS if b != "reference"}
    assert not any(test_dense_crf_perf._timed_in_pairs(c, cpu, disabled=True) for c in cases)
    gpu_cases = test_dense_crf_perf._cases(cuda, full=True)
    assert not any(test_dense_crf_perf._timed_in_pairs(c, cuda, disabled=False) for c in gpu_cases)


@pytest.mark.parametrize("full", [False, True])
def test_crf_cases_with_fresh_lattices(full):
    """The VOC photo's batch-1 groups, at both iteration counts, also time
    every fast backend with no lattice kept from the call before; their ids
    say so, and no other group has them."""
    for device in (torch.device("cpu"), torch.device("cuda")):
        cases = test_dense_crf_perf._cases(device, full=full)
        fresh = [c for c in cases if c.fresh_lattices]
        fast = [b for b in test_dense_crf_perf.BACKENDS if b != "reference"]
        assert sorted((c.contender, c.iterations) for c in fresh) == sorted(
            (b, it) for b in fast for it in test_dense_crf_perf.ITERATIONS)
        assert all(c.scene.name == "photo" and c.batch == 1 for c in fresh)
        assert all(c.id.startswith(f"fastseg-{c.contender}-fresh-photo") for c in fresh)
        assert len({c.id for c in cases}) == len(cases)
        assert all(c.info()["fresh_lattices"] == c.fresh_lattices for c in cases)


# --- a timed CPU run, end to end ------------------------------------------------------

def test_a_timed_cpu_run_records_the_fields(tmp_path):
    """One pool group, timed briefly on the CPU: every record carries the
    latency percentiles, its index bytes and ``peak_memory_bytes`` as None
    (not measured on the CPU), and no CUDA graph timing."""
    out = tmp_path / "run.json"
    root = BENCHMARKS.parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCHMARKS / "test_max_pool2d_perf.py") + "::test_max_pool2d",
         "-q", "-p", "no:cacheprovider", "--benchmark-only", "--fastseg-device=cpu", "--fastseg-budget=0.005",
         "-k", "b1-512x22x30-f32-nchw and (torch or reference)", f"--benchmark-json={out}"],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = json.loads(out.read_text())["benchmarks"]
    assert {r["extra_info"]["variant"] for r in records} >= {"torch", "fastseg-reference-flat", "fastseg-reference-compact"}
    for record in records:
        info = record["extra_info"]
        assert info["index_bytes"] > 0 and info["latency_p50_s"] <= info["latency_p99_s"], record["name"]
        assert info["peak_memory_bytes"] is None, record["name"]
        assert not {"cuda_graph_median_s", "cuda_graph_error"} & set(info), record["name"]


def test_a_timed_cpu_crf_run_records_paired_rounds(tmp_path):
    """fastseg's C++ CRF on the VOC photo at 5 iterations, timed briefly: its
    record also holds the paired rounds against pydensecrf (6 at the
    smallest budget: at least 5, even), beside its own statistics."""
    pytest.importorskip("pydensecrf.densecrf", reason="pip install pydensecrf2")
    pytest.importorskip("skimage.data", reason="pip install scikit-image")
    if not fastseg.backends()["backends"]["cpp"]["cpu"]["available"]:
        pytest.skip("fastseg's C++ extension is not built")
    out = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCHMARKS / "test_dense_crf_perf.py"), "-q", "-p", "no:cacheprovider",
         "--benchmark-only", "--fastseg-device=cpu", "--fastseg-budget=0.005", "-k", "fastseg-cpp-photo and it5",
         f"--benchmark-json={out}"],
        cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [record] = json.loads(out.read_text())["benchmarks"]
    info = record["extra_info"]
    assert info["paired_rounds"] == 6 and record["stats"]["rounds"] == 5
    assert info["paired_speedup"] > 0 and info["paired_median_s"] > 0 and info["paired_baseline_median_s"] > 0
    assert info["paired_speedup_p25"] <= info["paired_speedup"] <= info["paired_speedup_p75"]
    assert "paired" in done.stdout  # the terminal summary's column
