"""Performance benchmarks of the aligner against the bare PyTorch and Jittor training steps.

``python -m benchmarks.run [--quick]`` measures every number in a fresh subprocess (so peak memory is
per measurement) and writes ``benchmarks/results/bench.md`` and ``bench.json``. The subprocess entry
points live in :mod:`benchmarks.workers`; nothing here is a test.
"""
