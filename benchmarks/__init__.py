"""Side-by-side throughput benchmarks for pipeline.do.

Run them with ``python -m benchmarks.run``; see ``benchmarks/README.md``.
"""
