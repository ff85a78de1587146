"""The chart of one recorded run: each fastseg record's speed-up over its
group's baseline (horizontal bars, log scale, a line at 1x) and, beside it,
the percentage of the roofline it reached."""

import importlib.util
from pathlib import Path

from .records import Pairing, Run, pairings, roofline_percent

INCHES_PER_ROW = 0.22
# Matplotlib refuses images taller than 2^16 pixels: past that, fewer dots per inch.
MAX_PIXELS = 60_000
DPI = 100


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise ChartUnavailable("the benchmark chart needs matplotlib: pip install matplotlib "
                               "(or pip install -e '.[bench]')")


def _speedup_panel(axes, rows: list[Pairing]) -> None:
    from matplotlib.ticker import FuncFormatter

    speedups = [pair.speedup for pair in rows]
    measured = [s for s in speedups if s is not None]
    for y, s in enumerate(speedups):
        if s is None:
            axes.text(1, y, " no baseline in this run", va="center", fontsize=7, color="grey")
        else:
            # from the 1x line to the speed-up: rightwards when faster, leftwards when slower
            axes.barh(y, s - 1, left=1, height=0.7, color="tab:green" if s >= 1 else "tab:red")
            axes.text(s, y, f" {s:.2f}x ", va="center", ha="left" if s >= 1 else "right", fontsize=7)
    axes.set_xscale("log")
    low, high = min(measured + [1.0]), max(measured + [1.0])
    axes.set_xlim(low / 2, high * 2)  # room for the labels
    times = FuncFormatter(lambda value, _: f"{value:g}x")
    axes.xaxis.set_major_formatter(times)
    if high / low < 10:  # within a decade there are few major ticks; over several the minor labels would crowd
        axes.xaxis.set_minor_formatter(times)
        axes.tick_params(axis="x", which="minor", labelsize=6)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("speed-up over the group's baseline (same run; log scale)")


def _roofline_panel(axes, rows: list[Pairing]) -> None:
    for y, pair in enumerate(rows):
        percent = roofline_percent(pair.record["extra_info"])
        if percent is not None:
            axes.barh(y, percent, height=0.7, color="tab:blue")
    axes.set_xlim(0, 100)
    axes.set_xlabel("% of roofline (or of copy bandwidth)")


def write_chart(run: Run, path: Path) -> None:
    """A PNG at ``path``, one row per fastseg record, sized from the row count."""
    require_matplotlib()
    from matplotlib.figure import Figure  # the Agg canvas, no GUI backend and no pyplot state

    rows = pairings(run.benchmarks)
    with_roofline = any(roofline_percent(pair.record["extra_info"]) is not None for pair in rows)
    height = max(3.0, INCHES_PER_ROW * len(rows) + 1.5)
    figure = Figure(figsize=(14 if with_roofline else 10, height), layout="constrained")
    title = f"fastseg on {run.device}, {run.datetime[:16] or 'undated'}"
    if not rows:
        figure.text(0.5, 0.5, f"{title}\nno fastseg record measured", ha="center", va="center")
        figure.savefig(path, dpi=DPI)
        return
    panels = figure.subplots(1, 2 if with_roofline else 1, sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1] if with_roofline else [1]})[0]
    _speedup_panel(panels[0], rows)
    if with_roofline:
        _roofline_panel(panels[1], rows)
    panels[0].set_yticks(range(len(rows)), [pair.label for pair in rows], fontsize=7)
    panels[0].set_ylim(len(rows) - 0.5, -0.5)  # first record on top, in the run's order
    figure.suptitle(title)
    figure.savefig(path, dpi=min(DPI, MAX_PIXELS / height))
