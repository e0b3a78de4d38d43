#!/bin/bash
# before = integ12 at 4de1fec (git archive in /tmp/perf3-before), after = wip/perf3 working tree
R=/work/wt/perf3/benchmarks/results/2026-12-03-perf3
for i in 1 2 3 4 5 6; do
  for side in before after; do
    if [ $side = before ]; then T=/tmp/perf3-before; else T=/work/wt/perf3; fi
    { echo "# $side round $i  tree $T"; uptime; cd $T && PYTHONPATH=$T timeout 300 /work/main/.venv/bin/python -m benchmarks.bench_ingest_path --rounds 2 2>/dev/null; uptime; } > $R/bench_ingest_path_${side}_${i}_set3.txt
  done
done
