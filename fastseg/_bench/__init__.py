"""``python -m fastseg bench``: run the benchmark suite of a clone and turn
pytest-benchmark's JSON into a Markdown report, a chart, a comparison of two
runs and the README's results table.

Running needs the repository's ``benchmarks/``; everything that reads a
recorded JSON works from the installed package alone.
"""
