"""Markdown tables and the terminal summary of recorded benchmarks: one
table per suite (pooling, convs, dense CRF, models), each fastseg record
beside the baseline measured in the same run (BENCHMARKING.md)."""

from .records import (BASELINE_IMPLEMENTATIONS, baseline_label, eager_baseline, fastest_baseline, groups, median,
                      pairings, speedup_text)

NOT_MEASURED = "not measured"


def _ms(record, digits: int = 3) -> str:
    return f"{median(record) * 1e3:.{digits}f}" if record else NOT_MEASURED


def _peak_memory(info: dict) -> str:
    """MiB at the peak of one call, where the suite measured it."""
    peak = info.get("peak_memory_bytes")
    return f"{peak / 2**20:.0f}" if peak is not None else "—"


def _graph_ms(record) -> str:
    """The median of the call replayed as a CUDA graph, where the suite timed
    one (launch-bound groups on CUDA), else "—" (the record's cuda_graph_error
    says why where it tried)."""
    if not record:
        return NOT_MEASURED
    info = record["extra_info"]
    if "cuda_graph_median_s" in info:
        return f"{info['cuda_graph_median_s'] * 1e3:.3f}"
    return "—"


def _graphs(baseline, record) -> str:
    return f"{_graph_ms(baseline)} / {_graph_ms(record)}"


def _paired_text(info: dict, quartiles: bool = False, missing: str = NOT_MEASURED) -> str:
    """The paired speed-up (the median over paired rounds of a baseline
    call's time over the fastseg call's next to it), ``missing`` where the
    record has none; with ``quartiles``, also the middle half of the pairs'
    ratios where the record keeps it."""
    if info.get("paired_speedup") is None:
        return missing
    low, high = info.get("paired_speedup_p25"), info.get("paired_speedup_p75")
    spread = f" ({low:.2f}–{high:.2f}x)" if quartiles and low is not None and high is not None else ""
    return f"{info['paired_speedup']:.2f}x{spread}"


def _shape(info: dict) -> str:
    return "x".join(str(s) for s in info["shape"])


def summary_lines(benchmarks) -> list[str]:
    """The terminal summary: every record beside its group's PyTorch
    baseline in the same dtype and layout (``vs torch``) and, where a group
    has several baselines, the fastest of them (``vs best``); where a record
    was also timed in pairs with its baseline (the dense CRF), the paired
    speed-up (``paired``)."""
    grouped = groups(benchmarks)
    events = any("cuda_event_median_s" in b["extra_info"] for b in benchmarks)
    graphs = any("cuda_graph_median_s" in b["extra_info"] for b in benchmarks)
    flops = any("flops" in b["extra_info"] for b in benchmarks)
    paired = any(b["extra_info"].get("paired_speedup") is not None for b in benchmarks)
    several = any(sum(b["extra_info"].get("implementation") in BASELINE_IMPLEMENTATIONS for b in members) > 1
                  for members in grouped.values())
    width = max([48] + [len(g) for g in grouped])
    lines = [f"{'group':<{width}} {'variant':<32} {'median ms':>10}" + (f" {'TFLOP/s':>8}" if flops else "")
             + f" {'GB/s':>8} {'% copy':>7}" + (f" {'% roof':>7}" if flops else "") + f" {'vs torch':>9}"
             + (f" {'vs best':>9}" if several else "") + (f" {'paired':>9}" if paired else "")
             + (f" {'event ms':>10} {'% copy':>7}" if events else "")
             + (f" {'graph ms':>10}" if graphs else "")]
    nan = float("nan")
    for group, members in grouped.items():
        fastest = fastest_baseline(members)
        for b in members:
            info, seconds = b["extra_info"], median(b)
            baseline = eager_baseline(b, members)
            lines.append(
                f"{group:<{width}} {info.get('variant', b['name']):<32} {seconds * 1e3:>10.3f}"
                + ((f" {info['tflops']:>8.3f}" if "tflops" in info else f" {'-':>8}") if flops else "")
                + f" {info.get('gbps', nan):>8.1f} {info.get('pct_of_copy_bandwidth', nan):>6.1f}%"
                + (f" {info.get('pct_of_roofline', nan):>6.1f}%" if flops else "")
                + f" {speedup_text(baseline, seconds) if baseline else 'no baseline':>9}"
                + (f" {speedup_text(fastest, seconds) if fastest else 'no baseline':>9}" if several else "")
                + (f" {_paired_text(info, missing='-'):>9}" if paired else "")
                + (f" {info.get('cuda_event_median_s', nan) * 1e3:>10.3f} "
                   f"{info.get('cuda_event_pct_of_copy_bandwidth', nan):>6.1f}%" if events else "")
                + (f" {_graph_ms(b):>10}" if graphs else ""))
    return lines


def pool_table(benchmarks) -> str:
    """The pooling suite: one row per fastseg variant beside the PyTorch
    baseline of its group."""
    rows = ["| op | shape | dtype | layout | fastseg | baseline ms | fastseg ms | speed-up "
            "| GB/s | % of copy bandwidth | CUDA graph ms (baseline / fastseg) | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair in pairings(benchmarks):
        b, base = pair.record, pair.baseline
        info = b["extra_info"]
        rows.append(f"| {info['op']} | {_shape(info)} ({info.get('segnet', '')}) | {info['dtype']} | {info['layout']} "
                    f"| {info['backend']}, {info['indices']} | {_ms(base)} | {_ms(b)} "
                    f"| {speedup_text(base, median(b))} "
                    f"| {info['gbps']:.1f} | {info['pct_of_copy_bandwidth']:.1f} | {_graphs(base, b)} "
                    f"| {_peak_memory(info)} |")
    return "\n".join(rows) + "\n"


def conv_table(benchmarks) -> str:
    """The conv suites: one row per fastseg record, beside PyTorch eager in
    the same dtype and layout and the fastest PyTorch record of its group
    (any dtype or layout, or torch.compile)."""
    rows = ["| op | mode | layer | conv | dtype | layout | fastseg | PyTorch eager ms | fastest baseline "
            "| its ms | fastseg ms | vs eager | vs fastest | TFLOP/s | GB/s | % of roofline (bound) "
            "| CUDA graph ms (eager / fastseg) | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for members in groups(benchmarks).values():
        fastest = fastest_baseline(members)
        for b in members:
            info, seconds = b["extra_info"], median(b)
            if info.get("implementation") != "fastseg":
                continue
            eager = eager_baseline(b, members)
            rows.append(f"| {info['op']} | {info['mode']} | {info['layer']} | {info['conv']} | {info['dtype']} "
                        f"| {info['layout']} | {info['backend']} | {_ms(eager)} "
                        f"| {baseline_label(fastest) if fastest else NOT_MEASURED} | {_ms(fastest)} "
                        f"| {seconds * 1e3:.3f} | {speedup_text(eager, seconds)} | {speedup_text(fastest, seconds)} "
                        f"| {info['tflops']:.2f} | {info['gbps']:.1f} "
                        f"| {info['pct_of_roofline']:.1f} ({info['bound']}) | {_graphs(eager, b)} "
                        f"| {_peak_memory(info)} |")
    return "\n".join(rows) + "\n"


def crf_table(benchmarks) -> str:
    """The dense-CRF suite: one row per fastseg record beside pydensecrf in
    the same group; the speed-up of the two records' medians and, where the
    record has one, the paired speed-up (the median over pairs of adjacent
    calls on the same inputs of pydensecrf's time over fastseg's, and the
    quartiles of those ratios)."""
    rows = ["| scene | shape | labels | iterations | batch | fastseg | pydensecrf ms | fastseg ms | speed-up "
            "| paired speed-up | images/s | % of copy bandwidth | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair in pairings(benchmarks):
        b, base = pair.record, pair.baseline
        info, seconds = b["extra_info"], median(b)
        rows.append(f"| {info['scene']} | {_shape(info)} | {info['labels']} | {info['iterations']} | {info['batch']} "
                    f"| {_crf_contender(info)} | {_ms(base, 1)} | {seconds * 1e3:.1f} | {speedup_text(base, seconds)} "
                    f"| {_paired_text(info, quartiles=True)} | {info['batch'] / seconds:.1f} "
                    f"| {info['pct_of_copy_bandwidth']:.1f} | {_peak_memory(info)} |")
    return "\n".join(rows) + "\n"


def _crf_contender(info: dict) -> str:
    """The backend, and whether the calls reused the spatial lattice kept
    from the call before or built every lattice afresh (the -fresh variants
    of benchmarks/test_dense_crf_perf.py); runs recorded before either
    existed say neither."""
    fresh = info.get("fresh_lattices")
    if fresh is None:
        return info["backend"]
    return f"{info['backend']}, {'lattices built each call' if fresh else 'spatial lattice kept'}"


def models_table(benchmarks) -> str:
    """The models: latency percentiles and images/s of each fastseg record
    beside its reference-backend twin (eager against eager, compiled
    against compiled)."""
    rows = ["| model | input | variant | dtype | layout | p50 ms | p99 ms | images/s | reference | its images/s "
            "| speed-up | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair in pairings(benchmarks):
        b, twin = pair.record, pair.baseline
        info = b["extra_info"]
        twin_rate = f"{twin['extra_info']['images_per_s']:.2f}" if twin else NOT_MEASURED
        rows.append(f"| {info['model']} | {_shape(info)} | {info['variant']} | {info['dtype']} | {info['layout']} "
                    f"| {info['latency_p50_s'] * 1e3:.2f} | {info['latency_p99_s'] * 1e3:.2f} "
                    f"| {info['images_per_s']:.2f} | {twin['extra_info']['variant'] if twin else NOT_MEASURED} "
                    f"| {twin_rate} | {speedup_text(twin, median(b))} | {_peak_memory(info)} |")
    return "\n".join(rows) + "\n"


# Which records each table takes: pooling records carry ``indices``, conv
# records ``flops``; the CRF and the models are named by ``op``.
SUITES = (
    ("Max-pool and unpool", lambda info: "indices" in info, pool_table),
    ("Convolutions", lambda info: "flops" in info, conv_table),
    ("Dense CRF", lambda info: info.get("op") == "dense_crf", crf_table),
    ("Models", lambda info: info.get("op") == "model", models_table),
)


def markdown_tables(benchmarks) -> list[tuple[str, str]]:
    """(title, table) of each suite present in ``benchmarks``."""
    tables = []
    for title, member, table in SUITES:
        records = [b for b in benchmarks if member(b["extra_info"])]
        if records:
            tables.append((title, table(records)))
    return tables
