"""Two recorded runs side by side: each benchmark present in both (same
group and name), its old and new median, and whether the change is beyond
the run-to-run noise both records show.

The rule (printed in the output's header): a record's relative noise is its
IQR over its median (the spread of its rounds); the two runs' combine as
the root of the sum of squares. The new run is slower when new/old - 1
exceeds max(NOISE_FLOOR, IQR_FACTOR x combined noise), faster when
old/new - 1 does.
"""

import math
from dataclasses import dataclass

from .records import Run, median

NOISE_FLOOR = 0.05
IQR_FACTOR = 1.0


def relative_iqr(record) -> float:
    """The IQR of a record's rounds over their median (0 when not recorded)."""
    return (record["stats"].get("iqr") or 0.0) / median(record)


@dataclass(frozen=True)
class Change:
    old: dict
    new: dict

    @property
    def ratio(self) -> float:
        """New median over old: above 1 is slower."""
        return median(self.new) / median(self.old)

    @property
    def threshold(self) -> float:
        noise = math.hypot(relative_iqr(self.old), relative_iqr(self.new))
        return max(NOISE_FLOOR, IQR_FACTOR * noise)

    @property
    def verdict(self) -> str:
        if self.ratio - 1 > self.threshold:
            return "slower"
        if 1 / self.ratio - 1 > self.threshold:
            return "faster"
        return "within noise"


@dataclass(frozen=True)
class Comparison:
    old: Run
    new: Run
    changes: list[Change]
    only_old: list[str]
    only_new: list[str]

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "slower"]


def _key(record) -> tuple[str, str]:
    return record["group"], record["name"]


def compare(old: Run, new: Run) -> Comparison:
    olds = {_key(b): b for b in old.benchmarks}
    news = {_key(b): b for b in new.benchmarks}
    return Comparison(
        old, new,
        changes=[Change(olds[key], news[key]) for key in olds if key in news],
        only_old=[f"{g} {n}" for g, n in olds if (g, n) not in news],
        only_new=[f"{g} {n}" for g, n in news if (g, n) not in olds],
    )


def markdown(comparison: Comparison) -> str:
    old, new = comparison.old, comparison.new
    lines = [
        f"# Benchmarks compared: `{old.path.name}` (old) and `{new.path.name}` (new)", "",
        f"- Old: {old.device}, {old.datetime or 'undated'}",
        f"- New: {new.device}, {new.datetime or 'undated'}",
        f"- Rule: a record's noise is its IQR over its median; the two runs' combine as sqrt(a² + b²). "
        f"*slower* when new/old − 1 > max({NOISE_FLOOR:.0%}, {IQR_FACTOR:g} × combined noise), "
        f"*faster* when old/new − 1 exceeds it; otherwise *within noise*.",
    ]
    if old.device != new.device:
        lines.append("- The runs are on different devices: the ratios compare machines, not versions.")
    lines += ["", f"{len(comparison.regressions)} of {len(comparison.changes)} benchmarks slower beyond the noise.",
              "", "| group | name | old ms | new ms | new/old | threshold | verdict |",
              "|---|---|---|---|---|---|---|"]
    for change in comparison.changes:
        verdict = change.verdict
        lines.append(f"| {change.new['group']} | {change.new['name']} | {median(change.old) * 1e3:.3f} "
                     f"| {median(change.new) * 1e3:.3f} | {change.ratio:.3f} | ±{change.threshold:.1%} "
                     f"| {'**slower**' if verdict == 'slower' else verdict} |")
    for title, names in (("Only in the old run", comparison.only_old), ("Only in the new run", comparison.only_new)):
        if names:
            lines += ["", f"{title}: " + ", ".join(f"`{name}`" for name in names)]
    return "\n".join(lines) + "\n"
