"""The memory roofline the pooling benchmarks report against.

Max-pool with indices and max-unpool do no arithmetic worth counting: their
limit is the memory system. The bytes an op must move at least are its inputs
read once and its outputs written once, indices included (BENCHMARKING.md);
dividing them by the measured time gives GB/s, and dividing that by the copy
bandwidth measured on the same device in the same session gives the fraction
of the roofline. Indices are counted separately (``index_bytes``) because
int64 indices are most of the traffic a SegNet decoder reads, and what
compact (uint8) indices save.

Nothing here queries the GPU at import time.
"""

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

FLAT_INDEX_BYTES = torch.int64.itemsize    # PyTorch's flat indices
COMPACT_INDEX_BYTES = torch.uint8.itemsize  # fastseg's window positions


@dataclass(frozen=True)
class Traffic:
    """Bytes an op must move: ``total`` includes ``index_bytes``."""

    total: int
    index_bytes: int


def _numel(shape) -> int:
    return math.prod(shape)


def pool_traffic(in_shape, out_shape, dtype: torch.dtype, index_bytes_each: int) -> Traffic:
    """Max-pool: read x [N, C, H, W]; write values and indices [N, C, Ho, Wo]."""
    es = dtype.itemsize
    n_in, n_out = _numel(in_shape), _numel(out_shape)
    index_bytes = n_out * index_bytes_each
    return Traffic(n_in * es + n_out * es + index_bytes, index_bytes)


def unpool_traffic(in_shape, out_shape, dtype: torch.dtype, index_bytes_each: int) -> Traffic:
    """Max-unpool: read values and indices [N, C, Ho, Wo]; write y [N, C, H, W]
    (every element of y: the zeros are part of the output)."""
    es = dtype.itemsize
    n_in, n_out = _numel(in_shape), _numel(out_shape)
    index_bytes = n_in * index_bytes_each
    return Traffic(n_in * es + index_bytes + n_out * es, index_bytes)


def roundtrip_traffic(x_shape, pooled_shape, dtype: torch.dtype, index_bytes_each: int) -> Traffic:
    """Pool then unpool (a SegNet encoder/decoder pair): the pool's traffic
    plus the unpool's; values and indices cross memory twice (written, read)."""
    pool = pool_traffic(x_shape, pooled_shape, dtype, index_bytes_each)
    unpool = unpool_traffic(pooled_shape, x_shape, dtype, index_bytes_each)
    return Traffic(pool.total + unpool.total, pool.index_bytes + unpool.index_bytes)


def resolve_device(config) -> torch.device:
    """The device ``--fastseg-device`` names (auto: CUDA when PyTorch sees a GPU)."""
    option = config.getoption("fastseg_device")
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(option)


def full_shapes(config) -> bool:
    """``--fastseg-shapes``: every shape (auto: on CUDA) or the quick CPU set."""
    option = config.getoption("fastseg_shapes")
    return resolve_device(config).type == "cuda" if option == "auto" else option == "full"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def last_level_cache_bytes(device: torch.device) -> int:
    """L2 on a GPU (50 MB on an H100); on a CPU the largest cache sysfs lists
    (32 MiB assumed where it lists none). Inputs are rotated so that a set is
    not read again before at least twice this many bytes went through."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    largest = 0
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            largest = max(largest, int(text.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        pass
    return largest or 32 << 20


def measure_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large same-device copy (read + write counted), the
    attainable memory bandwidth the ops are compared with. CUDA: 1 GiB
    device-to-device, CUDA events, median of 20 after warm-up. CPU: 256 MiB
    ``copy_``, host clock, median of 7."""
    nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    if device.type == "cuda":
        nbytes = min(nbytes, torch.cuda.mem_get_info(device)[0] // 4)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()  # not zeros
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    times = []
    if device.type == "cuda":
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(7):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import fastseg
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "fastseg": fastseg.__version__,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }


# --- tables from recorded benchmarks ---------------------------------------
# ``benchmarks`` below are pytest-benchmark records (the "benchmarks" list of
# its JSON, or the same fields gathered during a run): group, name,
# stats.median and the extra_info the suite writes.


def _rows(benchmarks):
    """(group, record, baseline record or None) for every fastseg record,
    the baseline being the PyTorch record of the same group."""
    baselines = {b["group"]: b for b in benchmarks if b["extra_info"].get("implementation") == "torch"}
    for b in benchmarks:
        if b["extra_info"].get("implementation") == "fastseg":
            yield b["group"], b, baselines.get(b["group"])


def summary_lines(benchmarks) -> list[str]:
    events = any("cuda_event_median_s" in b["extra_info"] for b in benchmarks)
    lines = [f"{'group':<48} {'variant':<32} {'median ms':>10} {'GB/s':>8} {'% copy':>7} {'vs torch':>9}"
             + (f" {'event ms':>10} {'% copy':>7}" if events else "")]
    groups = {}
    for b in benchmarks:
        groups.setdefault(b["group"], []).append(b)
    for group, members in groups.items():
        baseline = next((b for b in members if b["extra_info"].get("implementation") == "torch"), None)
        for b in members:
            info, median = b["extra_info"], b["stats"]["median"]
            speedup = f"{baseline['stats']['median'] / median:.2f}x" if baseline else "no baseline"
            lines.append(f"{group:<48} {info.get('variant', b['name']):<32} {median * 1e3:>10.3f} "
                         f"{info.get('gbps', float('nan')):>8.1f} {info.get('pct_of_copy_bandwidth', float('nan')):>6.1f}% "
                         f"{speedup:>9}"
                         + (f" {info.get('cuda_event_median_s', float('nan')) * 1e3:>10.3f} "
                            f"{info.get('cuda_event_pct_of_copy_bandwidth', float('nan')):>6.1f}%" if events else ""))
    return lines


def markdown_table(benchmarks) -> str:
    """BENCHMARKING.md's table: one row per fastseg variant beside the
    PyTorch baseline of its group, from measured records only."""
    head = ("| op | shape | dtype | layout | fastseg | baseline ms | fastseg ms | speed-up "
            "| GB/s | % of copy bandwidth |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for _, b, base in _rows(benchmarks):
        info, median = b["extra_info"], b["stats"]["median"]
        base_ms = f"{base['stats']['median'] * 1e3:.3f}" if base else "not measured"
        speedup = f"{base['stats']['median'] / median:.2f}x" if base else "not measured"
        shape = "x".join(str(s) for s in info["shape"])
        rows.append(f"| {info['op']} | {shape} ({info.get('segnet', '')}) | {info['dtype']} | {info['layout']} "
                    f"| {info['backend']}, {info['indices']} | {base_ms} | {median * 1e3:.3f} | {speedup} "
                    f"| {info['gbps']:.1f} | {info['pct_of_copy_bandwidth']:.1f} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    # python benchmarks/roofline.py benchmarks/results/<gpu>-<date>.json > benchmarks/results/<gpu>-<date>.md
    import json
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/roofline.py RESULTS.json > RESULTS.md")
    with open(sys.argv[1]) as f:
        recorded = json.load(f)
    fastseg_info = recorded["machine_info"].get("fastseg", {})
    print(f"Measured on {fastseg_info.get('device', 'unknown device')} "
          f"(copy bandwidth {fastseg_info.get('copy_bandwidth_gbps')} GB/s), torch {fastseg_info.get('torch')}, "
          f"triton {fastseg_info.get('triton')}, CUDA {fastseg_info.get('cuda_runtime')}, "
          f"{recorded.get('datetime', '')}; source: {sys.argv[1].rsplit('/', 1)[-1]}\n")
    print(markdown_table(recorded["benchmarks"]), end="")
