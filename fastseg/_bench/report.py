"""The Markdown report of one recorded run: the machine, the suites' tables
and what was not measured, written beside the run's JSON with its chart."""

from pathlib import Path

from . import chart
from .records import Run, RunFileError, skip_summary
from .tables import markdown_tables


def _versions(machine: dict) -> str:
    names = (("torch", "torch"), ("triton", "Triton"), ("cuda_runtime", "CUDA runtime"), ("cudnn", "cuDNN"),
             ("fastseg", "fastseg"))
    return ", ".join(f"{label} {machine.get(key) or 'none'}" for key, label in names)


def _header(run: Run) -> list[str]:
    machine = run.machine
    bandwidth = machine.get("copy_bandwidth_gbps")
    matmul = machine.get("matmul_tflops") or {}
    lines = [
        f"# Benchmarks on {run.device}", "",
        f"- Device: {run.device} ({machine.get('device_type', 'unknown type')})",
        f"- Versions: {_versions(machine)}",
        f"- Copy bandwidth: {f'{bandwidth} GB/s' if bandwidth else 'not measured'} "
        "(a large same-device copy in this run, read + write counted)",
        "- Matmul rate: " + (", ".join(f"{dtype} {rate} TFLOP/s" for dtype, rate in matmul.items())
                             or "not measured (no conv in this run)"),
        f"- Date: {run.datetime or 'not recorded'}",
        f"- Source: `{run.path.name}`",
        "",
        "Speed-up: the baseline's median over fastseg's, both measured in this run on the same inputs.",
    ]
    if any(b["extra_info"].get("op") == "dense_crf" for b in run.benchmarks):
        lines += ["", "Paired speed-up (dense CRF): after fastseg's own rounds, pairs of a pydensecrf call and a "
                      "fastseg call next to each other on the same inputs, alternating which goes first; the median "
                      "over the pairs of pydensecrf's time over fastseg's, and in brackets, where recorded, the "
                      "quartiles of those ratios. A slow spell of a shared machine can hit "
                      "one contender's block of rounds and not the other's, but it hits both calls of a pair alike. "
                      "Not measured for the reference backend, in groups without pydensecrf (batch 32), in GPU "
                      "runs, nor in runs recorded before the suite timed pairs."]
    if machine.get("device_type") == "cpu":
        lines += ["", "A CPU run is for development: absolute times wander with whatever else runs; "
                      "only the ratios against the baseline of the same run mean anything."]
    if run.interpreted:
        lines += ["", f"{run.interpreted} records timed under Triton's interpreter were left out "
                      "(interpreter timings are never reported)."]
    return lines


def _skipped(run: Run) -> list[str]:
    lines = ["## Not measured in this run", ""]
    if run.skipped is None:
        return lines + ["This file does not list skipped cases (it was not recorded by `python -m fastseg bench`)."]
    if not run.skipped:
        return lines + ["Nothing was skipped."]
    return lines + [f"- {count} case{'s' if count > 1 else ''}: {reason}"
                    for count, reason in skip_summary(run.skipped)]


def markdown_report(run: Run) -> str:
    lines = _header(run)
    try:
        tables = markdown_tables(run.benchmarks)
    except KeyError as error:
        raise RunFileError(f"{run.path}: a record lacks extra_info[{error.args[0]!r}], "
                           "which its table needs") from error
    for title, table in tables:
        lines += ["", f"## {title}", "", table.rstrip("\n")]
    if not tables:
        lines += ["", "No fastseg benchmark was measured in this run."]
    return "\n".join(lines + [""] + _skipped(run)) + "\n"


def write_report(run: Run, stem: Path) -> tuple[Path, Path]:
    """``stem``.md and ``stem``.png (the chart) for ``run``; their paths."""
    markdown, png = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".png")
    markdown.write_text(markdown_report(run))
    chart.write_chart(run, png)
    return markdown, png
