"""flowlake's benchmarks: ratios measured side by side in one run, never timed assertions.

Run ``python -m benchmarks.bench_store --help`` for the store's benchmark; see README.md here.
"""
