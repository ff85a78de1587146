"""The pytest plugin ``python -m fastseg bench`` runs the suite with
(``-p fastseg._bench.plugin``): a progress bar over the collected cases,
and the skipped cases with their reasons added to the JSON (pytest-benchmark
records only what ran), so that the report can say what was not measured."""

import sys

from tqdm import tqdm

from .records import SKIPPED_KEY


class BenchProgress:
    def __init__(self):
        self.bar = None
        self.skipped = []

    def pytest_collection_finish(self, session):
        # on stderr: pytest's own output (stdout) goes to a log file
        self.bar = tqdm(total=len(session.items), unit="case", desc="benchmarks", file=sys.stderr,
                        mininterval=0.5, dynamic_ncols=True)

    def pytest_runtest_logreport(self, report):
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
            self.skipped.append({"nodeid": report.nodeid, "reason": reason})

    def pytest_runtest_logfinish(self, nodeid):
        if self.bar is not None:
            self.bar.set_postfix_str(nodeid.rsplit("::", 1)[-1][-60:], refresh=False)
            self.bar.update(1)

    def pytest_benchmark_update_json(self, config, benchmarks, output_json):
        output_json[SKIPPED_KEY] = self.skipped

    def pytest_unconfigure(self, config):
        if self.bar is not None:
            self.bar.close()


def pytest_configure(config):
    config.pluginmanager.register(BenchProgress(), "fastseg-bench-progress")
