"""brokerfeeds benchmarks: throughput, latency, idle cost, soak memory and recovery.

Run every scenario (median of >= 3 repetitions, a table on stdout, figures in
``benchmarks/results.json``) from the repository root::

    python -m benchmarks            # everything, < 5 minutes on 2 cores
    python -m benchmarks --quick    # smaller N, for a first look
    python -m benchmarks --only 1,5 # some scenarios

Servers run in their own process (no shared GIL with the client under test) and every
contender runs in a fresh subprocess, so contenders never share interpreter state.
See ``benchmarks/README.md`` for the latest figures.
"""

from __future__ import annotations

__all__: list = []
