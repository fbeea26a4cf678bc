"""Benchmark tooling behind ``sigrl bench``: result schema, machine record, FLOP counts and roofline probe,
perf_analyzer wrapper, report and plots. The measured cases themselves are the pytest-benchmark suite in
the repository's ``benchmarks/`` folder."""
